package wasm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"

	"github.com/dust-run/dust/internal/machine"
)

// A Dust reactor is a WASI reactor (it exports _initialize, as Go's
// -buildmode=c-shared and clang's -mexec-model=reactor make them) that
// also exports ServeExport, a function () -> i32 that serves one CGI
// request exactly like a command's _start would and returns the exit
// status. The package github.com/dust-run/dust/dustgo makes one of a Go
// program.
//
// Such a module is pre-initialised once per deploy: _initialize runs in a
// throwaway instance, and the memory and globals it leaves become the
// initial state of a new module, the snapshot, that every request then
// instantiates afresh. The Go runtime's start-up, which dominates a small
// Go app's request, is paid once instead of per request, while every
// request still gets its own instance, and nothing a request does is seen
// by the next.
const (
	ServeExport      = "dust_serve"
	initializeExport = "_initialize"
	// globalExportPrefix names the exports added to read the globals back;
	// the snapshot module itself does not have them.
	globalExportPrefix = "dust.snapshot.global."
)

// snapshotGap is the longest run of zero bytes kept inside one data
// segment rather than starting a new one: a segment costs about a dozen
// bytes of framing plus a copy call at instantiation.
const snapshotGap = 64

// isReactor reports whether the binary exports both _initialize and
// ServeExport as functions. A binary the parser cannot read is not one;
// wazero then says what is wrong with it.
func isReactor(image []byte) bool {
	m, err := parseBinary(image)
	if err != nil {
		return false
	}
	es, err := m.exports()
	if err != nil {
		return false
	}
	var init, serve bool
	for _, e := range es {
		if e.kind == kindFunc {
			init = init || e.name == initializeExport
			serve = serve || e.name == ServeExport
		}
	}
	return init && serve
}

// snapshotSource is a reactor prepared for pre-initialisation: the
// original module with every global exported, so that their values can be
// read after _initialize.
type snapshotSource struct {
	orig    *binModule
	globals []binGlobal
	// goRuntime is set for a module the Go toolchain made, whose runtime
	// seeded random state during start-up (see RandStateExport).
	goRuntime bool
	// exported is the binary to instantiate for pre-initialisation.
	exported []byte
}

// newSnapshotSource checks that image is a reactor whose whole state after
// _initialize is its one memory and its globals, and adds the exports.
func newSnapshotSource(image []byte) (*snapshotSource, error) {
	m, err := parseBinary(image)
	if err != nil {
		return nil, err
	}
	imp, err := m.imports()
	if err != nil {
		return nil, err
	}
	if imp.memories != 0 || imp.globals != 0 || imp.tables != 0 {
		// State the module does not own cannot be put in its snapshot.
		return nil, errors.New("a reactor that imports memories, tables or globals cannot be pre-initialised")
	}
	if _, ok := m.section(secStart); ok {
		// A start function would run again in every snapshot instance.
		return nil, errors.New("a reactor with a start function cannot be pre-initialised")
	}
	mems, err := m.memories()
	if err != nil {
		return nil, err
	}
	if len(mems) != 1 {
		return nil, fmt.Errorf("a reactor needs exactly one memory to be pre-initialised, it has %d", len(mems))
	}
	if _, passive, err := m.dataSegments(); err != nil {
		return nil, err
	} else if passive > 0 {
		// memory.init would copy them again over the captured heap.
		return nil, errors.New("a reactor with passive data segments cannot be pre-initialised")
	}
	gs, err := m.globals()
	if err != nil {
		return nil, err
	}
	for i, g := range gs {
		if _, err := constInit(g.typ, 0); err != nil {
			return nil, fmt.Errorf("global %d: %w", i, err)
		}
	}
	es, err := m.exports()
	if err != nil {
		return nil, err
	}
	for _, e := range es {
		if strings.HasPrefix(e.name, globalExportPrefix) {
			return nil, fmt.Errorf("the module already exports %q", e.name)
		}
	}
	for i := range gs {
		es = append(es, binExport{name: globalExportPrefix + strconv.Itoa(i), kind: kindGlobal, idx: uint32(i)})
	}
	exp := m.clone()
	exp.setSection(secExport, encodeExports(es))
	return &snapshotSource{orig: m, globals: gs, goRuntime: goProducer(m), exported: exp.encode()}, nil
}

// state is what a pre-initialised instance leaves: the raw bits of every
// global and the contents of its memory.
type state struct {
	globals []uint64
	memory  []byte
}

// capture reads the state of an instance of s.exported.
func (s *snapshotSource) capture(mod api.Module) (*state, error) {
	st := &state{}
	for i := range s.globals {
		g := mod.ExportedGlobal(globalExportPrefix + strconv.Itoa(i))
		if g == nil {
			return nil, fmt.Errorf("global %d is not exported", i)
		}
		st.globals = append(st.globals, g.Get())
	}
	mem := mod.Memory()
	if mem == nil {
		return nil, errors.New("the instance has no memory")
	}
	b, ok := mem.Read(0, mem.Size())
	if !ok {
		return nil, errors.New("reading the instance's memory")
	}
	st.memory = bytes.Clone(b)
	return st, nil
}

// build makes the snapshot module: the original with st as its initial
// state and without the _initialize and RandStateExport exports, which
// belong to the deploy, not to requests.
func (s *snapshotSource) build(st *state) ([]byte, error) {
	if len(st.globals) != len(s.globals) {
		return nil, fmt.Errorf("%d global values for %d globals", len(st.globals), len(s.globals))
	}
	if len(st.memory)%pageSize != 0 {
		return nil, fmt.Errorf("memory of %d bytes is not whole pages", len(st.memory))
	}
	m := s.orig.clone()

	gs := make([]binGlobal, len(s.globals))
	for i, g := range s.globals {
		init, err := constInit(g.typ, st.globals[i])
		if err != nil {
			return nil, err
		}
		gs[i] = binGlobal{typ: g.typ, mutable: g.mutable, init: init}
	}
	if len(gs) > 0 {
		m.setSection(secGlobal, encodeGlobals(gs))
	}

	mems, err := m.memories()
	if err != nil {
		return nil, err
	}
	pages := uint32(len(st.memory) / pageSize)
	if mems[0].hasMax && pages > mems[0].max {
		return nil, fmt.Errorf("captured %d pages, over the module's maximum of %d", pages, mems[0].max)
	}
	mems[0].min = pages
	m.setSection(secMemory, encodeMemories(mems))

	data, n := dataImage(st.memory)
	m.setSection(secData, data)
	if _, ok := m.section(secDataCount); ok {
		m.setSection(secDataCount, appendU32(nil, uint32(n)))
	}

	es, err := m.exports()
	if err != nil {
		return nil, err
	}
	kept := es[:0:0]
	for _, e := range es {
		// Both ran once, in the throwaway instance: a second _initialize
		// would start the runtime again over a started heap.
		if e.name != initializeExport && e.name != RandStateExport {
			kept = append(kept, e)
		}
	}
	m.setSection(secExport, encodeExports(kept))
	return m.encode(), nil
}

// dataImage encodes mem as a data section of active segments holding its
// non-zero bytes; a fresh memory is zero, so zero runs need no segment.
// It returns the section body and the number of segments.
func dataImage(mem []byte) ([]byte, int) {
	type run struct{ start, end int }
	var runs []run
	for i := 0; i < len(mem); {
		if mem[i] == 0 {
			i++
			continue
		}
		j := i + 1
		for j < len(mem) && mem[j] != 0 {
			j++
		}
		if k := len(runs) - 1; k >= 0 && i-runs[k].end <= snapshotGap {
			runs[k].end = j
		} else {
			runs = append(runs, run{i, j})
		}
		i = j
	}
	out := appendU32(nil, uint32(len(runs)))
	for _, r := range runs {
		out = append(out, 0, 0x41)
		out = appendS64(out, int64(int32(uint32(r.start))))
		out = append(out, 0x0b)
		out = appendU32(out, uint32(r.end-r.start))
		out = append(out, mem[r.start:r.end]...)
	}
	return out, len(runs)
}

// snapshot pre-initialises the reactor image and compiles the result into
// im.compiled. The throwaway instance gets the image's mounts (the Go
// runtime lists the preopened directories during start-up, and fd numbers
// must be the same in the snapshot's instances) but no args, no
// environment and empty stdio: nothing of a request exists yet.
func (im *Image) snapshot(ctx context.Context, image []byte) error {
	src, err := newSnapshotSource(image)
	if err != nil {
		return fmt.Errorf("%w: %v", machine.ErrBadImage, err)
	}
	compiled, err := im.rt.CompileModule(ctx, src.exported)
	if err != nil {
		return fmt.Errorf("%w: %s%v", machine.ErrBadImage, componentHint(image), err)
	}
	defer compiled.Close(ctx)
	if err := checkSignature(compiled, initializeExport, nil); err != nil {
		return err
	}
	if err := checkSignature(compiled, ServeExport, []api.ValueType{api.ValueTypeI32}); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(ctx, im.limits.Timeout)
	defer cancel()
	mem := &linearMemory{limit: im.maxBytes}
	ictx := experimental.WithMemoryAllocator(ctx, mem)
	log := &tailBuffer{max: 4 << 10}
	mod, err := im.rt.InstantiateModule(ictx, compiled, im.base.WithStdout(io.Discard).WithStderr(log))
	if err != nil {
		return fmt.Errorf("%w: %v", machine.ErrBadImage, err)
	}
	defer mod.Close(context.Background())
	// explain says why a call into the throwaway instance failed, or, for
	// a nil error, what the guest logged.
	explain := func(err error) string {
		var exit *sys.ExitError
		why := "it gave no reason"
		switch {
		case err == nil:
		case ctx.Err() != nil:
			why = fmt.Sprintf("it did not finish within the %v deadline", im.limits.Timeout)
		case mem.refused.Load():
			why = fmt.Sprintf("it needs more than the %d KiB memory limit", mem.limit>>10)
		case errors.As(err, &exit):
			why = fmt.Sprintf("it exited with status %d", exit.ExitCode())
		default:
			why = err.Error()
		}
		if l := strings.TrimSpace(log.String()); l != "" {
			if err == nil {
				return l
			}
			why += "; its log ends:\n" + l
		}
		return why
	}
	if _, err := mod.ExportedFunction(initializeExport).Call(ictx); err != nil {
		return fmt.Errorf("%w: pre-initialising the reactor (%s): %s", machine.ErrBadImage, initializeExport, explain(err))
	}
	// After _initialize, so that every init has run, and before the
	// capture, so that the descriptor is in the snapshot's memory.
	regions, err := src.randState(ictx, mod, explain)
	if err != nil {
		return err
	}
	st, err := src.capture(mod)
	if err != nil {
		return fmt.Errorf("%w: wasm: capturing the snapshot: %v", machine.ErrInternal, err)
	}
	snap, err := src.build(st)
	if err != nil {
		return fmt.Errorf("%w: wasm: building the snapshot: %v", machine.ErrInternal, err)
	}
	im.compiled, err = im.rt.CompileModule(ctx, snap)
	if err != nil {
		// The rewrite produced something wazero refuses: a bug here, not
		// in the app.
		return fmt.Errorf("%w: wasm: compiling the snapshot: %v", machine.ErrInternal, err)
	}
	im.entry, im.reactor, im.snapshotBytes, im.randRegions = ServeExport, true, len(snap), regions
	return nil
}

func checkSignature(c wazero.CompiledModule, name string, results []api.ValueType) error {
	f, ok := c.ExportedFunctions()[name]
	if !ok {
		return fmt.Errorf("%w: the module exports no %s function", machine.ErrBadImage, name)
	}
	if len(f.ParamTypes()) != 0 || !bytes.Equal(f.ResultTypes(), results) {
		want := "()"
		if len(results) == 1 {
			want = "(" + api.ValueTypeName(results[0]) + ")"
		}
		return fmt.Errorf("%w: %s has signature %s, want () -> %s", machine.ErrBadImage, name, f.DebugName(), want)
	}
	return nil
}

// tailBuffer keeps the last max bytes written to it: the end of a failed
// start-up's log is what explains it.
type tailBuffer struct {
	buf []byte
	max int
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }
