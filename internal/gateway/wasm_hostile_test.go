package gateway

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/machine/machinetest"
	"github.com/dust-run/dust/internal/store"
	"github.com/dust-run/dust/internal/wasm"
)

// wasmExample compiles examples/NAME/NAME.c for wasm32-wasi with clang.
func wasmExample(t *testing.T, name string) []byte {
	t.Helper()
	return wasmCompile(t, name, filepath.Join("../../examples", name, name+".c"))
}

// wasmSource compiles C source text for wasm32-wasi.
func wasmSource(t *testing.T, name, src string) []byte {
	t.Helper()
	c := filepath.Join(t.TempDir(), name+".c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return wasmCompile(t, name, c)
}

func wasmCompile(t *testing.T, name, src string) []byte {
	t.Helper()
	out := filepath.Join(t.TempDir(), name+".wasm")
	cmd := exec.Command("clang", "--target=wasm32-wasi", "-O2", "-o", out, src)
	if msg, err := cmd.CombinedOutput(); err != nil {
		if os.Getenv("DUST_REQUIRE_WASM_TOOLCHAIN") == "1" {
			t.Fatalf("clang for wasm32-wasi: %v\n%s", err, msg)
		}
		t.Skipf("no wasm32-wasi toolchain (apt install clang lld wasi-libc libclang-rt-14-dev-wasm32): %v", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestHostileWasmGuests: the wasm kind's adversaries through the same
// gateway, next to hvt apps, each with its status; the host serves a
// well-behaved hvt request after each attack.
func TestHostileWasmGuests(t *testing.T) {
	dir := t.TempDir()
	s, err := New(Config{DataDir: dir,
		Kinds: map[string]machine.Kind{"hvt": hvt.Kind{}, "wasm": wasm.Kind{Options: wasm.Options{NoDiskCache: true}}},
		Detect: func(b []byte) (string, error) {
			if bytes.HasPrefix(b, []byte("\x00asm")) {
				return "wasm", nil
			}
			return detect(b)
		},
		// A long hold makes "fails right after its first line" a clean 502
		// however slow the test machine is (the race detector, CI load).
		Logger: testLogger(), HoldTime: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	pub, adm := s.HTTPServers("", "")
	ts := &testServer{Server: s, pub: pub, adm: adm}
	lp := listen(t)
	go pub.Serve(Listener(lp))
	ts.url = "http://" + lp.Addr().String()
	t.Cleanup(func() { ts.stop() })
	ts.deploy(t, "hello", example(t, "hello"), store.Settings{Route: "/hello"})
	// cut: the app's output had reached the client before the machine
	// failed, so the response is cut short rather than replaced by an
	// error status. The gateway holds a response's first 16 KiB or
	// HoldTime, so only failures after that are cut.
	const cut = -1
	type wasmCase struct {
		example, query string
		set            store.Settings
		status         int
	}
	cases := []wasmCase{
		// It prints "about to trap" first: held, then dropped.
		{"trap", "", store.Settings{}, 502},
		{"trap", "oob", store.Settings{}, 502},
		{"trap", "div0", store.Settings{}, 502},
		{"loop", "", store.Settings{Timeout: 100 * time.Millisecond}, 504},
		{"oom", "", store.Settings{Memory: 8 << 20}, 502},
		{"logflood", "", store.Settings{}, 502},
		{"exitcode", "", store.Settings{}, 502}, // a complete-looking answer, but exit status 3: untrusted
		{"counter", "", store.Settings{}, 200},
	}
	// Adversaries without an example of their own: a storm of host calls
	// (the wasm exit storm), and clock timing (the wasm rdtsc).
	sources := map[string]string{
		"callstorm": "#include <time.h>\nint main(void){struct timespec ts; for(;;) clock_gettime(CLOCK_MONOTONIC, &ts);}\n",
		"timing":    "#include <stdio.h>\n#include <time.h>\nint main(void){struct timespec a,b; clock_gettime(CLOCK_MONOTONIC,&a); clock_gettime(CLOCK_MONOTONIC,&b); printf(\"Content-Type: text/plain\\n\\n%ld\\n\", (long)(b.tv_nsec-a.tv_nsec)); return 0;}\n",
	}
	cases = append(cases,
		wasmCase{"callstorm", "", store.Settings{Timeout: 100 * time.Millisecond}, 504},
		wasmCase{"timing", "", store.Settings{}, 200},
		wasmCase{"flood", "", store.Settings{Timeout: 200 * time.Millisecond}, cut},
	)
	fds0, threads0 := machinetest.HostUsage(t)
	for i, c := range cases {
		name := fmt.Sprintf("w%d-%s", i, c.example)
		c.set.Route = "/" + name
		img := func() []byte {
			if src, ok := sources[c.example]; ok {
				return wasmSource(t, c.example, src)
			}
			return wasmExample(t, c.example)
		}()
		ts.deploy(t, name, img, c.set)
		for r := 0; r < 3; r++ {
			code, body, err := fetch(ts.url + c.set.Route + "?" + c.query)
			switch {
			case c.status == cut:
				if err == nil {
					t.Errorf("%s: a complete %d response, want a cut one (%q)", c.example, code, body)
				}
			case err != nil || code != c.status:
				t.Errorf("%s?%s: %d %v, want %d (%q)", c.example, c.query, code, err, c.status, body)
			}
			if c.example == "counter" && body != "counter=1 heap=1\n" {
				t.Errorf("counter: %q", body)
			}
		}
		if resp, body := get(t, "GET", ts.url+"/hello", nil); resp.StatusCode != 200 || body != "Hello, world!\n" {
			t.Fatalf("hello after %s: %d %q", c.example, resp.StatusCode, body)
		}
	}
	// Each deploy added one app with a ready machine or two; nothing else
	// may stay behind.
	fds1, threads1 := machinetest.HostUsage(t)
	ready := ts.readyMachines()
	if fds1 > fds0+2*ready+16 || threads1 > threads0+ready+16 {
		t.Errorf("fds %d→%d, threads %d→%d with %d ready machines", fds0, fds1, threads0, threads1, ready)
	}
}

func listen(t *testing.T) net.Listener {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// fetch GETs url and reports a transfer cut short as an error.
func fetch(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
