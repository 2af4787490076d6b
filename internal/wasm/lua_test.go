package wasm

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// luaWasm is the Lua 5.4 interpreter examples/wasm.mk builds from Debian's
// lua5.4 source package, which it fetches at build time. Without it the
// test is skipped with the build's own reason, except under
// DUST_REQUIRE_WASM_TOOLCHAIN=1: the archive the source comes from is the
// one that installs clang and wasi-libc, so where the toolchain could be
// installed the source can be fetched too, and its absence is a failure.
func luaWasm(t testing.TB) []byte {
	t.Helper()
	b, err := builtExample("lua")
	if err == nil {
		return b
	}
	why := "see the build output"
	for _, line := range strings.Split(buildLog, "\n") {
		if strings.HasPrefix(line, "lua: ") {
			why = line
		}
	}
	if os.Getenv("DUST_REQUIRE_WASM_TOOLCHAIN") == "1" {
		t.Fatalf("lua.wasm was not built (%s): %v\n%s", why, err, buildLog)
	}
	t.Skipf("lua.wasm was not built: %s", why)
	return nil
}

// prepareLua is the interpreter with testdata/luaapp mounted read-only at
// /app, the way an app's files are.
func prepareLua(t testing.TB) *Image {
	t.Helper()
	return prepareLuaWith(t, testOptions)
}

func prepareLuaWith(t testing.TB, opts Options) *Image {
	t.Helper()
	img := luaWasm(t)
	opts.Dirs = []Mount{{HostDir: "testdata/luaapp", GuestPath: "/app"}}
	return prepareBytes(t, img, machine.Limits{Timeout: 10 * time.Second}, opts)
}

// luaArgs is the fixed argv of an interpreter app: the script, not the
// request's query items.
var luaArgs = []string{"lua", "/app/main.lua"}

// The Lua interpreter serves a CGI script from a read-only /app with
// fixed arguments, a fresh instance per request; a script error and
// os.exit end it the way they end the stand-alone interpreter.
func TestLuaServesScript(t *testing.T) {
	im := prepareLua(t)
	for _, q := range []string{"first", "second", "exit"} {
		t0 := time.Now()
		res, out, log := runOnce(t, im, &machine.Request{Args: luaArgs, Env: []string{"REQUEST_METHOD=GET", "QUERY_STRING=" + q}})
		if res.Outcome != machine.Served || res.ExitStatus != 0 {
			t.Fatalf("%s: outcome %v status %d (%v), log %q", q, res.Outcome, res.ExitStatus, res.Err(), log)
		}
		if _, body := splitCGI(t, out); body != "lua says: "+strings.ToUpper(q)+" via GET\n" {
			t.Errorf("%s: body %q", q, body)
		}
		if res.MemoryBytes < pageSize {
			t.Errorf("%s: MemoryBytes %d", q, res.MemoryBytes)
		}
		t.Logf("%s: %v, %d KiB of memory", q, time.Since(t0), res.MemoryBytes>>10)
	}
	res, _, log := runOnce(t, im, &machine.Request{Args: luaArgs, Env: []string{"QUERY_STRING=error"}})
	if res.Outcome != machine.Served || res.ExitStatus != 1 || !strings.Contains(log, "asked to fail") {
		t.Errorf("error: outcome %v status %d, log %q; want status 1 and the message", res.Outcome, res.ExitStatus, log)
	}
	// The mount is read-only: the script cannot leave anything behind.
	res, out, _ := runOnce(t, im, &machine.Request{Args: []string{"lua", "-e",
		`local f, err = io.open("/app/new.lua", "w") io.write("Content-Type: text/plain\r\n\r\n", tostring(f), " ", tostring(err))`}})
	if _, body := splitCGI(t, out); res.Outcome != machine.Served || !strings.HasPrefix(body, "nil ") {
		t.Errorf("writing into /app: %v %q", res.Outcome, body)
	}
	if _, err := os.Stat("testdata/luaapp/new.lua"); err == nil {
		t.Error("the guest created a file in its read-only mount")
	}
}

// BenchmarkLua is one request per iteration of the Lua script: returning
// at its end against os.exit(0) from inside nested calls; "dwarf" with
// wazero's debug info on, as before (see BenchmarkExit).
func BenchmarkLua(b *testing.B) {
	for _, dwarf := range []bool{false, true} {
		debugInfo = dwarf
		name := ""
		if dwarf {
			name = "dwarf/"
		}
		benchLua(b, name, prepareLuaWith(b, Options{CacheDir: b.TempDir()}))
	}
	debugInfo = false
}

func benchLua(b *testing.B, name string, im *Image) {
	for _, q := range []string{"return", "exit"} {
		b.Run(name+q, func(b *testing.B) {
			req := &machine.Request{Args: luaArgs, Env: []string{"REQUEST_METHOD=GET", "QUERY_STRING=" + q}}
			benchFresh(b, im, req, func(res machine.Result, out []byte) bool {
				return res.Outcome == machine.Served && res.ExitStatus == 0 && bytes.HasSuffix(out, []byte(" via GET\n"))
			})
		})
	}
}
