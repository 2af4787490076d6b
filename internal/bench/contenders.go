package bench

import (
	"bytes"
	"context"
	"errors"
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
	// timed, when set, serves one request and returns the part of it that
	// is the row's latency; do is then unused.
	timed func(ctx context.Context) (time.Duration, error)
	// check runs after the last slice: an error (a restore pool that
	// never restored) fails the row, whose figures would be misnamed.
	check func() error
	// counts, for a Linux program's rows, are its exits and system calls
	// per request.
	counts func() (exits, calls float64)
	pool   *machine.Pool // the pool rows' pool, for their counters
	close  func()
	skip   string
}

// once serves one request and times it.
func (c *contender) once(ctx context.Context) (time.Duration, error) {
	if c.timed != nil {
		return c.timed(ctx)
	}
	t0 := time.Now()
	err := c.do(ctx)
	return time.Since(t0), err
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
	cs = append(cs, floorContenders(helloImg, hvtSkip)...)
	// The same pool two ways: restore mode (the default for gateway apps)
	// and fresh mode, each paced and back to back.
	cs = append(cs,
		poolContender(helloImg, hvtSkip, "hvt-restore-paced", "pool of 16 VMs restored after each request (Reuse), a request every 2 ms", 2*time.Millisecond, true),
		poolContender(helloImg, hvtSkip, "hvt-restore", "pool of 16 VMs restored after each request (Reuse), back to back", 0, true),
		restoreSeqContender(helloImg, hvtSkip),
		poolContender(helloImg, hvtSkip, "hvt-fresh-paced", "pool of 16 fresh VMs, each destroyed after its request, a request every 2 ms", 2*time.Millisecond, false),
		poolContender(helloImg, hvtSkip, "hvt-fresh", "pool of 16 fresh VMs, each destroyed after its request, back to back", 0, false))
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
	linuxSkip := func() string {
		if kvmErr != nil {
			return "no usable KVM: " + kvmErr.Error()
		}
		return ""
	}
	cs = append(cs, linuxContenders(a, linuxSkip)...)
	cs = append(cs, goLinuxContenders(a, linuxSkip)...)
	cs = append(cs, serverContenders(a, linuxSkip)...)
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

// poolContender serves hello from a machine.Pool of 16, the production
// path: with reuse, Recycle restores each machine on the pool's background
// workers (restore mode); without, it destroys it and the filler makes a
// new one (fresh mode). Both run in this process, so the CPU column, which
// waits for the pool to settle, includes them.
func poolContender(im machine.Image, skip func() string, name, note string, pace time.Duration, reuse bool) *contender {
	c := &contender{Name: name, Isolation: "hardware VM (KVM)", Note: note, Pace: pace}
	if c.skip = skip(); c.skip != "" {
		return c
	}
	pool := machine.NewPool(im, machine.PoolOptions{Size: 16, Reuse: reuse})
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
	c.extra = func() string { return poolNote(pool.Stats()) }
	c.check = func() error {
		st := pool.Stats()
		switch {
		case reuse && st.Restored == 0:
			return errors.New("restore mode restored no machine")
		case !reuse && st.Restored != 0:
			return fmt.Errorf("fresh mode restored %d machines", st.Restored)
		case st.RestoreErrors != 0:
			return fmt.Errorf("%d restores failed", st.RestoreErrors)
		}
		return nil
	}
	c.pool, c.close = pool, pool.Close
	return c
}

// poolNote says how a pool served its requests: from ready machines or
// not, and how many machines it created and restored on the way (in
// restore mode every machine created beyond the first 16 is churn).
func poolNote(st machine.PoolStats) string {
	return fmt.Sprintf("; pool hits %.0f %%, %d created, %d restored", 100*float64(st.Hits)/float64(max(1, st.Hits+st.Misses)), st.Created, st.Restored)
}

// restoreSeqContender serves hello on one machine, restored inline after
// every request: the restore mechanism without the pool around it. The
// latency is the run alone (what a request waits for when its restore
// happens after it); req/s and CPU/req include the restore.
func restoreSeqContender(im machine.Image, skip func() string) *contender {
	c := &contender{Name: "hvt-restore-seq", Isolation: "hardware VM (KVM)",
		Note: "one VM, run then Reset inline; latency is the run, req/s and CPU/req include the restore"}
	if c.skip = skip(); c.skip != "" {
		return c
	}
	m, err := im.NewMachine()
	if err != nil {
		c.skip = err.Error()
		return c
	}
	r, ok := m.(machine.Resetter)
	if !ok {
		m.Close()
		c.skip = "hvt machines cannot be reset"
		return c
	}
	var out bytes.Buffer
	req := &machine.Request{Env: helloEnv}
	c.timed = func(ctx context.Context) (time.Duration, error) {
		out.Reset()
		t0 := time.Now()
		res := m.Run(ctx, req, &out, io.Discard)
		d := time.Since(t0)
		if err := res.Err(); err != nil {
			return d, err
		}
		if err := r.Reset(); err != nil {
			return d, err
		}
		return d, checkHello(out.Bytes())
	}
	c.close = func() { m.Close() }
	return c
}

// floorContenders are one KVM_RUN round trip with a single exit on an
// existing vCPU (hvt.Image.FloorRunner): what no request can go below,
// with the hand-over to a filtered vCPU worker thread (the default path)
// and without it.
func floorContenders(im machine.Image, skip func() string) []*contender {
	var cs []*contender
	for _, f := range []struct {
		name, note string
		hop        bool
	}{{"hvt-floor", "one KVM_RUN round trip, 1 exit, on an existing vCPU, handed to a vCPU worker thread (seccomp on)", true},
		{"hvt-floor-direct", "the same round trip on the caller's thread: no hand-over, no filter", false}} {
		c := &contender{Name: f.name, Isolation: "hardware VM (KVM)", Note: f.note}
		cs = append(cs, c)
		if c.skip = skip(); c.skip != "" {
			continue
		}
		hi, ok := im.(*hvt.Image)
		if !ok {
			c.skip = fmt.Sprintf("image is a %T, not an hvt image", im)
			continue
		}
		run, release, err := hi.FloorRunner(f.hop)
		if err != nil {
			c.skip = err.Error()
			continue
		}
		c.do = func(context.Context) error { return run() }
		c.close = release
	}
	return cs
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
