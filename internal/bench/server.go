package bench

import (
	"bufio"
	"bytes"
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
	const raw = "GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: dust-bench\r\nConnection: close\r\n\r\n"
	return []*contender{seqContender("hvt-server-go",
		"unmodified Go net/http server (examples/linux/goserver) from its snapshot, one connection per request",
		func() (*hvt.Image, error) {
			return hvt.PrepareWith(a.goServerELF, machine.Limits{Memory: goLinuxMemory}, hvt.Options{Server: &hvt.ServerOptions{}})
		},
		func() *machine.Request { return &machine.Request{Body: strings.NewReader(raw), BodyLen: -1} },
		func(out []byte) error {
			resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
			if err != nil {
				return fmt.Errorf("the server's answer: %w", err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != 200 {
				return fmt.Errorf("the server answered %s", resp.Status)
			}
			return checkHello(body)
		},
		func() string {
			if s := hvtSkip(); s != "" {
				return s
			}
			return a.why("goserver-go")
		})}
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
