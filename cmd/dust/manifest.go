package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/dust-run/dust/internal/gateway"
	"github.com/dust-run/dust/internal/store"
)

// The app manifest, dust.toml (docs/manifest.md): what `dust deploy`
// with no image, and `dust dev`, deploy. It is a translation onto the
// deploy command's flags, not a second way of setting things: every key
// becomes the flag of the same meaning and goes through that flag's own
// parsing, so a manifest can say nothing a command line cannot.
//
// A manifest deploy is declarative: a setting the manifest leaves out is
// deployed as its default, not inherited from the current version, so the
// file alone says what runs, and a flag given on the command line
// overrides the manifest for that one deploy only.

// manifestFile is the name `dust deploy` and `dust dev` look for.
const manifestFile = "dust.toml"

// Limits on what a manifest holds. A manifest may come with a cloned
// repository, so it is input like any other; these are far above what an
// app needs and keep a hostile one from costing more than a refusal.
const (
	maxManifestSize = 64 << 10 // go-toml checks duplicate keys in time quadratic in a table's keys
	maxSecretNames  = 256
	maxBuildLen     = 16 << 10
)

// serveModes are the values `serve` accepts. It is reserved for serve
// modes beyond one CGI request per machine; "cgi" is today's and the
// default, and anything else is refused rather than ignored so that a
// manifest written for a later mode does not silently run as CGI.
var serveModes = []string{"cgi", "http"}

// manifestDoc is the manifest as TOML decodes it. Pointers are keys whose
// zero value is also a meaningful setting, so that "absent" stays visible.
type manifestDoc struct {
	Name              string            `toml:"name"`
	Image             string            `toml:"image"`
	Build             string            `toml:"build"`
	Kind              string            `toml:"kind"`
	Route             *string           `toml:"route"`
	Host              *string           `toml:"host"`
	Memory            string            `toml:"memory"`
	Timeout           string            `toml:"timeout"`
	Concurrency       *int64            `toml:"concurrency"`
	Queue             *int64            `toml:"queue"`
	QueueWait         string            `toml:"queue_wait"`
	MaxBody           string            `toml:"max_body"`
	PassAuthorization *bool             `toml:"pass_authorization"`
	Isolation         string            `toml:"isolation"`
	Env               map[string]string `toml:"env"`
	Secrets           []string          `toml:"secrets"`
	Args              []string          `toml:"args"`
	Files             *string           `toml:"files"`
	QueryArgs         *bool             `toml:"query_args"`
	Serve             string            `toml:"serve"`
}

// manifestKeys says, for each key, what it wants: the text of the error
// when a value has the wrong TOML type, and the list an unknown key is
// told about.
var manifestKeys = []struct{ key, want string }{
	{"name", `the app's name as a string, such as name = "hello"`},
	{"image", `the image's path as a string, relative to dust.toml, such as image = "app.elf"`},
	{"build", `the command that builds the image as a string, such as build = "make"`},
	{"kind", `"hvt" or "wasm"`},
	{"route", `a path as a string, such as route = "/hello"`},
	{"host", `a host name as a string, such as host = "example.com"`},
	{"memory", `a size as a string, such as memory = "16MiB"`},
	{"timeout", `a duration as a string, such as timeout = "2s"`},
	{"concurrency", `a whole number, such as concurrency = 16`},
	{"queue", `a whole number, such as queue = 64 (-1: no queue)`},
	{"queue_wait", `a duration as a string, such as queue_wait = "2s"`},
	{"max_body", `a size as a string, such as max_body = "64MiB"`},
	{"pass_authorization", `true or false`},
	{"isolation", `"restore" or "fresh"`},
	{"env", `a table of strings, such as [env] followed by GREETING = "howdy"`},
	{"secrets", `an array of secret names, such as secrets = ["DB_PASS"]`},
	{"args", `an array of strings, such as args = ["-q", "main.lua"]`},
	{"files", `a directory as a string, relative to dust.toml, such as files = "static"`},
	{"query_args", `true or false`},
	{"serve", `"cgi" (the default) or "http" (a server app)`},
}

func manifestWant(key string) string {
	top, _, _ := strings.Cut(key, ".")
	for _, k := range manifestKeys {
		if k.key == top {
			return k.want
		}
	}
	return ""
}

func manifestKeyList() string {
	var ks []string
	for _, k := range manifestKeys {
		ks = append(ks, k.key)
	}
	return strings.Join(ks, ", ")
}

// Manifest is a parsed, validated dust.toml.
type Manifest struct {
	// Path is the file as the user named it (for messages); Dir the
	// directory it is in, absolute, where paths are relative to and the
	// build runs.
	Path, Dir string
	doc       manifestDoc
	lines     map[string]int
}

// ManifestError is a manifest that cannot be deployed: the key that is
// wrong, where, and what is allowed. It is a bad setting (exit 2).
type ManifestError struct {
	File string
	Line int // 0: not known
	Key  string
	Msg  string // says the key itself
}

func (e *ManifestError) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

func (e *ManifestError) Unwrap() error { return errUsage }

// errBuild is a manifest's build command that failed (exit 1).
var errBuild = errors.New("build failed")

func (m *Manifest) fail(key, format string, args ...any) error {
	return &ManifestError{File: m.Path, Line: m.line(key), Key: key, Msg: fmt.Sprintf(format, args...)}
}

// line is where key was written, or where the table holding it was.
func (m *Manifest) line(key string) int {
	for k := key; k != ""; {
		if l, ok := m.lines[k]; ok {
			return l
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

// Name is the app the manifest deploys.
func (m *Manifest) Name() string { return m.doc.Name }

// ImagePath is the image's path, absolute.
func (m *Manifest) ImagePath() string { return filepath.Join(m.Dir, m.doc.Image) }

// loadManifest reads and checks the manifest at path (a file, or a
// directory holding dust.toml).
func loadManifest(path string) (*Manifest, error) {
	st, err := os.Stat(path)
	if err == nil && st.IsDir() {
		path = filepath.Join(path, manifestFile)
		st, err = os.Stat(path)
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, badUsage("no manifest: %v (write one, or start from a template: dust new TEMPLATE DIR)", err)
		}
		return nil, err
	}
	// Checked before opening: opening a FIFO would wait for a writer.
	if !st.Mode().IsRegular() {
		return nil, &ManifestError{File: path, Msg: "not a regular file; want a dust.toml"}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxManifestSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxManifestSize {
		return nil, &ManifestError{File: path, Msg: fmt.Sprintf("larger than %s; a manifest is a few lines of settings", gateway.FormatSize(maxManifestSize))}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	m, err := parseManifest(data, path)
	if err != nil {
		return nil, err
	}
	m.Dir = filepath.Dir(abs)
	if m.doc.Files != nil {
		dir, err := m.inside("files", *m.doc.Files)
		if err != nil {
			return nil, err
		}
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return nil, m.fail("files", "files %q: %s is not a directory (want a directory of read-only files beside dust.toml)", *m.doc.Files, dir)
		}
	}
	return m, nil
}

// parseManifest decodes and checks a manifest without touching the file
// system; path is only for messages.
func parseManifest(data []byte, path string) (*Manifest, error) {
	m := &Manifest{Path: path}
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(&m.doc); err != nil {
		return nil, m.decodeError(err)
	}
	m.lines = keyLines(data)
	if err := m.check(); err != nil {
		return nil, err
	}
	return m, nil
}

// decodeError says what the TOML decoder refused in the manifest's terms.
func (m *Manifest) decodeError(err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) && len(strict.Errors) > 0 {
		e := strict.Errors[0]
		line, _ := e.Position()
		key := strings.Join(e.Key(), ".")
		return &ManifestError{File: m.Path, Line: line, Key: key,
			Msg: fmt.Sprintf("unknown key %q (the keys are %s)", key, manifestKeyList())}
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		if want := manifestWant(key); want != "" && strings.HasPrefix(de.Error(), "toml: cannot ") {
			return &ManifestError{File: m.Path, Line: line, Key: key, Msg: fmt.Sprintf("%s: want %s", key, want)}
		}
		return &ManifestError{File: m.Path, Line: line, Key: key, Msg: "not valid TOML: " + strings.TrimPrefix(de.Error(), "toml: ")}
	}
	return &ManifestError{File: m.Path, Msg: "not valid TOML: " + strings.TrimPrefix(err.Error(), "toml: ")}
}

// keyLines maps every key of a document that decoded to the line it is
// on ("env.GREETING" for a key of [env]). Positions are not part of
// go-toml's decoding API; its parser has them.
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	// Offsets to lines through the newlines' offsets: the parser's own
	// Shape counts from the start of the document for every key, which a
	// manifest of many keys turns quadratic.
	var nl []int
	for i, c := range data {
		if c == '\n' {
			nl = append(nl, i)
		}
	}
	lineOf := func(off uint32) int { return sort.SearchInts(nl, int(off)) + 1 }
	var p unstable.Parser
	p.Reset(data)
	join := func(it unstable.Iterator) (string, int) {
		var parts []string
		line := 0
		for it.Next() {
			n := it.Node()
			if line == 0 {
				line = lineOf(n.Raw.Offset)
			}
			parts = append(parts, string(n.Data))
		}
		return strings.Join(parts, "."), line
	}
	prefix := ""
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			k, l := join(e.Key())
			prefix = k
			lines[k] = l
		case unstable.KeyValue:
			k, l := join(e.Key())
			if prefix != "" {
				k = prefix + "." + k
			}
			lines[k] = l
		}
	}
	return lines
}

// check validates every key, each with the rules of the flag it becomes.
func (m *Manifest) check() error {
	d := &m.doc
	if d.Name == "" {
		return m.fail("name", `name is missing: want the app's name, such as name = "hello" (a-z, 0-9 and -, at most 63)`)
	}
	if err := store.ValidateName(d.Name); err != nil {
		return m.fail("name", "name %q: want a-z, 0-9 and - (not first), at most 63 characters", d.Name)
	}
	if d.Image == "" {
		return m.fail("image", `image is missing: want the path of the app's image relative to dust.toml, such as image = "app.elf" (with build, the file the build writes)`)
	}
	if !filepath.IsLocal(d.Image) {
		return m.fail("image", "image %q: want a path inside the manifest's directory, relative to it (no leading / or ..)", d.Image)
	}
	if len(d.Build) > maxBuildLen || strings.ContainsRune(d.Build, 0) {
		return m.fail("build", "build: want a shell command of at most %d bytes without NUL", maxBuildLen)
	}
	if d.Build != "" && strings.TrimSpace(d.Build) == "" {
		return m.fail("build", `build is blank: want a command, such as build = "make", or no build key`)
	}
	if d.Kind != "" && d.Kind != store.KindHVT && d.Kind != store.KindWasm {
		return m.fail("kind", "kind %q: want %q or %q (or leave it out: it is read from the image)", d.Kind, store.KindHVT, store.KindWasm)
	}
	if d.Serve != "" && !slices.Contains(serveModes, d.Serve) {
		return m.fail("serve", "serve %q: want %q or %q", d.Serve, serveModes[0], serveModes[1])
	}
	if d.Files != nil && !filepath.IsLocal(*d.Files) {
		return m.fail("files", "files %q: want a directory inside the manifest's directory, relative to it (no leading / or ..)", *d.Files)
	}
	// The store's bounds on fixed arguments, as --arg has them.
	if len(d.Args) > store.MaxArgs {
		return m.fail("args", "args: %d of them, at most %d allowed", len(d.Args), store.MaxArgs)
	}
	n := 0
	for i, a := range d.Args {
		n += len(a) + 1
		if strings.ContainsRune(a, 0) {
			return m.fail("args", "args[%d]: contains a NUL byte, which no argument can hold", i)
		}
	}
	if n > store.MaxArgBytes {
		return m.fail("args", "args: %d bytes together (with a NUL after each), at most %d allowed", n, store.MaxArgBytes)
	}
	if len(d.Secrets) > maxSecretNames {
		return m.fail("secrets", "secrets: %d names, at most %d allowed", len(d.Secrets), maxSecretNames)
	}
	for i, s := range d.Secrets {
		if !validKey(s) {
			return m.fail("secrets", "secrets[%d] %q: want a name such as DB_PASS (letters, digits, _); the value is set with 'dust secret set %s %s=VALUE'", i, s, d.Name, s)
		}
		if slices.Index(d.Secrets, s) != i {
			return m.fail("secrets", "secrets: %s is named twice", s)
		}
		if _, ok := d.Env[s]; ok {
			return m.fail("secrets", "secrets: %s is also in [env]; a name is either an env variable or a secret", s)
		}
	}
	for _, k := range sortedKeys(d.Env) {
		if !validKey(k) {
			return m.fail("env."+k, "env key %q: want a name such as GREETING (letters, digits, _)", k)
		}
	}
	// Route, host, isolation and env: the store's own rules, one field
	// at a time so that its error is that key's.
	if d.Route != nil && *d.Route != "" && !strings.HasPrefix(*d.Route, "/") {
		return m.fail("route", "route %q: want a path starting with /, such as /%s", *d.Route, d.Name)
	}
	def := store.Settings{Route: "/" + d.Name}
	one := func(key string, s store.Settings, shown string) error {
		if err := s.Normalize().Validate(); err != nil {
			msg := err.Error()
			if _, after, ok := strings.Cut(msg, " "+key+": "); ok {
				msg = after
			}
			return m.fail(key, "%s %s: %s", key, shown, msg)
		}
		return nil
	}
	if d.Route != nil && *d.Route != "" {
		s := def
		s.Route = *d.Route
		if err := one("route", s, strconv.Quote(*d.Route)); err != nil {
			return err
		}
	}
	if d.Host != nil {
		s := def
		s.Host = *d.Host
		if err := one("host", s, strconv.Quote(*d.Host)); err != nil {
			return err
		}
	}
	if d.Isolation != "" {
		s := def
		s.Isolation = d.Isolation
		if err := one("isolation", s, strconv.Quote(d.Isolation)); err != nil {
			return err
		}
	}
	s := def
	for _, k := range sortedKeys(d.Env) {
		kv := def
		kv.Env = []string{k + "=" + d.Env[k]}
		if err := kv.Normalize().Validate(); err != nil {
			msg := err.Error()
			if _, after, ok := strings.Cut(msg, ": "); ok {
				msg = after
			}
			return m.fail("env."+k, "env %s: %s", k, msg)
		}
		s.Env = append(s.Env, kv.Env[0])
	}
	if err := one("env", s, "table"); err != nil {
		return err
	}
	// The values that are flag values go through a scratch deploy flag
	// set: the manifest accepts exactly what the flags accept.
	scratch := newCmdFlags("deploy", "", "", "")
	deployCommand(scratch)
	for _, a := range m.flagArgs() {
		// files is resolved against the manifest's directory (inside).
		if a.key == "" || a.flag == "files" || scratch.Lookup(a.flag) == nil {
			continue
		}
		if err := scratch.Set(a.flag, a.value); err != nil {
			return m.fail(a.key, "%s %s: %v", a.key, a.shown, err)
		}
	}
	return nil
}

func sortedKeys(env map[string]string) []string {
	ks := make([]string, 0, len(env))
	for k := range env {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// flagArg is one deploy flag a manifest stands for. key is the manifest
// key it comes from ("" for a reset of a key the manifest leaves out);
// shown is the value as the user wrote it, for messages.
type flagArg struct {
	flag, value string
	key, shown  string
}

// flagArgs translates the manifest into deploy flags. A key that is left
// out becomes the flag that asks for the default.
func (m *Manifest) flagArgs() []flagArg {
	d := &m.doc
	var out []flagArg
	str := func(flag, key string, v *string) {
		if v == nil {
			out = append(out, flagArg{flag: flag, value: ""})
			return
		}
		out = append(out, flagArg{flag: flag, value: *v, key: key, shown: strconv.Quote(*v)})
	}
	val := func(flag, key, v, zero string) {
		if v == "" {
			out = append(out, flagArg{flag: flag, value: zero})
			return
		}
		out = append(out, flagArg{flag: flag, value: v, key: key, shown: strconv.Quote(v)})
	}
	num := func(flag, key string, v *int64) {
		if v == nil {
			out = append(out, flagArg{flag: flag, value: "0"})
			return
		}
		s := strconv.FormatInt(*v, 10)
		out = append(out, flagArg{flag: flag, value: s, key: key, shown: s})
	}
	boolean := func(flag, key string, v *bool) {
		if v == nil {
			out = append(out, flagArg{flag: flag, value: "false"})
			return
		}
		s := strconv.FormatBool(*v)
		out = append(out, flagArg{flag: flag, value: s, key: key, shown: s})
	}
	str("route", "route", d.Route)
	str("host", "host", d.Host)
	val("memory", "memory", d.Memory, "0")
	val("timeout", "timeout", d.Timeout, "0")
	num("max-concurrency", "concurrency", d.Concurrency)
	num("queue-len", "queue", d.Queue)
	val("queue-wait", "queue_wait", d.QueueWait, "0")
	val("max-body", "max_body", d.MaxBody, "0")
	boolean("pass-authorization", "pass_authorization", d.PassAuthorization)
	val("isolation", "isolation", strings.ToLower(d.Isolation), "")
	val("serve", "serve", strings.ToLower(d.Serve), "cgi")
	for _, k := range sortedKeys(d.Env) {
		out = append(out, flagArg{flag: "env", value: k + "=" + d.Env[k], key: "env." + k, shown: strconv.Quote(d.Env[k])})
	}
	if len(d.Args) == 0 {
		out = append(out, flagArg{flag: "no-args", value: "true"})
	}
	for i, a := range d.Args {
		out = append(out, flagArg{flag: "arg", value: a, key: "args", shown: fmt.Sprintf("[%d] %q", i, a)})
	}
	if d.Files == nil {
		out = append(out, flagArg{flag: "no-files", value: "true"})
	} else {
		// The flag gets the directory resolved against the manifest's, not
		// the working directory's (see apply).
		out = append(out, flagArg{flag: "files", value: *d.Files, key: "files", shown: strconv.Quote(*d.Files)})
	}
	boolean("query-args", "query_args", d.QueryArgs)
	return out
}

// multiFlags are the repeatable flags: a user's flag replaces all of the
// manifest's values, except env, which is merged key by key.
var multiFlags = map[string][]string{
	"arg": {"arg", "no-args"}, "no-args": {"arg", "no-args"},
	"files": {"files", "no-files"}, "no-files": {"files", "no-files"},
}

// apply sets on f, a deploy flag set the user's command line has been
// parsed into, every manifest setting the command line did not give.
// current is the app's current version, if it has one: env variables it
// has that neither the manifest nor the command line keeps are unset,
// because a manifest deploy is declarative.
func (m *Manifest) apply(f *cmdFlags, current *gateway.AppView) error {
	given := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	userEnv := map[string]bool{}
	if fl := f.Lookup("env"); fl != nil {
		for _, kv := range fl.Value.(*kvList).v {
			k, _, _ := strings.Cut(kv, "=")
			userEnv[k] = true
		}
	}
	if fl := f.Lookup("unset-env"); fl != nil {
		for _, k := range fl.Value.(*kvList).v {
			userEnv[k] = true
		}
	}
	for _, a := range m.flagArgs() {
		skip := given[a.flag]
		for _, g := range multiFlags[a.flag] {
			skip = skip || given[g]
		}
		if a.flag == "env" {
			k, _, _ := strings.Cut(a.value, "=")
			skip = userEnv[k]
		}
		if skip {
			continue
		}
		if f.Lookup(a.flag) == nil {
			if a.key == "" {
				continue // a reset of something this dust cannot set anyway
			}
			return m.fail(a.key, "%s: this dust has no --%s flag to deploy it with (update dust, or remove the key)", a.key, a.flag)
		}
		v := a.value
		if a.flag == "files" {
			dir, err := m.inside("files", v)
			if err != nil {
				return err
			}
			v = dir
		}
		if err := f.Set(a.flag, v); err != nil {
			return m.fail(a.key, "%s %s: %v", a.key, a.shown, err)
		}
	}
	if current != nil {
		for _, kv := range current.Settings.Env {
			k, _, _ := strings.Cut(kv, "=")
			if _, keep := m.doc.Env[k]; keep || userEnv[k] {
				continue
			}
			if err := f.Set("unset-env", k); err != nil {
				return fmt.Errorf("unsetting %s, which dust.toml does not set: %w", k, err)
			}
		}
	}
	return nil
}

// inside resolves rel against the manifest's directory and refuses a
// path that leaves it, symbolic links followed: a manifest that comes
// with someone else's code must not deploy (and so publish) files from
// elsewhere on this machine.
func (m *Manifest) inside(key, rel string) (string, error) {
	if !filepath.IsLocal(rel) {
		return "", m.fail(key, "%s %q: want a path inside the manifest's directory, relative to it", key, rel)
	}
	p := filepath.Join(m.Dir, rel)
	root, err := filepath.EvalSymlinks(m.Dir)
	if err != nil {
		return "", fmt.Errorf("%s: %w", m.Dir, err)
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", m.fail(key, "%s %q: %v", key, rel, err)
	}
	if r, err := filepath.Rel(root, real); err != nil || !filepath.IsLocal(r) {
		return "", m.fail(key, "%s %q: leads to %s, outside the manifest's directory %s (symbolic links are followed)", key, rel, real, root)
	}
	return p, nil
}

// build runs the manifest's build command, if it has one, in the
// manifest's directory with the user's environment, its output going to
// w. A cancelled ctx ends it and everything it started.
func (m *Manifest) build(ctx context.Context, w io.Writer) error {
	if m.doc.Build == "" {
		return nil
	}
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", m.doc.Build)
	cmd.Dir = m.Dir
	cmd.Stdout, cmd.Stderr = w, w
	// Its own process group, so that cancelling reaches the compilers
	// a build starts, not only the shell.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: build interrupted", errBuild)
		}
		return fmt.Errorf("%w: %v (build = %q, %s:%d, run in %s)", errBuild, err, m.doc.Build, m.Path, m.line("build"), m.Dir)
	}
	return nil
}

// checkImage finds the image the manifest names and checks its kind.
func (m *Manifest) checkImage() (string, error) {
	p, err := m.inside("image", m.doc.Image)
	if err != nil {
		var me *ManifestError
		if errors.As(err, &me) && m.doc.Build == "" {
			me.Msg += " (the manifest has no build command to make it)"
		} else if errors.As(err, &me) {
			me.Msg += " (the build did not write it)"
		}
		return "", err
	}
	f, err := os.Open(p)
	if err != nil {
		return "", m.fail("image", "image %q: %v", m.doc.Image, err)
	}
	defer f.Close()
	var magic [4]byte
	n, _ := io.ReadFull(f, magic[:])
	kind := ""
	switch string(magic[:n]) {
	case "\x7fELF":
		kind = store.KindHVT
	case "\x00asm":
		kind = store.KindWasm
	}
	if m.doc.Kind != "" && kind != "" && kind != m.doc.Kind {
		return "", m.fail("kind", "kind %q, but image %s is a %s image (%s); fix kind or leave it out", m.doc.Kind, m.doc.Image, kind, map[string]string{store.KindHVT: "ELF", store.KindWasm: "WebAssembly"}[kind])
	}
	return p, nil
}

// deployCommand is `dust deploy`: NAME IMAGE as before, or, with no
// arguments or -f, the manifest.
func deployCommand(f *cmdFlags) func(*adminClient, []string, io.Writer, io.Writer) error {
	file := f.str("f", "PATH", "deploy the manifest at PATH (a dust.toml, or a directory holding one); the default with no NAME IMAGE: ./dust.toml")
	deploy := deployFlags(f)
	return func(c *adminClient, pos []string, stdout, stderr io.Writer) error {
		if !file.given && len(pos) == 2 {
			return deploy(c, pos, stdout, stderr)
		}
		if len(pos) != 0 {
			return badUsage("-f %s and NAME IMAGE: give one or the other", file.v)
		}
		path := manifestFile
		if file.given {
			path = file.v
		} else if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return badUsage("no %s here: want NAME IMAGE, or an app manifest (dust new TEMPLATE DIR writes an app with one)", manifestFile)
		}
		m, err := loadManifest(path)
		if err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := m.build(ctx, stderr); err != nil {
			return err
		}
		stop()
		return m.deploy(c, f, deploy, "dust deploy", stdout, stderr)
	}
}

// deploy deploys a built manifest through the deploy flags f, on which
// the user's command line (if any) has been parsed.
func (m *Manifest) deploy(c *adminClient, f *cmdFlags, deploy func(*adminClient, []string, io.Writer, io.Writer) error, who string, stdout, stderr io.Writer) error {
	img, err := m.checkImage()
	if err != nil {
		return err
	}
	var cur *gateway.AppView
	var app gateway.AppView
	_, err = c.call("GET", "/v1/apps/"+url.PathEscape(m.doc.Name), nil, nil, &app)
	var ae *adminError
	switch {
	case err == nil:
		cur = &app
	case errors.As(err, &ae) && ae.status == 404:
	default:
		return err
	}
	if err := m.apply(f, cur); err != nil {
		return err
	}
	if err := deploy(c, []string{m.doc.Name, img}, stdout, stderr); err != nil {
		return err
	}
	// Secrets named in the manifest but not set: the app deployed, but
	// say what it is missing and how to give it.
	have := map[string]bool{}
	if cur != nil {
		for _, s := range cur.Secrets {
			have[s] = true
		}
	}
	if fl := f.Lookup("secret"); fl != nil {
		for _, kv := range fl.Value.(*kvList).v {
			k, _, _ := strings.Cut(kv, "=")
			have[k] = true
		}
	}
	for _, s := range m.doc.Secrets {
		if !have[s] {
			fmt.Fprintf(stderr, "%s: %s:%d: secret %s is not set; set it with: dust secret set %s %s=VALUE\n", who, m.Path, m.line("secrets"), s, m.doc.Name, s)
		}
	}
	return nil
}
