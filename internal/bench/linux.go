package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"time"

	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/wasm"
)

// The static C hello as an ordinary Linux program (issue 11): the same
// examples/hello/hello.c built with musl-gcc -static and gcc -static, run
// on hvt with the monitor serving its system calls, next to posix_spawn of
// the very same binaries.

// linuxCounter is what an hvt machine reports about a Linux program's
// system calls.
type linuxCounter interface {
	LinuxCalls() (calls int, unknown map[string]int)
}

// linuxContenders are, per libc, the hvt row and the posix_spawn row of
// the same binary.
func linuxContenders(a *artifacts, hvtSkip func() string) []*contender {
	var cs []*contender
	for _, l := range []struct {
		libc, file, bin string
		elf             []byte
		spawn           bool // glibc's posix_spawn row is posix-spawn itself
	}{{"musl", "hello-musl", a.muslHello, a.muslHelloELF, true}, {"glibc", "hello-static", a.staticHello, a.staticHelloELF, false}} {
		c := linuxSeqContender("hvt-linux-"+l.libc, "static C hello ("+l.libc+") as a Linux program", l.elf, machine.Limits{Memory: 8 << 20}, helloEnv, func() string {
			if s := hvtSkip(); s != "" {
				return s
			}
			return a.why(l.file)
		})
		cs = append(cs, c)
		if l.spawn {
			s := &contender{Name: "posix-spawn-" + l.libc, Isolation: "process",
				Note: "clone(CLONE_VFORK)+execve+wait of the same " + l.libc + " static hello as hvt-linux-" + l.libc}
			if s.skip = a.why(l.file); s.skip == "" {
				s.do = spawnDo(l.bin)
			}
			cs = append(cs, s)
		}
	}
	return cs
}

// linuxSeqContender serves hello from one machine of a static Linux
// program, restored inline after every request (as hvt-restore-seq): the
// latency is the run, req/s and CPU/req include the restore. Every system
// call the program makes is one exit to the monitor, so the row counts
// both.
func linuxSeqContender(name, what string, elf []byte, limits machine.Limits, env []string, skip func() string) *contender {
	return seqContender(name, what, func() (*hvt.Image, error) { return hvt.Prepare(elf, limits) },
		func() *machine.Request { return &machine.Request{Env: env} }, checkHello, skip)
}

// seqContender is one machine of an hvt image, run and restored inline
// for every request: the rows of Linux programs and server apps, which
// also count the exits and system calls of each request. req makes a
// request; check judges what the machine wrote to stdout.
func seqContender(name, what string, prepare func() (*hvt.Image, error), req func() *machine.Request, check func([]byte) error, skip func() string) *contender {
	c := &contender{Name: name, Isolation: "hardware VM (KVM)",
		Note: what + ", one VM, run then Reset inline; latency is the run, req/s and CPU/req include the restore"}
	if c.skip = skip(); c.skip != "" {
		return c
	}
	im, err := prepare()
	if err != nil {
		c.skip = fmt.Sprintf("preparing %s: %v", name, err)
		return c
	}
	m, err := im.NewMachine()
	if err != nil {
		im.Close()
		c.skip = err.Error()
		return c
	}
	r, okR := m.(machine.Resetter)
	lc, okC := m.(linuxCounter)
	if !okR || !okC {
		m.Close()
		im.Close()
		c.skip = fmt.Sprintf("a %T cannot be reset or count system calls", m)
		return c
	}
	var out bytes.Buffer
	var exits, calls, n int
	c.timed = func(ctx context.Context) (time.Duration, error) {
		out.Reset()
		t0 := time.Now()
		res := m.Run(ctx, req(), &out, io.Discard)
		d := time.Since(t0)
		if err := res.Err(); err != nil {
			return d, err
		}
		k, _ := lc.LinuxCalls()
		exits, calls, n = exits+res.Exits, calls+k, n+1
		if err := r.Reset(); err != nil {
			return d, err
		}
		return d, check(out.Bytes())
	}
	c.counts = func() (float64, float64) {
		if n == 0 {
			return 0, 0
		}
		return float64(exits) / float64(n), float64(calls) / float64(n)
	}
	c.extra = func() string {
		e, k := c.counts()
		return fmt.Sprintf("; %.1f exits and %.1f system calls per request", e, k)
	}
	c.close = func() { m.Close(); im.Close() }
	return c
}

// goLinuxMemory is the least memory hvt gives a Go program (the runtime's
// address-space reservations must fit: docs/linux-abi.md).
const goLinuxMemory = 1536 << 20

// goLinuxContenders are issue 11's Go rows: the dustgo hello built for
// Linux from its post-init snapshot on hvt, the very same binary as a
// process per request, the dustgo reactor on the wasm kind, and an
// unmodified net/http/cgi program on hvt without a snapshot (the Go
// runtime starts in every request).
func goLinuxContenders(a *artifacts, hvtSkip func() string) []*contender {
	skip := func(file string) func() string {
		return func() string {
			if s := hvtSkip(); s != "" {
				return s
			}
			return a.why(file)
		}
	}
	cs := []*contender{linuxSeqContender("hvt-linux-go-dustgo", "Go dustgo hello built for Linux, from its post-init snapshot",
		a.goDustgoELF, machine.Limits{Memory: goLinuxMemory}, helloEnv, skip("go-fast-hello-linux"))}
	sp := &contender{Name: "posix-spawn-go-dustgo", Isolation: "process",
		Note: "clone(CLONE_VFORK)+execve+wait of the same binary as hvt-linux-go-dustgo (its ready call gets ENOSYS: an ordinary CGI process)"}
	if sp.skip = a.why("go-fast-hello-linux"); sp.skip == "" {
		sp.do = spawnDo(a.goDustgo)
	}
	cs = append(cs, sp)
	w := &contender{Name: "wasm-go-dustgo", Isolation: "software sandbox (wasm)", Note: "wazero, the same source as a dustgo reactor (go-fast-hello.wasm), from its snapshot"}
	if w.skip = a.why("go-fast-hello.wasm"); w.skip == "" {
		im, err := wasm.Kind{}.Prepare(a.goFastWasm, machine.Limits{})
		if err != nil {
			w.skip = fmt.Sprintf("preparing go-fast-hello.wasm: %v", err)
		} else {
			w.do = imageDo(im, "/hello")
			w.close = func() { im.Close() }
		}
	}
	cs = append(cs, w)
	// net/http/cgi routes by the URL the CGI variables give: "/".
	env := append([]string{"SCRIPT_NAME=", "PATH_INFO=/"}, helloEnv...)
	cs = append(cs, linuxSeqContender("hvt-linux-go-cgi", "unmodified Go net/http/cgi program (examples/linux/gocgi), no snapshot",
		a.goCGIELF, machine.Limits{Memory: goLinuxMemory}, env, skip("gocgi-go")))
	return cs
}
