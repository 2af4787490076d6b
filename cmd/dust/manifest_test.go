package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/dust-run/dust/internal/gateway"
	"github.com/dust-run/dust/internal/store"
)

const fullManifest = `# every key
name = "shop"
image = "app.elf"
build = "make app.elf"
kind = "hvt"
route = "/shop"
host = "shop.example"
memory = "32MiB"
timeout = "2s"
concurrency = 8
queue = -1
queue_wait = "500ms"
max_body = "1MiB"
pass_authorization = true
isolation = "fresh"
secrets = ["DB_PASS"]
args = ["-q", "main.lua"]
files = "static"
query_args = true
serve = "cgi"

[env]
GREETING = "howdy"
B = ""
`

// translated is the manifest as the deploy flags it stands for.
func translated(t *testing.T, m *Manifest) []string {
	t.Helper()
	var out []string
	for _, a := range m.flagArgs() {
		out = append(out, "--"+a.flag+"="+a.value)
	}
	return out
}

// hasFlag reports whether this build's deploy command has a flag (the
// args and files flags arrive with another change).
func hasFlag(name string) bool {
	f := newCmdFlags("deploy", "", "", "")
	deployCommand(f)
	return f.Lookup(name) != nil
}

func TestManifestTranslation(t *testing.T) {
	m, err := parseManifest([]byte(fullManifest), "dust.toml")
	if err != nil {
		t.Fatal(err)
	}
	got := translated(t, m)
	want := []string{"--route=/shop", "--host=shop.example", "--memory=32MiB", "--timeout=2s",
		"--max-concurrency=8", "--queue-len=-1", "--queue-wait=500ms", "--max-body=1MiB",
		"--pass-authorization=true", "--isolation=fresh", "--serve=cgi", "--env=B=", "--env=GREETING=howdy",
		"--arg=-q", "--arg=main.lua", "--files=static", "--query-args=true"}
	if !slices.Equal(got, want) {
		t.Fatalf("translation\n got %q\nwant %q", got, want)
	}
	if m.Name() != "shop" || m.line("env.GREETING") != 23 || m.line("memory") != 8 || m.line("env.NOPE") != 22 {
		t.Fatalf("name %q, lines: env.GREETING %d, memory %d, env.NOPE %d", m.Name(), m.line("env.GREETING"), m.line("memory"), m.line("env.NOPE"))
	}

	// A manifest that leaves everything out asks for every default: a
	// manifest deploy is declarative.
	m, err = parseManifest([]byte("name = \"tiny\"\nimage = \"a.wasm\"\n"), "dust.toml")
	if err != nil {
		t.Fatal(err)
	}
	got = translated(t, m)
	want = []string{"--route=", "--host=", "--memory=0", "--timeout=0", "--max-concurrency=0", "--queue-len=0",
		"--queue-wait=0", "--max-body=0", "--pass-authorization=false", "--isolation=", "--serve=cgi", "--no-args=true", "--no-files=true", "--query-args=false"}
	if !slices.Equal(got, want) {
		t.Fatalf("defaults\n got %q\nwant %q", got, want)
	}
}

// Every way a manifest can be wrong: exit 2, the file and line, the key,
// and what is allowed.
func TestManifestErrors(t *testing.T) {
	base := "name = \"app\"\nimage = \"app.elf\"\n"
	cases := []struct{ text, want string }{
		{base + "memroy = \"16MiB\"\n", `dust.toml:3: unknown key "memroy" (the keys are name, image, build`},
		{base + "[env]\nA = 1\n", `dust.toml:4: env.A: want a table of strings`},
		{base + "memory = 16\n", `dust.toml:3: memory: want a size as a string, such as memory = "16MiB"`},
		{base + "memory = \"lots\"\n", `dust.toml:3: memory "lots": want a size such as 16MiB, 512KiB or 1GiB`},
		{base + "timeout = \"abc\"\n", `dust.toml:3: timeout "abc": want a duration such as 2s or 500ms`},
		{base + "timeout = \"-2s\"\n", `dust.toml:3: timeout "-2s": want a duration`},
		{base + "queue_wait = \"soon\"\n", `dust.toml:3: queue_wait "soon": want a duration`},
		{base + "max_body = \"big\"\n", `dust.toml:3: max_body "big": want a size`},
		{base + "concurrency = -3\n", `dust.toml:3: concurrency -3: want a whole number`},
		{base + "concurrency = \"8\"\n", `dust.toml:3: concurrency: want a whole number`},
		{base + "queue = -5\n", `dust.toml:3: queue -5: want a whole number, 0 for the default or -1 for no queue`},
		{base + "isolation = \"sometimes\"\n", `dust.toml:3: isolation "sometimes": "sometimes" (want "restore" or "fresh")`},
		{base + "route = \"my\"\n", `dust.toml:3: route "my": want a path starting with /, such as /app`},
		{base + "route = \"/a b\"\n", `dust.toml:3: route "/a b": "/a b": character ' ' at offset 2 not allowed`},
		{base + "host = \"a b\"\n", `dust.toml:3: host "a b"`},
		{base + "kind = \"linux\"\n", `dust.toml:3: kind "linux": want "hvt" or "wasm"`},
		{base + "serve = \"tcp\"\n", `dust.toml:3: serve "tcp": want "cgi" or "http"`},
		{base + "pass_authorization = \"yes\"\n", `dust.toml:3: pass_authorization: want true or false`},
		{base + "query_args = 1\n", `dust.toml:3: query_args: want true or false`},
		{base + "secrets = [\"db-pass\"]\n", `dust.toml:3: secrets[0] "db-pass": want a name such as DB_PASS`},
		{base + "secrets = [\"A\", \"A\"]\n", `dust.toml:3: secrets: A is named twice`},
		{base + "secrets = [\"A\"]\n[env]\nA = \"x\"\n", `dust.toml:3: secrets: A is also in [env]`},
		{base + "[env]\n\"not-a-name\" = \"x\"\n", `dust.toml:4: env key "not-a-name": want a name such as GREETING`},
		{base + "[env]\nA = \"x\\u0000y\"\n", `dust.toml:4: env A: value of A contains a NUL byte`},
		{base + "args = [\"a\\u0000\"]\n", `dust.toml:3: args[0]: contains a NUL byte`},
		{base + "args = [" + strings.Repeat("\"x\",", store.MaxArgs+1) + "]\n", fmt.Sprintf("dust.toml:3: args: %d of them, at most %d allowed", store.MaxArgs+1, store.MaxArgs)},
		{base + "args = [\"" + strings.Repeat("x", store.MaxArgBytes) + "\"]\n", "dust.toml:3: args: " + strconv.Itoa(store.MaxArgBytes+1) + " bytes together"},
		{base + "files = \"../secrets\"\n", `dust.toml:3: files "../secrets": want a directory inside the manifest's directory`},
		{base + "files = \"/etc\"\n", `dust.toml:3: files "/etc": want a directory inside`},
		{base + "build = \"  \"\n", `dust.toml:3: build is blank`},
		{"image = \"app.elf\"\n", `dust.toml: name is missing: want the app's name`},
		{"name = \"App\"\nimage = \"x\"\n", `dust.toml:1: name "App": want a-z, 0-9 and -`},
		{"name = \"app\"\n", `dust.toml: image is missing`},
		{"name = \"app\"\nimage = \"/bin/ls\"\n", `dust.toml:2: image "/bin/ls": want a path inside the manifest's directory`},
		{"name = \"app\"\nimage = \"../x.elf\"\n", `dust.toml:2: image "../x.elf": want a path inside`},
		{"name = \"app\"\nname = \"app2\"\n", `dust.toml:2: not valid TOML: key name is already defined`},
		{"name = \n", `dust.toml:1: not valid TOML`},
		{base + "[[args]]\nx = 1\n", `dust.toml:3: args: want an array of strings`},
	}
	for _, c := range cases {
		_, err := parseManifest([]byte(c.text), "dust.toml")
		var me *ManifestError
		if !errors.As(err, &me) || exitCode(err) != exitUsage || !strings.Contains(err.Error(), c.want) {
			t.Errorf("manifest\n%s\ngave %v (exit %d), want %q in a ManifestError", c.text, err, exitCode(err), c.want)
		}
	}
}

// The command line overrides the manifest for one deploy: a scalar flag
// wins, --env wins key by key, --arg replaces all the manifest's args;
// env variables of the current version that neither keeps are unset.
func TestManifestApply(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "dust.toml"), []byte(fullManifest), 0o644)
	os.Mkdir(filepath.Join(dir, "static"), 0o755)
	m, err := loadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := newCmdFlags("deploy", "", "", "")
	deployCommand(f)
	user := []string{"--timeout", "9s", "--env", "GREETING=hi", "--env", "EXTRA=1"}
	if hasFlag("arg") {
		user = append(user, "--arg", "other.lua")
	}
	if err := f.Parse(user); err != nil {
		t.Fatal(err)
	}
	cur := &gateway.AppView{}
	cur.Settings.Env = []string{"GREETING=old", "STALE=1", "B=x", "EXTRA=0"}
	if err := m.apply(f, cur); err != nil {
		t.Fatal(err)
	}
	val := func(name string) string { return f.Lookup(name).Value.String() }
	if val("timeout") != "9s" || val("memory") != "32MiB" || val("route") != "/shop" || val("isolation") != "fresh" {
		t.Errorf("timeout %s memory %s route %s isolation %s", val("timeout"), val("memory"), val("route"), val("isolation"))
	}
	if env := val("env"); env != "GREETING=hi,EXTRA=1,B=" {
		t.Errorf("env %q", env)
	}
	if unset := val("unset-env"); unset != "STALE" {
		t.Errorf("unset-env %q, want STALE only", unset)
	}
	if hasFlag("arg") {
		if a := val("arg"); a != "other.lua" {
			t.Errorf("args %q: the command line's --arg should replace the manifest's", a)
		}
		if fl := f.Lookup("files"); fl.Value.String() != filepath.Join(dir, "static") {
			t.Errorf("files %q, want the directory resolved against the manifest's", fl.Value.String())
		}
	} else {
		t.Log("no --arg/--files flags in this build: args and files checked as translation only")
	}
}

// files and image may not lead out of the manifest's directory through a
// symbolic link: a cloned app must not publish the files next to it.
func TestManifestInside(t *testing.T) {
	outside := t.TempDir()
	os.WriteFile(filepath.Join(outside, "id_rsa"), []byte("private"), 0o600)
	dir := t.TempDir()
	os.Symlink(outside, filepath.Join(dir, "static"))
	os.Symlink(filepath.Join(outside, "id_rsa"), filepath.Join(dir, "app.elf"))
	os.WriteFile(filepath.Join(dir, "dust.toml"), []byte("name = \"a\"\nimage = \"app.elf\"\nfiles = \"static\"\n"), 0o644)
	if _, err := loadManifest(dir); err == nil || !strings.Contains(err.Error(), "dust.toml:3: files \"static\": leads to") {
		t.Fatalf("files through a symlink out: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "dust.toml"), []byte("name = \"a\"\nimage = \"app.elf\"\n"), 0o644)
	m, err := loadManifest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.checkImage(); err == nil || !strings.Contains(err.Error(), "outside the manifest's directory") {
		t.Fatalf("image through a symlink out: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "dust.toml"), []byte("name = \"a\"\nimage = \"b.elf\"\nfiles = \"nope\"\n"), 0o644)
	if _, err := loadManifest(dir); err == nil || !strings.Contains(err.Error(), "dust.toml:3: files \"nope\"") {
		t.Fatalf("missing files directory: %v", err)
	}
	// The kind, when given, must be the image's.
	os.WriteFile(filepath.Join(dir, "b.elf"), []byte("\x00asm\x01\x00\x00\x00"), 0o644)
	os.WriteFile(filepath.Join(dir, "dust.toml"), []byte("name = \"a\"\nimage = \"b.elf\"\nkind = \"hvt\"\n"), 0o644)
	if m, err = loadManifest(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := m.checkImage(); err == nil || !strings.Contains(err.Error(), `dust.toml:3: kind "hvt", but image b.elf is a wasm image`) {
		t.Fatalf("kind mismatch: %v", err)
	}
	big := filepath.Join(dir, "big.toml")
	os.WriteFile(big, make([]byte, maxManifestSize+1), 0o644)
	if _, err := loadManifest(big); err == nil || !strings.Contains(err.Error(), "larger than 64KiB") {
		t.Fatalf("a huge manifest: %v", err)
	}
}

// FuzzManifest: no input panics the parser, every refusal is a
// ManifestError, and every manifest it accepts translates into deploy
// flags the deploy command accepts.
func FuzzManifest(f *testing.F) {
	f.Add([]byte(fullManifest))
	f.Add([]byte("name = \"a\"\nimage = \"a.wasm\"\n"))
	f.Add([]byte("name = \"a\"\nimage = \"x\"\nenv = { A = \"1\", B = \"2\" }\nargs = []\n"))
	f.Add([]byte("name = \"a\"\nimage = \"x\"\n[env]\nA.B = \"1\"\n"))
	f.Add([]byte("name = \"a\"\nimage = \"x\"\nmemory = \"99999999999GiB\"\nqueue = 9223372036854775807\n"))
	f.Add([]byte("[[x]]\n[a.b.c]\nname = 'a'\n"))
	f.Add([]byte("name = \"a\"\nimage = \"x\"\nroute = \"/a/../b\"\nhost = \"\"\n"))
	f.Add([]byte("\xff\xfe"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := parseManifest(data, "dust.toml")
		if err != nil {
			var me *ManifestError
			if !errors.As(err, &me) {
				t.Fatalf("refusal %v is not a ManifestError", err)
			}
			return
		}
		fl := newCmdFlags("deploy", "", "", "")
		deployCommand(fl)
		for _, a := range m.flagArgs() {
			if a.flag == "files" || fl.Lookup(a.flag) == nil {
				continue // resolved against the file system at deploy
			}
			if err := fl.Set(a.flag, a.value); err != nil {
				t.Fatalf("accepted manifest gives --%s %q, which the deploy flags refuse: %v\n%s", a.flag, a.value, err, data)
			}
		}
	})
}
