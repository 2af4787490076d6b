package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"mime/multipart"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/store"
)

// Issue 13, items 3 and 6: fixed args and files for both kinds, and disk
// given back, through the real CLI against a real `dust serve`.

// luaWasmFile is the Lua interpreter `make wasm-examples` builds
// (examples/lua/build.sh) from Debian's source; without it these tests
// skip, saying how to build it.
func luaWasmFile(t *testing.T) string {
	t.Helper()
	// Built here, as make wasm-examples would (examples/wasm.mk, from
	// Debian's lua5.4 source, cached in .cache/lua): make test does not
	// run wasm-examples first.
	dir := t.TempDir()
	p := filepath.Join(dir, "lua", "lua.wasm")
	out, err := exec.Command("make", "-s", "-f", "../../examples/wasm.mk", "OUT="+dir, p).CombinedOutput()
	if err != nil {
		if os.Getenv("DUST_REQUIRE_WASM_TOOLCHAIN") == "1" {
			t.Fatalf("building lua.wasm: %v\n%s", err, out)
		}
		t.Skipf("lua.wasm not built (clang, wasi-libc and Debian's lua5.4 source are needed): %v\n%s", err, out)
	}
	return p
}

// luaScript is a CGI script that shows how it was called: its argv, the
// query, a module it loads from /app and whether it can write there.
const luaScript = `local lib = dofile("/app/lib/greet.lua")
io.write("Content-Type: text/plain\r\n\r\n")
io.write(lib.greet(os.getenv("QUERY_STRING") or ""), "\n")
io.write("argc=", #arg, "\n")
for i = 1, #arg do io.write("arg", i, "=", arg[i], "\n") end
local f = io.open("/app/new.txt", "w")
io.write("write=", f and "allowed" or "refused", "\n")
`

func luaApp(t *testing.T, greeting string) string {
	t.Helper()
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "lib"), 0o755)
	os.WriteFile(filepath.Join(dir, "script.lua"), []byte(luaScript), 0o644)
	os.WriteFile(filepath.Join(dir, "lib", "greet.lua"), []byte(`return {greet = function(q) return "`+greeting+`, " .. q end}`), 0o644)
	return dir
}

type filesAppJSON struct {
	Version  int
	Settings struct {
		Args      []string
		QueryArgs bool `json:"query_args"`
		Files     string
		FilesSize string `json:"files_size"`
		Env       []string
	}
}

func (s *cliServer) filesApp(name string) filesAppJSON {
	s.t.Helper()
	var a filesAppJSON
	if err := json.Unmarshal([]byte(s.must("app", name, "--json")), &a); err != nil {
		s.t.Fatal(err)
	}
	return a
}

// Lua for WASI serves a script from --files with --arg, a fresh instance
// per request; a redeploy inherits args and files, rollback restores
// them, and the query is argv only with --query-args.
func TestFilesLuaWasm(t *testing.T) {
	lua := luaWasmFile(t)
	s := newCLIServer(t)
	app := luaApp(t, "hello")
	out := s.must("deploy", "lua", lua, "--files", app, "--arg", "/app/script.lua")
	if out != "lua v1 → http://"+s.app+"/lua\n" {
		t.Fatalf("deploy printed %q", out)
	}
	// -e CODE in the query must not reach the interpreter's argv.
	code, body := s.get("/lua?-e&os.exit(3)")
	if code != 200 || body != "hello, -e&os.exit(3)\nargc=0\nwrite=refused\n" {
		t.Fatalf("v1: %d %q", code, body)
	}
	v1 := s.filesApp("lua")
	if !slices.Equal(v1.Settings.Args, []string{"/app/script.lua"}) || v1.Settings.QueryArgs || !strings.HasPrefix(v1.Settings.Files, "sha256:") || v1.Settings.FilesSize == "" {
		t.Fatalf("v1 settings: %+v", v1.Settings)
	}
	text := s.must("app", "lua")
	for _, want := range []string{`\n  args +/app/script.lua\n`, `\n  query-args +false\n`, `\n  files +at /app, layer ` + v1.Settings.Files[7:19] + `, \d+(\.\d)?(B|KiB)\n`} {
		if !regexp.MustCompile(want).MatchString(text) {
			t.Errorf("dust app lua lacks %s:\n%s", want, text)
		}
	}

	// A redeploy that names neither keeps both.
	s.must("deploy", "lua", lua, "--env", "X=1")
	if code, body := s.get("/lua?again"); code != 200 || !strings.HasPrefix(body, "hello, again\nargc=0\n") {
		t.Fatalf("v2 (inherited): %d %q", code, body)
	}
	if v2 := s.filesApp("lua"); v2.Version != 2 || v2.Settings.Files != v1.Settings.Files || !slices.Equal(v2.Settings.Args, v1.Settings.Args) {
		t.Fatalf("v2 settings: %+v", v2)
	}
	// The same files packed again are the same layer: no new version.
	if out := s.must("deploy", "lua", lua, "--files", app); !strings.Contains(out, "unchanged") {
		t.Fatalf("identical files redeploy: %q", out)
	}

	// Opting in to WAGI's query args; new files, new args.
	s.must("deploy", "lua", lua, "--query-args", "--files", luaApp(t, "howdy"), "--arg", "/app/script.lua", "--arg", "fixed two")
	if code, body := s.get("/lua?a&b%20c"); code != 200 || body != "howdy, a&b%20c\nargc=3\narg1=fixed two\narg2=a\narg3=b c\nwrite=refused\n" {
		t.Fatalf("v3 (query args): %d %q", code, body)
	}
	v3 := s.filesApp("lua")

	// --no-files and --no-args drop them; the interpreter then has no
	// script (it reads one from the empty body) and answers nothing.
	s.must("deploy", "lua", lua, "--no-files", "--no-args", "--query-args=false")
	if v4 := s.filesApp("lua"); v4.Settings.Files != "" || v4.Settings.Args != nil || v4.Settings.QueryArgs {
		t.Fatalf("v4 settings: %+v", v4.Settings)
	}
	if code, _ := s.get("/lua"); code != 502 {
		t.Fatalf("v4 without a script answered %d", code)
	}
	// Rollback brings the whole of v3 back, its layer included.
	s.must("rollback", "lua")
	if code, body := s.get("/lua?x"); code != 200 || body != "howdy, x\nargc=2\narg1=fixed two\narg2=x\nwrite=refused\n" {
		t.Fatalf("rolled back to v3: %d %q", code, body)
	}
	if got := s.filesApp("lua"); got.Settings.Files != v3.Settings.Files || !got.Settings.QueryArgs {
		t.Fatalf("rolled back settings: %+v", got.Settings)
	}
	// And a restart serves it from the store.
	s.restart()
	if code, body := s.get("/lua?y"); code != 200 || !strings.HasPrefix(body, "howdy, y\n") {
		t.Fatalf("after restart: %d %q", code, body)
	}
}

// linuxForm builds examples/linux/form with gcc -static, through the
// examples' own makefile, into a temporary directory.
func linuxForm(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Skip("gcc not installed")
	}
	out := t.TempDir()
	elf := filepath.Join(out, "form", "form-glibc.elf")
	cmd := exec.Command("make", "-s", "-f", "../../examples/linux/linux.mk", "OUT="+out, elf)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("building the form example: %v\n%s", err, msg)
	}
	return elf
}

// A Linux program on hvt reads its data file from the deployed /app,
// which it cannot write.
func TestFilesLinuxHvt(t *testing.T) {
	s := newCLIServer(t)
	form := linuxForm(t)
	app := t.TempDir()
	os.WriteFile(filepath.Join(app, "units.txt"), []byte("furlong\t201.168\tfurlongs\n"), 0o644)
	s.must("deploy", "form", form, "--files", app)
	code, body := s.get("/form?unit=furlong&values=1,2&ts=0")
	if code != 200 || !strings.Contains(body, "unit=furlong (furlongs, 201.168 m)\n") || !strings.Contains(body, "metres=603.504\n") ||
		!strings.Contains(body, "app_write=EROFS\n") {
		t.Fatalf("form with /app: %d %q", code, body)
	}
	// Without files there is no /app.
	s.must("deploy", "form", form, "--no-files")
	if code, body := s.get("/form?unit=m&values=1"); code != 500 || !strings.Contains(body, "cannot open /app/units.txt") {
		t.Fatalf("form without /app: %d %q", code, body)
	}
}

// hostileTar is a tar stream written entry by entry, as an attacker
// would, bypassing PackDir.
func hostileTar(t *testing.T, entries ...*tar.Header) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range entries {
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && h.Size < 1<<20 {
			tw.Write(bytes.Repeat([]byte("x"), int(h.Size)))
		}
	}
	tw.Flush()
	return b.Bytes()
}

// deployRaw PUTs a multipart deploy body through the admin API.
func (s *cliServer) deployRaw(name string, layer, image []byte) (int, string) {
	s.t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	w, _ := mw.CreateFormFile("files", "f.tar")
	w.Write(layer)
	w, _ = mw.CreateFormFile("image", "image")
	w.Write(image)
	mw.Close()
	req, _ := http.NewRequest("PUT", "http://"+s.admin+"/v1/apps/"+name, &b)
	req.Header.Set("Authorization", "Bearer "+s.token)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct{ Error string }
	raw, _ := io.ReadAll(resp.Body)
	if json.Unmarshal(raw, &e) != nil {
		e.Error = string(raw)
	}
	return resp.StatusCode, e.Error
}

// A hostile files layer is refused with a 4xx that names the entry and
// the rule, and leaves nothing on disk; so is a bad --files directory,
// before anything is uploaded.
func TestFilesHostileLayer(t *testing.T) {
	s := newCLIServer(t)
	img, err := os.ReadFile(example(t, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	var many []*tar.Header
	for i := 0; i <= store.MaxLayerEntries; i++ {
		many = append(many, &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("f%05d", i)})
	}
	for _, tc := range []struct {
		name   string
		layer  []byte
		status int
		want   string
	}{
		{"traversal", hostileTar(t, &tar.Header{Typeflag: tar.TypeReg, Name: "../../etc/cron.d/x", Size: 1}), 422, `"../../etc/cron.d/x": a ".." element would climb out of /app`},
		{"absolute", hostileTar(t, &tar.Header{Typeflag: tar.TypeReg, Name: "/etc/passwd", Size: 1}), 422, `"/etc/passwd": an absolute path`},
		{"symlink", hostileTar(t, &tar.Header{Typeflag: tar.TypeSymlink, Name: "key", Linkname: "/root/.ssh/id_rsa"}), 422, `"key": is a symbolic link (to "/root/.ssh/id_rsa")`},
		{"device", hostileTar(t, &tar.Header{Typeflag: tar.TypeBlock, Name: "sda", Devmajor: 8}), 422, `"sda": is a device`},
		{"huge count", hostileTar(t, many...), 413, `more than 4096 files and directories`},
		{"huge size", hostileTar(t, &tar.Header{Typeflag: tar.TypeReg, Name: "big", Size: 1 << 40}), 413, `more than 64 MiB of file content (at "big"`},
		{"not tar", []byte(strings.Repeat("junk", 1000)), 422, `not a tar stream`},
	} {
		code, msg := s.deployRaw("hostile", tc.layer, img)
		if code != tc.status || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: %d %s; want %d saying %s", tc.name, code, msg, tc.status, tc.want)
		}
	}
	if n := blobs(t, s.data); n != 0 {
		t.Errorf("%d blobs left behind by refused deploys", n)
	}
	if code, _ := s.api("GET", "/v1/apps/hostile"); code != 404 {
		t.Errorf("a refused deploy made app hostile (%d)", code)
	}

	doc, err := os.ReadFile("../../docs/cli.md")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	os.Symlink("/etc/passwd", filepath.Join(dir, "passwd"))
	code, _, errOut := s.dust("deploy", "x", example(t, "hello"), "--files", dir)
	if code != exitUsage || !strings.Contains(errOut, "--files "+dir+": ") || !strings.Contains(errOut, "passwd is a symbolic link") {
		t.Errorf("--files with a symlink: exit %d, %s", code, errOut)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--files", filepath.Join(dir, "missing")}, exitError, "no such file or directory"},
		{[]string{"--files", example(t, "hello")}, exitUsage, "is not a directory"},
		{[]string{"--files", dir, "--no-files"}, exitUsage, "--files and --no-files"},
		{[]string{"--arg", "x", "--no-args"}, exitUsage, "--arg and --no-args"},
		{[]string{"--query-args=maybe"}, exitUsage, `--query-args "maybe": want true or false`},
	} {
		code, _, errOut := s.dust(append([]string{"deploy", "x", example(t, "hello")}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("deploy %v: exit %d, %s; want %d saying %s", tc.args, code, errOut, tc.code, tc.want)
		}
		if !bytes.Contains(doc, []byte("`"+tc.want+"`")) {
			t.Errorf("docs/cli.md does not list %q", tc.want)
		}
	}
}

// blobs counts the images and files layers in a data directory.
func blobs(t *testing.T, data string) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(data, "images", "sha256"))
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// diskBytes is what the data directory holds beyond its database: images,
// files layers, compiled wasm code and logs.
func diskBytes(t *testing.T, data string) int64 {
	t.Helper()
	var n int64
	filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Base(p) == "dust.db" || filepath.Base(p) == "admin.token" {
			return nil
		}
		if fi, err := d.Info(); err == nil {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// Disk use goes back to where it started after deploy/rm cycles of apps
// with files (wasm and hvt), and a layer or image pushed out of an app's
// kept history is given back at once.
func TestFilesDiskBaseline(t *testing.T) {
	lua := luaWasmFile(t)
	// The compiled code is counted too: in its own directory here, in
	// the data directory for a server run with --run-as.
	cache := t.TempDir()
	t.Setenv("DUST_WASM_CACHE", cache)
	s := newCLIServer(t)
	hello := example(t, "hello")
	used := func() int64 { return diskBytes(t, s.data) + diskBytes(t, cache) }
	baseline := used()
	for i := range 4 {
		s.must("deploy", "lua", lua, "--files", luaApp(t, fmt.Sprintf("cycle %d", i)), "--arg", "/app/script.lua")
		s.must("deploy", "lua", lua, "--files", luaApp(t, fmt.Sprintf("cycle %d again", i)))
		s.must("deploy", "h", hello, "--files", luaApp(t, "h"), "--route", "/h")
		if code, body := s.get("/lua?x"); code != 200 || !strings.HasPrefix(body, fmt.Sprintf("cycle %d again, x", i)) {
			t.Fatalf("cycle %d: %d %q", i, code, body)
		}
		if i == 0 && diskBytes(t, cache) == 0 {
			t.Fatal("no compiled code in the cache: the test does not look where the server keeps it")
		}
		if used() <= baseline {
			t.Fatalf("cycle %d: deploys took no disk: the measurement is blind", i)
		}
		s.must("rm", "lua")
		s.must("rm", "h")
		if got := used(); got != baseline {
			t.Fatalf("after deploy/rm cycle %d: %d bytes on disk, baseline %d", i, got, baseline)
		}
	}

	// More deploys than the history keeps, each with its own layer: the
	// layers of versions that age out go at once.
	for i := range store.HistoryLimit + 3 {
		s.must("deploy", "aging", hello, "--files", luaApp(t, fmt.Sprintf("v%d", i+1)))
	}
	if n := blobs(t, s.data); n != 1+store.HistoryLimit {
		t.Fatalf("%d blobs for one image and %d kept layers", n, store.HistoryLimit)
	}
	s.must("rm", "aging")
	if got := used(); got != baseline {
		t.Fatalf("after the aged-out deploys: %d bytes on disk, baseline %d", got, baseline)
	}
	// Nothing is left for a manual GC to find.
	if out := s.must("gc"); !strings.HasPrefix(out, "images and files layers removed: 0 (0B)") {
		t.Errorf("dust gc after everything was given back: %q", out)
	}
}
