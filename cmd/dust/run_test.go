package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
)

// guestELF compiles C source against libdust into dir.
func guestELF(t *testing.T, name, src string) string {
	t.Helper()
	dir := t.TempDir()
	c := filepath.Join(dir, name+".c")
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, name+".elf")
	if msg, err := exec.Command("../../guest/dustcc", "-o", out, c).CombinedOutput(); err != nil {
		t.Fatalf("dustcc: %v\n%s", err, msg)
	}
	return out
}

func example(t *testing.T, name string) string {
	t.Helper()
	src, err := os.ReadFile(filepath.Join("../../examples", name, name+".c"))
	if err != nil {
		t.Fatal(err)
	}
	return guestELF(t, name, string(src))
}

func dustRun(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := cmdRun(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestRunHello(t *testing.T) {
	kvmtest.Require(t)
	code, out, errOut := dustRun(example(t, "hello"))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.HasPrefix(out, "HTTP/1.1 200 OK\r\n") || !strings.HasSuffix(out, "\r\n\r\nHello, world!\n") {
		t.Fatalf("output %q", out)
	}
}

func TestRunEchoFlags(t *testing.T) {
	kvmtest.Require(t)
	body := filepath.Join(t.TempDir(), "body")
	os.WriteFile(body, []byte("file body"), 0o644)
	code, out, errOut := dustRun("-X", "post", "--path", "/p/q?a=1&b=2", "-H", "X-Foo: bar", "-H", "X-Foo: baz",
		"--data", "@"+body, "--env", "APP=1", "--memory", "8MiB", "--timeout", "2s", example(t, "echo"))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"method=POST", "path=/p/q", "query=a=1&b=2", "content_length=9", "header HTTP_X_FOO=bar, baz", "body:\nfile body"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestRunExitCodes(t *testing.T) {
	kvmtest.Require(t)
	junk := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(junk, []byte("#!/bin/sh\necho hi\n"), 0o755)
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"no image", nil, exitUsage, "want IMAGE, got 0 argument(s)"},
		{"bad flag", []string{"--bogus", "x"}, exitUsage, "unknown flag -bogus"},
		{"bad size", []string{"--memory", "lots", "x"}, exitUsage, `--memory "lots": want a size such as 16MiB`},
		{"missing file", []string{"/nonexistent.elf"}, exitError, "no such file"},
		{"not an image", []string{junk}, exitBadImage, "neither an ELF"},
		{"bad memory", []string{"--memory", "3MiB", example(t, "hello")}, exitUsage, "--memory 3MiB: want a multiple of 2MiB from 2MiB to 4096MiB for an hvt image"},
		{"deadline", []string{"--timeout", "100ms", example(t, "loop")}, exitDeadline, "deadline exceeded"},
		{"crash", []string{example(t, "crash")}, exitFault, "fault: triple fault"},
		{"bad pointer", []string{example(t, "badptr")}, exitFault, "bad hypercall"},
		{"output limit", []string{"--max-output", "64KiB", example(t, "flood")}, exitFault, "output limit"},
		{"no CGI header", []string{guestELF(t, "nohdr", "#include <stdio.h>\nint main(void){puts(\"just text\");return 0;}\n")}, exitBadOutput, "CGI"},
		{"bad status", []string{guestELF(t, "badstatus", "#include <stdio.h>\nint main(void){printf(\"Status: abc\\r\\n\\r\\n\");return 0;}\n")}, exitBadOutput, "status"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, _, errOut := dustRun(c.args...)
			if code != c.code {
				t.Errorf("exit %d, want %d (%s)", code, c.code, errOut)
			}
			if !strings.Contains(strings.ToLower(errOut), strings.ToLower(c.msg)) {
				t.Errorf("stderr %q does not mention %q", errOut, c.msg)
			}
		})
	}
}

// goWasm builds a Go program for WASI preview 1 (no C toolchain needed).
func goWasm(t *testing.T, pkg string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), filepath.Base(pkg)+".wasm")
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, msg)
	}
	return out
}

// A .wasm image runs exactly like an .elf one, the kind told by its magic.
func TestRunWasm(t *testing.T) {
	t.Setenv("DUST_WASM_CACHE", t.TempDir())
	code, out, errOut := dustRun("-X", "post", "--path", "/p/q?a=1", "-H", "X-Foo: bar", "--data", "wasm body", goWasm(t, "../../examples/go-echo"))
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"HTTP/1.1 200 OK\r\n", "method=POST", "path=/p/q", "query=a=1", "content_length=9", "header HTTP_X_FOO=bar", "body:\nwasm body"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	bad := filepath.Join(t.TempDir(), "bad.wasm")
	os.WriteFile(bad, []byte("\x00asm\x0d\x00\x01\x00"), 0o644)
	if code, _, errOut := dustRun(bad); code != exitBadImage || !strings.Contains(errOut, "WASI preview 2") {
		t.Errorf("component: exit %d, %s", code, errOut)
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:8081": true, "[::1]:8081": true, "localhost:8081": true, "127.9.9.9:1": true,
		"0.0.0.0:8081": false, ":8081": false, "10.0.0.1:8081": false, "[::]:8081": false, "example.com:80": false, "garbage": false,
	} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}

// goWasmSource builds one Go source file for WASI preview 1, as a module
// of its own in a temporary directory.
func goWasmSource(t *testing.T, name, src string) string {
	t.Helper()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module "+name+"\n\ngo 1.24\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644)
	out := filepath.Join(dir, name+".wasm")
	cmd := exec.Command("go", "build", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOOS=wasip1", "GOARCH=wasm", "GOTOOLCHAIN=local")
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", name, err, msg)
	}
	return out
}
