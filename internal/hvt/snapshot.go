package hvt

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/linux"
	"github.com/dust-run/dust/internal/machine"
)

// Post-init snapshots. A program that calls dust_ready() (the READY
// hypercall) after its start-up work declares the point every request may
// start from. At Prepare the monitor runs the image once, without a
// request, until that point, and makes the machine's state there — memory
// and the complete vCPU state — the image's template: every machine,
// fresh or restored, then starts at the instruction after READY, with the
// request placed in its boot info, and the start-up is paid once per
// deploy instead of once per request. An image that never calls READY
// keeps its boot-time template; one that links dust_ready() (its ready
// note says so) must reach it at Prepare or is refused.

// snapshotRequest is what the guest sees before its ready point: no
// request at all, so that nothing a request carries can end up in the
// snapshot.
var snapshotRequest = machine.Request{Args: []string{"/"}}

var errSnapshot = errors.New("hvt: snapshot")

// snapshot runs the image to its ready point and, if it has one, replaces
// the template with the state there. It reports whether it did.
func (im *Image) snapshot() (bool, error) {
	if !im.elf.ready && im.server == nil {
		return false, nil
	}
	if im.server == nil {
		return im.snapshotAt(false)
	}
	// A server is snapshotted after it accepted a placeholder connection
	// and first reads it (server.go), or, for a program that writes to a
	// connection before reading it, at its first accept.
	ok, err := im.snapshotAt(true)
	if err == nil {
		im.serverLate = true
		return ok, nil
	}
	if !errors.Is(err, errLate) {
		return false, err
	}
	return im.snapshotAt(false)
}

// errLate: the server did not reach its first read of the template
// connection in the way a post-accept snapshot needs.
var errLate = errors.New("hvt: no post-accept ready point")

func (im *Image) snapshotAt(late bool) (bool, error) {
	im.snapshotRuns++
	m, err := im.newMachine()
	if err != nil {
		return false, err
	}
	defer m.Close()
	m.stopAtReady, m.lateServer = true, late
	ctx, cancel := context.WithTimeout(context.Background(), im.limits.Timeout)
	defer cancel()
	req := snapshotRequest
	if im.server != nil {
		req = im.server.serverStart()
	}
	// What the program says on the way is the best clue when it does
	// not get there: its last bytes go into the error.
	log := &tailBuffer{max: 2 << 10}
	res := m.Run(ctx, &req, log, log)
	if !m.readyHit && m.templateGiven {
		// It accepted, then did not read as expected: take the snapshot at
		// the accept instead (the whole start-up again).
		return false, fmt.Errorf("%w: %v", errLate, res.Err())
	}
	if !m.readyHit {
		if im.server != nil {
			return false, fmt.Errorf("%w: the server did not wait for a connection within its %v timeout (it must listen on $PORT and accept): %v (outcome %v, exit status %d)%s",
				errServer, im.limits.Timeout, res.Err(), res.Outcome, res.ExitStatus, log.said())
		}
		links := "it links dust_ready"
		if im.lay.linux {
			links = "it links package dustgo, whose Handle makes the ready call"
		}
		return false, fmt.Errorf("%w: the program has a ready point (%s) but ended before reaching it, with an empty request, within its %v timeout: %v (outcome %v)%s",
			errSnapshot, links, im.limits.Timeout, res.Err(), res.Outcome, log.said())
	}
	var proc *linux.Process
	if im.lay.linux {
		p, ok := m.readyProc.(*linux.Process)
		if !ok {
			return false, fmt.Errorf("%w: the process at the ready point is a %T, which cannot be copied", errSnapshot, m.readyProc)
		}
		proc = p
	}
	// The READY exit is pending in KVM: complete it (the guest's RIP moves
	// past the OUT) without running a single further instruction.
	m.run.ImmediateExit = 1
	err = kvm.RunVCPU(m.vcpufd)
	m.run.ImmediateExit = 0
	if err != unix.EINTR {
		return false, fmt.Errorf("%w: completing the READY exit: KVM_RUN returned %v, want EINTR", errSnapshot, err)
	}
	st := &vcpuState{}
	if err := allOf(
		func() error { return kvm.GetRegs(m.vcpufd, &st.regs) },
		func() error { return kvm.GetSregs(m.vcpufd, &st.sregs) },
		func() error { return st.readExtra(m.vcpufd) },
	); err != nil {
		return false, fmt.Errorf("%w: capturing the vCPU: %w", errSnapshot, err)
	}
	fd, size, err := im.snapshotTemplate(m)
	if err != nil {
		return false, err
	}
	unix.Close(im.memfd)
	im.memfd, im.tsize = fd, uintptr(size)
	im.regs, im.sregs = st.regs, st.sregs
	if proc != nil {
		im.proc, im.tid, im.threads = proc, m.readyTid, m.readyThreads
	}
	if im.stateErr == nil {
		st.tscOffset = im.state.tscOffset
		im.state = st
	}
	im.snapshotted = true
	return true, nil
}

// snapshotTemplate writes a new template: the base template's monitor
// pages, boot info and request area (the snapshot run's empty request is
// not kept), and above them the snapshot machine's memory, sparse.
func (im *Image) snapshotTemplate(m *Machine) (int, uint64, error) {
	size := uint64(im.tsize)
	f, err := pagemapFile()
	if err != nil {
		return -1, 0, fmt.Errorf("%w: %w", errSnapshot, err)
	}
	written, ok, err := m.writtenRanges(f)
	if err != nil {
		return -1, 0, err
	}
	if !ok {
		size = uint64(len(m.mem)) // no PAGEMAP_SCAN: take the whole span
	}
	for _, r := range written {
		size = max(size, r.End)
	}
	fd, err := unix.MemfdCreate("dust-hvt-snapshot", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, 0, fmt.Errorf("%w: memfd_create: %w", errSnapshot, err)
	}
	fail := func(err error) (int, uint64, error) {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("%w: writing the template: %w", errSnapshot, err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fail(err)
	}
	page := make([]byte, pageSize)
	for off := uint64(0); off < size; off += pageSize {
		src := m.mem[off : off+pageSize]
		if off < imageBase {
			if off >= uint64(im.tsize) {
				continue
			}
			if _, err := unix.Pread(im.memfd, page, int64(off)); err != nil {
				return fail(err)
			}
			src = page
		}
		if isZero(src) {
			continue
		}
		if _, err := unix.Pwrite(fd, src, int64(off)); err != nil {
			return fail(err)
		}
	}
	return fd, size, nil
}

// applySnapshotState loads the snapshot's vCPU state beyond registers into
// a new machine (a new vCPU starts from KVM's initial FPU state, not the
// one the program had at its ready point).
func (m *Machine) applySnapshotState() error {
	st := m.im.state
	if st == nil {
		return fmt.Errorf("%w: %v", errSnapshot, m.im.stateErr)
	}
	if err := st.loadExtra(m.vcpufd); err != nil {
		return fmt.Errorf("%w: %w", errSnapshot, err)
	}
	return nil
}

// SnapshotRuns is how many times Prepare ran the program to a ready point:
// 1, or 2 for a server that writes before it reads (server.go); requests
// never add to it.
func (im *Image) SnapshotRuns() int { return im.snapshotRuns }

// Snapshotted reports whether the image starts requests from a post-init
// snapshot (the program calls dust_ready()).
func (im *Image) Snapshotted() bool { return im.snapshotted }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

// said is the tail for an error message, quoted, or "".
func (t *tailBuffer) said() string {
	if len(t.b) == 0 {
		return ""
	}
	return fmt.Sprintf("; its output ended with %q", t.b)
}
