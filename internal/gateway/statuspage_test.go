package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/store"
)

// The status page is checked in headless Chromium (Debian's chromium
// package): what it rendered (the DOM after its script ran) and what it
// looks like (a screenshot, searched for the charts' colours). Without
// Chromium the tests are skipped, unless DUST_REQUIRE_BROWSER=1.
// DUST_SCREENSHOT_DIR=DIR keeps the screenshots there, to look at.

func browser(t *testing.T) string {
	t.Helper()
	b, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("DUST_REQUIRE_BROWSER") == "1" {
			t.Fatal("DUST_REQUIRE_BROWSER=1 but chromium is not installed")
		}
		t.Skip("chromium not installed (apt-get install chromium)")
	}
	return b
}

// page is the status page as Chromium rendered it.
type page struct {
	dom     string
	colours map[uint32]int // the screenshot's pixels by colour
}

// renderPage loads url in a w×h window, lets its script poll, and returns
// the DOM and a screenshot.
func renderPage(t *testing.T, chromium, url, name string, w, h int) page {
	t.Helper()
	dir := t.TempDir()
	shot := filepath.Join(dir, name+".png")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--hide-scrollbars", "--user-data-dir="+filepath.Join(dir, "profile"), "--virtual-time-budget=5000",
		fmt.Sprintf("--window-size=%d,%d", w, h), "--screenshot="+shot, "--dump-dom", url)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v", err)
	}
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if keep := os.Getenv("DUST_SCREENSHOT_DIR"); keep != "" {
		if b, err := os.ReadFile(shot); err == nil {
			os.WriteFile(filepath.Join(keep, name+".png"), b, 0o644)
		}
	}
	dom := string(out)
	if !strings.Contains(dom, `<p id="err"></p>`) {
		t.Fatalf("the page shows an error (token refused?):\n%s", dom)
	}
	return page{dom: dom, colours: countColours(img)}
}

// pixels counts the screenshot's pixels of colour hex ("#2e8b57").
func (p page) pixels(hex string) int {
	v, _ := strconv.ParseUint(strings.TrimPrefix(hex, "#"), 16, 32)
	return p.colours[uint32(v)]
}

// countColours counts img's pixels by colour (0xRRGGBB).
func countColours(img image.Image) map[uint32]int {
	out := map[uint32]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			out[r>>8<<16|g>>8<<8|bl>>8]++
		}
	}
	return out
}

// Chart colours, as status.html defines them.
const (
	colourRequests = "#2e8b57"
	colourErrors   = "#d64541"
	colourWarm     = "#3f7fd9"
	colourCold     = "#e8912d"
)

var (
	rowRe   = regexp.MustCompile(`<tr data-app="([^"]*)"[^>]*>`)
	sparkRe = regexp.MustCompile(`(?s)<svg[^>]*class="spark (requests|errors)"[^>]*>(.*?)</svg>`)
	barRe   = regexp.MustCompile(`<rect[^>]*class="bar"`)
	tagRe   = regexp.MustCompile(`<[^>]*>`)

	styleScriptRe = regexp.MustCompile(`(?s)<style>.*?</style>|<script>.*?</script>`)
)

// rows splits the apps table into its rows, by app name, in page order.
func (p page) rows() (names []string, rows map[string]string) {
	rows = map[string]string{}
	body := p.dom
	if i := strings.Index(body, `<table id="errors"`); i >= 0 {
		body = body[:i]
	}
	locs := rowRe.FindAllStringSubmatchIndex(body, -1)
	for i, l := range locs {
		end := len(body)
		if i+1 < len(locs) {
			end = locs[i+1][0]
		}
		name := unescape(body[l[2]:l[3]])
		names = append(names, name)
		rows[name] = body[l[0]:end]
	}
	return names, rows
}

// bars counts the drawn bars of a row's chart (requests or errors).
func bars(row, chart string) (int, bool) {
	for _, m := range sparkRe.FindAllStringSubmatch(row, -1) {
		if m[1] == chart {
			return len(barRe.FindAllString(m[2], -1)), true
		}
	}
	return 0, false
}

// text is a fragment's text, blanks collapsed, without the page's style
// and script.
func text(s string) string {
	s = styleScriptRe.ReplaceAllString(s, " ")
	return unescape(strings.Join(strings.Fields(tagRe.ReplaceAllString(s, " ")), " "))
}

func unescape(s string) string {
	return strings.NewReplacer("&lt;", "<", "&gt;", ">", "&quot;", `"`, "&amp;", "&").Replace(s)
}

func has(t *testing.T, where, s, want string) {
	t.Helper()
	if !strings.Contains(s, want) {
		t.Errorf("%s: want %q in %q", where, want, s)
	}
}

// statusDoc is GET /v1/status as the page reads it.
type statusDoc struct {
	Apps    []StatusApp   `json:"apps"`
	Errors  []recentError `json:"errors"`
	Buckets []string      `json:"buckets"`
	Live    int           `json:"live"`
}

// sortedNames is the order the page must show apps in: by request rate,
// then by name.
func sortedNames(apps []StatusApp) []string {
	s := slices.Clone(apps)
	sort.SliceStable(s, func(i, j int) bool {
		if s[i].Traffic.Rate != s[j].Traffic.Rate {
			return s[i].Traffic.Rate > s[j].Traffic.Rate
		}
		return s[i].Name < s[j].Name
	})
	var out []string
	for _, a := range s {
		out = append(out, a.Name)
	}
	return out
}

// checkRows checks what every app's row shows against the API's figures.
func checkRows(t *testing.T, p page, doc statusDoc) {
	t.Helper()
	names, rows := p.rows()
	if want := sortedNames(doc.Apps); !slices.Equal(names, want) {
		t.Errorf("rows in order %q, want %q (by rate, then name)", names, want)
	}
	for _, a := range doc.Apps {
		row, ok := rows[a.Name]
		if !ok {
			t.Errorf("no row for app %q", a.Name)
			continue
		}
		where := "row " + a.Name
		txt := text(row)
		has(t, where, txt, fmt.Sprintf("%d in 15 min", sum(a.Traffic.Requests)))
		dash := func(s string) string {
			if s == "" {
				return "-"
			}
			return s
		}
		has(t, where, txt, dash(a.P50)+" / "+dash(a.P99))
		has(t, where, txt, fmt.Sprintf("%d cold", a.Cold.Requests))
		has(t, where, txt, fmt.Sprintf("%d warm", a.Warm.Requests))
		has(t, where, txt, fmt.Sprintf("%d live · %d queued", a.Live, a.Queued))
		has(t, where, txt, fmt.Sprintf("pool %d/%d ready · restored %d · failed %d", a.Pool.Ready, a.Pool.Target, a.Pool.Restored, a.Pool.RestoreErrors))
		nonZero := func(xs []int64) (n int) {
			for _, x := range xs {
				if x > 0 {
					n++
				}
			}
			return n
		}
		for chart, series := range map[string][]int64{"requests": a.Traffic.Requests, "errors": a.Traffic.Errors} {
			got, ok := bars(row, chart)
			if !ok {
				t.Errorf("%s: no %s chart", where, chart)
			} else if got != nonZero(series) {
				t.Errorf("%s: %d bars in the %s chart, want %d (one per interval with any)", where, got, chart, nonZero(series))
			}
		}
	}
}

// TestStatusPageInBrowser serves traffic to a few apps of a real gateway
// and checks the status page against /v1/status: the apps in order of
// rate, then name; charts with a bar for every busy interval; the figures;
// the latency histogram with labelled axes; and the charts' colours on
// the screen.
func TestStatusPageInBrowser(t *testing.T) {
	chromium := browser(t)
	ts := start(t, t.TempDir())
	hello := example(t, "hello")
	ts.deploy(t, "hello", hello, store.Settings{Route: "/hello"})
	ts.deploy(t, "crash", example(t, "crash"), store.Settings{Route: "/crash", Isolation: "fresh"})
	ts.deploy(t, "zeta", hello, store.Settings{Route: "/zeta"})
	ts.deploy(t, "alpha", hello, store.Settings{Route: "/alpha"})
	hit := func(n int) {
		for range n {
			if resp, _ := get(t, "GET", ts.url+"/hello", nil); resp.StatusCode != 200 {
				t.Fatalf("hello: %s", resp.Status)
			}
		}
	}
	// The tests' pool floor is 0: the first requests make their machines
	// (cold); once the pool has grown to the traffic, requests find a
	// ready one (warm).
	hit(3)
	for deadline := time.Now().Add(10 * time.Second); ; {
		ts.mu.RLock()
		ready := ts.apps["hello"].pool.Stats().Ready
		ts.mu.RUnlock()
		if ready > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("hello's pool never had a ready machine")
		}
		time.Sleep(10 * time.Millisecond) // polling, not waiting for a race
	}
	hit(3)
	for _, id := range []string{"evil<img src=x onerror=alert(1)>", "plain-id-7"} {
		if resp, _ := get(t, "GET", ts.url+"/crash", nil, "X-Request-Id", id); resp.StatusCode != 502 {
			t.Fatalf("crash: %s", resp.Status)
		}
	}

	p := renderPage(t, chromium, ts.admin+"/#token="+ts.Token(), "status-4-apps", 1600, 1100)
	// The figures the page showed, as the API gives them now: no request
	// has come since, so every count is the same (rates drift with time;
	// the order cannot change, the rates being 6, 2, 0 and 0 requests).
	req, _ := http.NewRequest("GET", ts.admin+"/v1/status", nil)
	req.Header.Set("Authorization", "Bearer "+ts.Token())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var doc statusDoc
	err = json.NewDecoder(resp.Body).Decode(&doc)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]StatusApp{}
	for _, a := range doc.Apps {
		byName[a.Name] = a
	}
	if h, c := byName["hello"], byName["crash"]; sum(h.Traffic.Requests) != 6 || sum(c.Traffic.Errors) != 2 ||
		h.Cold.Requests+h.Warm.Requests != 6 || h.Cold.Requests == 0 || h.Warm.Requests == 0 || h.P50 == "" || h.P99 == "" {
		t.Fatalf("the API's figures: hello %+v, crash %+v", h.LiveFigures, c.LiveFigures)
	}
	checkRows(t, p, doc)
	names, _ := p.rows()
	if want := []string{"hello", "crash", "alpha", "zeta"}; !slices.Equal(names, want) {
		t.Errorf("rows %q, want %q", names, want)
	}

	// The busiest app's histogram is shown, with both axes labelled.
	has(t, "page", p.dom, "Latency histogram: hello v1 (6 requests")
	hist := p.dom[strings.Index(p.dom, `class="histogram"`):]
	hist = hist[:strings.Index(hist, "</svg>")]
	for _, want := range append(slices.Clone(doc.Buckets), "request latency", "requests", "warm machine", "cold machine") {
		has(t, "histogram", text(hist), want)
	}
	if n := len(barRe.FindAllString(hist, -1)); n == 0 {
		t.Error("the histogram has no bars")
	}

	// Recent errors, and no request id became markup.
	has(t, "errors", text(p.dom), "plain-id-7")
	has(t, "errors", text(p.dom), "the app failed")
	if strings.Contains(p.dom, "<img") {
		t.Error("a request id became markup")
	}

	// What a person sees: bars in the rate, error and histogram colours.
	// (The legends' colour keys hold a few hundred pixels of warm and cold.)
	for c, least := range map[string]int{colourRequests: 20, colourErrors: 20, colourWarm: 1000} {
		if n := p.pixels(c); n < least {
			t.Errorf("the screenshot has %d pixels of %s, want %d or more: a chart is missing", n, c, least)
		}
	}
}

// TestStatusPageScales renders the page for no apps and for 50 apps, from
// a status document made by the gateway's own types, with hostile strings
// in every field an app or a client could influence.
func TestStatusPageScales(t *testing.T) {
	chromium := browser(t)
	const token = "test-token-0123456789abcdef0123456789"
	var doc statusDoc
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(statusPage)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
			return
		}
		writeJSON(w, http.StatusOK, doc)
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	url := "http://" + l.Addr().String() + "/#token=" + token

	t.Run("no apps", func(t *testing.T) {
		doc = statusDoc{Apps: []StatusApp{}, Buckets: bucketLabels()}
		p := renderPage(t, chromium, url, "status-0-apps", 1400, 700)
		has(t, "page", text(p.dom), "No apps are deployed. Deploy one with dust deploy NAME IMAGE")
		if names, _ := p.rows(); len(names) != 0 {
			t.Errorf("rows for no apps: %q", names)
		}
		if !strings.Contains(p.dom, `<h2 id="histtitle" hidden="">`) {
			t.Error("a histogram is shown with no apps")
		}
	})

	t.Run("50 apps", func(t *testing.T) {
		doc = fiftyApps(time.Now())
		p := renderPage(t, chromium, url, "status-50-apps", 1600, 4700)
		checkRows(t, p, doc)
		if names, _ := p.rows(); len(names) != 50 {
			t.Errorf("%d rows, want 50", len(names))
		}
		for _, bad := range []string{"<img", "<script>alert", "<b>bold", "<i>id"} {
			if strings.Contains(p.dom, bad) {
				t.Errorf("%q became markup", bad)
			}
		}
		for _, want := range []string{"<img src=x onerror=alert(1)>", "/r\"><script>alert(2)</script>", "<b>bold</b>", "<i>id</i>"} {
			has(t, "page text", text(p.dom), want)
		}
		for c, least := range map[string]int{colourRequests: 1000, colourErrors: 100, colourWarm: 1000, colourCold: 1000} {
			if n := p.pixels(c); n < least {
				t.Errorf("the screenshot has %d pixels of %s, want %d or more", n, c, least)
			}
		}
	})
}

// fiftyApps is a status document for 50 apps with made-up traffic over
// the last 15 minutes, recorded through the gateway's own history and
// histograms. Some apps have the same rate, so the order by name counts.
func fiftyApps(now time.Time) statusDoc {
	m := newMetrics()
	doc := statusDoc{Buckets: bucketLabels(), Live: 7,
		Errors: []recentError{{Time: now, App: "<img src=x onerror=alert(1)>", RequestID: "<i>id</i>", Status: 502, Reason: "<b>bold</b>"}}}
	for i := range 50 {
		name := fmt.Sprintf("app-%02d", (i*7)%50)
		route := "/" + name
		if i == 3 {
			name, route = "<img src=x onerror=alert(1)>", `/r"><script>alert(2)</script>`
		}
		m.setAppInfo(name, "hvt", "restore")
		la := &liveApp{name: name, hist: newHistogram()}
		// App i gets i%10 requests in each of its busy intervals (so
		// rates repeat), one in nine of them a 502 on a cold machine.
		for k := 0; k < historyLen; k += 1 + i%4 {
			for j := 0; j < i%10; j++ {
				when := now.Add(-time.Duration(historyLen-1-k) * historyInterval)
				status, use := 200, warmMachine
				if (k+j)%9 == 0 {
					status, use = 502, coldMachine
				}
				m.history.record(name, status, use, when)
				la.hist.observe(time.Duration(50+j*300)*time.Microsecond, use)
			}
		}
		all := la.hist.snapshot()
		a := StatusApp{AppStatus: AppStatus{Name: name, Kind: "hvt", Version: 1 + i%3, Route: route, Isolation: "restore", EffectiveIsolation: "restore",
			Histogram: all, P50: quantile(all, 0.5), Requests: sum(all), Pool: machinePool{Ready: 1, Target: 1, Restored: int64(i), RestoreErrors: int64(i % 2)}},
			LiveFigures: m.liveFigures(la, all, now)}
		doc.Apps = append(doc.Apps, a)
	}
	return doc
}
