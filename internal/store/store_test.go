package store

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openT(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func putT(t *testing.T, s *Store, content string) string {
	t.Helper()
	d, _, err := s.PutImage(strings.NewReader(content), 1<<20)
	if err != nil {
		t.Fatalf("PutImage: %v", err)
	}
	return d
}

func deployT(t *testing.T, s *Store, name, digest string, set Settings) App {
	t.Helper()
	a, err := s.Deploy(name, KindWasm, digest, set)
	if err != nil {
		t.Fatalf("Deploy(%s): %v", name, err)
	}
	return a
}

func numbers(a App) []int {
	var n []int
	for _, v := range a.History {
		n = append(n, v.Number)
	}
	return n
}

func TestOpenCreatesLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	openT(t, dir)
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode %v, want 0700", fi.Mode().Perm())
	}
	for _, p := range []string{"dust.db", "images/sha256"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("missing %s: %v", p, err)
		}
	}
}

func TestDeployGetListRollbackDelete(t *testing.T) {
	s := openT(t, t.TempDir())
	d1, d2, d3 := putT(t, s, "one"), putT(t, s, "two"), putT(t, s, "three")

	a := deployT(t, s, "hello", d1, Settings{Route: "/hello/", Host: "Example.com", Env: []string{"A=1"}})
	if a.Current.Number != 1 || a.Current.Digest != d1 || a.Current.Size != 3 || a.Current.Kind != KindWasm {
		t.Errorf("first deploy: current = %+v", a.Current)
	}
	if a.Current.Settings.Route != "/hello" || a.Current.Settings.Host != "example.com" {
		t.Errorf("settings not normalized: %+v", a.Current.Settings)
	}
	if a.Current.CreatedAt.IsZero() {
		t.Error("first deploy: no CreatedAt")
	}
	deployT(t, s, "hello", d2, Settings{Route: "/hello"})
	a = deployT(t, s, "hello", d3, Settings{Route: "/hello", MaxConcurrency: 3})
	if a.Current.Number != 3 || !reflect.DeepEqual(numbers(a), []int{1, 2, 3}) {
		t.Errorf("after 3 deploys: current %d, history %v", a.Current.Number, numbers(a))
	}
	got, err := s.Get("hello")
	if err != nil || !reflect.DeepEqual(got, a) {
		t.Errorf("Get = %+v, %v; want %+v", got, err, a)
	}

	deployT(t, s, "api", d1, Settings{Route: "/api"})
	deployT(t, s, "zz", d1, Settings{Route: "/zz"})
	deployT(t, s, "0", d1, Settings{Route: "/0"})
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range list {
		names = append(names, a.Name)
	}
	if !reflect.DeepEqual(names, []string{"0", "api", "hello", "zz"}) {
		t.Errorf("List names = %v", names)
	}

	a, err = s.Rollback("hello")
	if err != nil {
		t.Fatal(err)
	}
	if a.Current.Number != 2 || a.Current.Digest != d2 || !reflect.DeepEqual(numbers(a), []int{1, 2, 3}) {
		t.Errorf("rollback: current %d %s, history %v; want 2 %s [1 2 3]", a.Current.Number, a.Current.Digest, numbers(a), d2)
	}
	// A deploy after a rollback numbers after everything ever deployed;
	// rollbacks then walk the history backwards, each one to the version
	// RollbackTarget announced (the gateway prepares that one first).
	a = deployT(t, s, "hello", d3, Settings{Route: "/hello"})
	if a.Current.Number != 4 || !reflect.DeepEqual(numbers(a), []int{1, 2, 3, 4}) {
		t.Errorf("deploy after rollback: number %d, history %v; want 4 [1 2 3 4]", a.Current.Number, numbers(a))
	}
	for _, want := range []int{3, 2, 1} {
		target, err := a.RollbackTarget()
		if err != nil || target.Number != want {
			t.Fatalf("RollbackTarget = %d, %v; want %d", target.Number, err, want)
		}
		a, err = s.Rollback("hello")
		if err != nil || !reflect.DeepEqual(a.Current, target) {
			t.Fatalf("rollback: current %+v, %v; want %+v", a.Current, err, target)
		}
	}
	if _, err := a.RollbackTarget(); !errors.Is(err, ErrInvalid) {
		t.Errorf("RollbackTarget of the first version: %v, want ErrInvalid", err)
	}
	if a.Current.Settings.Env[0] != "A=1" {
		t.Errorf("rolled back to version 1 but settings are %+v", a.Current.Settings)
	}
	if _, err := s.Rollback("hello"); !errors.Is(err, ErrInvalid) {
		t.Errorf("rollback past the first version: %v, want ErrInvalid", err)
	}
	if _, err := s.Rollback("nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("rollback of a missing app: %v, want ErrNotFound", err)
	}

	if err := s.Delete("hello"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get("hello"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: %v, want ErrNotFound", err)
	}
	if err := s.Delete("hello"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
	// A new app under an old name must not reuse the old version numbers:
	// anything keyed by (name, number) would confuse the two.
	a = deployT(t, s, "hello", d1, Settings{Route: "/hello"})
	if a.Current.Number != 5 || len(a.History) != 1 {
		t.Errorf("re-created app: number %d, history %v; want 5 [5]", a.Current.Number, numbers(a))
	}
}

func TestDeployRefuses(t *testing.T) {
	s := openT(t, t.TempDir())
	d := putT(t, s, "img")
	missing := "sha256:" + strings.Repeat("0", 64)
	for _, tc := range []struct {
		desc, name, kind, digest string
		set                      Settings
		want                     error
	}{
		{"bad name", "Bad", KindHVT, d, Settings{Route: "/"}, ErrInvalid},
		{"bad kind", "a", "elf", d, Settings{Route: "/"}, ErrInvalid},
		{"bad digest", "a", KindHVT, "sha256:zz", Settings{Route: "/"}, ErrInvalid},
		{"traversal digest", "a", KindHVT, "../dust.db", Settings{Route: "/"}, ErrInvalid},
		{"unknown digest", "a", KindHVT, missing, Settings{Route: "/"}, ErrNotFound},
		{"bad route", "a", KindHVT, d, Settings{Route: "/a/../b"}, ErrInvalid},
		{"bad env", "a", KindHVT, d, Settings{Route: "/", Env: []string{"A"}}, ErrInvalid},
	} {
		if _, err := s.Deploy(tc.name, tc.kind, tc.digest, tc.set); !errors.Is(err, tc.want) {
			t.Errorf("%s: Deploy = %v, want %v", tc.desc, err, tc.want)
		}
	}
	if list, err := s.List(); err != nil || len(list) != 0 {
		t.Errorf("refused deploys left apps behind: %v, %v", list, err)
	}
}

func TestRouteConflicts(t *testing.T) {
	s := openT(t, t.TempDir())
	d := putT(t, s, "img")
	deployT(t, s, "a", d, Settings{Route: "/x"})
	deployT(t, s, "b", d, Settings{Route: "/x", Host: "b.example"})

	_, err := s.Deploy("c", KindHVT, d, Settings{Route: "/x/"})
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), `"a"`) {
		t.Errorf("same route, any host: %v, want ErrConflict naming app a", err)
	}
	if _, err := s.Deploy("c", KindHVT, d, Settings{Route: "/x", Host: "B.EXAMPLE"}); !errors.Is(err, ErrConflict) {
		t.Errorf("same route and host: %v, want ErrConflict", err)
	}
	if _, err := s.Get("c"); !errors.Is(err, ErrNotFound) {
		t.Errorf("a refused deploy created the app: %v", err)
	}
	// An app may keep its own route, and others may use it once it moves.
	deployT(t, s, "a", d, Settings{Route: "/x"})
	deployT(t, s, "a", d, Settings{Route: "/y"})
	deployT(t, s, "c", d, Settings{Route: "/x"})
	// a's previous version is on /x, now c's: rolling back would make two
	// apps answer the same requests.
	if _, err := s.Rollback("a"); !errors.Is(err, ErrConflict) {
		t.Errorf("rollback onto a taken route: %v, want ErrConflict", err)
	}
	if a, err := s.Get("a"); err != nil || a.Current.Settings.Route != "/y" {
		t.Errorf("refused rollback changed the app: %+v, %v", a.Current, err)
	}
}

func TestRestartKeepsEverything(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	d1, d2 := putT(t, s, "v1"), putT(t, s, "v2")
	set := Settings{
		Route: "/a", Host: "h.example", Memory: 32 << 20, Timeout: 5 * time.Second, MaxConcurrency: 2,
		QueueLen: -1, QueueWait: time.Millisecond, MaxBody: 1 << 20, PassAuthorization: true, Env: []string{"K=V"},
		Isolation: "fresh",
	}
	deployT(t, s, "a", d1, set)
	deployT(t, s, "a", d2, set)
	deployT(t, s, "b", d2, Settings{Route: "/"})
	if _, err := s.Rollback("a"); err != nil {
		t.Fatal(err)
	}
	before, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openT(t, dir)
	after, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Errorf("after reopen:\n got %+v\nwant %+v", after, before)
	}
	if b, err := s.ReadImage(d2, 100); err != nil || string(b) != "v2" {
		t.Errorf("image after reopen: %q, %v", b, err)
	}
	// Numbers continue where they were.
	if a := deployT(t, s, "a", d1, set); a.Current.Number != 3 {
		t.Errorf("deploy after reopen: number %d, want 3", a.Current.Number)
	}
}

// The isolation mode is kept per version, and a database written before
// the field existed still opens, its apps in the default mode.
func TestIsolationRecords(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := putT(t, s, "img")
	deployT(t, s, "a", d, Settings{Route: "/a", Isolation: "Fresh"})
	a := deployT(t, s, "a", d, Settings{Route: "/a"})
	if got := a.History[0].Settings.Isolation; got != "fresh" {
		t.Errorf("version 1 isolation %q, want fresh (normalized)", got)
	}
	if got := a.Current.Settings; got.Isolation != "" || got.IsolationMode() != "restore" {
		t.Errorf("version 2 isolation %q (mode %q), want \"\" (restore)", got.Isolation, got.IsolationMode())
	}
	if a, err := s.Rollback("a"); err != nil || a.Current.Settings.Isolation != "fresh" {
		t.Errorf("rollback: isolation %q, %v; want fresh", a.Current.Settings.Isolation, err)
	}
	if _, err := s.Deploy("a", KindWasm, d, Settings{Route: "/a", Isolation: "sometimes"}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "isolation") {
		t.Errorf("deploy with isolation=sometimes: %v, want ErrInvalid naming isolation", err)
	}

	// A record as the previous release wrote it: no isolation key.
	old := `{"name":"old","current":1,"history":[{"number":1,"kind":"hvt","digest":"` + d +
		`","size":3,"settings":{"route":"/old","timeout_ns":1000000000},"created_at":"2024-01-02T03:04:05Z"}]}`
	err = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketApps).Put([]byte("old"), []byte(old))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	got, err := s.Get("old")
	if err != nil {
		t.Fatalf("Get of an old record: %v", err)
	}
	if set := got.Current.Settings; set.Isolation != "" || set.IsolationMode() != "restore" || set.Timeout != time.Second || set.Route != "/old" {
		t.Errorf("old record decoded to %+v, want route /old, timeout 1s, default isolation", set)
	}
	// And the field is written only when set, so the on-disk form of a
	// default deploy is unchanged.
	err = s.db.View(func(tx *bolt.Tx) error {
		rec := string(tx.Bucket(bucketApps).Get([]byte("a")))
		if strings.Count(rec, `"isolation":"fresh"`) != 1 || strings.Count(rec, `"isolation"`) != 1 {
			t.Errorf("record of app a: %s; want one isolation key, on version 1", rec)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestHistoryLimit(t *testing.T) {
	s := openT(t, t.TempDir())
	var digests []string
	for i := range HistoryLimit + 5 {
		d := putT(t, s, fmt.Sprintf("image %d", i))
		digests = append(digests, d)
		deployT(t, s, "a", d, Settings{Route: "/"})
	}
	a, err := s.Get("a")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.History) != HistoryLimit || a.History[0].Number != 6 || a.Current.Number != HistoryLimit+5 {
		t.Errorf("history %v, current %d", numbers(a), a.Current.Number)
	}
	removed, err := s.GCOlderThan(0)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(sorted(removed), sorted(digests[:5])) {
		t.Errorf("GC removed %v, want the images of versions 1-5 %v", removed, digests[:5])
	}
	for _, d := range digests[5:] {
		if _, err := s.StatImage(d); err != nil {
			t.Errorf("GC removed a kept version's image: %v", err)
		}
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestSecondOpenFailsFast(t *testing.T) {
	dir := t.TempDir()
	openT(t, dir)
	start := time.Now()
	s2, err := Open(dir)
	if err == nil {
		s2.Close()
		t.Fatal("second Open of the same directory succeeded")
	}
	if !errors.Is(err, ErrLocked) {
		t.Errorf("second Open: %v, want ErrLocked", err)
	}
	if el := time.Since(start); el > LockTimeout+2*time.Second {
		t.Errorf("second Open took %v", el)
	}
}

func TestOpenRemovesInterruptedUploads(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := putT(t, s, "kept")
	s.Close()
	images := filepath.Join(dir, "images", "sha256")
	tmp := filepath.Join(images, tempPrefix+"12345")
	if err := os.WriteFile(tmp, []byte("half an ima"), 0o600); err != nil {
		t.Fatal(err)
	}
	s = openT(t, dir)
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("leftover temp file survived Open: %v", err)
	}
	if b, err := s.ReadImage(d, 100); err != nil || string(b) != "kept" {
		t.Errorf("complete image after Open: %q, %v", b, err)
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(filepath.Join(dir, "dust.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte("99")) })
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if s, err := Open(dir); !errors.Is(err, ErrSchema) {
		if err == nil {
			s.Close()
		}
		t.Errorf("Open of a schema 99 store: %v, want ErrSchema", err)
	}
}

// TestConcurrentDeploysAndGC runs deploys, reads and GC at once; under
// -race it also checks the locking. Every deploy's image must survive GC.
func TestConcurrentDeploysAndGC(t *testing.T) {
	s := openT(t, t.TempDir())
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 4 {
		wg.Go(func() {
			name := fmt.Sprintf("app%d", i)
			for j := range 10 {
				d, _, err := s.PutImage(strings.NewReader(fmt.Sprintf("%s-%d", name, j)), 100)
				if err == nil {
					_, err = s.Deploy(name, KindHVT, d, Settings{Route: "/" + name})
				}
				if err == nil {
					_, err = s.Get(name)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Go(func() {
		for range 20 {
			if _, err := s.GC(); err != nil {
				errs <- err
				return
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	list, err := s.List()
	if err != nil || len(list) != 4 {
		t.Fatalf("List: %d apps, %v", len(list), err)
	}
	for _, a := range list {
		for _, v := range a.History {
			if _, err := s.ReadImage(v.Digest, 100); err != nil {
				t.Errorf("%s v%d: %v", a.Name, v.Number, err)
			}
		}
	}
}

// TestKill9DuringDeploys kills a process that uploads and deploys in a loop
// and checks that every deploy it acknowledged survived, that the store
// opens consistent, and that no image is half-written.
func TestKill9DuringDeploys(t *testing.T) {
	if os.Getenv("DUST_STORE_CHILD") != "" {
		crashChild(os.Getenv("DUST_STORE_CHILD"))
		return
	}
	if testing.Short() {
		t.Skip("spawns a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestKill9DuringDeploys$")
	cmd.Env = append(os.Environ(), "DUST_STORE_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acked := 0
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		n, ok := strings.CutPrefix(sc.Text(), "deployed ")
		if !ok {
			continue
		}
		acked, _ = strconv.Atoi(n)
		if acked >= 40 {
			break
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if acked < 40 {
		t.Fatalf("child acknowledged only %d deploys before exiting", acked)
	}

	s := openT(t, dir)
	a, err := s.Get("crash")
	if err != nil {
		t.Fatal(err)
	}
	if a.Current.Number < acked {
		t.Errorf("acknowledged deploy %d lost: current is %d", acked, a.Current.Number)
	}
	for _, v := range a.History {
		if _, err := s.ReadImage(v.Digest, 1<<20); err != nil {
			t.Errorf("version %d: %v", v.Number, err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(dir, "images", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !isHexDigest(e.Name()) {
			t.Errorf("unexpected file in images after crash and Open: %s", e.Name())
			continue
		}
		// Unreferenced images (uploaded, not yet deployed) must be whole too.
		if _, err := s.ReadImage(digestPrefix+e.Name(), 1<<20); err != nil {
			t.Errorf("image %s: %v", e.Name(), err)
		}
	}
}

func crashChild(dir string) {
	s, err := Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for i := 0; ; i++ {
		// Images of some size, so the kill can land mid-write.
		img := strings.Repeat(fmt.Sprintf("%08d", i), 8<<10)
		d, _, err := s.PutImage(strings.NewReader(img), 1<<20)
		if err == nil {
			_, err = s.Deploy("crash", KindHVT, d, Settings{Route: "/"})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Printf("deployed %d\n", i+1)
	}
}
