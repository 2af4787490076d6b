package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dust-run/dust/internal/gateway"
)

// `dust dev [DIR]`: the app in DIR served on a local gateway, rebuilt and
// redeployed whenever its sources change.

// Limits on the watch: a directory tree this large is not an app's
// sources (a checkout of everything, a home directory), and scanning it
// every poll would cost more than the loop saves.
const (
	maxWatchFiles = 10000
	defaultPoll   = 250 * time.Millisecond
	// settleLimit bounds how long a burst of changes (an editor saving
	// several files, a git checkout) is waited out before a build.
	settleLimit = 2 * time.Second
)

func cmdDev(args []string, stdout, stderr io.Writer) int {
	f := newCmdFlags("dev", "[DIR] [flags]",
		`Serves the app whose dust.toml is in DIR (default: the current directory)
on a local gateway: starts one on loopback with a temporary data directory
(removed on exit), builds and deploys the app, prints its URL, and then
rebuilds and redeploys it whenever a file under DIR changes. A build or
deploy that fails is reported and the previous version keeps serving; the
app's log (its stderr, failed requests) is printed as it comes. Ctrl-C
stops it. With --admin it deploys to a running 'dust serve' instead.

Files and directories whose names start with "." and the image itself are
not watched; neither are changes a build makes.`,
		"  dust new c hello && cd hello && dust dev\n  dust dev ./api --listen 127.0.0.1:8080\n  dust dev --admin 127.0.0.1:8081")
	listen := f.String("listen", "127.0.0.1:0", "the local gateway's app `ADDRESS` (default: a free loopback port)")
	poll := f.duration("poll", "how often the sources are checked for changes (default 250ms)")
	client := adminFlags(f)
	f.Lookup("admin").Usage = "deploy to the running 'dust serve' whose admin API is at `ADDRESS` instead of starting a gateway"
	f.Lookup("data").Usage = "with --admin: the data `DIRECTORY` holding admin.token (env DUST_TOKEN overrides the file)"
	pos, code, ok := f.parse(args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) > 1 {
		return f.usageErr(stderr, "want at most one DIR, got %d arguments", len(pos))
	}
	dir := "."
	if len(pos) == 1 {
		dir = pos[0]
	}
	interval := defaultPoll
	if poll.given && poll.v > 0 {
		interval = poll.v
	}
	useRunning := false
	f.Visit(func(fl *flag.Flag) { useRunning = useRunning || fl.Name == "admin" })

	m, err := loadManifest(dir)
	if err != nil {
		fmt.Fprintf(stderr, "dust dev: %v\n", err)
		return exitCode(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var c *adminClient
	if useRunning {
		if c, err = client(); err != nil {
			fmt.Fprintf(stderr, "dust dev: %v\n", err)
			return exitUnavailable
		}
		if _, err := c.call("GET", "/v1/info", nil, nil, nil); err != nil {
			fmt.Fprintf(stderr, "dust dev: %v\n", err)
			return adminExit(err)
		}
		fmt.Fprintf(stdout, "dust dev: deploying %s to the gateway at %s\n", m.Name(), c.base)
	} else {
		ds, err := startDevServer(*listen, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "dust dev: %v\n", err)
			return adminExit(err)
		}
		defer ds.close(stderr)
		c = ds.client
		fmt.Fprintf(stdout, "dust dev: local gateway on http://%s (data in %s, removed on exit)\n", ds.appAddr, ds.data)
	}

	d := &devLoop{c: c, m: m, dir: dir, stdout: stdout, stderr: stderr}
	d.round(ctx)
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-time.After(interval):
			if d.changed() {
				d.settle(ctx, interval)
				d.round(ctx)
			}
		}
	}
	d.stopLogs()
	fmt.Fprintln(stdout, "dust dev: stopped")
	return exitOK
}

// devLoop is the state of one `dust dev`.
type devLoop struct {
	c              *adminClient
	m              *Manifest
	dir            string
	stdout, stderr io.Writer
	seen           map[string]fileStamp
	logsFor        string // the app whose log is being followed
	logsStop       context.CancelFunc
	logsDone       chan struct{}
	warnedTooMany  bool
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// round rereads the manifest, builds and deploys, reporting what went
// wrong without giving up; the tree is scanned after the build so that
// what the build itself writes does not start another round.
func (d *devLoop) round(ctx context.Context) {
	defer func() { d.seen = d.scan() }()
	m, err := loadManifest(d.dir)
	if err != nil {
		fmt.Fprintf(d.stderr, "dust dev: %v (watching for changes)\n", err)
		return
	}
	d.m = m
	fmt.Fprintf(d.stdout, "dust dev: building %s\n", m.Name())
	if err := m.build(ctx, d.stderr); err != nil {
		if ctx.Err() == nil {
			fmt.Fprintf(d.stderr, "dust dev: %v (watching for changes)\n", err)
		}
		return
	}
	if ctx.Err() != nil {
		return
	}
	f := newCmdFlags("deploy", "", "", "")
	deploy := deployFlags(f)
	if err := m.deploy(d.c, f, deploy, "dust dev", d.stdout, d.stderr); err != nil {
		fmt.Fprintf(d.stderr, "dust dev: deploy failed: %v (watching for changes)\n", err)
		return
	}
	d.followLogs(m.Name())
}

// scan records the mtime and size of every watched file.
func (d *devLoop) scan() map[string]fileStamp {
	root := d.dir
	if d.m != nil {
		root = d.m.Dir
	}
	image := ""
	if d.m != nil {
		image = d.m.ImagePath()
	}
	out := map[string]fileStamp{}
	filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return nil // a file that went away while walking: the next scan sees it
		}
		if p != root && strings.HasPrefix(e.Name(), ".") {
			if e.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if e.IsDir() || p == image {
			return nil
		}
		if len(out) >= maxWatchFiles {
			if !d.warnedTooMany {
				fmt.Fprintf(d.stderr, "dust dev: more than %d files under %s: watching only the first %d\n", maxWatchFiles, root, maxWatchFiles)
				d.warnedTooMany = true
			}
			return filepath.SkipAll
		}
		if info, err := e.Info(); err == nil {
			out[p] = fileStamp{info.ModTime(), info.Size()}
		}
		return nil
	})
	return out
}

func (d *devLoop) changed() bool {
	return !maps.Equal(d.seen, d.scan())
}

// settle waits until a scan sees no further change, for at most
// settleLimit, so that a burst of saves makes one build.
func (d *devLoop) settle(ctx context.Context, interval time.Duration) {
	deadline := time.Now().Add(settleLimit)
	last := d.scan()
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(interval, 100*time.Millisecond)):
		}
		now := d.scan()
		if maps.Equal(now, last) {
			return
		}
		last = now
	}
}

// followLogs prints the app's log as it comes, from now on, until the
// dev loop stops (or a deploy under another name starts another).
func (d *devLoop) followLogs(name string) {
	if d.logsFor == name {
		return
	}
	d.stopLogs()
	ctx, cancel := context.WithCancel(context.Background())
	d.logsFor, d.logsStop, d.logsDone = name, cancel, make(chan struct{})
	since := time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano)
	go func(done chan struct{}) {
		defer close(done)
		q := url.Values{"format": {"json"}, "follow": {"1"}, "since": {since}}
		req, err := http.NewRequestWithContext(ctx, "GET", d.c.base+"/v1/apps/"+url.PathEscape(name)+"/logs?"+q.Encode(), nil)
		if err != nil {
			return
		}
		req.Header.Set("Authorization", "Bearer "+d.c.token)
		resp, err := d.c.http.Do(req)
		if err != nil {
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			var l gateway.LogLine
			if json.Unmarshal(sc.Bytes(), &l) == nil {
				fmt.Fprintf(d.stderr, "%s | %s %s\n", name, l.RequestID, l.Line)
			}
		}
	}(d.logsDone)
}

func (d *devLoop) stopLogs() {
	if d.logsStop != nil {
		d.logsStop()
		<-d.logsDone
		d.logsStop, d.logsFor = nil, ""
	}
}

// devServer is a gateway run inside `dust dev`, on loopback, with a
// temporary data directory.
type devServer struct {
	srv      *gateway.Server
	pub, adm *http.Server
	data     string
	appAddr  string
	client   *adminClient
	wg       sync.WaitGroup
}

func startDevServer(listen string, stderr io.Writer) (ds *devServer, err error) {
	if !isLoopback(listen) {
		return nil, badUsage("--listen %s: want a loopback address such as 127.0.0.1:8080 (dust dev serves only this machine)", listen)
	}
	data, err := os.MkdirTemp("", "dust-dev-")
	if err != nil {
		return nil, err
	}
	var closers []func()
	defer func() {
		if err != nil {
			for _, c := range closers {
				c()
			}
			os.RemoveAll(data)
		}
	}()
	lp, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, &plainError{msg: fmt.Sprintf("--listen %s: %v", listen, err), kind: errAdmin}
	}
	closers = append(closers, func() { lp.Close() })
	la, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	closers = append(closers, func() { la.Close() })
	// Only what needs attention: deploys and requests are what dev prints.
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := gateway.New(gateway.Config{
		DataDir: data, Kinds: allKinds(), Detect: detectKind, Logger: log,
		PoolFloor: 1, AppAddr: lp.Addr().String(), Version: versionString(),
	})
	if err != nil {
		return nil, err
	}
	tok, err := os.ReadFile(filepath.Join(data, gateway.TokenFile))
	if err != nil {
		srv.Close()
		return nil, err
	}
	ds = &devServer{srv: srv, data: data, appAddr: lp.Addr().String()}
	ds.pub, ds.adm = srv.HTTPServers(lp.Addr().String(), la.Addr().String())
	ds.client = &adminClient{base: "http://" + la.Addr().String(), token: strings.TrimSpace(string(tok)), http: &http.Client{}}
	ds.wg.Add(2)
	go func() { defer ds.wg.Done(); ds.pub.Serve(gateway.Listener(lp)) }()
	go func() { defer ds.wg.Done(); ds.adm.Serve(la) }()
	return ds, nil
}

// close stops the gateway and removes its data.
func (ds *devServer) close(stderr io.Writer) {
	if err := ds.srv.Shutdown(ds.pub, ds.adm); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(stderr, "dust dev: stopping the local gateway: %v\n", err)
	}
	ds.wg.Wait()
	if err := os.RemoveAll(ds.data); err != nil {
		fmt.Fprintf(stderr, "dust dev: removing %s: %v\n", ds.data, err)
	}
}
