package kvm

import (
	"fmt"
	"unsafe"
)

// The vCPU state beyond registers that a restore reloads: FPU/SSE and the
// XSAVE area, extended control registers, debug registers, pending events,
// MSRs and the run state. Layouts are checked against <linux/kvm.h> in
// layout_test.go like the rest.

// FPU is struct kvm_fpu.
type FPU struct {
	FPR        [8][16]uint8
	FCW        uint16
	FSW        uint16
	FTWX       uint8
	_          uint8
	LastOpcode uint16
	LastIP     uint64
	LastDP     uint64
	XMM        [16][16]uint8
	MXCSR      uint32
	_          uint32
}

// XSave is struct kvm_xsave without its flexible tail: the legacy 4 KiB
// region, which is what KVM_GET_XSAVE2 fills when KVM_CAP_XSAVE2 reports
// at most 4096 bytes (every feature this project uses).
type XSave struct {
	Region [1024]uint32
}

// XCR is struct kvm_xcr.
type XCR struct {
	XCR   uint32
	_     uint32
	Value uint64
}

// XCRs is struct kvm_xcrs.
type XCRs struct {
	NrXCRs uint32
	Flags  uint32
	XCRs   [16]XCR
	_      [16]uint64
}

// DebugRegs is struct kvm_debugregs.
type DebugRegs struct {
	DB    [4]uint64
	DR6   uint64
	DR7   uint64
	Flags uint64
	_     [9]uint64
}

// VCPUEvents is struct kvm_vcpu_events (x86): pending and injected
// exceptions, interrupts, NMIs and SMM state.
type VCPUEvents struct {
	Exception struct {
		Injected, Nr, HasErrorCode, Pending uint8
		ErrorCode                           uint32
	}
	Interrupt struct {
		Injected, Nr, Soft, Shadow uint8
	}
	NMI struct {
		Injected, Pending, Masked, _ uint8
	}
	SIPIVector uint32
	Flags      uint32
	SMI        struct {
		SMM, Pending, SMMInsideNMI, LatchedInit uint8
	}
	TripleFault struct {
		Pending uint8
	}
	_                   [26]uint8
	ExceptionHasPayload uint8
	ExceptionPayload    uint64
}

// MSREntry is struct kvm_msr_entry.
type MSREntry struct {
	Index uint32
	_     uint32
	Data  uint64
}

// MSRs is struct kvm_msrs with room for a few entries.
type MSRs struct {
	NMSRs   uint32
	_       uint32
	Entries [4]MSREntry
}

// MPState is struct kvm_mp_state.
type MPState struct{ State uint32 }

// MP states.
const KVM_MP_STATE_RUNNABLE = 0

// MSR indices a restore sets.
const MSR_IA32_TSC = 0x10

// SyncRegs is struct kvm_sync_regs (x86): registers KVM_RUN loads from and
// stores to kvm_run, sparing the SET/GET ioctls.
type SyncRegs struct {
	Regs   Regs
	Sregs  Sregs
	Events VCPUEvents
}

// Bits of kvm_run.kvm_valid_regs / kvm_dirty_regs.
const (
	KVM_SYNC_X86_REGS   = 1 << 0
	KVM_SYNC_X86_SREGS  = 1 << 1
	KVM_SYNC_X86_EVENTS = 1 << 2
)

// Offsets into kvm_run of the sync-regs fields (after the 256-byte exit
// union).
const (
	runValidRegsOff = 288
	runDirtyRegsOff = 296
	runSyncRegsOff  = 304
)

// Capabilities for the restore path.
const (
	KVM_CAP_VCPU_EVENTS = 41
	KVM_CAP_DEBUGREGS   = 50
	KVM_CAP_XCRS        = 56
	KVM_CAP_SYNC_REGS   = 74
	KVM_CAP_XSAVE2      = 208
)

var (
	KVM_GET_MSRS        = ioc(iocRead|iocWrite, 0x88, unsafe.Sizeof(struct{ N, P uint32 }{}))
	KVM_SET_MSRS        = ioc(iocWrite, 0x89, unsafe.Sizeof(struct{ N, P uint32 }{}))
	KVM_GET_FPU         = ioc(iocRead, 0x8c, unsafe.Sizeof(FPU{}))
	KVM_SET_FPU         = ioc(iocWrite, 0x8d, unsafe.Sizeof(FPU{}))
	KVM_SET_MP_STATE    = ioc(iocWrite, 0x99, unsafe.Sizeof(MPState{}))
	KVM_GET_VCPU_EVENTS = ioc(iocRead, 0x9f, unsafe.Sizeof(VCPUEvents{}))
	KVM_SET_VCPU_EVENTS = ioc(iocWrite, 0xa0, unsafe.Sizeof(VCPUEvents{}))
	KVM_GET_DEBUGREGS   = ioc(iocRead, 0xa1, unsafe.Sizeof(DebugRegs{}))
	KVM_SET_DEBUGREGS   = ioc(iocWrite, 0xa2, unsafe.Sizeof(DebugRegs{}))
	KVM_GET_XSAVE       = ioc(iocRead, 0xa4, unsafe.Sizeof(XSave{}))
	KVM_SET_XSAVE       = ioc(iocWrite, 0xa5, unsafe.Sizeof(XSave{}))
	KVM_GET_XCRS        = ioc(iocRead, 0xa6, unsafe.Sizeof(XCRs{}))
	KVM_SET_XCRS        = ioc(iocWrite, 0xa7, unsafe.Sizeof(XCRs{}))
	KVM_GET_XSAVE2      = ioc(iocRead, 0xcf, unsafe.Sizeof(XSave{}))
)

func vcpuIoctl(name string, fd int, req uintptr, arg unsafe.Pointer) error {
	if _, err := ioctl(fd, req, uintptr(arg)); err != nil {
		return fmt.Errorf("kvm: %s: %w", name, err)
	}
	return nil
}

// GetFPU issues KVM_GET_FPU.
func GetFPU(fd int, f *FPU) error {
	return vcpuIoctl("KVM_GET_FPU", fd, KVM_GET_FPU, unsafe.Pointer(f))
}

// SetFPU issues KVM_SET_FPU.
func SetFPU(fd int, f *FPU) error {
	return vcpuIoctl("KVM_SET_FPU", fd, KVM_SET_FPU, unsafe.Pointer(f))
}

// GetXSave issues KVM_GET_XSAVE.
func GetXSave(fd int, x *XSave) error {
	return vcpuIoctl("KVM_GET_XSAVE", fd, KVM_GET_XSAVE, unsafe.Pointer(x))
}

// SetXSave issues KVM_SET_XSAVE.
func SetXSave(fd int, x *XSave) error {
	return vcpuIoctl("KVM_SET_XSAVE", fd, KVM_SET_XSAVE, unsafe.Pointer(x))
}

// GetXCRs issues KVM_GET_XCRS.
func GetXCRs(fd int, x *XCRs) error {
	return vcpuIoctl("KVM_GET_XCRS", fd, KVM_GET_XCRS, unsafe.Pointer(x))
}

// SetXCRs issues KVM_SET_XCRS.
func SetXCRs(fd int, x *XCRs) error {
	return vcpuIoctl("KVM_SET_XCRS", fd, KVM_SET_XCRS, unsafe.Pointer(x))
}

// GetDebugRegs issues KVM_GET_DEBUGREGS.
func GetDebugRegs(fd int, d *DebugRegs) error {
	return vcpuIoctl("KVM_GET_DEBUGREGS", fd, KVM_GET_DEBUGREGS, unsafe.Pointer(d))
}

// SetDebugRegs issues KVM_SET_DEBUGREGS.
func SetDebugRegs(fd int, d *DebugRegs) error {
	return vcpuIoctl("KVM_SET_DEBUGREGS", fd, KVM_SET_DEBUGREGS, unsafe.Pointer(d))
}

// GetVCPUEvents issues KVM_GET_VCPU_EVENTS.
func GetVCPUEvents(fd int, e *VCPUEvents) error {
	return vcpuIoctl("KVM_GET_VCPU_EVENTS", fd, KVM_GET_VCPU_EVENTS, unsafe.Pointer(e))
}

// SetVCPUEvents issues KVM_SET_VCPU_EVENTS.
func SetVCPUEvents(fd int, e *VCPUEvents) error {
	return vcpuIoctl("KVM_SET_VCPU_EVENTS", fd, KVM_SET_VCPU_EVENTS, unsafe.Pointer(e))
}

// SetMSRs issues KVM_SET_MSRS for the first m.NMSRs entries; KVM reports
// how many it set, and anything short of all is an error.
func SetMSRs(fd int, m *MSRs) error {
	n, err := ioctl(fd, KVM_SET_MSRS, uintptr(unsafe.Pointer(m)))
	if err != nil {
		return fmt.Errorf("kvm: KVM_SET_MSRS: %w", err)
	}
	if n != int(m.NMSRs) {
		return fmt.Errorf("kvm: KVM_SET_MSRS: set %d of %d MSRs (first refused: %#x)", n, m.NMSRs, m.Entries[min(n, len(m.Entries)-1)].Index)
	}
	return nil
}

// GetMSRs issues KVM_GET_MSRS for the first m.NMSRs entries, filling in
// their Data; anything short of all is an error.
func GetMSRs(fd int, m *MSRs) error {
	n, err := ioctl(fd, KVM_GET_MSRS, uintptr(unsafe.Pointer(m)))
	if err != nil {
		return fmt.Errorf("kvm: KVM_GET_MSRS: %w", err)
	}
	if n != int(m.NMSRs) {
		return fmt.Errorf("kvm: KVM_GET_MSRS: read %d of %d MSRs", n, m.NMSRs)
	}
	return nil
}

// SetMPState issues KVM_SET_MP_STATE.
func SetMPState(fd int, s MPState) error {
	return vcpuIoctl("KVM_SET_MP_STATE", fd, KVM_SET_MP_STATE, unsafe.Pointer(&s))
}

// ValidRegs and DirtyRegs are kvm_run's sync-regs masks; Sync is the
// register area itself. They exist only when KVM_CAP_SYNC_REGS is offered
// and the run mapping is large enough (RunSize covers them).
func (r *Run) ValidRegs() *uint64 {
	return (*uint64)(unsafe.Add(unsafe.Pointer(r), runValidRegsOff))
}

// DirtyRegs is kvm_run.kvm_dirty_regs: what the next KVM_RUN loads.
func (r *Run) DirtyRegs() *uint64 {
	return (*uint64)(unsafe.Add(unsafe.Pointer(r), runDirtyRegsOff))
}

// Sync is kvm_run.s.regs.
func (r *Run) Sync() *SyncRegs {
	return (*SyncRegs)(unsafe.Add(unsafe.Pointer(r), runSyncRegsOff))
}

// HostTSC reads this CPU's time-stamp counter (RDTSC).
func HostTSC() uint64

// DeviceAttr is struct kvm_device_attr.
type DeviceAttr struct {
	Flags uint32
	Group uint32
	Attr  uint64
	Addr  uint64
}

// vCPU attribute group and attribute for the TSC offset (Linux 5.16+).
const (
	KVM_VCPU_TSC_CTRL   = 0
	KVM_VCPU_TSC_OFFSET = 0
)

var (
	KVM_SET_DEVICE_ATTR = ioc(iocWrite, 0xe1, unsafe.Sizeof(DeviceAttr{}))
	KVM_HAS_DEVICE_ATTR = ioc(iocWrite, 0xe3, unsafe.Sizeof(DeviceAttr{}))
)

// HasTSCOffset reports whether the vCPU's TSC offset can be set directly.
func HasTSCOffset(fd int) bool {
	a := DeviceAttr{Group: KVM_VCPU_TSC_CTRL, Attr: KVM_VCPU_TSC_OFFSET}
	_, err := ioctl(fd, KVM_HAS_DEVICE_ATTR, uintptr(unsafe.Pointer(&a)))
	return err == nil
}

// SetTSCOffset sets the vCPU's TSC offset: the guest reads the host TSC
// (scaled) plus offset. Unlike a write of IA32_TSC it is never taken for
// an attempt to synchronise vCPUs and ignored.
func SetTSCOffset(fd int, offset uint64) error {
	a := DeviceAttr{Group: KVM_VCPU_TSC_CTRL, Attr: KVM_VCPU_TSC_OFFSET, Addr: uint64(uintptr(unsafe.Pointer(&offset)))}
	return vcpuIoctl("KVM_SET_DEVICE_ATTR(TSC offset)", fd, KVM_SET_DEVICE_ATTR, unsafe.Pointer(&a))
}
