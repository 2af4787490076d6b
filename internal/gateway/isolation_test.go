package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
	"github.com/dust-run/dust/internal/wasm"
)

// startKinds runs a gateway with both kinds and the pool floor dust serve
// uses (1), so that restore mode has a pool to restore machines into.
func startKinds(t *testing.T) *testServer {
	t.Helper()
	kvmtest.Require(t)
	s, err := New(Config{DataDir: t.TempDir(),
		Kinds: map[string]machine.Kind{"hvt": hvt.Kind{}, "wasm": wasm.Kind{Options: wasm.Options{NoDiskCache: true}}},
		Detect: func(b []byte) (string, error) {
			if bytes.HasPrefix(b, []byte("\x00asm")) {
				return "wasm", nil
			}
			return detect(b)
		},
		Logger: testLogger(), PoolFloor: 1})
	if err != nil {
		t.Fatal(err)
	}
	pub, adm := s.HTTPServers("", "")
	ts := &testServer{Server: s, pub: pub, adm: adm}
	lp, la := listen(t), listen(t)
	go pub.Serve(Listener(lp))
	go adm.Serve(la)
	ts.url, ts.admin = "http://"+lp.Addr().String(), "http://"+la.Addr().String()
	t.Cleanup(func() { ts.stop() })
	return ts
}

func (ts *testServer) auth() []string { return []string{"Authorization", "Bearer " + ts.Token()} }

// appStatus reads app name's live status through the admin API.
func (ts *testServer) appStatus(t *testing.T, name string) AppStatus {
	t.Helper()
	resp, body := get(t, "GET", ts.admin+"/v1/apps/"+name, nil, ts.auth()...)
	if resp.StatusCode != 200 {
		t.Fatalf("GET /v1/apps/%s: %d %s", name, resp.StatusCode, body)
	}
	var out struct {
		App    store.App
		Status *AppStatus
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil || out.Status == nil {
		t.Fatalf("GET /v1/apps/%s: %v %s", name, err, body)
	}
	return *out.Status
}

// metric returns the value of the series named exactly by series (name and
// labels as the exposition format prints them), and whether it exists.
func (ts *testServer) metric(t *testing.T, series string) (float64, bool) {
	t.Helper()
	_, body := get(t, "GET", ts.admin+"/metrics", nil, ts.auth()...)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatalf("metric %s: %v", series, err)
	}
	return v, true
}

// eventually polls cond for up to 5 s: pool counters reach the metrics on
// the 100 ms sizing tick, and restores run on background workers.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("after 5s: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Deploys choose the isolation mode; restore mode reuses machines (and
// they still show no state of earlier requests), fresh mode never does,
// and both are visible in the status API and the metrics.
func TestIsolationModes(t *testing.T) {
	ts := startKinds(t)
	img := example(t, "counter")
	for _, v := range []string{"sometimes", "restore,fresh"} {
		resp, body := get(t, "PUT", ts.admin+"/v1/apps/bad?route=/bad&isolation="+v, bytes.NewReader(img), ts.auth()...)
		if resp.StatusCode != 400 || !strings.Contains(body, "isolation") || !strings.Contains(body, "restore or fresh") {
			t.Errorf("deploy with isolation=%s: %d %s; want 400 naming isolation and its values", v, resp.StatusCode, body)
		}
	}
	for _, d := range []struct{ name, query string }{
		{"fresh", "isolation=fresh"}, {"restore", "isolation=Restore"}, {"dflt", ""},
	} {
		resp, body := get(t, "PUT", ts.admin+"/v1/apps/"+d.name+"?route=/"+d.name+"&"+d.query, bytes.NewReader(img), ts.auth()...)
		if resp.StatusCode != 200 {
			t.Fatalf("deploy %s: %d %s", d.name, resp.StatusCode, body)
		}
	}
	want := map[string]string{"fresh": "fresh", "restore": "restore", "dflt": "restore"}
	const n = 20
	for name, mode := range want {
		for i := range n {
			// A restored machine that kept anything of its last request
			// would count past 1.
			resp, body := get(t, "GET", ts.url+"/"+name, nil)
			if resp.StatusCode != 200 || body != "counter=1 heap=1\n" {
				t.Fatalf("%s request %d: %d %q", name, i, resp.StatusCode, body)
			}
		}
		st := ts.appStatus(t, name)
		if st.Isolation != mode || st.EffectiveIsolation != mode {
			t.Errorf("%s: status isolation %q, effective %q; want %q", name, st.Isolation, st.EffectiveIsolation, mode)
		}
		info := fmt.Sprintf(`dust_app_info{app=%q,isolation=%q,kind="hvt"}`, name, mode)
		if v, ok := ts.metric(t, info); !ok || v != 1 {
			t.Errorf("%s = %v (present %v), want 1", info, v, ok)
		}
	}
	for _, name := range []string{"restore", "dflt"} {
		eventually(t, name+": no machine restored in 20 sequential requests", func() bool {
			return ts.appStatus(t, name).Pool.Restored > 0
		})
		series := fmt.Sprintf(`dust_machines_restored_total{app=%q}`, name)
		eventually(t, series+" did not grow", func() bool {
			v, _ := ts.metric(t, series)
			return v > 0
		})
		st := ts.appStatus(t, name)
		t.Logf("%s after %d sequential requests: pool %+v", name, n, st.Pool)
		if st.Pool.RestoreErrors != 0 {
			t.Errorf("%s: %d restore errors", name, st.Pool.RestoreErrors)
		}
	}
	// Fresh: every request got a new machine, none was ever restored.
	if st := ts.appStatus(t, "fresh"); st.Pool.Restored != 0 || st.Pool.RestoreErrors != 0 || st.Pool.Hits+st.Pool.Misses != n {
		t.Errorf("fresh: pool %+v; want no restores and %d machines handed out", st.Pool, n)
	}
	eventually(t, "fresh's restore counters never appeared", func() bool {
		_, ok := ts.metric(t, `dust_restore_errors_total{app="fresh"}`)
		return ok
	})
	for _, series := range []string{`dust_machines_restored_total{app="fresh"}`, `dust_restore_errors_total{app="fresh"}`} {
		if v, _ := ts.metric(t, series); v != 0 {
			t.Errorf("%s = %v, want 0", series, v)
		}
	}

	// Redeploying in the other mode replaces the info series, and the
	// restore counter carries on from the old version's count.
	before, _ := ts.metric(t, `dust_machines_restored_total{app="restore"}`)
	resp, body := get(t, "PUT", ts.admin+"/v1/apps/restore?route=/restore&isolation=fresh", bytes.NewReader(img), ts.auth()...)
	if resp.StatusCode != 200 {
		t.Fatalf("redeploy: %d %s", resp.StatusCode, body)
	}
	if _, ok := ts.metric(t, `dust_app_info{app="restore",isolation="restore",kind="hvt"}`); ok {
		t.Error("the old mode's info series survived the redeploy")
	}
	if v, ok := ts.metric(t, `dust_app_info{app="restore",isolation="fresh",kind="hvt"}`); !ok || v != 1 {
		t.Errorf("info after redeploy in fresh mode: %v %v", v, ok)
	}
	if after, _ := ts.metric(t, `dust_machines_restored_total{app="restore"}`); after < before {
		t.Errorf("restored counter went back from %v to %v on redeploy", before, after)
	}

	// A removed app's series go away with it.
	if resp, body := get(t, "DELETE", ts.admin+"/v1/apps/dflt", nil, ts.auth()...); resp.StatusCode != 200 {
		t.Fatalf("rm: %d %s", resp.StatusCode, body)
	}
	eventually(t, "a removed app's series stayed", func() bool {
		_, body := get(t, "GET", ts.admin+"/metrics", nil, ts.auth()...)
		return !strings.Contains(body, `app="dflt"`)
	})
	if _, ok := ts.metric(t, `dust_app_info{app="fresh",isolation="fresh",kind="hvt"}`); !ok {
		t.Error("removing one app dropped another's series")
	}
}

// The wasm kind makes an instance per request: restore mode, asked or by
// default, is reported as running fresh, and nothing is ever restored.
func TestIsolationWasmRunsFresh(t *testing.T) {
	ts := startKinds(t)
	img := wasmExample(t, "counter")
	ts.deploy(t, "w", img, store.Settings{Route: "/w", Isolation: machine.IsolationRestore})
	for i := range 5 {
		if resp, body := get(t, "GET", ts.url+"/w", nil); resp.StatusCode != 200 || body != "counter=1 heap=1\n" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	st := ts.appStatus(t, "w")
	if st.Isolation != "restore" || st.EffectiveIsolation != "fresh" || st.Pool.Restored != 0 {
		t.Errorf("wasm status: isolation %q, effective %q, restored %d; want restore, fresh, 0", st.Isolation, st.EffectiveIsolation, st.Pool.Restored)
	}
	if v, ok := ts.metric(t, `dust_app_info{app="w",isolation="fresh",kind="wasm"}`); !ok || v != 1 {
		t.Errorf("wasm info series: %v %v", v, ok)
	}
}

// effectiveIsolation decides by kind; this keeps that table true to what
// the kinds' machines implement.
func TestEffectiveIsolationMatchesKinds(t *testing.T) {
	kvmtest.Require(t)
	images := map[string]struct {
		kind machine.Kind
		img  []byte
	}{
		store.KindHVT:  {hvt.Kind{}, example(t, "hello")},
		store.KindWasm: {wasm.Kind{Options: wasm.Options{NoDiskCache: true}}, wasmExample(t, "hello")},
	}
	for name, k := range images {
		img, err := k.kind.Prepare(k.img, machine.Limits{})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		m, err := img.NewMachine()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, resets := m.(machine.Resetter)
		m.Close()
		img.Close()
		if got := effectiveIsolation(name, machine.IsolationRestore) == machine.IsolationRestore; got != resets {
			t.Errorf("%s: effectiveIsolation says restore=%v, its machines implement Resetter: %v", name, got, resets)
		}
		if got := effectiveIsolation(name, machine.IsolationFresh); got != machine.IsolationFresh {
			t.Errorf("%s in fresh mode: effective %q", name, got)
		}
	}
}

// Removing an app gives back its wasm compiled code too, not only its
// image: the kind's per-image cache directory goes with the last version
// that used it.
func TestRemovedAppPrunesCompiledCode(t *testing.T) {
	kvmtest.Require(t)
	cache := t.TempDir()
	s, err := New(Config{DataDir: t.TempDir(),
		Kinds:  map[string]machine.Kind{"wasm": wasm.Kind{Options: wasm.Options{CacheDir: cache}}},
		Detect: func([]byte) (string, error) { return "wasm", nil },
		Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	img := wasmExample(t, "hello")
	if _, err := s.Deploy("a", bytes.NewReader(img), store.Settings{Route: "/a"}); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(cache, "sha256-"+strings.TrimPrefix(wasm.ImageDigest(img), "sha256:"))
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("no compiled code for the deployed image: %v", err)
	}
	if err := s.Remove("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("compiled code of a removed app still on disk: %v", err)
	}
}
