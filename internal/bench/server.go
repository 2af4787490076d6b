package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/machine"
)

// Server apps (issue 12): the unmodified Go net/http server example
// (examples/linux/goserver) from its snapshot at the first accept, one
// machine run then restored per request, against the same handler as a
// net/http/cgi process per request and the server as a long-lived process.
// The gateway rows (load.go) put all three behind HTTP with many clients.

// serverContenders are the machine-layer rows.
func serverContenders(a *artifacts, hvtSkip func() string) []*contender {
	c := &contender{Name: "hvt-server-go", Isolation: "hardware VM (KVM)",
		Note: "unmodified Go net/http server from its snapshot at the first accept, one VM, one connection per request, run then Reset inline; latency is the run, req/s and CPU/req include the restore"}
	if c.skip = hvtSkip(); c.skip == "" {
		c.skip = a.why("goserver-go")
	}
	if c.skip != "" {
		return []*contender{c}
	}
	im, err := hvt.PrepareWith(a.goServerELF, machine.Limits{Memory: goLinuxMemory}, hvt.Options{Server: &hvt.ServerOptions{}})
	if err != nil {
		c.skip = fmt.Sprintf("preparing the Go server: %v", err)
		return []*contender{c}
	}
	m, err := im.NewMachine()
	if err != nil {
		im.Close()
		c.skip = err.Error()
		return []*contender{c}
	}
	r, okR := m.(machine.Resetter)
	lc, okC := m.(linuxCounter)
	if !okR || !okC {
		m.Close()
		im.Close()
		c.skip = fmt.Sprintf("a %T cannot be reset or count system calls", m)
		return []*contender{c}
	}
	const raw = "GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: dust-bench\r\nConnection: close\r\n\r\n"
	var out bytes.Buffer
	var exits, calls, n int
	c.timed = func(ctx context.Context) (time.Duration, error) {
		out.Reset()
		t0 := time.Now()
		res := m.Run(ctx, &machine.Request{Body: strings.NewReader(raw), BodyLen: -1}, &out, io.Discard)
		d := time.Since(t0)
		if err := res.Err(); err != nil {
			return d, err
		}
		k, _ := lc.LinuxCalls()
		exits, calls, n = exits+res.Exits, calls+k, n+1
		if err := r.Reset(); err != nil {
			return d, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(&out), nil)
		if err != nil {
			return d, fmt.Errorf("the server's answer: %w", err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			return d, fmt.Errorf("the server answered %s", resp.Status)
		}
		return d, checkHello(body)
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
	return []*contender{c}
}

// startServerProcess runs a server program on a free loopback port and
// waits until it accepts connections.
func startServerProcess(bin string) (url string, stop func(), err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	stop = func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return "http://" + addr + "/", stop, nil
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, errors.Join(fmt.Errorf("%s did not listen on %s within 10 s", bin, addr), err)
		}
		time.Sleep(20 * time.Millisecond) // polling a port that is not open yet: no event to wait on
	}
}
