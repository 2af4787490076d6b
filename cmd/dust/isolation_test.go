package main

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/gateway"
	"github.com/dust-run/dust/internal/kvm/kvmtest"
)

// -requests N in restore mode serves every request on the first machine,
// reset in between (the counter example proves nothing leaked); in fresh
// mode on N machines. Only the last response is printed.
func TestRunRequestsIsolation(t *testing.T) {
	kvmtest.Require(t)
	counter := example(t, "counter")
	for _, c := range []struct {
		mode, summary, machine string
	}{
		{"restore", "5 requests, isolation restore: 1 machines created, 4 restored, 0 restore errors", "request 5/5 on a restored machine: served"},
		{"fresh", "5 requests, isolation fresh: 5 machines created, 0 restored, 0 restore errors", "request 5/5 on a new machine: served"},
	} {
		code, out, errOut := dustRun("-v", "--requests", "5", "--isolation", c.mode, counter)
		if code != exitOK {
			t.Fatalf("%s: exit %d: %s", c.mode, code, errOut)
		}
		if !strings.HasPrefix(out, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(out, "\r\n\r\ncounter=1 heap=1\n") || strings.Count(out, "HTTP/1.1") != 1 {
			t.Errorf("%s: stdout %q, want the one last response, counter=1", c.mode, out)
		}
		if !strings.Contains(errOut, c.summary) || !strings.Contains(errOut, c.machine) || strings.Count(errOut, "request ") != 5 {
			t.Errorf("%s: stderr lacks %q or %q, or not one line per request:\n%s", c.mode, c.summary, c.machine, errOut)
		}
	}
	// Without -v nothing but the response; the default mode is restore.
	code, out, errOut := dustRun("--requests", "3", counter)
	if code != exitOK || errOut != "" || !strings.HasSuffix(out, "counter=1 heap=1\n") {
		t.Errorf("quiet: exit %d, stderr %q, stdout %q", code, errOut, out)
	}
}

// Every request gets the whole body, from a string or a file.
func TestRunRequestsRepeatBody(t *testing.T) {
	kvmtest.Require(t)
	echo := example(t, "echo")
	file := filepath.Join(t.TempDir(), "body")
	os.WriteFile(file, []byte("from a file"), 0o644)
	for data, want := range map[string]string{"inline body": "inline body", "@" + file: "from a file"} {
		code, out, errOut := dustRun("-X", "POST", "--data", data, "--requests", "3", "-v", echo)
		if code != exitOK {
			t.Fatalf("%s: exit %d: %s", data, code, errOut)
		}
		if !strings.Contains(out, "body:\n"+want) {
			t.Errorf("%s: the last response lacks the body:\n%s", data, out)
		}
		if strings.Count(errOut, "bytes log") != 3 || !strings.Contains(errOut, "request 3/3 on a restored machine") {
			t.Errorf("%s: stderr:\n%s", data, errOut)
		}
	}
}

// A failing request stops the run with today's exit code, naming it.
func TestRunRequestsFailures(t *testing.T) {
	kvmtest.Require(t)
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"bad mode", []string{"--isolation", "sometimes", "x"}, exitUsage, "-isolation \"sometimes\": want restore or fresh"},
		{"no requests", []string{"--requests", "0", "x"}, exitUsage, "-requests 0"},
		{"crash", []string{"--requests", "3", example(t, "crash")}, exitFault, "request 1/3: fault"},
		{"deadline", []string{"--requests", "2", "--timeout", "100ms", "--isolation", "fresh", example(t, "loop")}, exitDeadline, "request 1/2: deadline exceeded"},
	}
	for _, c := range cases {
		code, out, errOut := dustRun(c.args...)
		if code != c.code || !strings.Contains(errOut, c.msg) {
			t.Errorf("%s: exit %d, stderr %q; want %d and %q", c.name, code, errOut, c.code, c.msg)
		}
		if strings.Contains(out, "HTTP/1.1") {
			t.Errorf("%s: a response was printed for a run that stopped early: %q", c.name, out)
		}
	}
	// A non-zero exit after a complete response is still printed, but the
	// gateway fails such a request, so its machine is not reused
	// (machine.Reusable): the next request gets a new one.
	code, _, errOut := dustRun("--requests", "2", "-v", example(t, "exitcode"))
	if code != exitOK || !strings.Contains(errOut, "request 2/2 on a new machine") || !strings.Contains(errOut, "request 1/2: the app exited with status") {
		t.Errorf("exitcode: exit %d, stderr:\n%s", code, errOut)
	}
}

// wasm machines are not reset: restore mode runs fresh, and says so.
func TestRunRequestsWasmRunsFresh(t *testing.T) {
	t.Setenv("DUST_WASM_CACHE", t.TempDir())
	code, out, errOut := dustRun("-v", "--requests", "3", goWasm(t, "../../examples/go-hello"))
	if code != exitOK || !strings.HasPrefix(out, "HTTP/1.1 200 OK\r\n") {
		t.Fatalf("exit %d, stdout %q, stderr %s", code, out, errOut)
	}
	if want := "3 requests, isolation fresh (restore asked; wasm machines cannot be reset): 3 machines created, 0 restored"; !strings.Contains(errOut, want) {
		t.Errorf("stderr lacks %q:\n%s", want, errOut)
	}
}

// dust deploy --isolation reaches the app's settings, dust app shows the
// mode, and a bad mode is refused before anything is uploaded.
func TestDeployIsolationFlag(t *testing.T) {
	kvmtest.Require(t)
	data := t.TempDir()
	srv, err := gateway.New(gateway.Config{DataDir: data, Kinds: allKinds(), Detect: detectKind,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), PoolFloor: 1})
	if err != nil {
		t.Fatal(err)
	}
	_, adm := srv.HTTPServers("", "")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go adm.Serve(l)
	t.Cleanup(func() { srv.Shutdown(adm) })
	admin := func(cmd string, args ...string) (int, string, string) {
		var out, errOut bytes.Buffer
		code := cmdAdmin(cmd, append([]string{"-admin", l.Addr().String(), "-data", data}, args...), &out, &errOut)
		return code, out.String(), errOut.String()
	}
	hello := example(t, "hello")
	isolation := func(name string) (asked, status string) {
		code, out, errOut := admin("app", name, "--json")
		if code != exitOK {
			t.Fatalf("dust app %s: exit %d: %s", name, code, errOut)
		}
		var got struct {
			Settings struct {
				Isolation string `json:"isolation"`
			} `json:"settings"`
			Status struct {
				Isolation string `json:"isolation"`
			} `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("dust app %s: %v\n%s", name, err, out)
		}
		return got.Settings.Isolation, got.Status.Isolation
	}

	if code, _, errOut := admin("deploy", "--isolation", "fresh", "f", hello); code != exitOK {
		t.Fatalf("deploy --isolation fresh: exit %d: %s", code, errOut)
	}
	if asked, status := isolation("f"); asked != "fresh" || status != "fresh" {
		t.Errorf("app f: settings %q, status %q; want fresh", asked, status)
	}
	if code, _, errOut := admin("deploy", "r", hello); code != exitOK {
		t.Fatalf("deploy: exit %d: %s", code, errOut)
	}
	if asked, status := isolation("r"); asked != "" || status != "restore" {
		t.Errorf("app r: settings %q, status %q; want \"\" (the default) shown as restore", asked, status)
	}
	code, _, errOut := admin("deploy", "--isolation", "sometimes", "bad", hello)
	if code != exitUsage || !strings.Contains(errOut, "want restore or fresh") {
		t.Errorf("deploy --isolation sometimes: exit %d: %s", code, errOut)
	}
	if code, _, _ := admin("app", "bad"); code != exitNotFound {
		t.Errorf("the refused deploy created app bad (dust app: exit %d)", code)
	}
}
