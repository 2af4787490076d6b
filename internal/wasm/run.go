package wasm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"

	"github.com/dust-run/dust/internal/machine"
)

// Machine is one future module instance. It serves one request.
type Machine struct {
	im     *Image
	used   atomic.Bool
	closed atomic.Bool
}

// Close implements machine.Machine. The instance itself is closed by Run
// before it returns; Close gives the image back its reference.
func (m *Machine) Close() error {
	if !m.closed.CompareAndSwap(false, true) {
		return nil
	}
	return m.im.release()
}

// stopCause is why the host stopped a running instance before the guest
// ended on its own; it is the cancel cause of the run's context.
type stopCause struct {
	outcome machine.Outcome
	detail  string
	err     error // the writer's or reader's error, if any
}

func (c *stopCause) Error() string { return c.outcome.String() + ": " + c.detail }

// Run implements machine.Machine.
func (m *Machine) Run(ctx context.Context, req *machine.Request, stdout, stderr io.Writer) machine.Result {
	start := time.Now()
	if !m.used.CompareAndSwap(false, true) || m.closed.Load() {
		return machine.Result{Outcome: machine.InternalError, Detail: "machine already used or closed", Cause: errors.New("wasm: a machine serves one request")}
	}
	im := m.im
	lim := im.limits

	ctx, cancelTimeout := context.WithTimeout(ctx, lim.Timeout)
	defer cancelTimeout()
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)

	// Result.Exits counts the guest's stdio calls: the host calls that
	// matter for cost; counting every WASI call would need a listener on
	// each, which slows every call down.
	var calls atomic.Int64
	out := &limitWriter{w: stdout, max: lim.MaxOutput, over: machine.OutputLimit, stop: stop, calls: &calls}
	log := &limitWriter{w: stderr, max: lim.MaxLog, over: machine.LogLimit, stop: stop, calls: &calls}
	in := &bodyReader{stop: stop, calls: &calls}
	switch {
	case req.Body == nil:
		in.r = strings.NewReader("")
	case req.BodyLen >= 0:
		in.r = io.LimitReader(req.Body, req.BodyLen)
	default:
		in.r = req.Body
	}

	cfg := im.base.WithArgs(req.Args...).
		WithStdin(in).WithStdout(out).WithStderr(log).
		WithNanosleep(func(ns int64) { sleep(ctx, ns) })
	for _, kv := range req.Env {
		k, v := splitEnv(kv)
		cfg = cfg.WithEnv(k, v)
	}
	mem := &linearMemory{limit: im.maxBytes}
	ictx := experimental.WithMemoryAllocator(ctx, mem)

	res := machine.Result{}
	var status []uint64
	mod, err := im.rt.InstantiateModule(ictx, im.compiled, cfg)
	if err == nil {
		// Before any guest code runs, so that nothing is drawn from the
		// snapshot's random state.
		if err = reseed(mod, im.randRegions); err != nil {
			err = fmt.Errorf("reseeding the snapshot's random state: %w", err)
		} else {
			status, err = mod.ExportedFunction(im.entry).Call(ictx)
		}
		if err != nil && im.tablesCapped && ctx.Err() == nil {
			mem.tablesFull = tablesFull(ictx, mod)
		}
		// The instance is never reused: it goes as soon as the guest is
		// done, whatever the outcome.
		mod.Close(context.Background())
	} else if ctx.Err() == nil {
		err = fmt.Errorf("instantiating: %w", err)
	}
	res.MemoryBytes = int64(mem.size.Load())
	res.Exits = int(calls.Load())
	res.StdoutBytes, res.StderrBytes = out.n, log.n
	res.RunTime = time.Since(start)
	classify(&res, ctx, err, mem)
	if res.Outcome == machine.Served && err == nil && len(status) == 1 {
		// A reactor's entry point returns the status a command would
		// have passed to proc_exit.
		res.ExitStatus = int(int32(uint32(status[0])))
	}
	return res
}

// classify sets res's outcome from how the run ended. What the host did
// (a limit, a failed writer, the deadline) wins over what the guest did
// afterwards, because the guest only saw its effects.
func classify(res *machine.Result, ctx context.Context, err error, mem *linearMemory) {
	var sc *stopCause
	if errors.As(context.Cause(ctx), &sc) {
		res.Outcome, res.Detail, res.Cause = sc.outcome, sc.detail, sc.err
		return
	}
	var exit *sys.ExitError
	switch {
	case err == nil:
		res.Outcome = machine.Served
	case ctx.Err() != nil && (!errors.As(err, &exit) || exit.ExitCode() == sys.ExitCodeDeadlineExceeded || exit.ExitCode() == sys.ExitCodeContextCanceled):
		// wazero closed the instance because the context ended.
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			res.Outcome = machine.DeadlineExceeded
		} else {
			res.Outcome = machine.Canceled
		}
	case errors.As(err, &exit):
		res.Outcome, res.ExitStatus = machine.Served, int(exit.ExitCode())
		if exit.ExitCode() != 0 && mem.refused.Load() {
			res.Outcome = machine.MemoryLimit
			res.Detail = fmt.Sprintf("memory.grow beyond %d KiB refused; the guest then exited with status %d", mem.limit>>10, exit.ExitCode())
		}
	default:
		trap, ok := trapReason(err)
		switch {
		case ok && mem.refused.Load():
			res.Outcome = machine.MemoryLimit
			res.Detail = fmt.Sprintf("memory.grow beyond %d KiB refused; the guest then trapped: %s", mem.limit>>10, trap)
		case ok && mem.tablesFull:
			res.Outcome = machine.MemoryLimit
			res.Detail = fmt.Sprintf("table.grow beyond the %d table entries the %d KiB memory limit allows refused; the guest then trapped: %s", mem.limit/tableEntryBytes, mem.limit>>10, trap)
		case ok:
			res.Outcome, res.Detail = machine.Fault, trap
		default:
			res.Outcome, res.Detail, res.Cause = machine.InternalError, "wasm", err
		}
	}
}

// trapReason extracts "unreachable (in main)" from a wazero trap error,
// whose text is "wasm error: REASON\nwasm stack trace:\n\tFRAME\n...".
// wazero exposes no typed trap error, so its stable prefix is what there
// is; a host-side panic reads "... (recovered by wazero)" instead.
func trapReason(err error) (string, bool) {
	msg, ok := strings.CutPrefix(err.Error(), "wasm error: ")
	if !ok {
		return "", false
	}
	reason, trace, _ := strings.Cut(msg, "\n")
	if _, frames, ok := strings.Cut(trace, "\n\t"); ok {
		frame, _, _ := strings.Cut(frames, "\n")
		if fn, _, ok := strings.Cut(frame, "("); ok {
			frame = fn
		}
		// Frames read "MODULE.FUNC"; instances here are anonymous.
		reason += " (in " + strings.TrimPrefix(frame, ".") + ")"
	}
	return reason, true
}

// sleep is the guest's nanosleep: unlike wazero's default it wakes when
// the run's context ends, so a sleeping guest cannot outlive its deadline.
func sleep(ctx context.Context, ns int64) {
	t := time.NewTimer(time.Duration(ns))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// limitWriter passes the guest's output through as it is written and
// stops the instance when the limit is passed or the writer fails. The
// bytes that fit are delivered, so the client sees exactly max bytes.
type limitWriter struct {
	w     io.Writer
	n     int64
	max   int64
	over  machine.Outcome
	stop  context.CancelCauseFunc
	calls *atomic.Int64
	err   error
}

func (w *limitWriter) Write(p []byte) (int, error) {
	w.calls.Add(1)
	if w.err != nil {
		return 0, w.err
	}
	fits := true
	if room := w.max - w.n; int64(len(p)) > room {
		p, fits = p[:room], false
	}
	n, err := w.w.Write(p)
	w.n += int64(n)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	switch {
	case err != nil:
		w.err = &stopCause{outcome: machine.BadOutput, detail: "writing the guest's output", err: err}
	case !fits:
		w.err = &stopCause{outcome: w.over, detail: fmt.Sprintf("more than %d bytes", w.max)}
	default:
		return n, nil
	}
	w.stop(w.err)
	return n, w.err
}

// bodyReader feeds the request body to the guest's stdin and stops the
// instance if the body cannot be read (the client went away): the guest
// would otherwise answer a request it never fully received.
type bodyReader struct {
	r     io.Reader
	stop  context.CancelCauseFunc
	calls *atomic.Int64
}

func (b *bodyReader) Read(p []byte) (int, error) {
	b.calls.Add(1)
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		b.stop(&stopCause{outcome: machine.Canceled, detail: "reading the request body", err: err})
	}
	return n, err
}

// linearMemory backs one instance's memory and enforces the memory limit
// itself, remembering a refused memory.grow: that is how a guest that
// failed because it ran out of memory is told apart from one that failed
// for another reason.
type linearMemory struct {
	buf   []byte
	limit uint64
	// size is len(buf), kept when the instance is closed and buf freed:
	// proc_exit, the deadline and the output limits close it before Run
	// can look. Atomic because wazero closes it from its own goroutine
	// on the deadline.
	size    atomic.Uint64
	refused atomic.Bool
	// tablesFull is set after a trap when a table capped by capTables is
	// at its maximum: the table's share of the memory limit ran out.
	tablesFull bool
}

// Allocate makes m the memory itself: an allocator serves one instance,
// and an instance has one memory.
func (m *linearMemory) Allocate(cap, _ uint64) experimental.LinearMemory {
	m.buf = make([]byte, 0, min(cap, m.limit))
	return m
}

func (m *linearMemory) Reallocate(size uint64) []byte {
	if size > m.limit {
		m.refused.Store(true)
		return nil
	}
	if size > uint64(cap(m.buf)) {
		// Double, as append would, but never past the limit: the guest
		// grows its heap a page or a few at a time.
		nb := make([]byte, size, min(max(size, 2*uint64(cap(m.buf))), m.limit))
		copy(nb, m.buf)
		m.buf = nb
	}
	m.buf = m.buf[:size]
	m.size.Store(size)
	return m.buf
}

func (m *linearMemory) Free() { m.buf = nil }

// tablesFull asks a trapped instance whether a capped table is full. An
// instance that exited is closed and cannot answer; its exit status
// stands.
func tablesFull(ctx context.Context, mod api.Module) bool {
	f := mod.ExportedFunction(limitsExport)
	if f == nil {
		return false
	}
	r, err := f.Call(ctx)
	return err == nil && len(r) == 1 && r[0] == 1
}
