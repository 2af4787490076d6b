// Package wasm is the portable Dust machine kind: a WebAssembly module
// (WASI preview 1 "command") run on wazero, a fresh module instance per
// request.
//
// A module is compiled once per deploy (Prepare), with wazero's on-disk
// compilation cache so that a restarted host does not compile it again.
// Every request instantiates it anew, with the request's CGI environment,
// argv and body as env, args and stdin, and closes the instance when the
// response is done: nothing a request leaves in linear memory, globals or
// tables is visible to the next one.
//
// A Go app built with package dustgo is a reactor rather than a command:
// Prepare runs its start-up once and every request's instance starts from
// a snapshot of the result (see ServeExport and docs/wasm-go.md).
//
// Capabilities are deny-by-default: no filesystem unless the image is
// given read-only directories (Options.Dirs) or an app's files
// (Options.Files, at /app), no sockets, no host
// functions beyond WASI preview 1. Clocks and random numbers are real.
package wasm

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"strings"
	"sync"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"

	"github.com/dust-run/dust/internal/machine"
)

// KindName is the name of this machine kind.
const KindName = "wasm"

// pageSize is the size of one WebAssembly memory page.
const pageSize = 64 << 10

// CacheEnv names the environment variable that overrides the default
// compilation cache directory.
const CacheEnv = "DUST_WASM_CACHE"

// ErrClosed is returned by NewMachine once the image has been closed.
var ErrClosed = errors.New("wasm: image closed")

// Mount gives the guest read-only access to a host directory.
type Mount struct {
	HostDir   string // directory on the host
	GuestPath string // absolute path the guest sees it at, e.g. "/data"
}

// Options configure how images are prepared. The zero value is the
// deny-by-default configuration with the default on-disk cache.
type Options struct {
	// CacheDir holds compiled code across restarts, in a directory per
	// image (see PruneCache). Empty means $DUST_WASM_CACHE, else
	// os.UserCacheDir()/dust/wazero.
	CacheDir string
	// NoDiskCache keeps compiled code in memory only (shared by the
	// images of this process).
	NoDiskCache bool
	// Dirs are mounted read-only; without them (and Files) the guest has
	// no filesystem at all.
	Dirs []Mount
	// Files are the app's read-only files, a preopen at
	// machine.FilesPath (/app). wazero serves an fs.FS read-only.
	Files fs.FS
}

// Kind prepares wasm images; its Options apply to every image.
type Kind struct{ Options Options }

// Name implements machine.Kind.
func (Kind) Name() string { return KindName }

// Prune implements machine.Pruner: the compiled code of images not in
// keep leaves the on-disk cache (PruneCache).
func (k Kind) Prune(keep []string) (int64, error) {
	if k.Options.NoDiskCache {
		return 0, nil
	}
	return PruneCache(k.Options.CacheDir, keep)
}

// Prepare implements machine.Kind.
func (k Kind) Prepare(image []byte, limits machine.Limits) (machine.Image, error) {
	return Prepare(image, limits, k.Options)
}

// PrepareApp implements machine.AppKind: files as a read-only preopen.
// Server apps need the hvt kind: a WASI preview 1 module has no sockets.
func (k Kind) PrepareApp(image []byte, limits machine.Limits, app machine.App) (machine.Image, error) {
	if app.Server != nil {
		return nil, fmt.Errorf("%w: a server app must be a static Linux program for the hvt kind (WASI preview 1 has no sockets)", machine.ErrBadImage)
	}
	o := k.Options
	o.Files = app.Files
	im, err := Prepare(image, limits, o)
	if err != nil {
		return nil, err // not a nil *Image in a non-nil interface
	}
	return im, nil
}

// Image is a compiled module and the wazero runtime its instances live in.
// One runtime per image because the limits, mounts and compiled code are
// per app; the compilation cache is shared by all.
type Image struct {
	limits   machine.Limits
	rt       wazero.Runtime
	compiled wazero.CompiledModule
	// base is the immutable part of every instance's configuration;
	// wazero's ModuleConfig copies on each With*, so sharing it between
	// concurrent requests is safe.
	base     wazero.ModuleConfig
	maxBytes uint64
	// entry is the function a request calls: _start for a command,
	// ServeExport for a pre-initialised reactor, whose result is the
	// exit status.
	entry         string
	reactor       bool
	snapshotBytes int
	// randRegions are where a reactor's snapshot holds random state:
	// every request's instance gets fresh bytes there (RandStateExport).
	randRegions []randRegion
	// tablesCapped is set when limitModule gave tables maxima and added
	// limitsExport to tell a full one.
	tablesCapped bool

	mu     sync.Mutex
	refs   int // the image's own reference plus one per live machine
	closed bool
}

// Prepare compiles image and checks that it can be instantiated as a WASI
// preview 1 command under limits; a Dust reactor (see ServeExport) is
// pre-initialised into a snapshot instead. A module that is not valid, imports
// anything but WASI preview 1, has no _start, or needs more memory than
// limits allow is refused with an error wrapping machine.ErrBadImage.
func Prepare(image []byte, limits machine.Limits, o Options) (*Image, error) {
	if err := limits.Validate(); err != nil {
		return nil, err
	}
	limits = limits.WithDefaults()
	if limits.Memory < pageSize {
		return nil, fmt.Errorf("%w: memory limit %d is below one wasm page (64 KiB)", machine.ErrBadLimits, limits.Memory)
	}
	fsc, err := mounts(o.Dirs)
	if err != nil {
		return nil, err
	}
	if o.Files != nil {
		fsc = fsc.WithFSMount(o.Files, machine.FilesPath)
	}
	cache, err := compilationCache(o, ImageDigest(image))
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	// No WithMemoryLimitPages: the per-instance allocator enforces the
	// limit, so that a refused memory.grow can be told apart (see
	// linearMemory); wazero's limit would refuse it silently.
	rt := wazero.NewRuntimeWithConfig(ctx, runtimeConfig().WithCompilationCache(cache))
	im := &Image{limits: limits, rt: rt, maxBytes: uint64(limits.Memory) / pageSize * pageSize, refs: 1}
	im.base = wazero.NewModuleConfig().
		WithName(""). // anonymous: many instances of one module at once
		WithStartFunctions().
		WithSysWalltime().
		WithSysNanotime().
		WithRandSource(rand.Reader).
		WithFSConfig(fsc)
	if _, err := wasi_snapshot_preview1.Instantiate(ctx, rt); err != nil {
		rt.Close(ctx)
		return nil, fmt.Errorf("%w: wasm: instantiating WASI: %v", machine.ErrInternal, err)
	}
	image, im.tablesCapped, err = limitModule(image, im.maxBytes)
	if err != nil {
		rt.Close(ctx)
		return nil, err
	}
	if isReactor(image) {
		err = im.snapshot(ctx, image)
	} else {
		err = im.compile(ctx, image)
	}
	if err == nil {
		err = im.trial(ctx)
	}
	if err != nil {
		rt.Close(ctx)
		return nil, err
	}
	return im, nil
}

// runtimeConfig is the wazero configuration every image's runtime has.
//
// Debug info is off because wazero builds an error for every panic out of
// the guest, proc_exit's included, and with DWARF present (Go's linker and
// Debian's wasi-libc both leave it in) it looks every frame of the stack
// up in the DWARF line table, scanning it from the start under one lock
// per module: exit(0) from 200 frames down cost 5–8 ms, not 20 µs.
// The exit error is then thrown away. Traps lose only source file:line;
// the function names in trap reports come from the name section.
func runtimeConfig() wazero.RuntimeConfig {
	return wazero.NewRuntimeConfig().
		WithCloseOnContextDone(true).
		WithDebugInfoEnabled(debugInfo)
}

// debugInfo is false but in BenchmarkExit and BenchmarkLua, which measure
// what it costs.
var debugInfo = false

// Reactor reports whether the image is a pre-initialised reactor (see
// ServeExport), and the size of its snapshot module in bytes.
func (im *Image) Reactor() (bool, int) { return im.reactor, im.snapshotBytes }

func (im *Image) compile(ctx context.Context, image []byte) error {
	compiled, err := im.rt.CompileModule(ctx, image)
	if err != nil {
		return fmt.Errorf("%w: %s%v", machine.ErrBadImage, componentHint(image), err)
	}
	im.compiled = compiled
	start, ok := compiled.ExportedFunctions()["_start"]
	if !ok {
		hint := ""
		exports := compiled.ExportedFunctions()
		if _, reactor := exports[initializeExport]; reactor {
			hint = " (it exports _initialize: a WASI reactor, not a command, and no " + ServeExport + " to serve requests with)"
		} else if _, serve := exports[ServeExport]; serve {
			hint = " (it exports " + ServeExport + " but no _initialize: build a Go app with -buildmode=c-shared)"
		}
		return fmt.Errorf("%w: the module exports no _start function%s; build it as a WASI command", machine.ErrBadImage, hint)
	}
	if _, serve := compiled.ExportedFunctions()[ServeExport]; serve {
		// Its _start would run an empty main and answer nothing.
		return fmt.Errorf("%w: the module exports %s but is a WASI command; build a Go app that uses dustgo with -buildmode=c-shared", machine.ErrBadImage, ServeExport)
	}
	if len(start.ParamTypes()) != 0 || len(start.ResultTypes()) != 0 {
		return fmt.Errorf("%w: _start has signature %s, want () -> ()", machine.ErrBadImage, start.DebugName())
	}
	im.entry = "_start"
	return nil
}

// trial instantiates the module once without running it, so that imports
// wazero cannot satisfy (WASI preview 2, unknown host functions) refuse
// the image at deploy time, with wazero's own explanation.
func (im *Image) trial(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, im.limits.Timeout)
	defer cancel()
	ctx = experimental.WithMemoryAllocator(ctx, &linearMemory{limit: im.maxBytes})
	mod, err := im.rt.InstantiateModule(ctx, im.compiled, im.base)
	if err != nil {
		return fmt.Errorf("%w: %v", machine.ErrBadImage, err)
	}
	return mod.Close(ctx)
}

// componentHint explains the most likely cause of a version mismatch: a
// component-model binary (what WASI preview 2 toolchains produce) has the
// same magic as a core module but a different version and layer.
func componentHint(image []byte) string {
	if len(image) >= 8 && string(image[:4]) == "\x00asm" && image[6] == 1 && image[7] == 0 {
		return "a WebAssembly component (WASI preview 2) is not supported, build for wasm32-wasip1: "
	}
	return ""
}

func mounts(dirs []Mount) (wazero.FSConfig, error) {
	fsc := wazero.NewFSConfig()
	for _, d := range dirs {
		if !path.IsAbs(d.GuestPath) {
			return nil, fmt.Errorf("wasm: guest path %q is not absolute", d.GuestPath)
		}
		st, err := os.Stat(d.HostDir)
		if err != nil {
			return nil, fmt.Errorf("wasm: mount %s: %w", d.GuestPath, err)
		}
		if !st.IsDir() {
			return nil, fmt.Errorf("wasm: mount %s: %s is not a directory", d.GuestPath, d.HostDir)
		}
		fsc = fsc.WithReadOnlyDirMount(d.HostDir, d.GuestPath)
	}
	return fsc, nil
}

// Kind implements machine.Image.
func (im *Image) Kind() string { return KindName }

// Limits implements machine.Image.
func (im *Image) Limits() machine.Limits { return im.limits }

// NewMachine implements machine.Image. Instantiation needs the request
// (wazero fixes args, env and stdio when it instantiates), so a machine
// is only a claim on the image until Run.
func (im *Image) NewMachine() (machine.Machine, error) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.closed {
		return nil, ErrClosed
	}
	im.refs++
	return &Machine{im: im}, nil
}

// Close implements machine.Image. The runtime is closed when the last
// machine made from the image is closed, so machines stay valid.
func (im *Image) Close() error {
	im.mu.Lock()
	if im.closed {
		im.mu.Unlock()
		return nil
	}
	im.closed = true
	im.mu.Unlock()
	return im.release()
}

func (im *Image) release() error {
	im.mu.Lock()
	im.refs--
	last := im.refs == 0
	im.mu.Unlock()
	if last {
		return im.rt.Close(context.Background())
	}
	return nil
}

// splitEnv turns "KEY=VALUE" into its parts; an entry without '=' is a
// key with an empty value, as getenv would see it.
func splitEnv(kv string) (string, string) {
	k, v, _ := strings.Cut(kv, "=")
	return k, v
}
