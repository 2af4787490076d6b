package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
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
	app                  string // the gateway app behind url, if any
}

// gw is an in-process gateway plus the HTTP baselines, all on loopback.
type gw struct {
	srv   *gateway.Server
	pub   *http.Server
	base  string
	dir   string
	stops []func()
	// The Go server example: its CGI twin as a process per request, and
	// itself as a long-lived process (issue 12's baselines).
	goCGI, goServerURL, goServerErr string
	hvtErr                          string
	apps                            map[string]string // deployed app -> why not, "" when deployed
	plain                           string
	cgi                             string
	big                             struct{ plain, cgi string }
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
		Detect:        detectImage,
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
	//
	// hello and big keep the default isolation (restore for hvt);
	// hello-fresh is the same image in fresh mode, a new VM per request.
	set := func(route, isolation string) store.Settings {
		return store.Settings{Route: route, QueueLen: 4096, QueueWait: 60 * time.Second, MaxConcurrency: 16, Isolation: isolation}
	}
	for _, d := range []struct {
		name, route, file string
		img               []byte
		hvt               bool
		isolation         string
	}{{"hello", "/hello", "hello.elf", a.helloELF, true, ""},
		{"hello-fresh", "/fresh/hello", "hello.elf", a.helloELF, true, machine.IsolationFresh},
		{"big", "/big", "big.elf", a.bigELF, true, ""},
		{"hello-wasm", "/wasm/hello", "hello.wasm", a.helloWasm, false, ""}, {"big-wasm", "/wasm/big", "big.wasm", a.bigWasm, false, ""}} {
		if why := a.why(d.file); why != "" {
			g.apps[d.name] = why
			continue
		}
		if d.hvt && g.hvtErr != "" {
			g.apps[d.name] = g.hvtErr
			continue
		}
		if _, err := srv.Deploy(d.name, bytes.NewReader(d.img), set(d.route, d.isolation)); err != nil {
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
	if why := a.why("goserver-go"); why != "" {
		g.apps["goserver"] = why
	} else if g.hvtErr != "" {
		g.apps["goserver"] = g.hvtErr
	} else {
		gs := set("/goserver", "")
		gs.Serve, gs.Memory = store.ServeHTTP, goLinuxMemory
		if _, err := srv.Deploy("goserver", bytes.NewReader(a.goServerELF), gs); err != nil {
			g.apps["goserver"] = "deploy: " + err.Error()
		}
	}
	if a.goServer != "" {
		// The same server program as a long-lived process: the ceiling,
		// no isolation between requests.
		url, stop, err := startServerProcess(a.goServer)
		if err != nil {
			g.goServerErr = err.Error()
		} else {
			g.goServerURL, g.stops = url, append(g.stops, stop)
		}
	}
	for _, s := range []struct {
		dst *string
		bin string
	}{{&g.cgi, a.staticHello}, {&g.big.cgi, a.staticBig}, {&g.goCGI, a.goCGI}} {
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
	log("gateway on %s with hello and big deployed (hvt and wasm), hello also in fresh mode", g.base)
	return g, nil
}

// status asks the gateway's admin API for its apps, as `dust status`
// would: the isolation each app's machines really get and its pool's
// counters.
func (g *gw) status() (map[string]gateway.AppStatus, error) {
	req := httptest.NewRequest("GET", "/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+g.srv.Token())
	rec := httptest.NewRecorder()
	g.srv.AdminHandler().ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return nil, fmt.Errorf("gateway status: %d %s", rec.Code, bytes.TrimSpace(rec.Body.Bytes()))
	}
	var body struct {
		Apps []gateway.AppStatus `json:"apps"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		return nil, fmt.Errorf("gateway status: %w", err)
	}
	m := make(map[string]gateway.AppStatus, len(body.Apps))
	for _, a := range body.Apps {
		m[a.Name] = a
	}
	return m, nil
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
		{name: "gateway hvt restore", isolation: "hardware VM (KVM)", url: g.base + "/hello", skip: g.apps["hello"], app: "hello"},
		{name: "gateway hvt fresh", isolation: "hardware VM (KVM)", url: g.base + "/fresh/hello", skip: g.apps["hello-fresh"], app: "hello-fresh"},
		{name: "gateway wasm hello", isolation: "software sandbox (wasm)", url: g.base + "/wasm/hello", skip: g.apps["hello-wasm"], app: "hello-wasm"},
		{name: "net/http/cgi process", isolation: "process", url: g.cgi},
		{name: "plain net/http", isolation: "none", url: g.plain},
		{name: "gateway hvt Go server app", isolation: "hardware VM (KVM)", url: g.base + "/goserver/", skip: g.apps["goserver"], app: "goserver"},
		{name: "net/http/cgi Go process", isolation: "process", url: g.goCGI},
		{name: "Go server process", isolation: "none", url: g.goServerURL, skip: g.goServerErr},
	}
	if g.cgi == "" {
		t[3].skip = "static hello not built"
	}
	if g.goCGI == "" {
		t[6].skip = "examples/linux/gocgi not built"
	}
	if g.goServerURL == "" && t[7].skip == "" {
		t[7].skip = "examples/linux/goserver not built"
	}
	return t
}

func (g *gw) bigTargets() []target {
	t := []target{
		{name: "gateway hvt big (restore)", isolation: "hardware VM (KVM)", url: g.base + "/big", skip: g.apps["big"], app: "big"},
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
	quiesce()
	t.cpu += cpuTime() - cpu0
}

// quiesce returns once the process has been nearly idle (under 5 % of a
// core) for one window, or after 2 s. The gateway leaves pool refills,
// restores and VM destructions to background goroutines the bench cannot
// see into; their CPU belongs to the slice that caused them, not to the
// next target's. The wait is outside the slice's wall time, so req/s is
// over the time clients were sending.
func quiesce() {
	const window = 20 * time.Millisecond
	t := time.NewTicker(window)
	defer t.Stop()
	deadline := time.Now().Add(2 * time.Second)
	prev := cpuTime()
	for time.Now().Before(deadline) {
		<-t.C
		now := cpuTime()
		if now-prev < window/20 {
			return
		}
		prev = now
	}
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

// runLoad alternates the targets in rounds at one concurrency. status,
// when not nil, reads the gateway's apps before and after, so that each
// gateway row says how its app's pool served it.
func runLoad(ctx context.Context, ts []target, conc int, slice time.Duration, rounds int, status statusFunc, log func(string, ...any)) []LoadRow {
	tallies := make([]loadTally, len(ts))
	clients := make([]*http.Client, len(ts))
	for i := range ts {
		clients[i] = newClient(conc)
	}
	before := readStatus(status, log)
	log("load: %d targets, %d clients, %d rounds of %v", len(ts), conc, rounds, slice)
	for _, order := range Rounds(len(ts), rounds) {
		for _, i := range order {
			if ts[i].skip != "" || ctx.Err() != nil {
				continue
			}
			loadSlice(ctx, clients[i], ts[i].url, conc, slice, &tallies[i])
		}
	}
	after := readStatus(status, log)
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
		if a, ok := after[t.app]; ok && t.app != "" {
			b := before[t.app]
			row.Pool = &LoadPool{Mode: a.EffectiveIsolation, Hits: a.Pool.Hits - b.Pool.Hits, Misses: a.Pool.Misses - b.Pool.Misses,
				Restored: a.Pool.Restored - b.Pool.Restored, RestoreErrors: a.Pool.RestoreErrors - b.Pool.RestoreErrors}
		}
		rows = append(rows, row)
	}
	return rows
}

type statusFunc func() (map[string]gateway.AppStatus, error)

func readStatus(status statusFunc, log func(string, ...any)) map[string]gateway.AppStatus {
	if status == nil {
		return nil
	}
	m, err := status()
	if err != nil {
		log("%v", err)
	}
	return m
}

// runConcurrency sweeps the number of clients.
func runConcurrency(ctx context.Context, ts []target, levels []int, slice time.Duration, status statusFunc, log func(string, ...any)) []LoadRow {
	var rows []LoadRow
	for _, c := range levels {
		rows = append(rows, runLoad(ctx, ts, c, slice, 2, status, log)...)
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

// detectImage tells the bench gateways' images apart by their first bytes.
func detectImage(b []byte) (string, error) {
	switch {
	case bytes.HasPrefix(b, []byte("\x7fELF")):
		return "hvt", nil
	case bytes.HasPrefix(b, []byte("\x00asm")):
		return "wasm", nil
	}
	return "", errors.New("unknown image")
}
