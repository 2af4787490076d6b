package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/kvm/kvmtest"
)

// dustAt runs the CLI in dir against the server.
func (s *cliServer) dustAt(dir string, args ...string) (int, string, string) {
	s.t.Helper()
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DUST_ADMIN="+s.admin, "DUST_TOKEN="+s.token)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		s.t.Fatalf("dust %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

func (s *cliServer) mustAt(dir string, args ...string) string {
	s.t.Helper()
	code, out, errOut := s.dustAt(dir, args...)
	if code != 0 {
		s.t.Fatalf("(in %s) dust %s: exit %d\nstdout: %s\nstderr: %s", dir, strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// Every template, as a newcomer would use it: dust new, cd, dust deploy,
// curl the route.
func TestTemplatesDeploy(t *testing.T) {
	s := newCLIServer(t)
	root := t.TempDir() // outside the repository: the templates must build from anywhere
	for _, tmpl := range appTemplates {
		t.Run(tmpl.name, func(t *testing.T) {
			name := "t-" + tmpl.name
			dir := filepath.Join(root, name)
			out := s.mustAt(root, "new", tmpl.name, name)
			if !strings.Contains(out, filepath.Join(name, "dust.toml")) {
				t.Fatalf("dust new printed %q", out)
			}
			url := "http://" + s.app + "/" + name
			if out := s.mustAt(dir, "deploy"); out != name+" v1 → "+url+"\n" {
				t.Fatalf("dust deploy printed %q", out)
			}
			code, body := s.get("/" + name + "?q=1")
			if code != 200 || !strings.HasPrefix(body, "Hello from "+name+"!\n") || !strings.Contains(body, `query "q=1"`) {
				t.Fatalf("GET: %d %q", code, body)
			}
			// The same app and manifest again: no new version.
			if out := s.mustAt(dir, "deploy"); !strings.Contains(out, name+" v1 unchanged") {
				t.Fatalf("second deploy printed %q", out)
			}
		})
	}
}

// The manifest deploy end to end: declarative settings, flags that
// override for one deploy, env kept in step with the file, errors that
// name the file, line and key.
func TestManifestDeploy(t *testing.T) {
	s := newCLIServer(t)
	dir := filepath.Join(t.TempDir(), "shop")
	s.mustAt(filepath.Dir(dir), "new", "c", "shop")
	toml := filepath.Join(dir, "dust.toml")
	manifest, _ := os.ReadFile(toml)
	write := func(extra string) {
		t.Helper()
		if err := os.WriteFile(toml, append(bytes.Clone(manifest), extra...), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("memory = \"4MiB\"\nsecrets = [\"DB_PASS\"]\n[env]\nA = \"1\"\nB = \"2\"\n")
	code, out, errOut := s.dustAt(dir, "deploy")
	if code != 0 || out != "shop v1 → http://"+s.app+"/shop\n" || !strings.Contains(errOut, "secret DB_PASS is not set; set it with: dust secret set shop DB_PASS=VALUE") {
		t.Fatalf("deploy: %d %q %q", code, out, errOut)
	}
	a := s.appJSON("shop")
	if a.Settings.Timeout != "2s" || a.Settings.Memory != "4MiB" || strings.Join(a.Settings.Env, " ") != "A=1 B=2" {
		t.Fatalf("v1 settings: %+v", a.Settings)
	}
	// A flag overrides for one deploy; the next plain deploy is the
	// manifest's again.
	s.mustAt(dir, "deploy", "--timeout", "5s", "--env", "A=9")
	if a := s.appJSON("shop"); a.Version != 2 || a.Settings.Timeout != "5s" || strings.Join(a.Settings.Env, " ") != "A=9 B=2" {
		t.Fatalf("v2 (overridden) settings: %+v", a)
	}
	if out := s.mustAt(dir, "deploy"); out != "shop v3 → http://"+s.app+"/shop\n" {
		t.Fatalf("back to the manifest: %q", out)
	}
	if a := s.appJSON("shop"); a.Settings.Timeout != "2s" || strings.Join(a.Settings.Env, " ") != "A=1 B=2" {
		t.Fatalf("v3 settings: %+v", a.Settings)
	}
	// Keys taken out of the manifest are defaults again, env variables
	// removed; a secret set since is not reported missing.
	s.must("secret", "set", "shop", "DB_PASS=x")
	write("secrets = [\"DB_PASS\"]\n[env]\nB = \"2\"\n")
	code, _, errOut = s.dustAt(dir, "deploy")
	if code != 0 || strings.Contains(errOut, "not set") {
		t.Fatalf("deploy v4: %d %q", code, errOut)
	}
	if a := s.appJSON("shop"); a.Version != 4 || a.Settings.Memory != "" || strings.Join(a.Settings.Env, " ") != "B=2" || a.Status.Limits.Memory != "16MiB" {
		t.Fatalf("v4 settings: %+v %+v", a.Settings, a.Status)
	}
	// -f from elsewhere, and the manifest's route moved.
	os.WriteFile(toml, bytes.Replace(manifest, []byte(`route = "/shop"`), []byte(`route = "/store"`), 1), 0o644)
	if out := s.mustAt(t.TempDir(), "deploy", "-f", toml); out != "shop v5 → http://"+s.app+"/store\n" {
		t.Fatalf("deploy -f: %q", out)
	}
	if code, body := s.get("/store"); code != 200 || !strings.HasPrefix(body, "Hello from shop!") {
		t.Fatalf("/store: %d %q", code, body)
	}

	// args, files and query_args become --arg, --files and --query-args.
	if hasFlag("arg") && hasFlag("files") && hasFlag("query-args") {
		os.Mkdir(filepath.Join(dir, "static"), 0o755)
		os.WriteFile(filepath.Join(dir, "static", "hello.txt"), []byte("hi\n"), 0o644)
		write("args = [\"one\", \"two\"]\nfiles = \"static\"\nquery_args = true\n")
		s.mustAt(dir, "deploy")
		var v struct {
			Settings struct {
				Args      []string `json:"args"`
				QueryArgs bool     `json:"query_args"`
				Files     string   `json:"files"`
			}
		}
		json.Unmarshal([]byte(s.must("app", "shop", "--json")), &v)
		if strings.Join(v.Settings.Args, " ") != "one two" || !v.Settings.QueryArgs || v.Settings.Files == "" {
			t.Fatalf("args/files/query_args not deployed: %+v", v.Settings)
		}
		write("")
		s.mustAt(dir, "deploy")
		v.Settings.Args, v.Settings.QueryArgs, v.Settings.Files = nil, false, ""
		json.Unmarshal([]byte(s.must("app", "shop", "--json")), &v)
		if len(v.Settings.Args) != 0 || v.Settings.QueryArgs || v.Settings.Files != "" {
			t.Fatalf("args/files/query_args left out of the manifest were kept: %+v", v.Settings)
		}
	} else {
		t.Log("this build has no --arg/--files/--query-args: their keys are tested as a translation only (TestManifestTranslation)")
	}

	// Errors: exit codes and messages naming file, line and key.
	next := fmt.Sprintf("dust.toml:%d: ", bytes.Count(manifest, []byte("\n"))+1) // the line a key appended is on
	kindLine := fmt.Sprintf("dust.toml:%d: ", bytes.Count(manifest[:bytes.Index(manifest, []byte("kind = "))], []byte("\n"))+1)
	cases := []struct {
		edit func(string) string
		args string
		code int
		msg  string
	}{
		{func(m string) string { return m + "memroy = \"1MiB\"\n" }, "", exitUsage, next + `unknown key "memroy"`},
		{func(m string) string { return m + "memory = \"lots\"\n" }, "", exitUsage, next + `memory "lots": want a size such as 16MiB`},
		{func(m string) string { return m + "files = \"../..\"\n" }, "", exitUsage, next + `files "../..": want a directory inside the manifest's directory`},
		{func(m string) string { return strings.Replace(m, `kind = "hvt"`, `kind = "wasm"`, 1) }, "", exitUsage, kindLine + `kind "wasm", but image app.elf is a hvt image (ELF)`},
		{func(m string) string { return m }, "extra", exitUsage, "want NAME IMAGE, got 1 argument(s)"},
		{func(m string) string { return m }, "-f dust.toml other app.elf", exitUsage, "give one or the other"},
	}
	for _, c := range cases {
		if err := os.WriteFile(toml, []byte(c.edit(string(manifest))), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, errOut := s.dustAt(dir, append([]string{"deploy"}, strings.Fields(c.args)...)...)
		if code != c.code || !strings.Contains(errOut, c.msg) {
			t.Errorf("dust deploy %s: exit %d, want %d; stderr %q, want %q", c.args, code, c.code, errOut, c.msg)
		}
	}
	// A failing build: exit 1, its output shown, nothing deployed.
	write("")
	os.WriteFile(filepath.Join(dir, "app.c"), []byte("int main(void) { return oops; }\n"), 0o644)
	code, _, errOut = s.dustAt(dir, "deploy")
	if code != exitError || !strings.Contains(errOut, "oops") || !strings.Contains(errOut, "build failed: exit status 1") {
		t.Errorf("failing build: exit %d: %q", code, errOut)
	}
	// No manifest here.
	code, _, errOut = s.dustAt(t.TempDir(), "deploy")
	if code != exitUsage || !strings.Contains(errOut, "no dust.toml here: want NAME IMAGE, or an app manifest") {
		t.Errorf("no manifest: exit %d %q", code, errOut)
	}
	if a := s.appJSON("shop"); a.Version > 7 {
		t.Errorf("failed deploys made versions: v%d", a.Version)
	}
}

func TestNewRefuses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds dust: skipped with -short")
	}
	_, bin := buildDust(t)
	run := func(dir string, args ...string) (int, string) {
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		return 0, string(out)
	}
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "taken"), 0o755)
	os.WriteFile(filepath.Join(dir, "taken", "x"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "afile"), nil, 0o644)
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"new"}, 0, "templates:\n  c "},
		{[]string{"new", "cobol", "x"}, exitUsage, "unknown template \"cobol\"\ntemplates:"},
		{[]string{"new", "c"}, exitUsage, "want TEMPLATE DIR, got 1 argument(s)"},
		{[]string{"new", "c", "taken"}, exitUsage, "DIR taken is not empty"},
		{[]string{"new", "c", "afile"}, exitUsage, "DIR afile is a file"},
		{[]string{"new", "c", "___"}, exitUsage, "give one with --name"},
		{[]string{"new", "c", "ok", "--name", "Bad"}, exitUsage, "--name \"Bad\": want a-z"},
		{[]string{"new", "c", "ok2", "--source", dir}, exitUsage, "not a Dust checkout"},
	} {
		code, out := run(dir, c.args...)
		if code != c.code || !strings.Contains(out, c.msg) {
			t.Errorf("dust %s: exit %d, want %d: %q, want %q", strings.Join(c.args, " "), code, c.code, out, c.msg)
		}
	}
	for _, sub := range []string{"new", "dev"} {
		if code, out := run(dir, sub, "-h"); code != 0 || !strings.Contains(out, "usage: dust "+sub) || !strings.Contains(out, "example:") {
			t.Errorf("dust %s -h: exit %d:\n%s", sub, code, out)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "taken")); len(ents) != 1 {
		t.Errorf("dust new wrote into a non-empty directory: %v", ents)
	}
	// Names come from the directory; dust.toml parses and names it.
	if code, out := run(dir, "new", "linux-c", "My_App.v2"); code != 0 {
		t.Fatalf("dust new: %d %s", code, out)
	}
	m, err := loadManifest(filepath.Join(dir, "My_App.v2"))
	if err != nil || m.Name() != "my-app-v2" {
		t.Fatalf("the written manifest: %v %+v", err, m)
	}
}

// devProc is a running `dust dev`.
type devProc struct {
	cmd    *exec.Cmd
	lines  chan string
	mu     sync.Mutex
	stderr bytes.Buffer
}

func (d *devProc) errText() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// waitLine waits for a stdout line matching re and returns its groups.
func (d *devProc) waitLine(t *testing.T, re *regexp.Regexp, limit time.Duration) []string {
	t.Helper()
	deadline := time.After(limit)
	for {
		select {
		case l, ok := <-d.lines:
			if !ok {
				t.Fatalf("dust dev ended before %v; stderr:\n%s", re, d.errText())
			}
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-deadline:
			t.Fatalf("dust dev printed no line matching %v in %v; stderr:\n%s", re, limit, d.errText())
		}
	}
}

// The dev loop: serve, edit, the next request sees the change; a broken
// build is reported and the last good version keeps serving; SIGINT
// stops it and removes its data.
func TestDevLoop(t *testing.T) {
	kvmtest.Require(t)
	if testing.Short() {
		t.Skip("spawns dust dev: skipped with -short")
	}
	_, bin := buildDust(t)
	root := t.TempDir()
	if out, err := exec.Command(bin, "new", "c", filepath.Join(root, "hello")).CombinedOutput(); err != nil {
		t.Fatalf("dust new: %v %s", err, out)
	}
	dir := filepath.Join(root, "hello")
	d := &devProc{cmd: exec.Command(bin, "dev", "--poll", "50ms"), lines: make(chan string, 100)}
	d.cmd.Dir = dir
	out, _ := d.cmd.StdoutPipe()
	d.cmd.Stderr = lockedBuf{&d.mu, &d.stderr}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if d.cmd.ProcessState == nil {
			d.cmd.Process.Kill()
			d.cmd.Wait()
		}
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			d.lines <- sc.Text()
		}
		close(d.lines)
	}()
	data := d.waitLine(t, regexp.MustCompile(`^dust dev: local gateway on http://\S+ \(data in (\S+), removed on exit\)$`), 30*time.Second)[1]
	url := d.waitLine(t, regexp.MustCompile(`^hello v1 → (http://127\.0\.0\.1:\d+/hello)$`), 60*time.Second)[1]
	get := func() string {
		resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return fmt.Sprintf("%d %s", resp.StatusCode, b)
	}
	if body := get(); !strings.HasPrefix(body, "200 Hello from hello!") {
		t.Fatalf("v1 answered %q", body)
	}
	// waitBody polls until the app answers with prefix.
	waitBody := func(prefix string) {
		t.Helper()
		var body string
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); {
			if body = get(); strings.HasPrefix(body, prefix) {
				return
			}
			time.Sleep(50 * time.Millisecond) // polling interval, not a race fix
		}
		t.Fatalf("the app still answers %q, want %q; stderr:\n%s", body, prefix, d.errText())
	}
	src := filepath.Join(dir, "app.c")
	orig, _ := os.ReadFile(src)
	os.WriteFile(src, bytes.Replace(orig, []byte("Hello from"), []byte("Howdy from"), 1), 0o644)
	waitBody("200 Howdy from hello!")

	// A broken build: reported, and v2 goes on serving.
	os.WriteFile(src, []byte("int main(void) { return brokenbuild; }\n"), 0o644)
	for deadline := time.Now().Add(60 * time.Second); !strings.Contains(d.errText(), "build failed"); {
		if time.Now().After(deadline) {
			t.Fatalf("no build failure reported; stderr:\n%s", d.errText())
		}
		time.Sleep(50 * time.Millisecond) // polling interval, not a race fix
	}
	if e := d.errText(); !strings.Contains(e, "brokenbuild") {
		t.Fatalf("the compiler's message is not shown:\n%s", e)
	}
	if body := get(); !strings.HasPrefix(body, "200 Howdy from hello!") {
		t.Fatalf("after a failed build the app answers %q", body)
	}
	// Fixed again, and the manifest edited too: both are picked up.
	os.WriteFile(src, bytes.Replace(orig, []byte("Hello from"), []byte("Back from"), 1), 0o644)
	waitBody("200 Back from hello!")

	d.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("dust dev after SIGINT: %v; stderr:\n%s", err, d.errText())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("dust dev did not stop on SIGINT")
	}
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("the temporary data directory %s is still there: %v", data, err)
	}
	if _, err := http.Get(url); err == nil {
		t.Errorf("the gateway still answers after dust dev stopped")
	}
}
