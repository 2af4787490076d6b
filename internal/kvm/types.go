package kvm

import "unsafe"

// Regs is struct kvm_regs.
type Regs struct {
	RAX, RBX, RCX, RDX uint64
	RSI, RDI, RSP, RBP uint64
	R8, R9, R10, R11   uint64
	R12, R13, R14, R15 uint64
	RIP, RFLAGS        uint64
}

// Segment is struct kvm_segment.
type Segment struct {
	Base     uint64
	Limit    uint32
	Selector uint16
	Type     uint8
	Present  uint8
	DPL      uint8
	DB       uint8
	S        uint8
	L        uint8
	G        uint8
	AVL      uint8
	Unusable uint8
	_        uint8
}

// DTable is struct kvm_dtable.
type DTable struct {
	Base  uint64
	Limit uint16
	_     [3]uint16
}

// Sregs is struct kvm_sregs.
type Sregs struct {
	CS, DS, ES, FS, GS, SS  Segment
	TR, LDT                 Segment
	GDT, IDT                DTable
	CR0, CR2, CR3, CR4, CR8 uint64
	EFER                    uint64
	APICBase                uint64
	InterruptBitmap         [4]uint64
}

// UserspaceMemoryRegion is struct kvm_userspace_memory_region.
type UserspaceMemoryRegion struct {
	Slot          uint32
	Flags         uint32
	GuestPhysAddr uint64
	MemorySize    uint64
	UserspaceAddr uint64
}

// CPUID2 is the fixed header of struct kvm_cpuid2; entries follow it.
type CPUID2 struct {
	Nent uint32
	_    uint32
}

// CPUIDEntry2 is struct kvm_cpuid_entry2.
type CPUIDEntry2 struct {
	Function uint32
	Index    uint32
	Flags    uint32
	EAX      uint32
	EBX      uint32
	ECX      uint32
	EDX      uint32
	_        [3]uint32
}

// Run is the head of struct kvm_run plus the parts of its exit union that
// Dust reads. The union starts at offset 32 and is 256 bytes in C; the
// exit-specific views below (IO, FailEntry, Internal, MMIO) decode it.
type Run struct {
	RequestInterruptWindow     uint8
	ImmediateExit              uint8
	_                          [6]uint8
	ExitReason                 uint32
	ReadyForInterruptInjection uint8
	IfFlag                     uint8
	Flags                      uint16
	CR8                        uint64
	APICBase                   uint64
	Exit                       [256]byte
}

// RunIO is the io member of the kvm_run exit union.
type RunIO struct {
	Direction  uint8
	Size       uint8
	Port       uint16
	Count      uint32
	DataOffset uint64
}

// RunFailEntry is the fail_entry member of the kvm_run exit union.
type RunFailEntry struct {
	HardwareEntryFailureReason uint64
	CPU                        uint32
	_                          uint32
}

// RunInternal is the internal member of the kvm_run exit union.
type RunInternal struct {
	Suberror uint32
	Ndata    uint32
	Data     [16]uint64
}

// RunMMIO is the mmio member of the kvm_run exit union.
type RunMMIO struct {
	PhysAddr uint64
	Data     [8]uint8
	Len      uint32
	IsWrite  uint8
	_        [3]uint8
}

// IO views the exit union as its io member (valid for KVM_EXIT_IO).
func (r *Run) IO() *RunIO { return (*RunIO)(unsafe.Pointer(&r.Exit[0])) }

// FailEntry views the exit union as fail_entry (KVM_EXIT_FAIL_ENTRY).
func (r *Run) FailEntry() *RunFailEntry { return (*RunFailEntry)(unsafe.Pointer(&r.Exit[0])) }

// Internal views the exit union as internal (KVM_EXIT_INTERNAL_ERROR).
func (r *Run) Internal() *RunInternal { return (*RunInternal)(unsafe.Pointer(&r.Exit[0])) }

// MMIO views the exit union as mmio (KVM_EXIT_MMIO).
func (r *Run) MMIO() *RunMMIO { return (*RunMMIO)(unsafe.Pointer(&r.Exit[0])) }
