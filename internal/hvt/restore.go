package hvt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
)

// Restore: a machine that served a request is returned to its image's
// template state and serves the next one, instead of a new KVM VM being
// built (≈ 1.2 ms of kernel time here) and the old one torn down.
//
// "Template state" is memory plus the complete vCPU state the guest can
// observe, captured once per image from a vCPU that has never run
// (vcpuState). Restoring is positive erasure: every piece of state is
// reloaded from the snapshot whether or not the guest touched it, so
// nothing depends on knowing what a guest did. The one thing that cannot
// be reloaded wholesale cheaply is memory, and there the guest is not
// trusted either: the pages to look at come from the host kernel's page
// map, not from anything the guest wrote.
//
// Memory. A page the guest (or the monitor) ever wrote is a private
// anonymous page of the guest mapping; one it only read, or never
// touched, is still the template's file page, the shared zero page or
// absent. So /proc/self/pagemap (one pread: ≈ 9-13 µs for 2-16 MiB guests
// here) yields every page that may differ; each is compared with the
// template and copied back if it does. Pages stay mapped, in the host and
// in KVM's shadow page tables: under shadow paging every refault costs
// ≈ 17 µs, so dropping pages (MADV_DONTNEED) would make every restored
// request pay again what the warm-up paid once. RATIONALE.md has the
// figures behind this choice.
//
// The guest cannot change what KVM's shadow tables map: its page tables
// are supervisor pages it cannot write, and copying bytes back into a page
// that is already private changes no mapping, so KVM needs no telling.

// vcpuState is everything about a vCPU a restore reloads.
type vcpuState struct {
	regs   kvm.Regs
	sregs  kvm.Sregs
	xsave  kvm.XSave
	xcrs   kvm.XCRs
	dregs  kvm.DebugRegs
	events kvm.VCPUEvents
	tsc    uint64 // guest TSC at capture: a restored machine starts its clock here again
	// tscOffset: the TSC is restored through KVM_VCPU_TSC_OFFSET rather
	// than a write of IA32_TSC (see resetTSC).
	tscOffset bool
}

// ErrRestore wraps every failure to restore a machine; the machine is then
// destroyed instead of reused.
var ErrRestore = errors.New("hvt: restore failed")

// restoreCaps are the KVM capabilities a restore needs; without them the
// image serves in fresh mode only.
var restoreCaps = []struct {
	cap  uintptr
	name string
}{
	{kvm.KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS"},
	{kvm.KVM_CAP_DEBUGREGS, "KVM_CAP_DEBUGREGS"},
	{kvm.KVM_CAP_XCRS, "KVM_CAP_XCRS"},
	{kvm.KVM_CAP_SYNC_REGS, "KVM_CAP_SYNC_REGS"},
}

func checkRestoreCaps(sys *kvm.System) error {
	for _, c := range restoreCaps {
		if sys.CheckExtension(c.cap) <= 0 {
			return fmt.Errorf("%w: KVM lacks %s", ErrRestore, c.name)
		}
	}
	if n := sys.CheckExtension(kvm.KVM_CAP_XSAVE2); n > int(unsafe.Sizeof(kvm.XSave{})) {
		// Larger XSAVE areas (AMX tiles) would not fit the 4 KiB region
		// this monitor saves; a fresh VM per request is still correct.
		return fmt.Errorf("%w: the vCPU's XSAVE area is %d bytes, more than the %d this monitor restores", ErrRestore, n, unsafe.Sizeof(kvm.XSave{}))
	}
	const syncAll = kvm.KVM_SYNC_X86_REGS | kvm.KVM_SYNC_X86_SREGS | kvm.KVM_SYNC_X86_EVENTS
	if sys.CheckExtension(kvm.KVM_CAP_SYNC_REGS)&syncAll != syncAll {
		return fmt.Errorf("%w: KVM_CAP_SYNC_REGS does not cover registers, special registers and events", ErrRestore)
	}
	return nil
}

// captureState reads the state of a vCPU that has the entry registers set
// and has never run.
func captureState(m *Machine) (*vcpuState, error) {
	st := &vcpuState{regs: m.im.regs, sregs: m.im.sregs}
	if err := st.readExtra(m.vcpufd); err != nil {
		return nil, fmt.Errorf("%w: capturing vCPU state: %w", ErrRestore, err)
	}
	// A fresh vCPU's TSC starts at 0 when it is created; restoring to 0
	// gives every request what a brand-new VM would show.
	st.tsc = 0
	st.tscOffset = kvm.HasTSCOffset(m.vcpufd)
	return st, nil
}

// readExtra reads the vCPU state beyond the registers: the XSAVE area,
// XCRs, debug registers and pending events.
func (st *vcpuState) readExtra(fd int) error {
	return allOf(
		func() error { return kvm.GetXSave(fd, &st.xsave) },
		func() error { return kvm.GetXCRs(fd, &st.xcrs) },
		func() error { return kvm.GetDebugRegs(fd, &st.dregs) },
		func() error { return kvm.GetVCPUEvents(fd, &st.events) },
	)
}

// loadExtra loads what readExtra read into a vCPU.
func (st *vcpuState) loadExtra(fd int) error {
	return allOf(
		func() error { return kvm.SetXSave(fd, &st.xsave) },
		func() error { return kvm.SetXCRs(fd, &st.xcrs) },
		func() error { return kvm.SetDebugRegs(fd, &st.dregs) },
		func() error { return kvm.SetVCPUEvents(fd, &st.events) },
	)
}

// allOf runs steps in order and stops at the first error.
func allOf(steps ...func() error) error {
	for _, f := range steps {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

// pagemap is this process's page map, opened once.
var pagemap struct {
	once sync.Once
	f    *os.File
	err  error
}

func pagemapFile() (*os.File, error) {
	pagemap.once.Do(func() { pagemap.f, pagemap.err = os.Open("/proc/self/pagemap") })
	return pagemap.f, pagemap.err
}

// Page map entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent = 1 << 63
	pmFile    = 1 << 61 // file page or shared anonymous
	pmSwapped = 1 << 62
)

var zeroPage [pageSize]byte

// PAGEMAP_SCAN (Linux 6.7+, <linux/fs.h>): the page map as ranges of pages
// in chosen categories. Its walk skips unpopulated page-table ranges whole,
// so its cost follows the pages a guest has, not the size of its memory:
// reading the plain page map costs ≈ 570 µs per restore for a 1 GiB guest
// here, this ≈ the same as for 2 MiB.
const (
	pageIsFile    = 1 << 2
	pageIsPresent = 1 << 3
	pageIsSwapped = 1 << 4
	pageIsPFNZero = 1 << 5
)

type pmScanArg struct {
	Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages uint64
	CategoryInverted, CategoryMask, CategoryAnyofMask       uint64
	ReturnMask                                              uint64
}

type pageRegion struct{ Start, End, Categories uint64 }

// pagemapScan is _IOWR('f', 16, struct pm_scan_arg).
var pagemapScan = uintptr(3<<30 | unsafe.Sizeof(pmScanArg{})<<16 | 'f'<<8 | 16)

// noScan is set once PAGEMAP_SCAN turned out not to exist here.
var noScan atomic.Bool

// writtenRanges lists, as guest-address ranges, the pages of the guest
// mapping that are private anonymous pages: written by the guest or the
// monitor. ok is false where the kernel lacks PAGEMAP_SCAN.
func (m *Machine) writtenRanges(f *os.File) (rs []pageRegion, ok bool, err error) {
	if noScan.Load() {
		return nil, false, nil
	}
	if m.regions == nil {
		m.regions = make([]pageRegion, 256)
	}
	base := uint64(uintptr(m.memPtr))
	end := base + uint64(len(m.mem))
	rs = m.found[:0]
	for start := base; start < end; {
		arg := pmScanArg{
			Size: uint64(unsafe.Sizeof(pmScanArg{})), Start: start, End: end,
			Vec: uint64(uintptr(unsafe.Pointer(&m.regions[0]))), VecLen: uint64(len(m.regions)),
			// Neither the template's file pages nor the zero page, and
			// present or swapped out: a private page the kernel swapped
			// (or is migrating: that too is a swap entry) holds bytes
			// a request wrote just as a present one does.
			CategoryInverted:  pageIsFile | pageIsPFNZero,
			CategoryMask:      pageIsFile | pageIsPFNZero,
			CategoryAnyofMask: pageIsPresent | pageIsSwapped,
			ReturnMask:        pageIsPresent | pageIsSwapped,
		}
		n, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), pagemapScan, uintptr(unsafe.Pointer(&arg)))
		switch e {
		case 0:
		case unix.EINTR:
			continue
		case unix.ENOTTY, unix.EINVAL:
			noScan.Store(true)
			return nil, false, nil
		default:
			return nil, false, fmt.Errorf("%w: PAGEMAP_SCAN: %w", ErrRestore, e)
		}
		for _, r := range m.regions[:n] {
			if r.Start < base || r.End > end || r.Start >= r.End {
				return nil, false, fmt.Errorf("%w: PAGEMAP_SCAN returned %#x-%#x outside the guest mapping", ErrRestore, r.Start, r.End)
			}
			rs = append(rs, pageRegion{Start: r.Start - base, End: r.End - base})
		}
		if arg.WalkEnd <= start {
			return nil, false, fmt.Errorf("%w: PAGEMAP_SCAN made no progress at %#x", ErrRestore, start)
		}
		start = arg.WalkEnd
	}
	m.found = rs
	return rs, true, nil
}

// restoreMemory copies back every page that differs from the template and
// returns how many it compared and copied.
func (m *Machine) restoreMemory() (compared, copied int, err error) {
	f, err := pagemapFile()
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %w", ErrRestore, err)
	}
	rs, ok, err := m.writtenRanges(f)
	if err != nil {
		return 0, 0, err
	}
	if ok {
		for _, r := range rs {
			for off := r.Start; off < r.End; off += pageSize {
				compared++
				if m.restorePage(int(off)) {
					copied++
				}
			}
		}
		return compared, copied, nil
	}
	n := len(m.mem) / pageSize
	if cap(m.pmBuf) < 8*n {
		m.pmBuf = make([]byte, 8*n)
	}
	buf := m.pmBuf[:8*n]
	if _, err := f.ReadAt(buf, int64(uintptr(m.memPtr)/pageSize*8)); err != nil {
		return 0, 0, fmt.Errorf("%w: reading the page map: %w", ErrRestore, err)
	}
	for i := range n {
		e := binary.LittleEndian.Uint64(buf[8*i:])
		if e&(pmPresent|pmSwapped) == 0 || e&pmFile != 0 {
			continue // the template's page or absent: pristine (the zero page is compared, cheaply)
		}
		compared++
		if m.restorePage(i * pageSize) {
			copied++
		}
	}
	return compared, copied, nil
}

// restorePage makes the guest page at off equal to the template's (zero
// beyond it) and reports whether it had to copy.
func (m *Machine) restorePage(off int) bool {
	page := m.mem[off : off+pageSize]
	want := zeroPage[:]
	if tmpl := m.im.view; off < len(tmpl) {
		want = tmpl[off : off+pageSize]
	}
	if bytes.Equal(page, want) {
		return false
	}
	copy(page, want)
	return true
}

// Reset returns the machine to its image's template state so that it can
// serve another request: memory, every vCPU register class, pending
// events, the TSC, and the monitor's per-request state. It must not be
// called while Run is running. A failed reset leaves the machine unusable;
// destroy it.
func (m *Machine) Reset() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.running {
		return fmt.Errorf("%w: machine closed or running", ErrRestore)
	}
	st := m.im.state
	if st == nil {
		return fmt.Errorf("%w: %v", ErrRestore, m.im.stateErr)
	}
	lap := phaseTimer("restore")
	// Normally done on the vCPU thread as the run ended (Run); a run
	// that was stopped before that gets it here.
	if m.completeErr != nil {
		m.broken = true
		return m.completeErr
	}
	if err := m.completePending(); err != nil {
		m.broken = true
		return err
	}
	m.im.mu.RLock()
	if m.im.closed {
		m.im.mu.RUnlock()
		return fmt.Errorf("%w: image closed", ErrRestore)
	}
	compared, copied, err := m.restoreMemory()
	m.im.mu.RUnlock()
	if err != nil {
		m.broken = true
		return err
	}
	m.lastCompared, m.lastCopied = compared, copied
	lap("memory (page map, compare, copy)")
	fd := m.vcpufd
	// The FPU/SSE/AVX state and the TSC change in every request. The
	// extended control registers (xsetbv), the debug registers (mov to
	// DRn) and the run state can only change through instructions a CPL3
	// guest cannot execute, or through an exception (a #DB writes DR6, a
	// triple fault stops the vCPU), and with no IDT every exception ends
	// the run in a fault. So after a guest that exited through the EXIT
	// hypercall they hold the snapshot's values still, and each ioctl
	// (≈ 5-7 µs apiece on this host) is spent only after any other ending.
	steps := []func() error{
		func() error { return kvm.SetXSave(fd, &st.xsave) },
		func() error {
			off, err := resetTSC(fd, st)
			if m.im.tscModel == tscOffsetApplied {
				m.tscOffset = off
			}
			return err
		},
	}
	if !m.lastExited {
		steps = append(steps,
			func() error { return kvm.SetXCRs(fd, &st.xcrs) },
			func() error { return kvm.SetDebugRegs(fd, &st.dregs) },
			func() error { return kvm.SetMPState(fd, kvm.MPState{State: kvm.KVM_MP_STATE_RUNNABLE}) },
		)
	}
	if err := allOf(steps...); err != nil {
		m.broken = true
		return fmt.Errorf("%w: %w", ErrRestore, err)
	}
	lap("XSAVE, TSC (and XCRs, debug registers, run state after a fault)")
	// Registers, special registers and events go through kvm_run's sync
	// area: the next KVM_RUN loads them, three ioctls fewer.
	sync := m.run.Sync()
	sync.Regs = st.regs
	sync.Sregs = st.sregs
	sync.Events = st.events
	*m.run.DirtyRegs() = kvm.KVM_SYNC_X86_REGS | kvm.KVM_SYNC_X86_SREGS | kvm.KVM_SYNC_X86_EVENTS
	m.run.ImmediateExit = 0
	m.kicked.Store(false)
	m.used.Store(false)
	m.lastExited = false
	m.completed = false
	m.runs++
	lap("registers (sync area)")
	return nil
}

// completePending finishes an instruction the last run left half done.
// An exit to the monitor for port I/O (or MMIO) leaves the instruction's
// completion pending inside KVM until the next KVM_RUN, which performs it
// after loading the sync-area registers: an IN the monitor refused would
// then resume the previous request's code, with its RIP and RFLAGS,
// instead of starting at the entry point (TestLeakPendingIO). KVM_RUN
// with immediate_exit set completes the operation without running guest
// code (Documentation/virt/kvm/api.rst, kvm_run). It runs before memory is
// restored, since completing a string instruction writes guest memory.
//
// Every run ends on such an exit (EXIT is an OUT), and a string OUT looks
// like a plain one in kvm_run, so it is done after every run, on the vCPU
// thread before Run returns: a KVM_RUN from another thread costs a
// synchronize_rcu on Linux 6.12 and older.
func (m *Machine) completePending() error {
	if m.completed {
		return nil
	}
	m.completed = true
	if r := m.run.ExitReason; r != kvm.KVM_EXIT_IO && r != kvm.KVM_EXIT_MMIO {
		return nil // no operation can be pending; a stale IO reason only costs one ioctl
	}
	*m.run.DirtyRegs() = 0
	m.run.ImmediateExit = 1
	err := kvm.RunVCPU(m.vcpufd)
	m.run.ImmediateExit = 0
	if err != unix.EINTR {
		return fmt.Errorf("%w: completing the last exit's I/O: KVM_RUN returned %v, want EINTR", ErrRestore, err)
	}
	return nil
}

// resetTSC makes the guest's TSC read st.tsc (0: as a new vCPU's) from now
// on, so that a request cannot tell how long its machine has lived. KVM
// takes a host write of IA32_TSC for an attempt to synchronise vCPUs and
// keeps the old offset when the value is 0 or within a second of where the
// counter would be, so where it can the offset is set directly (guest TSC
// = host TSC + offset, no scaling: the monitor never sets a TSC rate).
// Under PVM the guest reads the host's counter whatever either says; the
// leak suite measures what a request sees.
func resetTSC(fd int, st *vcpuState) (offset uint64, err error) {
	if st.tscOffset {
		offset = st.tsc - kvm.HostTSC()
		return offset, kvm.SetTSCOffset(fd, offset)
	}
	tsc := kvm.MSRs{NMSRs: 1}
	tsc.Entries[0] = kvm.MSREntry{Index: kvm.MSR_IA32_TSC, Data: st.tsc}
	return 0, kvm.SetMSRs(fd, &tsc)
}

// Reused reports how many times the machine has been restored: 0 for a
// machine that has served at most one request since it was created.
func (m *Machine) Reused() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.runs
}

// LastRestore reports what the last Reset did to memory: pages compared
// with the template and pages copied back.
func (m *Machine) LastRestore() (compared, copied int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastCompared, m.lastCopied
}

// mapView maps the sealed template read-only, for comparing and copying
// back. It costs address space only.
func (im *Image) mapView() error {
	if im.tsize == 0 {
		return nil
	}
	p, err := unix.MmapPtr(im.memfd, 0, nil, im.tsize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("hvt: mapping the template view: %w", err)
	}
	im.viewPtr = p
	im.view = unsafe.Slice((*byte)(p), im.tsize)
	return nil
}
