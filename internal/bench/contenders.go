package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"syscall"
	"time"

	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/wasm"
)

// helloEnv is the CGI environment of a typical GET, the same for every
// contender that takes one.
var helloEnv = []string{"GATEWAY_INTERFACE=CGI/1.1", "REQUEST_METHOD=GET", "SCRIPT_NAME=/hello",
	"PATH_INFO=", "QUERY_STRING=", "SERVER_PROTOCOL=HTTP/1.1", "SERVER_NAME=localhost",
	"SERVER_PORT=8080", "REMOTE_ADDR=127.0.0.1", "HTTP_HOST=localhost:8080", "HTTP_USER_AGENT=dust-bench"}

var helloBody = []byte("Hello, world!\n")

// contender is one way of serving the hello request.
type contender struct {
	Name      string
	Isolation string
	Note      string
	// Pace, when set, starts requests on a ticker instead of back to
	// back: the latency a request sees when the system keeps up.
	Pace time.Duration
	do   func(ctx context.Context) error
	// settle runs after each slice, inside its CPU and wall accounting:
	// work a slice caused but left to background goroutines (pool
	// refills, destructions) is charged to it, not to the next slice.
	settle func()
	// extra adds to the row's note what only the contender knows (pool
	// hit rate).
	extra func() string
	close func()
	skip  string
}

func checkHello(out []byte) error {
	if !bytes.HasSuffix(out, helloBody) {
		return fmt.Errorf("unexpected response %q", out[:min(len(out), 120)])
	}
	return nil
}

// machineContenders builds the machine-layer contenders. Ones that cannot
// run here come back with skip set.
func machineContenders(a *artifacts, log func(string, ...any)) (cs []*contender, cleanup func()) {
	var closers []func()
	cleanup = func() {
		for _, f := range closers {
			f()
		}
	}
	kvmErr := kvm.Available()
	hvtSkip := func() string {
		if kvmErr != nil {
			return "no usable KVM: " + kvmErr.Error()
		}
		return a.why("hello.elf")
	}
	var helloImg machine.Image
	if hvtSkip() == "" {
		im, err := hvt.Kind{}.Prepare(a.helloELF, machine.Limits{Memory: 4 << 20})
		if err != nil {
			kvmErr = fmt.Errorf("preparing hello.elf: %w", err)
		} else {
			helloImg = im
			closers = append(closers, func() { im.Close() })
		}
	}
	poolContender := func(name, note string, pace time.Duration) *contender {
		c := &contender{Name: name, Isolation: "hardware VM (KVM)", Note: note, Pace: pace}
		if c.skip = hvtSkip(); c.skip != "" {
			return c
		}
		pool := machine.NewPool(helloImg, machine.PoolOptions{Size: 16})
		var out bytes.Buffer
		c.do = func(ctx context.Context) error {
			out.Reset()
			res, err := pool.Do(ctx, &machine.Request{Env: helloEnv}, &out, io.Discard)
			if err != nil {
				return err
			}
			if err := res.Err(); err != nil {
				return err
			}
			return checkHello(out.Bytes())
		}
		c.settle = func() { settlePool(pool) }
		c.extra = func() string {
			st := pool.Stats()
			return fmt.Sprintf("; pool hits %.0f %%", 100*float64(st.Hits)/float64(max(1, st.Hits+st.Misses)))
		}
		c.close = pool.Close
		return c
	}
	cs = append(cs,
		poolContender("hvt-pool-paced", "pool of 16 prepared VMs, a request every 2 ms", 2*time.Millisecond),
		poolContender("hvt-pool", "pool of 16 prepared VMs, back to back", 0))
	cold := &contender{Name: "hvt-cold", Isolation: "hardware VM (KVM)", Note: "create + run + destroy per request"}
	if cold.skip = hvtSkip(); cold.skip == "" {
		cold.do = imageDo(helloImg, "/hello")
	}
	cs = append(cs, cold)

	for _, w := range []struct {
		name, note string
		img        []byte
		file       string
	}{{"wasm-c", "wazero, fresh instance per request, C hello", a.helloWasm, "hello.wasm"},
		{"wasm-go", "wazero, fresh instance per request, Go (wasip1) hello", a.goHello, "go-hello.wasm"}} {
		c := &contender{Name: w.name, Isolation: "software sandbox (wasm)", Note: w.note}
		if c.skip = a.why(w.file); c.skip == "" {
			im, err := wasm.Kind{}.Prepare(w.img, machine.Limits{})
			if err != nil {
				c.skip = fmt.Sprintf("preparing %s: %v", w.file, err)
			} else {
				c.do = imageDo(im, "/hello")
				c.close = func() { im.Close() }
			}
		}
		cs = append(cs, c)
	}

	spawn := &contender{Name: "posix-spawn", Isolation: "process", Note: "clone(CLONE_VFORK)+execve+wait of static C hello, stdout via pipe"}
	if spawn.skip = a.why("hello-static"); spawn.skip == "" {
		spawn.do = spawnDo(a.staticHello)
	}
	cs = append(cs, spawn)
	cs = append(cs, containerContenders(a)...)

	cgiC := &contender{Name: "http-cgi", Isolation: "process", Note: "Go net/http/cgi starting static C hello, loopback HTTP"}
	if cgiC.skip = a.why("hello-static"); cgiC.skip == "" {
		url, stop, err := serveLoopback(&cgi.Handler{Path: a.staticHello})
		if err != nil {
			cgiC.skip = err.Error()
		} else {
			cgiC.do, cgiC.close = httpDo(url), stop
		}
	}
	cs = append(cs, cgiC)

	plain := &contender{Name: "http-plain", Isolation: "none", Note: "Go net/http handler in-process, loopback HTTP (the ceiling)"}
	if url, stop, err := serveLoopback(plainHello()); err != nil {
		plain.skip = err.Error()
	} else {
		plain.do, plain.close = httpDo(url), stop
	}
	cs = append(cs, plain)

	q := &contender{Name: "qemu-microvm", Isolation: "hardware VM (KVM)", Note: "qemu-system-x86_64 -M microvm -accel kvm, minimal PVH guest, process start to exit"}
	bin, err := qemuBinary()
	_, kvmStat := os.Stat("/dev/kvm")
	switch {
	case kvmStat != nil:
		q.skip = "no /dev/kvm"
	case err != nil:
		q.skip = err.Error()
	default:
		if q.skip = a.why("qemu-guest"); q.skip == "" {
			if cpu, err := qemuCPU(context.Background(), bin, a.qemuGuest); err != nil {
				q.skip = err.Error()
			} else {
				q.Note += ", -cpu " + cpu
				q.do = func(ctx context.Context) error { return runQEMU(ctx, bin, a.qemuGuest, cpu) }
			}
		}
	}
	cs = append(cs, q)
	for _, c := range cs {
		if c.skip != "" {
			log("skip %s: %s", c.Name, c.skip)
		}
		if c.close != nil {
			// Contenders close before the images they use.
			closers = append([]func(){c.close}, closers...)
		}
	}
	return cs, cleanup
}

// settlePool waits until the pool is back to its target of ready machines
// and every used machine has been destroyed. The pool has no completion
// signal, so poll its counters on a short ticker.
func settlePool(p *machine.Pool) {
	t := time.NewTicker(200 * time.Microsecond)
	defer t.Stop()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		st := p.Stats()
		if st.Ready >= st.Target && st.Destroyed >= st.Created-int64(st.Ready) {
			return
		}
		<-t.C
	}
}

// imageDo serves one request on a brand-new machine of im, creation and
// destruction included.
func imageDo(im machine.Image, path string) func(context.Context) error {
	var out bytes.Buffer
	req := &machine.Request{Args: []string{path}, Env: helloEnv}
	return func(ctx context.Context) error {
		out.Reset()
		m, err := im.NewMachine()
		if err != nil {
			return err
		}
		res := m.Run(ctx, req, &out, io.Discard)
		m.Close()
		if err := res.Err(); err != nil {
			return err
		}
		return checkHello(out.Bytes())
	}
}

// spawnDo is what posix_spawn does: clone(CLONE_VM|CLONE_VFORK) + execve,
// then wait; stdout through a pipe.
func spawnDo(bin string) func(context.Context) error {
	return forkExecDo(bin, &syscall.ProcAttr{Env: helloEnv})
}

// forkExecDo starts bin with attr (its Files are replaced), reads its
// stdout through a pipe and waits for it.
func forkExecDo(bin string, attr *syscall.ProcAttr) func(context.Context) error {
	buf := make([]byte, 4096)
	return func(context.Context) error {
		r, w, err := os.Pipe()
		if err != nil {
			return err
		}
		attr.Files = []uintptr{0, w.Fd(), 2}
		pid, err := syscall.ForkExec(bin, []string{bin}, attr)
		w.Close()
		if err != nil {
			r.Close()
			return fmt.Errorf("starting %s: %w", bin, err)
		}
		n, _ := io.ReadFull(r, buf)
		r.Close()
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
			return err
		}
		if ws.ExitStatus() != 0 {
			return fmt.Errorf("%s: exit status %d", bin, ws.ExitStatus())
		}
		return checkHello(buf[:n])
	}
}

func plainHello() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write(helloBody)
	})
}

// serveLoopback serves h on an ephemeral loopback port.
func serveLoopback(h http.Handler) (url string, stop func(), err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	return "http://" + l.Addr().String() + "/", func() { srv.Close() }, nil
}

// httpDo is one GET over a kept-alive loopback connection.
func httpDo(url string) func(context.Context) error {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	var buf bytes.Buffer
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		buf.Reset()
		_, err = buf.ReadFrom(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return checkHello(buf.Bytes())
	}
}
