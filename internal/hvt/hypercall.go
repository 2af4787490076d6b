package hvt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// errGuestRange is wrapped by every rejected guest address range.
var errGuestRange = errors.New("guest address range invalid")

// checkRange validates that [gpa, gpa+size) is guest memory the guest may
// hand to the monitor: above the monitor-owned pages, inside memSize, with
// no wrap-around. Every pointer and length from a guest goes through here.
func checkRange(gpa, size, memSize uint64) error {
	end, carry := bits.Add64(gpa, size, 0)
	switch {
	case carry != 0:
		return fmt.Errorf("%w: [%#x, +%#x) wraps around", errGuestRange, gpa, size)
	case gpa < monitorEnd:
		return fmt.Errorf("%w: %#x is in monitor-owned memory (below %#x)", errGuestRange, gpa, monitorEnd)
	case end > memSize:
		return fmt.Errorf("%w: [%#x, %#x) extends beyond guest memory (%#x)", errGuestRange, gpa, end, memSize)
	}
	return nil
}

// hcArgs returns the argument struct of a hypercall: 8-byte aligned and
// entirely inside guest memory.
func hcArgs(mem []byte, gpa, size uint64) ([]byte, error) {
	if gpa%8 != 0 {
		return nil, fmt.Errorf("%w: argument struct at %#x is not 8-byte aligned", errGuestRange, gpa)
	}
	if err := checkRange(gpa, size, uint64(len(mem))); err != nil {
		return nil, fmt.Errorf("argument struct: %w", err)
	}
	return mem[gpa : gpa+size], nil
}

// ioRequest is a decoded WRITE or READ hypercall.
type ioRequest struct {
	fd       uint64 // WRITE only
	buf, len uint64
}

// decodeWrite decodes and validates struct dust_hc_write at gpa.
func decodeWrite(mem []byte, gpa uint64) (ioRequest, error) {
	a, err := hcArgs(mem, gpa, hcWriteSize)
	if err != nil {
		return ioRequest{}, err
	}
	le := binary.LittleEndian
	r := ioRequest{fd: le.Uint64(a), buf: le.Uint64(a[8:]), len: le.Uint64(a[16:])}
	if r.fd != fdStdout && r.fd != fdStderr {
		return ioRequest{}, fmt.Errorf("write: fd %d is neither stdout (1) nor stderr (2)", r.fd)
	}
	if err := checkRange(r.buf, r.len, uint64(len(mem))); err != nil {
		return ioRequest{}, fmt.Errorf("write buffer: %w", err)
	}
	return r, nil
}

// decodeRead decodes and validates struct dust_hc_read at gpa. The output
// field (ret) lies inside the checked struct.
func decodeRead(mem []byte, gpa uint64) (ioRequest, error) {
	a, err := hcArgs(mem, gpa, hcReadSize)
	if err != nil {
		return ioRequest{}, err
	}
	le := binary.LittleEndian
	r := ioRequest{buf: le.Uint64(a), len: le.Uint64(a[8:])}
	if err := checkRange(r.buf, r.len, uint64(len(mem))); err != nil {
		return ioRequest{}, fmt.Errorf("read buffer: %w", err)
	}
	return r, nil
}

// exitRequest is a decoded EXIT hypercall.
type exitRequest struct {
	status         int64
	reason         uint64
	outBuf, outLen uint64
	errBuf, errLen uint64
}

// decodeExit decodes and validates struct dust_hc_exit at gpa.
func decodeExit(mem []byte, gpa uint64) (exitRequest, error) {
	a, err := hcArgs(mem, gpa, hcExitSize)
	if err != nil {
		return exitRequest{}, err
	}
	le := binary.LittleEndian
	r := exitRequest{
		status: int64(le.Uint64(a)), reason: le.Uint64(a[8:]),
		outBuf: le.Uint64(a[16:]), outLen: le.Uint64(a[24:]),
		errBuf: le.Uint64(a[32:]), errLen: le.Uint64(a[40:]),
	}
	if r.reason > exitOOM {
		return exitRequest{}, fmt.Errorf("exit: unknown reason %d", r.reason)
	}
	if r.outLen > 0 {
		if err := checkRange(r.outBuf, r.outLen, uint64(len(mem))); err != nil {
			return exitRequest{}, fmt.Errorf("exit stdout buffer: %w", err)
		}
	}
	if r.errLen > 0 {
		if err := checkRange(r.errBuf, r.errLen, uint64(len(mem))); err != nil {
			return exitRequest{}, fmt.Errorf("exit stderr buffer: %w", err)
		}
	}
	return r, nil
}
