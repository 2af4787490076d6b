package hvt

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
)

// FloorRunner makes a machine of im and returns run, which performs one
// KVM_RUN round trip with a single exit on the machine's existing, warmed
// vCPU: the last three instructions of the warm-up stub, ending in an OUT
// to the stub's port. No request can cost less on this host, so `dust
// bench` puts it next to a restored request as its floor (the Go
// benchmark's floor, BenchmarkRestore/floor, times the same instructions).
//
// With hop, every call hands the round trip to a vCPU worker thread, as
// Run does with the seccomp filter on, so the thread hand-over is in the
// figure; without, the caller's thread runs the vCPU, locked for the call,
// as Run does with the filter off. run must not be called concurrently;
// release destroys the machine.
func (im *Image) FloorRunner(hop bool) (run func() error, release func(), err error) {
	at := bytes.Index(warmStub, []byte{0xba, 0xff, 0xd0}) // mov $0xD0FF,%edx; xor %eax,%eax; out
	if at < 0 {
		return nil, nil, errors.New("hvt: floor: the warm-up stub has no exit sequence")
	}
	m, err := im.newMachine()
	if err != nil {
		return nil, nil, err
	}
	// The round trip loads its registers through kvm_run's sync area, so
	// that it is one ioctl; a host without it cannot restore either.
	if im.state == nil {
		m.Close()
		return nil, nil, fmt.Errorf("hvt: floor: %w", im.stateErr)
	}
	regs := kvm.Regs{RIP: warmAddr + uint64(at), RSP: im.lay.stackTop, RFLAGS: 0x3002}
	var runErr error
	once := func() {
		runErr = nil
		for {
			m.run.Sync().Regs = regs
			*m.run.DirtyRegs() = kvm.KVM_SYNC_X86_REGS
			err := kvm.RunVCPU(m.vcpufd)
			if err == unix.EINTR || err == unix.EAGAIN {
				continue // a Go preemption signal came first: enter again
			}
			if err != nil {
				runErr = fmt.Errorf("hvt: floor: KVM_RUN: %w", err)
				return
			}
			if r := m.run.ExitReason; r != kvm.KVM_EXIT_IO || m.run.IO().Port != warmPort {
				runErr = fmt.Errorf("hvt: floor: exit reason %d, want port I/O to %#x", r, warmPort)
			}
			return
		}
	}
	run = func() error {
		if hop {
			if err := onWorker(once); err != nil {
				return err
			}
			return runErr
		}
		runtime.LockOSThread()
		once()
		runtime.UnlockOSThread()
		return runErr
	}
	return run, func() { m.Close() }, nil
}
