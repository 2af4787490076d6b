package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dust-run/dust/internal/gateway"
)

// adminClient talks to a running `dust serve` through its admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

var errAdmin = errors.New("admin API error")

// errNoToken: the client has no token to offer (exit 7, as a refused one).
var errNoToken = errors.New("no admin token")

// adminFlags adds the flags every admin command shares.
func adminFlags(f *cmdFlags) func() (*adminClient, error) {
	addr := f.String("admin", envOr("DUST_ADMIN", "127.0.0.1:8081"), "admin API `ADDRESS` (env DUST_ADMIN)")
	data := f.String("data", defaultDataDir(), "data `DIRECTORY` holding admin.token (env DUST_TOKEN overrides the file)")
	return func() (*adminClient, error) {
		tok := os.Getenv("DUST_TOKEN")
		if tok == "" {
			b, err := os.ReadFile(filepath.Join(*data, gateway.TokenFile))
			if err != nil {
				return nil, fmt.Errorf("%w: set DUST_TOKEN or --data (%v)", errNoToken, err)
			}
			tok = strings.TrimSpace(string(b))
		}
		base := *addr
		if !strings.Contains(base, "://") {
			base = "http://" + base
		}
		return &adminClient{base: strings.TrimSuffix(base, "/"), token: tok, http: &http.Client{}}, nil
	}
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// open sends a request and returns the response if its status is 200.
func (c *adminClient) open(method, path string, body io.Reader, hdr http.Header) (*http.Response, error) {
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	for k, vs := range hdr {
		req.Header[k] = vs
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v (is `dust serve` running?)", errAdmin, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		var e struct{ Error string }
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(b))
		}
		return nil, &adminError{status: resp.StatusCode, msg: e.Error}
	}
	return resp, nil
}

// call sends a request and decodes its JSON answer into out, keeping the
// raw answer for --json.
func (c *adminClient) call(method, path string, body io.Reader, hdr http.Header, out any) ([]byte, error) {
	resp, err := c.open(method, path, body, hdr)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("%w: reading the answer: %v", errAdmin, err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, fmt.Errorf("%w: the answer does not decode: %v", errAdmin, err)
		}
	}
	return raw, nil
}

type adminError struct {
	status int
	msg    string
}

func (e *adminError) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.msg, e.status) }
func (e *adminError) Unwrap() error { return errAdmin }

// adminExit maps admin API statuses to exit codes (docs/cli.md).
func adminExit(err error) int {
	var ae *adminError
	if errors.As(err, &ae) {
		switch ae.status {
		case http.StatusUnauthorized, http.StatusServiceUnavailable:
			return exitUnavailable
		case http.StatusUnprocessableEntity:
			return exitBadImage
		case http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge:
			return exitUsage
		case http.StatusNotFound:
			return exitNotFound
		}
		return exitError
	}
	if errors.Is(err, errAdmin) || errors.Is(err, errNoToken) {
		return exitUnavailable
	}
	return exitCode(err)
}

// adminCommand is one admin subcommand.
type adminCommand struct {
	synopsis, about, example string
	args                     []string // names of the positional arguments
	flags                    func(f *cmdFlags) func(c *adminClient, pos []string, stdout, stderr io.Writer) error
}

var adminCommands = map[string]adminCommand{
	"deploy": {
		synopsis: "NAME IMAGE [flags]  |  dust deploy [-f dust.toml] [flags]",
		about: `Deploys IMAGE (an ELF built for Dust, or a WebAssembly module; - reads it
from stdin) as app NAME, or redeploys it. A redeploy keeps every setting it
does not give: flags change only what they name. Giving a setting as 0
(or --host "") puts it back to the default. Deploying the image and
settings the current version already has makes no new version.

With no NAME IMAGE (or with -f) it deploys the app manifest, ./dust.toml:
runs its build command, then deploys its image with exactly the settings
it gives (a key it leaves out is the default, not inherited); flags given
as well override the manifest for this deploy (docs/manifest.md).`,
		example: `  dust deploy myapp app.elf --route /my --timeout 2s --memory 16MiB
  dust deploy myapp app2.elf --env GREETING=howdy     # keeps /my, 2s, 16MiB
  cat app.wasm | dust deploy myapp - --secret DB_PASS=hunter2
  dust deploy                                         # ./dust.toml
  dust deploy -f ../other/dust.toml --timeout 30s`,
		args:  []string{"NAME", "IMAGE"},
		flags: deployCommand, // NAME IMAGE, or no arguments: the manifest (manifest.go)
	},
	"apps": {
		synopsis: "[flags]",
		about:    "Lists the deployed apps: name, version, kind, route, URL, live machines, median latency.",
		example:  "  dust apps\n  dust apps --json | jq -r '.[].name'",
		flags: func(f *cmdFlags) func(*adminClient, []string, io.Writer, io.Writer) error {
			asJSON := f.Bool("json", false, "print the API's JSON instead of a table")
			return func(c *adminClient, _ []string, stdout, _ io.Writer) error {
				var apps []gateway.AppView
				raw, err := c.call("GET", "/v1/apps", nil, nil, &apps)
				if err != nil || *asJSON {
					stdout.Write(raw)
					return err
				}
				printApps(stdout, apps)
				return nil
			}
		},
	},
	"app": {
		synopsis: "NAME [flags]",
		about:    "Shows an app: its settings (defaults marked), secret names, live status, kept versions and recent failures.",
		example:  "  dust app myapp\n  dust app myapp --json | jq .settings",
		args:     []string{"NAME"},
		flags: func(f *cmdFlags) func(*adminClient, []string, io.Writer, io.Writer) error {
			asJSON := f.Bool("json", false, "print the API's JSON instead of text")
			return func(c *adminClient, pos []string, stdout, _ io.Writer) error {
				var app gateway.AppView
				raw, err := c.call("GET", "/v1/apps/"+url.PathEscape(pos[0]), nil, nil, &app)
				if err != nil || *asJSON {
					stdout.Write(raw)
					return err
				}
				printApp(stdout, app)
				return nil
			}
		},
	},
	"rollback": {
		synopsis: "NAME [--to N] [flags]",
		about:    "Makes an earlier version of app NAME current again, image and settings: the one before the current one, or version N.",
		example:  "  dust rollback myapp\n  dust rollback myapp --to 3",
		args:     []string{"NAME"},
		flags: func(f *cmdFlags) func(*adminClient, []string, io.Writer, io.Writer) error {
			to := f.integer("to", 1, "want a version number such as 3 (see 'dust app NAME')", "version to make current (default: the one before the current one)")
			asJSON := f.Bool("json", false, "print the API's JSON")
			return func(c *adminClient, pos []string, stdout, _ io.Writer) error {
				path := "/v1/apps/" + url.PathEscape(pos[0]) + "/rollback"
				if to.given {
					path += "?to=" + strconv.Itoa(to.v)
				}
				var res gateway.DeployResult
				raw, err := c.call("POST", path, nil, nil, &res)
				if err != nil || *asJSON {
					stdout.Write(raw)
					return err
				}
				fmt.Fprintf(stdout, "%s v%d → %s (rolled back from v%d)\n", res.Name, res.Version, res.URL, res.Previous)
				return nil
			}
		},
	},
	"rm": {
		synopsis: "NAME [flags]",
		about:    "Removes app NAME: its versions, secrets and log. Its images are deleted unless another app uses them.",
		example:  "  dust rm myapp",
		args:     []string{"NAME"},
		flags: func(f *cmdFlags) func(*adminClient, []string, io.Writer, io.Writer) error {
			return func(c *adminClient, pos []string, stdout, _ io.Writer) error {
				if _, err := c.call("DELETE", "/v1/apps/"+url.PathEscape(pos[0]), nil, nil, nil); err != nil {
					return err
				}
				fmt.Fprintf(stdout, "%s removed\n", pos[0])
				return nil
			}
		},
	},
	"gc": {
		synopsis: "[flags]",
		about: `Gives disk back now: deletes the images and files layers no version of any app uses (uploaded
more than 15 minutes ago, so deploys in progress keep theirs) and the
compiled code of images no kept version uses, and says how much it freed.
The server does the same by itself every hour and whenever it removes an
app or refuses a deploy.`,
		example: "  dust gc\n  dust gc --json",
		flags: func(f *cmdFlags) func(*adminClient, []string, io.Writer, io.Writer) error {
			asJSON := f.Bool("json", false, "print the API's JSON")
			return func(c *adminClient, _ []string, stdout, _ io.Writer) error {
				var res gateway.GCResult
				raw, err := c.call("POST", "/v1/gc", nil, nil, &res)
				if err != nil || *asJSON {
					stdout.Write(raw)
					return err
				}
				fmt.Fprintf(stdout, "images and files layers removed: %d (%s); compiled code pruned: %s\n", res.ImagesRemoved, humanSize(res.ImageBytes), humanSize(res.CompiledBytes))
				return nil
			}
		},
	},
	"logs": {
		synopsis: "NAME [-f] [--since DURATION] [flags]",
		about: `Prints app NAME's log: what its machines wrote to stderr, and a line from
the gateway for every failed request (status, outcome, detail), each with
its request id. The log is kept on disk, a bounded amount per app (dust
serve --log-max-size), and survives restarts. With -f it follows new lines
and reconnects when the server restarts.`,
		example: "  dust logs myapp --since 10m\n  dust logs myapp -f",
		args:    []string{"NAME"},
		flags:   logsFlags,
	},
}

func deployFlags(f *cmdFlags) func(*adminClient, []string, io.Writer, io.Writer) error {
	route := f.str("route", "PATH", "path prefix the app serves (a new app: /NAME)")
	host := f.str("host", "HOST", `only serve requests for this Host ("": any host, the default)`)
	memory := f.size("memory", "guest memory, a multiple of 2MiB for hvt (default: the kind's, 16MiB for hvt)")
	timeout := f.duration("timeout", "per-request deadline (default 10s)")
	maxConc := f.integer("max-concurrency", 0, "want a whole number such as 16 (0: the default)", fmt.Sprintf("live machines for this app (default %d)", gateway.DefaultMaxConcurrency))
	queueLen := f.integer("queue-len", -1, "want a whole number, 0 for the default or -1 for no queue", fmt.Sprintf("requests that may wait for a machine (default %d; -1: no queue)", gateway.DefaultQueueLen))
	queueWait := f.duration("queue-wait", fmt.Sprintf("longest wait in the queue (default %v)", gateway.DefaultQueueWait))
	maxBody := f.size("max-body", fmt.Sprintf("largest request body (default %s)", gateway.FormatSize(gateway.DefaultMaxBody)))
	passAuth := f.boolean("pass-authorization", "pass the Authorization header to the app (default false)")
	isolation := f.str("isolation", "MODE", "restore (the default: a machine is reset and reused after a clean request) or fresh (a new machine per request)")
	serve := f.str("serve", "MODE", "cgi (the default: one CGI request per machine) or http (a static Linux HTTP server program listening on $PORT, snapshotted when it first waits for a connection, one connection per request)")
	env := f.kvs("env", false, "set an environment variable (repeatable); merged into the inherited env, KEY= sets an empty value")
	unsetEnv := f.kvs("unset-env", true, "remove an inherited environment variable (repeatable)")
	secrets := f.kvs("secret", false, "set a secret, given to the app in its environment and never shown (repeatable)")
	args := f.strs("arg", "ARG", "a fixed argument after argv[0], such as a script (repeatable, in order); replaces the inherited ones")
	noArgs := f.boolean("no-args", "remove the inherited fixed arguments")
	queryArgs := f.boolean("query-args", "also pass the query's items as arguments, after the fixed ones (WAGI's convention; default false)")
	files := f.str("files", "DIR", "pack DIR as the app's read-only files, mounted at /app; replaces the inherited ones")
	noFiles := f.boolean("no-files", "remove the inherited files")
	asJSON := f.Bool("json", false, "print the API's JSON")
	return func(c *adminClient, pos []string, stdout, stderr io.Writer) error {
		name, image := pos[0], pos[1]
		dropArgs, dropFiles := noArgs.given && noArgs.v, noFiles.given && noFiles.v
		if args.given && dropArgs {
			return badUsage("--arg and --no-args: give the arguments or remove them, not both")
		}
		if files.given && dropFiles {
			return badUsage("--files and --no-files: give the files or remove them, not both")
		}
		if err := checkArgs(args.v); err != nil {
			return err
		}
		if isolation.given {
			if m := strings.ToLower(isolation.v); m != "" && m != "restore" && m != "fresh" {
				return badUsage("--isolation %q: want restore or fresh", isolation.v)
			}
		}
		if serve.given {
			if m := strings.ToLower(serve.v); m != "" && m != "cgi" && m != "http" {
				return badUsage("--serve %q: want cgi or http", serve.v)
			}
		}
		if route.given && route.v != "" && !strings.HasPrefix(route.v, "/") {
			return badUsage("--route %q: want a path starting with /, such as /%s", route.v, name)
		}
		q := url.Values{}
		if route.given {
			q.Set("route", route.v)
		}
		if host.given {
			q.Set("host", host.v)
		}
		if isolation.given {
			q.Set("isolation", strings.ToLower(isolation.v))
		}
		if serve.given {
			q.Set("serve", strings.ToLower(serve.v))
		}
		if memory.given {
			q.Set("memory", strconv.FormatInt(memory.v, 10))
		}
		if maxBody.given {
			q.Set("max_body", strconv.FormatInt(maxBody.v, 10))
		}
		if timeout.given {
			q.Set("timeout", timeout.v.String())
		}
		if queueWait.given {
			q.Set("queue_wait", queueWait.v.String())
		}
		if maxConc.given {
			q.Set("max_concurrency", strconv.Itoa(maxConc.v))
		}
		if queueLen.given {
			q.Set("queue_len", strconv.Itoa(queueLen.v))
		}
		if passAuth.given {
			q.Set("pass_authorization", strconv.FormatBool(passAuth.v))
		}
		for _, e := range env.v {
			q.Add("env", e)
		}
		for _, k := range unsetEnv.v {
			q.Add("unset_env", k)
		}
		for _, a := range args.v {
			q.Add("arg", a)
		}
		if dropArgs {
			q.Set("no_args", "true")
		}
		if queryArgs.given {
			q.Set("query_args", strconv.FormatBool(queryArgs.v))
		}
		if dropFiles {
			q.Set("files", "") // present and empty: none
		}
		hdr := http.Header{}
		for _, kv := range secrets.v {
			k, v, _ := strings.Cut(kv, "=")
			hdr.Add(gateway.SecretHeader, k+"="+url.QueryEscape(v))
		}
		var layer []byte
		if files.given {
			var err error
			if layer, err = packFiles(files.v); err != nil {
				return err
			}
		}
		body, closeImage, err := openImage(image)
		if err != nil {
			return err
		}
		defer closeImage()
		if files.given {
			var ct string
			body, ct = withFiles(body, layer)
			hdr.Set("Content-Type", ct)
		}
		var res gateway.DeployResult
		raw, err := c.call("PUT", "/v1/apps/"+url.PathEscape(name)+"?"+q.Encode(), body, hdr, &res)
		if err != nil || *asJSON {
			stdout.Write(raw)
			return err
		}
		if res.Unchanged {
			fmt.Fprintf(stdout, "%s v%d unchanged (same image and settings as v%d)\n", res.Name, res.Version, res.Version)
			if len(secrets.v) > 0 {
				// Secrets are per app: they changed even though the version did not.
				fmt.Fprintf(stdout, "%s secrets: %s\n", res.Name, strings.Join(res.Secrets, ", "))
			}
			return nil
		}
		fmt.Fprintf(stdout, "%s v%d → %s\n", res.Name, res.Version, res.URL)
		return nil
	}
}

// openImage opens the image to upload ("-": stdin) and refuses an empty
// one here, with a message that says so, rather than after an upload.
func openImage(path string) (io.Reader, func(), error) {
	if path == "-" {
		br := bufio.NewReaderSize(os.Stdin, 64<<10)
		if _, err := br.Peek(1); err == io.EOF {
			return nil, nil, &plainError{msg: "IMAGE - (stdin) is empty; pipe an ELF built for Dust or a WebAssembly module into it", kind: errEmptyImage}
		} else if err != nil {
			return nil, nil, fmt.Errorf("reading the image from stdin: %w", err)
		}
		return br, func() {}, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("IMAGE %s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("IMAGE %s: %w", path, err)
	}
	if st.IsDir() {
		f.Close()
		return nil, nil, badUsage("IMAGE %s is a directory; want an ELF built for Dust or a WebAssembly module", path)
	}
	if st.Size() == 0 {
		f.Close()
		return nil, nil, &plainError{msg: fmt.Sprintf("IMAGE %s is empty (0 bytes); want an ELF built for Dust or a WebAssembly module", path), kind: errEmptyImage}
	}
	return f, func() { f.Close() }, nil
}

func cmdAdmin(name string, args []string, stdout, stderr io.Writer) int {
	spec := adminCommands[name]
	f := newCmdFlags(name, spec.synopsis, spec.about, spec.example)
	run := spec.flags(f)
	client := adminFlags(f)
	pos, code, ok := f.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	// deploy with no arguments deploys ./dust.toml (manifest.go).
	if len(pos) != len(spec.args) && !(name == "deploy" && len(pos) == 0) {
		return f.usageErr(stderr, "want %s, got %d argument(s)", argList(spec.args), len(pos))
	}
	c, err := client()
	if err != nil {
		fmt.Fprintf(stderr, "dust %s: %v\n", name, err)
		return exitUnavailable
	}
	if err := run(c, pos, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "dust %s: %v\n", name, err)
		return adminExit(err)
	}
	return exitOK
}

func argList(a []string) string {
	if len(a) == 0 {
		return "no arguments"
	}
	return strings.Join(a, " ")
}

// cmdSecret is `dust secret set|rm|ls APP ...`.
func cmdSecret(args []string, stdout, stderr io.Writer) int {
	f := newCmdFlags("secret", "set APP NAME=VALUE... | rm APP NAME... | ls APP",
		`Sets, removes or lists the secrets of an existing app. A secret reaches
the app's machines in their environment like an env variable, takes effect
with the next request (no redeploy), and is kept per app, not per version:
a rollback does not bring back an old value. Values are stored in the data
directory (mode 0600) and are never shown by the API, the CLI, the status
page or the gateway's logs; a value of 4 bytes or more is also hidden from
lines the app itself logs.`,
		"  dust secret set myapp DB_PASS=hunter2 API_KEY=k-123\n  dust secret rm myapp API_KEY\n  dust secret ls myapp")
	client := adminFlags(f)
	asJSON := f.Bool("json", false, "print the API's JSON")
	pos, code, ok := f.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) < 2 || (pos[0] != "ls" && len(pos) < 3) || (pos[0] == "ls" && len(pos) != 2) {
		return f.usageErr(stderr, "want set APP NAME=VALUE..., rm APP NAME... or ls APP")
	}
	var body struct {
		Set   map[string]string `json:"set,omitempty"`
		Unset []string          `json:"unset,omitempty"`
	}
	switch pos[0] {
	case "set":
		body.Set = map[string]string{}
		for _, kv := range pos[2:] {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || !validKey(k) {
				return f.usageErr(stderr, "%q: want NAME=VALUE with NAME like DB_PASS (letters, digits, _)", kv)
			}
			body.Set[k] = v
		}
	case "rm":
		for _, k := range pos[2:] {
			if !validKey(k) {
				return f.usageErr(stderr, "%q: want a secret name such as DB_PASS", k)
			}
			body.Unset = append(body.Unset, k)
		}
	case "ls":
	default:
		return f.usageErr(stderr, "unknown action %q: want set, rm or ls", pos[0])
	}
	c, err := client()
	if err != nil {
		fmt.Fprintf(stderr, "dust secret: %v\n", err)
		return exitUnavailable
	}
	path := "/v1/apps/" + url.PathEscape(pos[1]) + "/secrets"
	var res struct{ Secrets []string }
	var raw []byte
	if pos[0] == "ls" {
		raw, err = c.call("GET", path, nil, nil, &res)
	} else {
		b, _ := json.Marshal(body)
		raw, err = c.call("POST", path, bytes.NewReader(b), http.Header{"Content-Type": {"application/json"}}, &res)
	}
	if err != nil {
		fmt.Fprintf(stderr, "dust secret: %v\n", err)
		return adminExit(err)
	}
	if *asJSON {
		stdout.Write(raw)
		return exitOK
	}
	if len(res.Secrets) == 0 {
		fmt.Fprintf(stdout, "%s has no secrets\n", pos[1])
	} else {
		fmt.Fprintf(stdout, "%s secrets: %s\n", pos[1], strings.Join(res.Secrets, ", "))
	}
	return exitOK
}

func printApps(w io.Writer, apps []gateway.AppView) {
	if len(apps) == 0 {
		fmt.Fprintln(w, "no apps deployed (dust deploy NAME IMAGE)")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tVERSION\tKIND\tROUTE\tURL\tLIVE\tP50")
	for _, a := range apps {
		route := a.Settings.Route
		if a.Settings.Host != "" {
			route = a.Settings.Host + route
		}
		live, p50 := "not loaded", "-"
		if a.Status != nil {
			live = strconv.Itoa(a.Status.Live)
			if a.Status.P50 != "" {
				p50 = a.Status.P50
			}
		}
		fmt.Fprintf(tw, "%s\tv%d\t%s\t%s\t%s\t%s\t%s\n", a.Name, a.Version, a.Kind, route, a.URL, live, p50)
	}
	tw.Flush()
}

func printApp(w io.Writer, a gateway.AppView) {
	fmt.Fprintf(w, "%s v%d (%s)  %s\n", a.Name, a.Version, a.Kind, a.URL)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	var lim gateway.LimitsView
	if a.Status != nil {
		lim = a.Status.Limits
	}
	or := func(set, eff string) string {
		switch {
		case set != "":
			return set
		case eff != "":
			return eff + " (default)"
		}
		return "default"
	}
	orInt := func(set, eff int, none string) string {
		if set != 0 {
			if set < 0 {
				return none
			}
			return strconv.Itoa(set)
		}
		if a.Status != nil {
			return strconv.Itoa(eff) + " (default)"
		}
		return "default"
	}
	s := a.Settings
	host := s.Host
	if host == "" {
		host = "any"
	}
	isolation := s.Isolation
	if isolation == "" {
		isolation = "restore (default)"
	}
	if a.Status != nil && a.Status.EffectiveIsolation != a.Status.Isolation {
		isolation += ", runs " + a.Status.EffectiveIsolation + " (" + a.Kind + ")"
	}
	files := s
	files.FilesSize = humanSize(s.FilesSize)
	fmt.Fprintln(tw, "\nsettings")
	for _, row := range [][2]string{
		{"route", s.Route}, {"host", host},
		{"memory", or(s.Memory, lim.Memory)}, {"timeout", or(s.Timeout, lim.Timeout)},
		{"max-concurrency", orInt(s.MaxConcurrency, lim.MaxConcurrency, "")},
		{"queue-len", orInt(s.QueueLen, lim.QueueLen, "none (-1)")},
		{"queue-wait", or(s.QueueWait, lim.QueueWait)}, {"max-body", or(s.MaxBody, lim.MaxBody)},
		{"pass-authorization", strconv.FormatBool(s.PassAuthorization)},
		{"isolation", isolation},
		{"serve", serveText(s.Serve)},
		{"env", orNone(strings.Join(s.Env, " "))},
		{"args", argsText(s.Args)},
		{"query-args", strconv.FormatBool(s.QueryArgs)},
		{"files", filesText(files)},
		{"secrets", strings.Join(a.Secrets, ", ") + valuesHidden(a.Secrets)},
	} {
		fmt.Fprintf(tw, "  %s\t%s\n", row[0], row[1])
	}
	tw.Flush()
	if st := a.Status; st != nil {
		p50 := st.P50
		if p50 == "" {
			p50 = "-"
		}
		fmt.Fprintf(w, "\nstatus\n  live %d, queued %d, ready %d/%d, pool hits %d, misses %d, restored %d, requests %d, p50 %s\n",
			st.Live, st.Queued, st.Pool.Ready, st.Pool.Target, st.Pool.Hits, st.Pool.Misses, st.Pool.Restored, st.Requests, p50)
	} else {
		fmt.Fprintln(w, "\nstatus\n  not loaded (see the server's log)")
	}
	if len(a.Versions) > 0 {
		fmt.Fprintln(w, "\nversions")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  \tVERSION\tCREATED\tKIND\tSIZE\tDIGEST\tROUTE")
		for _, v := range a.Versions {
			mark := ""
			if v.Current {
				mark = "*"
			}
			fmt.Fprintf(tw, "  %s\tv%d\t%s\t%s\t%s\t%s\t%s\n", mark, v.Version, v.CreatedAt.Local().Format("2006-01-02 15:04:05"), v.Kind, humanSize(v.Size), shortDigest(v.Digest), v.Settings.Route)
		}
		tw.Flush()
	}
	if len(a.Failures) > 0 {
		// Newest first, as the server gives them, from the app's log.
		fmt.Fprintln(w, "\nrecent failures (newest first; dust logs "+a.Name+" has every line)")
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		for _, e := range a.Failures {
			what := e.Outcome
			if e.Detail != "" {
				what += ": " + e.Detail
			}
			fmt.Fprintf(tw, "  %s\t%d\t%s\t%s\n", e.Time.Local().Format("2006-01-02 15:04:05"), e.Status, e.RequestID, what)
		}
		tw.Flush()
	}
}

// humanSize shows a size the API gives exactly ("39664B") as people read
// it ("38.7KiB"); one that does not parse is shown as it came.
func humanSize(s string) string {
	n, err := gateway.ParseSize(s)
	if err != nil || s == "" {
		return s
	}
	return gateway.HumanSize(n)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func valuesHidden(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return " (values hidden)"
}

func shortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	return d[:min(12, len(d))]
}

func logsFlags(f *cmdFlags) func(*adminClient, []string, io.Writer, io.Writer) error {
	follow := f.Bool("f", false, "follow new lines; reconnect when the server restarts")
	since := f.duration("since", "only lines from this long ago on, e.g. 10m (default: the last 1000 lines)")
	reconnect := f.duration("reconnect", "with -f: how long to keep trying to reconnect before giving up (default 30s)")
	asJSON := f.Bool("json", false, "print one JSON object per line (time, request_id, source, line)")
	return func(c *adminClient, pos []string, stdout, stderr io.Writer) error {
		q := url.Values{"format": {"json"}}
		if since.given {
			q.Set("since", since.v.String())
		}
		if *follow {
			q.Set("follow", "1")
		}
		wait := 30 * time.Second
		if reconnect.given {
			wait = reconnect.v
		}
		path := "/v1/apps/" + url.PathEscape(pos[0]) + "/logs?"
		var last time.Time
		for attempt := 0; ; attempt++ {
			resp, err := c.open("GET", path+q.Encode(), nil, nil)
			if err != nil {
				return err
			}
			if attempt > 0 {
				fmt.Fprintf(stderr, "dust logs: reconnected to %s\n", c.base)
			}
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
			for sc.Scan() {
				var l gateway.LogLine
				if json.Unmarshal(sc.Bytes(), &l) != nil {
					continue
				}
				last = l.Time
				if *asJSON {
					fmt.Fprintf(stdout, "%s\n", sc.Bytes())
				} else {
					fmt.Fprintf(stdout, "%s %s %s\n", l.Time.Format(time.RFC3339Nano), l.RequestID, l.Line)
				}
			}
			resp.Body.Close()
			if !*follow {
				return sc.Err()
			}
			// A follow never ends on its own: the server went away.
			fmt.Fprintf(stderr, "dust logs: lost the connection to %s; reconnecting (for up to %v)\n", c.base, wait)
			if !last.IsZero() {
				q.Set("since", last.Add(time.Nanosecond).Format(time.RFC3339Nano))
			}
			if err := c.waitUp(wait); err != nil {
				return err
			}
		}
	}
}

// waitUp polls the admin API until it answers, for at most limit.
func (c *adminClient) waitUp(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		resp, err := c.open("GET", "/v1/info", nil, nil)
		if err == nil {
			resp.Body.Close()
			return nil
		}
		var ae *adminError
		if errors.As(err, &ae) {
			return err // it answers, but refuses: waiting will not help
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: could not reconnect to %s within %v: %v", errAdmin, c.base, limit, errors.Unwrap(err))
		}
		time.Sleep(250 * time.Millisecond) // polling interval while the server is down
	}
}

// serveText is how an app is spoken to, as `dust app` shows it.
func serveText(mode string) string {
	if mode == "" {
		return "cgi (default)"
	}
	return mode + " (a server program, one connection per request)"
}
