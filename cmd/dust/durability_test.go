package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
)

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// serveProc runs `dust serve` as a child process and waits until it listens.
type serveProc struct {
	cmd        *exec.Cmd
	app, admin string
	token      string
}

func startServe(t *testing.T, bin, data string, flags ...string) *serveProc {
	t.Helper()
	p := &serveProc{app: freeAddr(t), admin: freeAddr(t)}
	p.cmd = exec.Command(bin, append([]string{"serve", "-data", data, "-listen", p.app, "-admin", p.admin, "-pool-floor", "1"}, flags...)...)
	out, _ := p.cmd.StdoutPipe()
	p.cmd.Stderr = io.Discard
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The banner line is printed once both listeners are up.
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.Contains(line, "serving apps") {
		p.cmd.Process.Kill()
		t.Fatalf("dust serve did not start: %q %v", line, err)
	}
	go io.Copy(io.Discard, out)
	tok, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	p.token = strings.TrimSpace(string(tok))
	return p
}

func (p *serveProc) deploy(img []byte) (int, error) {
	req, _ := http.NewRequest("PUT", "http://"+p.admin+"/v1/apps/app?route=/app", bytes.NewReader(img))
	req.Header.Set("Authorization", "Bearer "+p.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// kill -9 the server in the middle of deploys: after a restart the store
// opens, the app serves a version at least as new as the last deploy that
// was acknowledged, and no half-written image is left behind.
func TestKill9DuringDeploys(t *testing.T) {
	kvmtest.Require(t)
	if testing.Short() {
		t.Skip("spawns servers: skipped with -short")
	}
	dir, bin := buildDust(t)
	// Versions differ by their answer: "v<N>".
	versions := make([][]byte, 6)
	for i := range versions {
		b, err := os.ReadFile(guestELF(t, fmt.Sprintf("v%d", i), fmt.Sprintf("#include <stdio.h>\nint main(void){printf(\"Content-Type: text/plain\\n\\nv%d\\n\");return 0;}\n", i)))
		if err != nil {
			t.Fatal(err)
		}
		versions[i] = b
	}
	data := filepath.Join(dir, "data")
	acked := -1
	for round := 0; round < 3; round++ {
		p := startServe(t, bin, data)
		// Deploy in the background and kill the server while it works.
		done := make(chan int, len(versions))
		go func() {
			for i := range versions {
				if code, err := p.deploy(versions[i]); err == nil && code == 200 {
					done <- i
				} else {
					break
				}
			}
			close(done)
		}()
		// Let at least one deploy land, then kill -9 mid-flight.
		if i, ok := <-done; ok {
			acked = max(acked, i)
		}
		p.cmd.Process.Signal(syscall.SIGKILL)
		p.cmd.Wait()
		for i := range done {
			acked = max(acked, i)
		}
		// Restart: the last acknowledged version (or a newer one whose
		// acknowledgement was lost in the kill) serves.
		q := startServe(t, bin, data)
		resp, err := http.Get("http://" + q.app + "/app")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var got int
		if _, err := fmt.Sscanf(string(body), "v%d", &got); err != nil || got < acked {
			t.Fatalf("round %d: after kill -9 the app answers %q, last acknowledged deploy was v%d", round, body, acked)
		}
		q.cmd.Process.Signal(syscall.SIGTERM)
		if err := q.cmd.Wait(); err != nil {
			t.Fatalf("graceful shutdown: %v", err)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(data, "images", "sha256"))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".upload") {
			t.Errorf("half-written image left behind: %s", e.Name())
		}
	}
}

// kill -9 under load and during a graceful shutdown: on restart every app
// is there and serves, and the store opens cleanly.
func TestKill9DuringLoadAndShutdown(t *testing.T) {
	kvmtest.Require(t)
	if testing.Short() {
		t.Skip("spawns servers: skipped with -short")
	}
	dir, bin := buildDust(t)
	hello, err := os.ReadFile(example(t, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	p := startServe(t, bin, data)
	if code, err := p.deploy(hello); err != nil || code != 200 {
		t.Fatalf("deploy: %d %v", code, err)
	}
	for _, phase := range []string{"load", "shutdown"} {
		// Keep requests in flight, then kill.
		stop := make(chan struct{})
		served := make(chan int)
		go func() {
			n := 0
			defer func() { served <- n }()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := http.Get("http://" + p.app + "/app")
				if err != nil {
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				n++
			}
		}()
		for i := 0; i < 20; i++ { // some requests land before the kill
			resp, err := http.Get("http://" + p.app + "/app")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if phase == "shutdown" {
			p.cmd.Process.Signal(syscall.SIGTERM) // a graceful shutdown starts...
		}
		p.cmd.Process.Signal(syscall.SIGKILL) // ...and is cut short
		p.cmd.Wait()
		close(stop)
		<-served
		p = startServe(t, bin, data)
		resp, err := http.Get("http://" + p.app + "/app")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "Hello, world!\n" {
			t.Fatalf("after kill -9 during %s: %d %q", phase, resp.StatusCode, body)
		}
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("graceful shutdown: %v", err)
	}
}

// `dust serve -user nobody`: the server drops root after opening /dev/kvm
// and binding, and still deploys and serves fresh VMs.
func TestServeDropsRoot(t *testing.T) {
	kvmtest.Require(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root to drop it")
	}
	if _, err := user.Lookup("nobody"); err != nil {
		t.Skip("no nobody account")
	}
	dir, bin := buildDust(t)
	// nobody must be able to reach the data directory.
	os.Chmod(filepath.Dir(dir), 0o755)
	os.Chmod(dir, 0o755)
	data := filepath.Join(dir, "data")
	p := &serveProc{app: freeAddr(t), admin: freeAddr(t)}
	p.cmd = exec.Command(bin, "serve", "-user", "nobody", "-data", data, "-listen", p.app, "-admin", p.admin)
	out, _ := p.cmd.StdoutPipe()
	p.cmd.Stderr = io.Discard
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		p.cmd.Wait()
	}()
	if line, err := bufio.NewReader(out).ReadString('\n'); err != nil || !strings.Contains(line, "serving apps") {
		t.Fatalf("dust serve did not start: %q %v", line, err)
	}
	go io.Copy(io.Discard, out)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(status), "\nUid:\t65534\t65534\t65534\t65534\n") {
		t.Fatalf("server still privileged:\n%s", status)
	}
	tok, _ := os.ReadFile(filepath.Join(data, "admin.token"))
	p.token = strings.TrimSpace(string(tok))
	hello, _ := os.ReadFile(example(t, "hello"))
	if code, err := p.deploy(hello); err != nil || code != 200 {
		t.Fatalf("deploy as nobody: %d %v", code, err)
	}
	resp, err := http.Get("http://" + p.app + "/app")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "Hello, world!\n" {
		t.Fatalf("served as nobody: %d %q", resp.StatusCode, body)
	}
}

// buildDust builds this command into a temporary directory.
func buildDust(t *testing.T) (dir, bin string) {
	t.Helper()
	dir = t.TempDir()
	bin = filepath.Join(dir, "dust")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir, bin
}
