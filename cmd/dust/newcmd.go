package main

import (
	"bufio"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/template"

	"github.com/dust-run/dust/internal/store"
)

// `dust new TEMPLATE DIR`: a working app and its dust.toml.

// The templates are templates/NAME/*.tmpl: each file is written without
// its .tmpl, a leading "dot." becoming ".". Nothing in there is Go source
// or a go.mod to the go command, so the templates never become part of
// this module.
//
//go:embed templates
var templateFS embed.FS

type appTemplate struct {
	name, about string
	// needsSource: the app builds against the Dust checkout (dustcc,
	// package dustgo), so `dust new` must find one.
	needsSource bool
}

var appTemplates = []appTemplate{
	{"c", "C for hvt micro-VMs with libdust, built by dustcc: the smallest, fastest apps", true},
	{"go-wasm", "Go for the wasm kind, a dustgo reactor: the Go runtime starts once per deploy", true},
	{"linux-c", "ordinary C for hvt micro-VMs, a gcc -static Linux program (the full C library)", false},
	{"go-linux", "Go for hvt micro-VMs, a CGO_ENABLED=0 GOOS=linux net/http/cgi program", false},
	{"go-server", "an ordinary Go net/http server on hvt, a server app: one fresh copy per request", false},
}

func findTemplate(name string) (appTemplate, bool) {
	for _, t := range appTemplates {
		if t.name == name {
			return t, true
		}
	}
	return appTemplate{}, false
}

func templateList() string {
	var b strings.Builder
	b.WriteString("templates:\n")
	for _, t := range appTemplates {
		fmt.Fprintf(&b, "  %-9s %s\n", t.name, t.about)
	}
	return b.String()
}

func cmdNew(args []string, stdout, stderr io.Writer) int {
	f := newCmdFlags("new", "TEMPLATE DIR [flags]",
		`Writes a working app into DIR (new or empty) from TEMPLATE, with its
manifest dust.toml: then 'cd DIR && dust dev' serves it locally and
redeploys it on every change, and 'dust deploy' deploys it. The app is
named after DIR unless --name says otherwise. Without arguments it lists
the templates.

`+templateList(),
		"  dust new c hello && cd hello && dust dev\n  dust new go-wasm api --name my-api")
	name := f.str("name", "NAME", "the app's name (default: DIR's last element, lower-cased)")
	source := f.str("source", "DIR", "the Dust checkout the c and go-wasm templates build against (default: env DUST_SOURCE, else the one this dust was built from)")
	pos, code, ok := f.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) == 0 {
		fmt.Fprint(stdout, templateList())
		return exitOK
	}
	tmpl, found := findTemplate(pos[0])
	if !found {
		fmt.Fprintf(stderr, "dust new: unknown template %q\n%s", pos[0], templateList())
		return exitUsage
	}
	if len(pos) != 2 {
		return f.usageErr(stderr, "want TEMPLATE DIR, got %d argument(s)", len(pos))
	}
	dir := pos[1]
	app := name.v
	if !name.given {
		app = appNameFrom(dir)
	}
	if err := store.ValidateName(app); err != nil {
		if name.given {
			return f.usageErr(stderr, "--name %q: want a-z, 0-9 and - (not first), at most 63 characters", app)
		}
		return f.usageErr(stderr, "DIR %s does not make an app name (%q); give one with --name, such as --name hello", dir, app)
	}
	vars := templateVars{Name: app, Route: "/" + app}
	if tmpl.needsSource {
		src, err := findSource(source.v, source.given)
		if err != nil {
			fmt.Fprintf(stderr, "dust new: %v\n", err)
			return exitCode(err)
		}
		vars.Source = src
		vars.Build = shellQuote(filepath.Join(src, "guest", "dustcc")) + " -o app.elf app.c"
		vars.GoVersion = goDirective(filepath.Join(src, "go.mod"))
	}
	if vars.GoVersion == "" {
		vars.GoVersion = strings.TrimPrefix(strings.Fields(runtime.Version() + " ")[0], "go")
	}
	files, err := writeTemplate(tmpl.name, dir, vars)
	if err != nil {
		fmt.Fprintf(stderr, "dust new: %v\n", err)
		return exitCode(err)
	}
	fmt.Fprintf(stdout, "dust new: wrote %s, app %s (%s)\n", dir, app, tmpl.name)
	for _, p := range files {
		fmt.Fprintf(stdout, "  %s\n", filepath.Join(dir, p))
	}
	fmt.Fprintf(stdout, "next:\n  cd %s && dust dev      # serve it on a local gateway, redeploy on every change\n  cd %s && dust deploy   # deploy it to the gateway (--admin, default 127.0.0.1:8081)\n", shellQuote(dir), shellQuote(dir))
	return exitOK
}

type templateVars struct {
	Name, Route string
	Source      string // the Dust checkout
	Build       string // the c template's build command
	GoVersion   string
}

// appNameFrom makes an app name of a directory's last element.
func appNameFrom(dir string) string {
	base := strings.ToLower(filepath.Base(filepath.Clean(dir)))
	var b strings.Builder
	for _, c := range base {
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
			b.WriteRune(c)
		case c == '-' || c == '_' || c == '.' || c == ' ':
			if b.Len() > 0 {
				b.WriteByte('-')
			}
		}
	}
	return strings.TrimRight(b.String(), "-")
}

// writeTemplate writes template name into dir, which must be new or
// empty, and returns the files it wrote.
func writeTemplate(name, dir string, vars templateVars) ([]string, error) {
	if ents, err := os.ReadDir(dir); err == nil && len(ents) > 0 {
		return nil, badUsage("DIR %s is not empty; want a new or empty directory", dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		if st, serr := os.Stat(dir); serr == nil && !st.IsDir() {
			return nil, badUsage("DIR %s is a file; want a new or empty directory", dir)
		}
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	funcs := template.FuncMap{"toml": tomlString, "gomod": goModPath}
	root := path.Join("templates", name)
	ents, err := templateFS.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	var wrote []string
	for _, e := range ents {
		src, err := templateFS.ReadFile(path.Join(root, e.Name()))
		if err != nil {
			return nil, err
		}
		t, err := template.New(e.Name()).Funcs(funcs).Option("missingkey=error").Parse(string(src))
		if err != nil {
			return nil, fmt.Errorf("template %s/%s: %w", name, e.Name(), err)
		}
		out := strings.TrimSuffix(e.Name(), ".tmpl")
		if rest, ok := strings.CutPrefix(out, "dot."); ok {
			out = "." + rest
		}
		// O_EXCL: a file that appeared since the emptiness check is not
		// overwritten.
		w, err := os.OpenFile(filepath.Join(dir, out), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return nil, err
		}
		err = t.Execute(w, vars)
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("writing %s: %w", out, err)
		}
		wrote = append(wrote, out)
	}
	return wrote, nil
}

// findSource finds the Dust checkout a template builds against: the one
// given, else $DUST_SOURCE, else the one this binary is in (bin/dust of a
// checkout), else the one it was compiled from (the path the compiler
// recorded for this file, absent with -trimpath).
func findSource(given string, isGiven bool) (string, error) {
	if isGiven {
		if !isDustCheckout(given) {
			return "", badUsage("--source %s: not a Dust checkout (want the directory holding guest/dustcc and the dust go.mod)", given)
		}
		return filepath.Abs(given)
	}
	if env := os.Getenv("DUST_SOURCE"); env != "" {
		if !isDustCheckout(env) {
			return "", badUsage("DUST_SOURCE=%s: not a Dust checkout (want the directory holding guest/dustcc and the dust go.mod)", env)
		}
		return filepath.Abs(env)
	}
	var tried []string
	if exe, err := os.Executable(); err == nil {
		if exe, err = filepath.EvalSymlinks(exe); err == nil {
			d := filepath.Dir(filepath.Dir(exe))
			if isDustCheckout(d) {
				return d, nil
			}
			tried = append(tried, d)
		}
	}
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		d := filepath.Dir(filepath.Dir(filepath.Dir(file))) // .../cmd/dust/newcmd.go
		if isDustCheckout(d) {
			return d, nil
		}
		tried = append(tried, d)
	}
	return "", badUsage("cannot find the Dust checkout this template builds against (tried %s): give it with --source DIR or DUST_SOURCE", strings.Join(tried, ", "))
}

func isDustCheckout(dir string) bool {
	if st, err := os.Stat(filepath.Join(dir, "guest", "dustcc")); err != nil || st.IsDir() {
		return false
	}
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	return sc.Scan() && strings.TrimSpace(sc.Text()) == "module github.com/dust-run/dust"
}

// goDirective is the go line of a go.mod: a module that requires dust
// must ask for at least the Go version dust does.
func goDirective(gomod string) string {
	b, err := os.ReadFile(gomod)
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "go "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// tomlString writes s as a TOML basic string.
func tomlString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\u%04X`, r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// goModPath writes a directory for a replace directive, quoted when the
// go.mod syntax needs it.
func goModPath(p string) string {
	if strings.ContainsAny(p, " \t\"'`\\") {
		return strconv.Quote(p)
	}
	return p
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+=:,@", r))
	}) {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
