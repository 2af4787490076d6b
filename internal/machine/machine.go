// Package machine defines what a Dust machine kind implements (hvt, wasm)
// and the pieces every kind shares: the request a machine serves, the limits
// it runs under, the typed outcome it reports, and a pool of pre-created,
// never-used machines per image.
//
// The life of a machine is one request: an Image is prepared once per
// deployed app; each request takes a brand-new Machine from it, Runs it
// exactly once and Closes it. Nothing survives from one request to the next.
package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// Request is what a machine sees of one HTTP request, already in CGI terms
// (see internal/cgi): argv, environment and the body on standard input.
type Request struct {
	Args []string
	Env  []string // "KEY=VALUE"
	// Body is read at most BodyLen bytes; BodyLen < 0 means "until EOF".
	// A machine may read it from a thread it cannot interrupt (hvt reads
	// on the vCPU thread), so a Body fed by a client must fail by itself
	// once the request's deadline has passed: the gateway sets read
	// deadlines on the connection. The same holds for the stdout and
	// stderr writers given to Run.
	Body    io.Reader
	BodyLen int64
}

// Limits bound one machine. Zero values mean "the kind's default"; see
// Limits.WithDefaults.
type Limits struct {
	Memory    int64         // guest memory in bytes
	Timeout   time.Duration // wall-clock deadline for one request
	MaxOutput int64         // bytes the machine may write to stdout
	MaxLog    int64         // bytes the machine may write to stderr
}

// Defaults applied by WithDefaults.
const (
	DefaultMemory    = 16 << 20
	DefaultTimeout   = 10 * time.Second
	DefaultMaxOutput = 64 << 20
	DefaultMaxLog    = 1 << 20
)

// WithDefaults returns l with every zero field replaced by its default.
func (l Limits) WithDefaults() Limits {
	if l.Memory == 0 {
		l.Memory = DefaultMemory
	}
	if l.Timeout == 0 {
		l.Timeout = DefaultTimeout
	}
	if l.MaxOutput == 0 {
		l.MaxOutput = DefaultMaxOutput
	}
	if l.MaxLog == 0 {
		l.MaxLog = DefaultMaxLog
	}
	return l
}

// Validate reports limits that no kind can honour.
func (l Limits) Validate() error {
	switch {
	case l.Memory < 0:
		return fmt.Errorf("%w: memory %d is negative", ErrBadLimits, l.Memory)
	case l.Timeout < 0:
		return fmt.Errorf("%w: timeout %v is negative", ErrBadLimits, l.Timeout)
	case l.MaxOutput < 0:
		return fmt.Errorf("%w: max output %d is negative", ErrBadLimits, l.MaxOutput)
	case l.MaxLog < 0:
		return fmt.Errorf("%w: max log %d is negative", ErrBadLimits, l.MaxLog)
	}
	return nil
}

// ErrBadLimits is wrapped by Limits.Validate errors.
var ErrBadLimits = errors.New("bad limits")

// ErrBadImage is wrapped by every error that refuses an image at prepare
// time (malformed ELF, invalid wasm module, wrong ABI...).
var ErrBadImage = errors.New("bad image")

// Image is an app image prepared once (a KVM memory template, a compiled
// wasm module) from which fresh machines are made.
type Image interface {
	// Kind names the machine kind ("hvt", "wasm").
	Kind() string
	// NewMachine creates a machine ready to serve one request. It may be
	// slow (VM creation); pools call it ahead of time.
	NewMachine() (Machine, error)
	// Limits are the limits the image was prepared with.
	Limits() Limits
	// Close releases the image. Machines already made stay valid.
	Close() error
}

// Machine serves exactly one request.
type Machine interface {
	// Run serves req: the machine's stdout goes to stdout, its stderr to
	// stderr, as it is produced. Run is called at most once. A write error
	// from stdout or stderr stops the machine (outcome BadOutput).
	// Cancelling ctx stops the machine (outcome Canceled, or
	// DeadlineExceeded when ctx's deadline passed).
	Run(ctx context.Context, req *Request, stdout, stderr io.Writer) Result
	// Close destroys the machine and releases everything it holds. It is
	// safe to call whether or not Run was called, exactly once.
	Close() error
}

// Resetter is implemented by machines that can be returned to their
// image's pristine state after a request and serve another one (the
// "restore" isolation mode). Reset must leave nothing of the previous
// request observable; when it fails the machine must be destroyed.
type Resetter interface {
	Reset() error
}

// Pruner is implemented by kinds that keep per-image state on disk beyond
// the store's images (the wasm kind's compiled code). Prune removes what
// belongs to images whose digests (the store's "sha256:<hex>") are not in
// keep, and reports the bytes it freed. keep must name every image that is
// prepared or being prepared.
type Pruner interface {
	Prune(keep []string) (freed int64, err error)
}

// Isolation modes: how a machine is made pristine for each request.
const (
	// IsolationRestore reuses a machine after restoring it to the
	// template state (kinds that implement Resetter); the default.
	IsolationRestore = "restore"
	// IsolationFresh gives every request a newly created machine.
	IsolationFresh = "fresh"
)

// ValidIsolation reports whether s names an isolation mode ("" is the
// default, restore).
func ValidIsolation(s string) bool {
	return s == "" || s == IsolationRestore || s == IsolationFresh
}

// Reusable reports whether a machine that ended with res may be restored
// and reused: only one whose guest ended on its own with status 0 (the
// gateway fails a request that exits non-zero). A fault, a deadline, a
// limit, a host error, a client that went away or a failing exit destroys
// the machine even though a restore would reset it, so that a guest that
// found a way to misbehave never gets a second request on the same VM.
func Reusable(res Result) bool { return res.Outcome == Served && res.ExitStatus == 0 }

// Kind prepares images of one machine kind.
type Kind interface {
	Name() string
	// Prepare validates image and builds what fresh machines are made
	// from. A bad image is refused with an error wrapping ErrBadImage.
	Prepare(image []byte, limits Limits) (Image, error)
}

// Outcome classifies how a machine's run ended.
type Outcome int

// Outcomes. Served is the only one in which the machine chose to end.
const (
	Served           Outcome = iota // the guest exited (see Result.ExitStatus)
	DeadlineExceeded                // the wall-clock deadline stopped it
	Canceled                        // the caller gave up (client went away)
	MemoryLimit                     // the guest ran out of its memory
	OutputLimit                     // stdout exceeded Limits.MaxOutput
	LogLimit                        // stderr exceeded Limits.MaxLog
	Fault                           // CPU exception / triple fault / wasm trap
	BadHypercall                    // the guest broke the ABI (bad pointer, unknown call)
	BadOutput                       // the output sink refused what the guest wrote
	InternalError                   // the host failed (VM entry failure, ioctl error)
	Refused                         // the request did not fit the machine (too large)
)

var outcomeNames = [...]string{
	Served: "served", DeadlineExceeded: "deadline exceeded", Canceled: "canceled",
	MemoryLimit: "memory limit", OutputLimit: "output limit", LogLimit: "log limit",
	Fault: "fault", BadHypercall: "bad hypercall", BadOutput: "bad output",
	InternalError: "internal error", Refused: "refused",
}

func (o Outcome) String() string {
	if o >= 0 && int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// Sentinel errors, one per outcome other than Served; Result.Err wraps them.
var (
	ErrDeadline     = errors.New("deadline exceeded")
	ErrCanceled     = errors.New("canceled")
	ErrMemoryLimit  = errors.New("memory limit exceeded")
	ErrOutputLimit  = errors.New("output limit exceeded")
	ErrLogLimit     = errors.New("log limit exceeded")
	ErrFault        = errors.New("machine fault")
	ErrBadHypercall = errors.New("bad hypercall")
	ErrBadOutput    = errors.New("bad output")
	ErrInternal     = errors.New("internal error")
	ErrRefused      = errors.New("request refused by the machine")
)

var outcomeErrs = [...]error{
	DeadlineExceeded: ErrDeadline, Canceled: ErrCanceled, MemoryLimit: ErrMemoryLimit,
	OutputLimit: ErrOutputLimit, LogLimit: ErrLogLimit, Fault: ErrFault,
	BadHypercall: ErrBadHypercall, BadOutput: ErrBadOutput, InternalError: ErrInternal,
	Refused: ErrRefused,
}

// Result reports one run: how it ended and what it cost.
type Result struct {
	Outcome    Outcome
	ExitStatus int    // valid when Outcome == Served
	Detail     string // human-readable specifics (fault kind, bad pointer...)
	RIP        uint64 // instruction pointer at a fault, when HasRIP
	HasRIP     bool
	Cause      error // underlying error for BadOutput / InternalError

	Exits       int // VM exits (hvt) or host calls (wasm) during the run
	StdoutBytes int64
	StderrBytes int64
	RunTime     time.Duration // from entry to the end of the run
	MemoryBytes int64         // host memory the machine touched, where known
	// Syscalls counts the system calls a Linux guest made (hvt);
	// Unsupported those answered ENOSYS or refused with EPERM, by name.
	Syscalls    int
	Unsupported map[string]int
}

// Err returns nil for Served, otherwise an *OutcomeError.
func (r *Result) Err() error {
	if r.Outcome == Served {
		return nil
	}
	return &OutcomeError{Result: *r}
}

// OutcomeError is the error form of a Result that was not Served. It
// unwraps to the outcome's sentinel (and to Cause, if any).
type OutcomeError struct{ Result Result }

func (e *OutcomeError) Error() string {
	s := e.Result.Outcome.String()
	if e.Result.Detail != "" {
		s += ": " + e.Result.Detail
	}
	if e.Result.HasRIP {
		s += fmt.Sprintf(" (rip=%#x)", e.Result.RIP)
	}
	if e.Result.Cause != nil {
		s += ": " + e.Result.Cause.Error()
	}
	return s
}

// Unwrap returns the outcome sentinel and the cause.
func (e *OutcomeError) Unwrap() []error {
	var errs []error
	if o := e.Result.Outcome; o > 0 && int(o) < len(outcomeErrs) {
		errs = append(errs, outcomeErrs[o])
	}
	if e.Result.Cause != nil {
		errs = append(errs, e.Result.Cause)
	}
	return errs
}
