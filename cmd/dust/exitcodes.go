package main

import (
	"errors"
	"fmt"

	"github.com/dust-run/dust/internal/cgi"
	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
)

// Exit codes of the dust command. Keep docs/cli.md in step.
const (
	exitOK          = 0 // a response was produced
	exitError       = 1 // anything not listed below (I/O error, internal error)
	exitUsage       = 2 // bad command line or bad setting
	exitBadImage    = 3 // the image was refused (not an ELF/wasm, malformed, wrong ABI)
	exitDeadline    = 4 // the machine ran past its deadline
	exitFault       = 5 // the machine faulted, broke the ABI, or hit a memory/output/log limit
	exitBadOutput   = 6 // the machine's output was not a valid CGI response
	exitUnavailable = 7 // cannot run here: no /dev/kvm, admin API unreachable or token refused, port in use
	exitTooLarge    = 8 // the request did not fit the machine
	exitNotFound    = 9 // no such app (admin commands)
)

// exitCode maps an error to the exit code table above.
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, machine.ErrBadImage), errors.Is(err, errEmptyImage):
		return exitBadImage
	case errors.Is(err, kvm.ErrUnavailable):
		return exitUnavailable
	case errors.Is(err, machine.ErrDeadline):
		return exitDeadline
	case errors.Is(err, machine.ErrRefused):
		return exitTooLarge
	case errors.Is(err, cgi.ErrBadOutput):
		return exitBadOutput
	case errors.Is(err, machine.ErrFault), errors.Is(err, machine.ErrBadHypercall),
		errors.Is(err, machine.ErrMemoryLimit), errors.Is(err, machine.ErrOutputLimit),
		errors.Is(err, machine.ErrLogLimit):
		return exitFault
	case errors.Is(err, machine.ErrBadLimits), errors.Is(err, errUsage):
		return exitUsage
	}
	return exitError
}

var errUsage = errors.New("usage")

// errEmptyImage is an image file with nothing in it: refused (exit 3)
// before anything is uploaded.
var errEmptyImage = errors.New("empty image")

// plainError carries a complete message and the sentinel that picks its
// exit code, without the sentinel's text in front of the message.
type plainError struct {
	msg  string
	kind error
}

func (e *plainError) Error() string { return e.msg }
func (e *plainError) Unwrap() error { return e.kind }

// badUsage is a bad command line, said in the user's terms (exit 2).
func badUsage(format string, args ...any) error {
	return &plainError{msg: fmt.Sprintf(format, args...), kind: errUsage}
}
