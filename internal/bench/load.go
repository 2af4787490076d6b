package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"sync"
	"time"

	"github.com/dust-run/dust/internal/gateway"
	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
	"github.com/dust-run/dust/internal/wasm"
)

// target is one URL a load generator hits.
type target struct {
	name, isolation, url string
	skip                 string
}

// gw is an in-process gateway plus the HTTP baselines, all on loopback.
type gw struct {
	srv    *gateway.Server
	pub    *http.Server
	base   string
	dir    string
	stops  []func()
	hvtErr string
	apps   map[string]string // deployed app -> why not, "" when deployed
	plain  string
	cgi    string
	big    struct{ plain, cgi string }
}

func startGateway(a *artifacts, log func(string, ...any)) (*gw, error) {
	dir, err := os.MkdirTemp("", "dust-bench-gw-")
	if err != nil {
		return nil, err
	}
	kinds := map[string]machine.Kind{"wasm": wasm.Kind{}}
	g := &gw{dir: dir, apps: map[string]string{}}
	if err := kvm.Available(); err != nil {
		g.hvtErr = "no usable KVM: " + err.Error()
	} else {
		kinds["hvt"] = hvt.Kind{}
	}
	srv, err := gateway.New(gateway.Config{
		DataDir: dir, Kinds: kinds, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Detect: func(b []byte) (string, error) {
			switch {
			case bytes.HasPrefix(b, []byte("\x7fELF")):
				return "hvt", nil
			case bytes.HasPrefix(b, []byte("\x00asm")):
				return "wasm", nil
			}
			return "", errors.New("unknown image")
		},
		ShutdownGrace: 5 * time.Second,
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	g.srv = srv
	pub, _ := srv.HTTPServers("", "")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		g.close()
		return nil, err
	}
	go pub.Serve(gateway.Listener(l))
	g.pub, g.base = pub, "http://"+l.Addr().String()
	// Queue rather than refuse: a load generator with 256 clients against
	// an app capped at 16 live machines measures queueing, as users get it.
	set := func(route string) store.Settings {
		return store.Settings{Route: route, QueueLen: 4096, QueueWait: 60 * time.Second, MaxConcurrency: 16}
	}
	for _, d := range []struct {
		name, route, file string
		img               []byte
		hvt               bool
	}{{"hello", "/hello", "hello.elf", a.helloELF, true}, {"big", "/big", "big.elf", a.bigELF, true},
		{"hello-wasm", "/wasm/hello", "hello.wasm", a.helloWasm, false}, {"big-wasm", "/wasm/big", "big.wasm", a.bigWasm, false}} {
		if why := a.why(d.file); why != "" {
			g.apps[d.name] = why
			continue
		}
		if d.hvt && g.hvtErr != "" {
			g.apps[d.name] = g.hvtErr
			continue
		}
		if _, err := srv.Deploy(d.name, bytes.NewReader(d.img), set(d.route)); err != nil {
			g.apps[d.name] = "deploy: " + err.Error()
		}
	}
	for _, s := range []struct {
		dst *string
		h   http.Handler
	}{{&g.plain, plainHello()}, {&g.big.plain, plainBig()}} {
		url, stop, err := serveLoopback(s.h)
		if err != nil {
			g.close()
			return nil, err
		}
		*s.dst, g.stops = url, append(g.stops, stop)
	}
	for _, s := range []struct {
		dst *string
		bin string
	}{{&g.cgi, a.staticHello}, {&g.big.cgi, a.staticBig}} {
		if s.bin == "" {
			continue
		}
		url, stop, err := serveLoopback(&cgi.Handler{Path: s.bin})
		if err != nil {
			g.close()
			return nil, err
		}
		*s.dst, g.stops = url, append(g.stops, stop)
	}
	log("gateway on %s with hello and big deployed (hvt and wasm)", g.base)
	return g, nil
}

func plainBig() http.Handler {
	buf := bytes.Repeat([]byte("x"), 64<<10)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Length", "1048576")
		for range 16 {
			w.Write(buf)
		}
	})
}

func (g *gw) close() {
	for _, s := range g.stops {
		s()
	}
	if g.pub != nil {
		g.srv.Shutdown(g.pub)
	} else if g.srv != nil {
		g.srv.Close()
	}
	os.RemoveAll(g.dir)
}

func (g *gw) helloTargets() []target {
	t := []target{
		{name: "gateway hvt hello", isolation: "hardware VM (KVM)", url: g.base + "/hello", skip: g.apps["hello"]},
		{name: "gateway wasm hello", isolation: "software sandbox (wasm)", url: g.base + "/wasm/hello", skip: g.apps["hello-wasm"]},
		{name: "net/http/cgi process", isolation: "process", url: g.cgi},
		{name: "plain net/http", isolation: "none", url: g.plain},
	}
	if g.cgi == "" {
		t[2].skip = "static hello not built"
	}
	return t
}

func (g *gw) bigTargets() []target {
	t := []target{
		{name: "gateway hvt big", isolation: "hardware VM (KVM)", url: g.base + "/big", skip: g.apps["big"]},
		{name: "gateway wasm big", isolation: "software sandbox (wasm)", url: g.base + "/wasm/big", skip: g.apps["big-wasm"]},
		{name: "net/http/cgi process big", isolation: "process", url: g.big.cgi},
		{name: "plain net/http big", isolation: "none", url: g.big.plain},
	}
	if g.big.cgi == "" {
		t[2].skip = "static big not built"
	}
	return t
}

// loadTally accumulates one target's slices under load.
type loadTally struct {
	samples  []time.Duration
	errors   int
	firstErr string
	wall     time.Duration
	cpu      time.Duration
}

// loadSlice runs conc closed-loop clients against url for d. Every client
// sends its next request when the previous answer is in (no coordinated
// omission correction: this is a throughput measurement, and latencies
// are those of a closed system).
func loadSlice(ctx context.Context, client *http.Client, url string, conc int, d time.Duration, t *loadTally) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	cpu0, w0 := cpuTime(), time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var lat []time.Duration
			var errs int
			var first string
			for ctx.Err() == nil {
				s := time.Now()
				err := get(ctx, client, url)
				if ctx.Err() != nil {
					break // cut off by the end of the slice: not a sample
				}
				if err != nil {
					errs++
					if first == "" {
						first = err.Error()
					}
					continue
				}
				lat = append(lat, time.Since(s))
			}
			mu.Lock()
			t.samples = append(t.samples, lat...)
			t.errors += errs
			if t.firstErr == "" {
				t.firstErr = first
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.wall += time.Since(w0)
	t.cpu += cpuTime() - cpu0
}

func get(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

func newClient(conc int) *http.Client {
	return &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc, IdleConnTimeout: time.Minute}}
}

// runLoad alternates the targets in rounds at one concurrency.
func runLoad(ctx context.Context, ts []target, conc int, slice time.Duration, rounds int, log func(string, ...any)) []LoadRow {
	tallies := make([]loadTally, len(ts))
	clients := make([]*http.Client, len(ts))
	for i := range ts {
		clients[i] = newClient(conc)
	}
	log("load: %d targets, %d clients, %d rounds of %v", len(ts), conc, rounds, slice)
	for _, order := range Rounds(len(ts), rounds) {
		for _, i := range order {
			if ts[i].skip != "" || ctx.Err() != nil {
				continue
			}
			loadSlice(ctx, clients[i], ts[i].url, conc, slice, &tallies[i])
		}
	}
	rows := make([]LoadRow, 0, len(ts))
	for i, t := range ts {
		clients[i].CloseIdleConnections()
		lt := tallies[i]
		row := LoadRow{Name: t.name, Isolation: t.isolation, Concurrency: conc, Errors: lt.errors, FirstError: lt.firstErr}
		if t.skip != "" {
			row.FirstError = "skipped: " + t.skip
		}
		if n := len(lt.samples); n > 0 {
			row.Summary = Summarize(lt.samples)
			row.Requests = n
			row.RPS = float64(n) / lt.wall.Seconds()
			row.CPUPerReq = lt.cpu / time.Duration(n)
		}
		rows = append(rows, row)
	}
	return rows
}

// runConcurrency sweeps the number of clients.
func runConcurrency(ctx context.Context, ts []target, levels []int, slice time.Duration, log func(string, ...any)) []LoadRow {
	var rows []LoadRow
	for _, c := range levels {
		rows = append(rows, runLoad(ctx, ts, c, slice, 2, log)...)
	}
	return rows
}

// runTTFB fetches the 1 MiB response n times per target, one client,
// targets alternating request by request.
func runTTFB(ctx context.Context, ts []target, n int, log func(string, ...any)) []TTFBRow {
	log("time to first byte of 1 MiB: %d requests per target", n)
	client := newClient(1)
	first := make([][]time.Duration, len(ts))
	last := make([][]time.Duration, len(ts))
	skip := make([]string, len(ts))
	for i, t := range ts {
		skip[i] = t.skip
	}
	buf := make([]byte, 64<<10)
	for _, order := range Rounds(len(ts), n) {
		for _, i := range order {
			if skip[i] != "" || ctx.Err() != nil {
				continue
			}
			f, l, err := fetchTimed(ctx, client, ts[i].url, buf)
			if err != nil {
				skip[i] = "failed: " + err.Error()
				continue
			}
			first[i], last[i] = append(first[i], f), append(last[i], l)
		}
	}
	rows := make([]TTFBRow, len(ts))
	for i, t := range ts {
		rows[i] = TTFBRow{Name: t.name, Skip: skip[i], First: Summarize(first[i]), Last: Summarize(last[i])}
	}
	return rows
}

func fetchTimed(ctx context.Context, client *http.Client, url string, buf []byte) (first, last time.Duration, err error) {
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return 0, 0, err
	}
	s := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, 0, fmt.Errorf("status %s", resp.Status)
	}
	total := 0
	for {
		n, rerr := resp.Body.Read(buf)
		if n > 0 && total == 0 {
			first = time.Since(s)
		}
		total += n
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return 0, 0, rerr
		}
	}
	last = time.Since(s)
	if total != 1<<20 {
		return 0, 0, fmt.Errorf("got %d bytes, want 1 MiB", total)
	}
	return first, last, nil
}
