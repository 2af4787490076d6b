package bench

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// artifacts are the programs every contender runs, built or found once per
// bench run so that all rows run the same C source.
type artifacts struct {
	dir string // scratch directory, removed at the end

	helloELF, echoELF, bigELF    []byte // hvt images (guest/dustcc)
	dirtyELF                     []byte // the restore sweeps' guest (restore.go)
	helloWasm, echoWasm, goHello []byte // wasm images
	bigWasm                      []byte
	staticHello, staticBig       string // host programs, static glibc
	muslHello                    string // the hello host program, static musl
	// The static hellos' bytes, as Linux programs on hvt.
	staticHelloELF, muslHelloELF []byte
	// Go for Linux (built here): the dustgo hello (its path, to spawn,
	// and bytes) and the unmodified net/http/cgi example; and the dustgo
	// hello as a wasm reactor.
	goDustgo, goCGI, goServer          string
	goDustgoELF, goCGIELF, goServerELF []byte
	goFastWasm                         []byte
	qemuGuest                          string // PVH ELF for QEMU microvm
	missing                            map[string]string
}

func (a *artifacts) close() { os.RemoveAll(a.dir) }

// buildArtifacts reads the prebuilt examples (make examples wasm-examples)
// and builds the host-side ones: the static Linux programs and the QEMU
// guest. A missing piece is recorded, not fatal: the contenders that need
// it are skipped with the reason.
func buildArtifacts(examples string) (*artifacts, error) {
	dir, err := os.MkdirTemp("", "dust-bench-")
	if err != nil {
		return nil, err
	}
	a := &artifacts{dir: dir, missing: map[string]string{}}
	read := func(dst *[]byte, name, file, hint string) {
		b, err := os.ReadFile(filepath.Join(examples, name, file))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				err = fmt.Errorf("%s not built (%s)", filepath.Join(examples, name, file), hint)
			}
			a.missing[file] = err.Error()
			return
		}
		*dst = b
	}
	read(&a.helloELF, "hello", "hello.elf", "make examples")
	read(&a.echoELF, "echo", "echo.elf", "make examples")
	read(&a.bigELF, "big", "big.elf", "make examples")
	read(&a.helloWasm, "hello", "hello.wasm", "make wasm-examples")
	read(&a.echoWasm, "echo", "echo.wasm", "make wasm-examples")
	read(&a.goHello, "go-hello", "go-hello.wasm", "make wasm-examples")
	read(&a.goFastWasm, "go-fast-hello", "go-fast-hello.wasm", "make wasm-examples")
	a.buildGoLinux(examples)
	// big is a bench-only example: build its wasm here rather than in
	// every `make wasm-examples`.
	if err := a.run("clang", "--target=wasm32-wasi", "-O2", "-o", filepath.Join(dir, "big.wasm"), filepath.Join(examples, "big", "big.c")); err != nil {
		a.missing["big.wasm"] = err.Error()
	} else if a.bigWasm, err = os.ReadFile(filepath.Join(dir, "big.wasm")); err != nil {
		a.missing["big.wasm"] = err.Error()
	}
	// dirty is bench-only too, built with the guest toolchain next to the
	// examples directory, as the examples are.
	if err := a.buildGuest(examples, "dirty", dirtySource, &a.dirtyELF); err != nil {
		a.missing["dirty.elf"] = err.Error()
	}
	for _, p := range []struct {
		dst  *string
		name string
	}{{&a.staticHello, "hello"}, {&a.staticBig, "big"}} {
		out := filepath.Join(dir, p.name+"-static")
		if err := a.run("gcc", "-O2", "-static", "-o", out, filepath.Join(examples, p.name, p.name+".c")); err != nil {
			a.missing[p.name+"-static"] = err.Error()
			continue
		}
		*p.dst = out
	}
	if a.staticHello != "" {
		if a.staticHelloELF, err = os.ReadFile(a.staticHello); err != nil {
			a.missing["hello-static"] = err.Error()
		}
	}
	// musl is optional (Debian: musl-tools); its rows say skipped without.
	if _, err := exec.LookPath("musl-gcc"); err != nil {
		a.missing["hello-musl"] = "musl-gcc not installed (Debian: apt-get install musl-tools)"
	} else {
		out := filepath.Join(dir, "hello-musl")
		if err := a.run("musl-gcc", "-O2", "-static", "-o", out, filepath.Join(examples, "hello", "hello.c")); err != nil {
			a.missing["hello-musl"] = err.Error()
		} else if a.muslHelloELF, err = os.ReadFile(out); err != nil {
			a.missing["hello-musl"] = err.Error()
		} else {
			a.muslHello = out
		}
	}
	if g, err := buildQEMUGuest(dir); err != nil {
		a.missing["qemu-guest"] = err.Error()
	} else {
		a.qemuGuest = g
	}
	return a, nil
}

// buildGoLinux builds the Go programs for Linux with the go command that
// built dust (or the one on PATH), from the module the examples are in.
func (a *artifacts) buildGoLinux(examples string) {
	root, err := filepath.Abs(filepath.Dir(examples))
	goCmd := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, serr := os.Stat(goCmd); serr != nil {
		goCmd, serr = exec.LookPath("go")
		err = errors.Join(err, serr)
	}
	for _, p := range []struct {
		key, pkg string
		bytes    *[]byte
		path     *string
	}{{"go-fast-hello-linux", "./examples/go-fast-hello", &a.goDustgoELF, &a.goDustgo},
		{"gocgi-go", "./examples/linux/gocgi", &a.goCGIELF, &a.goCGI},
		{"goserver-go", "./examples/linux/goserver", &a.goServerELF, &a.goServer}} {
		if err != nil {
			a.missing[p.key] = fmt.Sprintf("no go command to build %s: %v", p.pkg, err)
			continue
		}
		out := filepath.Join(a.dir, p.key)
		cmd := exec.Command(goCmd, "build", "-trimpath", "-o", out, p.pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
		if b, cerr := cmd.CombinedOutput(); cerr != nil {
			a.missing[p.key] = fmt.Sprintf("go build %s: %v: %s", p.pkg, cerr, b)
			continue
		}
		b, rerr := os.ReadFile(out)
		if rerr != nil {
			a.missing[p.key] = rerr.Error()
			continue
		}
		*p.bytes = b
		if p.path != nil {
			*p.path = out
		}
	}
}

// buildGuest compiles src with guest/dustcc into an hvt image.
func (a *artifacts) buildGuest(examples, name, src string, dst *[]byte) error {
	abs, err := filepath.Abs(examples)
	if err != nil {
		return err
	}
	dustcc := filepath.Join(filepath.Dir(abs), "guest", "dustcc")
	in, out := filepath.Join(a.dir, name+".c"), filepath.Join(a.dir, name+".elf")
	if err := os.WriteFile(in, []byte(src), 0o644); err != nil {
		return err
	}
	if err := a.run(dustcc, "-o", out, in); err != nil {
		return err
	}
	*dst, err = os.ReadFile(out)
	return err
}

func (a *artifacts) run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", name, err, out)
	}
	return nil
}

// why returns the reason a contender needing files cannot run, or "".
func (a *artifacts) why(files ...string) string {
	for _, f := range files {
		if m, ok := a.missing[f]; ok {
			return m
		}
	}
	return ""
}
