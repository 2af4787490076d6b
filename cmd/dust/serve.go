package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/dust-run/dust/internal/gateway"
	"github.com/dust-run/dust/internal/hvt"
	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
	"github.com/dust-run/dust/internal/store"
	"github.com/dust-run/dust/internal/wasm"
)

// defaultDataDir is $XDG_DATA_HOME/dust, or ~/.local/share/dust.
func defaultDataDir() string {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "dust")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "share", "dust")
	}
	return "dust-data"
}

// allKinds lists the machine kinds this build can run, by name.
func allKinds() map[string]machine.Kind {
	ks := map[string]machine.Kind{}
	for _, magic := range []string{"\x7fELF", "\x00asm"} {
		if k, err := kindFor([]byte(magic)); err == nil {
			ks[k.Name()] = k
		}
	}
	return ks
}

func detectKind(b []byte) (string, error) {
	k, err := kindFor(b)
	if err != nil {
		return "", err
	}
	return k.Name(), nil
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func cmdServe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dust serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, `usage: dust serve [flags]

Runs the gateway: every HTTP request on the app listener runs on a brand-new
machine of its app's kind; the admin API, metrics and the status page are on
the admin listener. Apps, their versions, secrets and logs are kept in the
data directory and served again after a restart.

flags:
`)
		fs.PrintDefaults()
		fmt.Fprint(stderr, "\nexample:\n  dust serve --listen 127.0.0.1:8080 --admin 127.0.0.1:8081 --log-max-size 16MiB\n")
	}
	listen := fs.String("listen", "127.0.0.1:8080", "app `address`")
	admin := fs.String("admin", "127.0.0.1:8081", "admin API `address`")
	data := fs.String("data", defaultDataDir(), "data `directory` (store, images, admin token)")
	demo := fs.Bool("demo", false, "deploy the examples found in -examples and print URLs to try")
	examples := fs.String("examples", "examples", "examples `directory` for -demo (built by `make examples`)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	maxLive := fs.Int("max-live", 256, "global cap on live machines")
	floor := fs.Int("pool-floor", 1, "ready machines an idle app keeps (0: scale to zero)")
	perClient := fs.Int("max-per-client", 1024, "requests one client address may have in the gateway at once (-1: no cap)")
	runAs := fs.String("user", "", "after binding the listeners and opening /dev/kvm, run as this `account` (the data directory is handed to it)")
	logCap := sizeFlag(gateway.DefaultLogCap)
	fs.Var(&logCap, "log-max-size", "disk each app's log may take, `SIZE`; beyond it the oldest half is dropped")
	publicURL := fs.String("url", "", "base `URL` apps are reached at, as deploy and apps print it (default http://LISTEN)")
	cl := clusterFlags(fs)
	seccomp := fs.Bool("seccomp", true, "run hvt vCPUs on worker threads under a seccomp filter (off saves ≈ 45 µs per request on nested KVM)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	var h slog.Handler = slog.NewTextHandler(stderr, nil)
	switch *logFormat {
	case "json":
		h = slog.NewJSONHandler(stderr, nil)
	case "text":
	default:
		fmt.Fprintf(stderr, "dust serve: -log-format %q: want text or json\n", *logFormat)
		return exitUsage
	}
	log := slog.New(h)
	hvt.SetSeccomp(*seccomp)
	if !*seccomp {
		log.Warn("hvt vCPU threads run WITHOUT the seccomp filter (-seccomp=false)")
	}
	if !isLoopback(*admin) {
		log.Warn("THE ADMIN API IS LISTENING BEYOND LOOPBACK: anyone who can reach " + *admin + " and holds the token can deploy code")
	}
	if err := os.MkdirAll(*data, 0o700); err != nil {
		fmt.Fprintf(stderr, "dust serve: %v\n", err)
		return exitError
	}
	// Before anything can be served: a SIGTERM that arrives once a client
	// could have been answered must shut down gracefully, not kill.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	lp, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "dust serve: %v\n", err)
		return exitUnavailable
	}
	la, err := net.Listen("tcp", *admin)
	if err != nil {
		lp.Close()
		fmt.Fprintf(stderr, "dust serve: %v\n", err)
		return exitUnavailable
	}
	if *runAs != "" {
		if os.Getenv(wasm.CacheEnv) == "" {
			// The wasm compilation cache moves with the data it serves.
			os.Setenv(wasm.CacheEnv, filepath.Join(*data, "wazero-cache"))
		}
		if err := dropPrivileges(*runAs, *data); err != nil {
			lp.Close()
			la.Close()
			fmt.Fprintf(stderr, "dust serve: %v\n", err)
			return exitError
		}
		log.Info("running unprivileged", "user", *runAs, "uid", os.Getuid())
	}
	node, err := cl.start(*data, "http://"+lp.Addr().String(), "http://"+la.Addr().String(), log)
	if err != nil {
		lp.Close()
		la.Close()
		fmt.Fprintf(stderr, "dust serve: %v\n", err)
		return clusterExit(err)
	}
	gcfg := gateway.Config{
		DataDir: *data, Kinds: allKinds(), Detect: detectKind, Logger: log,
		MaxLive: *maxLive, PoolFloor: *floor, MaxPerClient: *perClient,
		AppAddr: lp.Addr().String(), PublicURL: *publicURL, Version: versionString(), LogCap: int64(logCap),
	}
	if node != nil {
		gcfg.Cluster = node
	}
	srv, err := gateway.New(gcfg)
	if err != nil {
		lp.Close()
		la.Close()
		if node != nil {
			node.Close()
		}
		fmt.Fprintf(stderr, "dust serve: %v\n", err)
		if errors.Is(err, store.ErrLocked) {
			return exitUnavailable
		}
		return exitError
	}
	if node != nil {
		if err := node.Run(srv); err != nil {
			lp.Close()
			la.Close()
			srv.Close()
			node.Close()
			fmt.Fprintf(stderr, "dust serve: %v\n", err)
			return exitUnavailable
		}
	}
	pub, adm := srv.HTTPServers(*listen, *admin)
	if *demo {
		deployDemo(srv, *examples, lp.Addr().String(), stdout, log)
	}
	fmt.Fprintf(stdout, "dust: serving apps on http://%s, admin API and status page on http://%s (token in %s)\n",
		lp.Addr(), la.Addr(), filepath.Join(*data, gateway.TokenFile))
	errc := make(chan error, 2)
	go func() { errc <- pub.Serve(gateway.Listener(lp)) }()
	go func() { errc <- adm.Serve(la) }()
	select {
	case s := <-sig:
		log.Info("shutting down", "signal", s.String())
	case err := <-errc:
		log.Error("server failed", "err", err)
	}
	signal.Stop(sig)
	if node != nil {
		// No new forwarded requests; those in flight finish below.
		node.StopServing()
		defer node.Close()
	}
	if err := srv.Shutdown(pub, adm); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("shutdown", "err", err)
		return exitError
	}
	log.Info("stopped")
	return exitOK
}

// deployDemo deploys the prebuilt examples: hvt ones where KVM works,
// wasm ones always.
func deployDemo(srv *gateway.Server, dir, addr string, stdout io.Writer, log *slog.Logger) {
	kvmErr := kvm.Available()
	type demoApp struct {
		name, file, route string
		serve             string
		memory            int64
	}
	var apps []demoApp
	for _, n := range []string{"hello", "echo", "sha256"} {
		if kvmErr == nil {
			apps = append(apps, demoApp{name: n, file: filepath.Join(dir, n, n+".elf"), route: "/" + n})
		}
		apps = append(apps, demoApp{name: n + "-wasm", file: filepath.Join(dir, n, n+".wasm"), route: "/wasm/" + n})
	}
	apps = append(apps, demoApp{name: "go-hello", file: filepath.Join(dir, "go-hello", "go-hello.wasm"), route: "/wasm/go-hello"},
		demoApp{name: "go-fast-hello", file: filepath.Join(dir, "go-fast-hello", "go-fast-hello.wasm"), route: "/wasm/go-fast-hello"})
	if kvmErr == nil {
		// Go programs on hvt: the dustgo hello built for Linux, and an
		// unmodified net/http server as a server app (examples/linux).
		const goMemory = 1536 << 20
		apps = append(apps,
			demoApp{name: "go-fast-hello-linux", file: filepath.Join(dir, "linux", "go-fast-hello", "go-fast-hello-linux.elf"), route: "/linux/go-fast-hello", memory: goMemory},
			demoApp{name: "goserver", file: filepath.Join(dir, "linux", "goserver", "goserver-go.elf"), route: "/goserver", serve: store.ServeHTTP, memory: goMemory})
	}
	if kvmErr != nil {
		log.Warn("KVM unavailable: deploying only the wasm examples", "err", kvmErr)
	}
	fmt.Fprintln(stdout, "dust: demo apps")
	for _, a := range apps {
		img, err := os.ReadFile(a.file)
		if err != nil {
			log.Warn("demo app not built (run `make examples wasm-examples`)", "app", a.name, "file", a.file)
			continue
		}
		// A restart with the same examples keeps the versions it has.
		sum := sha256.Sum256(img)
		if cur, err := srv.Store().Get(a.name); err != nil || cur.Current.Digest != "sha256:"+hex.EncodeToString(sum[:]) {
			if _, err := srv.Deploy(a.name, bytes.NewReader(img), store.Settings{Route: a.route, Serve: a.serve, Memory: a.memory}); err != nil {
				log.Error("demo deploy failed", "app", a.name, "err", err)
				continue
			}
		}
		if a.serve == store.ServeHTTP {
			fmt.Fprintf(stdout, "  %-20s curl -s http://%s%s/json -d '{\"a\":1}'   (a server app)\n", a.name, addr, a.route)
			continue
		}
		fmt.Fprintf(stdout, "  %-20s curl -s http://%s%s/anything?x=1 -d 'hello'\n", a.name, addr, a.route)
	}
}
