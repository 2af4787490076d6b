package hvt

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
	"github.com/dust-run/dust/internal/machine"
)

// The Linux examples (examples/linux/linux.mk), built the way `make
// examples` builds them, into a temporary directory once per test binary.

var (
	linuxExamplesOnce sync.Once
	linuxExamplesDir  string
	linuxExamplesLog  string
	linuxExamplesErr  error
)

// linuxExample returns examples/linux/REL as linux.mk built it, skipping
// when its toolchain is missing (linux.mk says which package).
func linuxExample(t testing.TB, rel string) []byte {
	t.Helper()
	linuxExamplesOnce.Do(func() {
		d, err := os.MkdirTemp("", "dust-linux-examples-")
		if err != nil {
			linuxExamplesErr = err
			return
		}
		linuxExamplesDir = d
		root, _ := filepath.Abs("../..")
		out, err := exec.Command("make", "-s", "-f", filepath.Join(root, "examples/linux/linux.mk"), "OUT="+d).CombinedOutput()
		linuxExamplesLog = string(out)
		if err != nil {
			linuxExamplesErr = fmt.Errorf("make -f examples/linux/linux.mk: %w\n%s", err, out)
		}
	})
	if linuxExamplesErr != nil {
		t.Fatal(linuxExamplesErr)
	}
	b, err := os.ReadFile(filepath.Join(linuxExamplesDir, rel))
	if err != nil {
		for _, l := range strings.Split(linuxExamplesLog, "\n") {
			if strings.Contains(l, rel) {
				t.Skip(l)
			}
		}
		t.Fatalf("%s not built: %v\n%s", rel, err, linuxExamplesLog)
	}
	return b
}

// exampleFiles is an example's app directory as the image's read-only files.
func exampleFiles(name string) fs.FS {
	return os.DirFS(filepath.Join("../../examples/linux", name, "app"))
}

func prepareExample(t testing.TB, rel string, files fs.FS, l machine.Limits) *Image {
	t.Helper()
	kvmtest.Require(t)
	im, err := PrepareWith(linuxExample(t, rel), l, Options{Files: files})
	if err != nil {
		t.Fatalf("prepare %s: %v", rel, err)
	}
	t.Cleanup(func() { im.Close() })
	return im
}

// cgiFields splits a text/plain key=value answer.
func cgiFields(t testing.TB, body string) map[string]string {
	t.Helper()
	f := map[string]string{}
	for _, l := range strings.Split(strings.TrimSuffix(body, "\n"), "\n") {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			t.Fatalf("line %q is not key=value in %q", l, body)
		}
		f[k] = v
	}
	return f
}

// linuxRequests serves each request on a fresh machine, then all of them
// in turn on one machine restored between requests, and hands every
// answer to check.
func linuxRequests(t *testing.T, im *Image, reqs []func() *machine.Request, check func(t *testing.T, i int, res machine.Result, out, log string)) {
	t.Helper()
	run := func(what string, m *Machine, i int) {
		res, out, log := runLinux(m, reqs[i]())
		calls, unknown := m.LinuxCalls()
		if res.Exits > calls+1 {
			t.Errorf("%s request %d: %d exits for %d system calls", what, i, res.Exits, calls)
		}
		t.Run(fmt.Sprintf("%s-%d", what, i), func(t *testing.T) {
			t.Logf("%d exits, %d system calls, unanswered %v", res.Exits, calls, unknown)
			check(t, i, res, out, log)
		})
	}
	for i := range reqs {
		m, err := im.newMachine()
		if err != nil {
			t.Fatal(err)
		}
		run("fresh", m, i)
		m.Close()
	}
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Twice round, so every request also follows every other one.
	for round := range 2 {
		for i := range reqs {
			run(fmt.Sprintf("restored-%d", round), m, i)
			if err := m.Reset(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// cgiEnv is helloEnv with kv ("KEY=VALUE") set in place of what it has.
func cgiEnv(kv ...string) []string {
	env := kv
	for _, e := range helloEnv {
		k, _, _ := strings.Cut(e, "=")
		if !slices.ContainsFunc(kv, func(s string) bool { return strings.HasPrefix(s, k+"=") }) {
			env = append(env, e)
		}
	}
	return env
}

func formPost(body string) func() *machine.Request {
	return func() *machine.Request {
		return &machine.Request{
			Args: []string{"/form"},
			Env: cgiEnv("REQUEST_METHOD=POST", "CONTENT_TYPE=application/x-www-form-urlencoded",
				fmt.Sprintf("CONTENT_LENGTH=%d", len(body)), "QUERY_STRING="),
			Body: strings.NewReader(body), BodyLen: int64(len(body)),
		}
	}
}

func formGet(query string) func() *machine.Request {
	return func() *machine.Request {
		return &machine.Request{Args: []string{"/form"}, Env: cgiEnv("REQUEST_METHOD=GET", "QUERY_STRING="+query)}
	}
}

// popStddev is the population standard deviation, computed here rather
// than copied from the program's answer.
func popStddev(v []float64) float64 {
	var sum, sq float64
	for _, x := range v {
		sum += x
	}
	mean := sum / float64(len(v))
	for _, x := range v {
		sq += (x - mean) * (x - mean)
	}
	return math.Sqrt(sq / float64(len(v)))
}

// The form CGI (examples/linux/form), built with glibc and with musl,
// through fresh and restored machines: a POST with a real form body and a
// GET with a query, every computed field checked; the unit table read
// from /app; /tmp empty at the start of every request; writes under /app
// refused with EROFS; bad input answered 400 through the program's
// longjmp path.
func TestLinuxFormExample(t *testing.T) {
	for _, variant := range []string{"glibc", "musl"} {
		t.Run(variant, func(t *testing.T) {
			im := prepareExample(t, "form/form-"+variant+".elf", exampleFiles("form"), machine.Limits{})
			reqs := []func() *machine.Request{
				formPost("name=Ada+Lovelace&unit=km&values=3.5%2C+10%3B+1+4+2&ts=1700000000"),
				formGet("name=J%C3%BCrgen&unit=mi&values=-2.25,0.5,8,0.5"),
				formPost("name=x&unit=m&values=1,2,zwei"),
				formGet("unit=furlong&values=1"),
				formGet(""),
			}
			check := func(t *testing.T, i int, res machine.Result, out, log string) {
				if err := res.Err(); err != nil || res.ExitStatus != 0 {
					t.Fatalf("%v status %d (log %q)", err, res.ExitStatus, log)
				}
				head, body := splitCGI(t, out)
				switch i {
				case 0, 1:
					if !strings.Contains(head, "Content-Type: text/plain") {
						t.Fatalf("head %q", head)
					}
					f := cgiFields(t, body)
					want := map[string]string{
						"method": "POST", "name": "Ada Lovelace", "unit": "km (kilometres, 1000 m)",
						"count": "5", "sorted": "1 2 3.5 4 10", "sum": "20.5", "mean": "4.1", "median": "3.5",
						"stddev":    fmt.Sprintf("%.6g", popStddev([]float64{3.5, 10, 1, 4, 2})),
						"metres":    "20500",
						"date":      "2023-11-14 22:13:20, Tuesday, day 318",
						"tmp":       "absent, wrote 5 values, read back 5, same",
						"app_write": "EROFS",
					}
					if i == 1 {
						want = map[string]string{
							"method": "GET", "name": "Jürgen", "unit": "mi (miles, 1609.34 m)",
							"count": "4", "sorted": "-2.25 0.5 0.5 8", "sum": "6.75", "mean": "1.6875", "median": "0.5",
							"stddev":    fmt.Sprintf("%.6g", popStddev([]float64{-2.25, 0.5, 8, 0.5})),
							"metres":    fmt.Sprintf("%.6g", 6.75*1609.344), // C's %g: six significant digits
							"tmp":       "absent, wrote 4 values, read back 4, same",
							"app_write": "EROFS",
						}
						// No ts: now, in UTC, as there is no /etc/localtime.
						d, err := time.Parse("2006-01-02 15:04:05", strings.Split(f["date"], ",")[0])
						if err != nil || time.Since(d).Abs() > time.Minute {
							t.Errorf("date %q is not now in UTC (%v)", f["date"], err)
						}
					}
					for k, v := range want {
						if f[k] != v {
							t.Errorf("%s = %q, want %q", k, f[k], v)
						}
					}
				case 2, 3:
					want := map[int]string{2: `error=bad number "zwei" in values`, 3: `error=unknown unit "furlong"`}[i]
					if !strings.Contains(head, "Status: 400") || strings.TrimSpace(body) != want {
						t.Fatalf("answered %q, want a 400 saying %q", out, want)
					}
				case 4:
					if !strings.Contains(head, "text/html") || !strings.Contains(body, "<form method=post>") {
						t.Fatalf("no form shown: %q", out)
					}
				}
			}
			linuxRequests(t, im, reqs, check)
		})
	}
}

// Without Options.Files there is no /app: the form says its data file is
// missing (so the answers above really came from the app's files).
func TestLinuxFormWithoutFiles(t *testing.T) {
	kvmtest.Require(t)
	im, err := Prepare(linuxExample(t, "form/form-glibc.elf"), machine.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer im.Close()
	res, out, _ := runOnce(t, im, formGet("unit=m&values=1")())
	head, body := splitCGI(t, out)
	if res.Err() != nil || !strings.Contains(head, "Status: 500") || strings.TrimSpace(body) != "error=cannot open /app/units.txt: No such file or directory" {
		t.Fatalf("%v: answered %q", res.Err(), out)
	}
}

func luaRequest(method, query, ctype, body string) func() *machine.Request {
	return func() *machine.Request {
		kv := []string{"REQUEST_METHOD=" + method, "QUERY_STRING=" + query}
		if ctype != "" {
			kv = append(kv, "CONTENT_TYPE="+ctype, fmt.Sprintf("CONTENT_LENGTH=%d", len(body)))
		}
		env := cgiEnv(kv...)
		return &machine.Request{Args: []string{"/app/main.lua"}, Env: env, Body: strings.NewReader(body), BodyLen: int64(len(body))}
	}
}

// Lua 5.4 (Debian's liblua5.4.a in a static host) serves /app/main.lua,
// which requires /app/cgi.lua: a GET with a query, a form POST and a raw
// POST body, on fresh and restored machines; /tmp is each request's own
// and /app read-only.
func TestLinuxLuaExample(t *testing.T) {
	im := prepareExample(t, "lua/lua-host.elf", exampleFiles("lua"), machine.Limits{Memory: 32 << 20})
	reqs := []func() *machine.Request{
		luaRequest("GET", "text=the+cat+and+the+hat+and+the+bat&top=2&ts=1700000000", "", ""),
		luaRequest("POST", "", "application/x-www-form-urlencoded", "text=Zebra%20zebra%2C+yak&top=5&ts=86400"),
		luaRequest("POST", "", "text/plain", "one two two three three three"),
	}
	wants := []map[string]string{
		{"method": "GET", "words": "8", "distinct": "5", "top": "the:3 and:2", "date": "2023-11-14"},
		{"method": "POST", "words": "3", "distinct": "2", "top": "zebra:2 yak:1", "date": "1970-01-02"},
		{"method": "POST", "words": "6", "distinct": "3", "top": "three:3 two:2 one:1"},
	}
	linuxRequests(t, im, reqs, func(t *testing.T, i int, res machine.Result, out, log string) {
		if err := res.Err(); err != nil || res.ExitStatus != 0 {
			t.Fatalf("%v status %d (log %q)", err, res.ExitStatus, log)
		}
		head, body := splitCGI(t, out)
		if !strings.Contains(head, "Content-Type: text/plain") {
			t.Fatalf("head %q", head)
		}
		f := cgiFields(t, body)
		want := wants[i]
		want["lua"] = "Lua 5.4"
		want["tmp"] = fmt.Sprintf("absent, %s lines", want["distinct"])
		want["app_write"] = "/app/main.lua: Read-only file system"
		for k, v := range want {
			if f[k] != v {
				t.Errorf("%s = %q, want %q", k, f[k], v)
			}
		}
	})
}

// A script that fails is a 500 with the Lua error in the app's log, and
// the machine serves the next request after its restore.
func TestLinuxLuaScriptError(t *testing.T) {
	files := fstest.MapFS{"main.lua": {Data: []byte("local t = nil\nio.write(t.field)\n")}}
	im := prepareExample(t, "lua/lua-host.elf", files, machine.Limits{Memory: 32 << 20})
	m, err := im.newMachine()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for i := range 2 {
		res, out, log := runLinux(m, luaRequest("GET", "", "", "")())
		if res.Outcome != machine.Served || res.ExitStatus != 1 || !strings.HasPrefix(out, "Status: 500") ||
			!strings.Contains(log, "attempt to index a nil value") || !strings.Contains(log, "main.lua:2") {
			t.Fatalf("request %d: %v status %d, out %q, log %q", i, res.Outcome, res.ExitStatus, out, log)
		}
		if err := m.Reset(); err != nil {
			t.Fatal(err)
		}
	}
}

// The in-memory copy of an app's files is a correct fs.FS, independent of
// its source once made, and refuses what could point outside the app.
func TestAppFilesCopy(t *testing.T) {
	dir := t.TempDir()
	for name, data := range map[string]string{"main.lua": "print(1)", "lib/a.lua": "return 1", "lib/b.txt": "", "lib/deep/c": "ccc"} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	af, err := copyAppFiles(os.DirFS(dir))
	if err != nil {
		t.Fatal(err)
	}
	if err := fstest.TestFS(af, "main.lua", "lib/a.lua", "lib/b.txt", "lib/deep/c"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "main.lua"), []byte("changed"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := fs.ReadFile(af, "main.lua"); err != nil || string(b) != "print(1)" {
		t.Fatalf("after the source changed: %q, %v", b, err)
	}
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "lib", "passwd")); err != nil {
		t.Fatal(err)
	}
	if _, err := copyAppFiles(os.DirFS(dir)); !errors.Is(err, machine.ErrBadImage) || !strings.Contains(err.Error(), "lib/passwd") {
		t.Fatalf("symbolic link: %v, want ErrBadImage naming it", err)
	}
}
