package hvt

// The Dust guest ABI, version 1. These values mirror
// guest/include/dust/abi.h; abi_test.go checks that both agree.
const (
	abiVersion = 1

	noteName  = "Dust"
	noteType  = 0x31545344 // "DST1"
	noteReady = 0x52545344 // "DSTR": a ready point, snapshot at READY

	monitorEnd   = 0x10000  // [0, monitorEnd) is monitor-owned
	bootInfoAddr = 0x10000  // struct dust_boot_info
	requestBase  = 0x11000  // argv, envp, strings, inline body
	requestEnd   = 0x100000 // exclusive
	imageBase    = 0x100000 // lowest PT_LOAD address

	bootMagic = 0x544f4f4254535544 // "DUSTBOOT"

	portBase = 0xD000
	hcWrite  = 1
	hcRead   = 2
	hcExit   = 3
	hcReady  = 4 // no argument struct: the snapshot point (snapshot.go)

	fdStdout = 1
	fdStderr = 2

	exitNormal = 0
	exitAbort  = 1
	exitOOM    = 2
)

// struct dust_boot_info field offsets.
const (
	biMagic         = 0
	biABIVersion    = 8
	biSize          = 12
	biMemSize       = 16
	biHeapStart     = 24
	biHeapEnd       = 32
	biStackTop      = 40
	biTSCHz         = 48
	biRealtimeNs    = 56
	biArgc          = 64
	biArgv          = 72
	biEnvp          = 80
	biBodyLen       = 88
	biBodyInline    = 96
	biBodyInlineLen = 104
	biRandom        = 112
	bootInfoSize    = 144
)

// Argument struct sizes (all fields are 8 bytes).
const (
	hcWriteSize = 24
	hcReadSize  = 24
	hcExitSize  = 48
)

// Monitor-owned low memory. The guest cannot touch any of it: it is either
// unmapped or mapped supervisor-only, and hypercall buffers may not point
// below monitorEnd.
const (
	gdtAddr  = 0x1000 // GDT (7 descriptors)
	pml4Addr = 0x2000
	pdptAddr = 0x3000
	pdAddr   = 0x4000 // 4 page directories: up to 4 GiB of guest memory
	ptAddr   = 0x8000 // up to ptMax page tables for 4 KiB-mapped regions
	ptMax    = 4
	// tssAddr holds a 64-bit TSS followed by an all-zero I/O permission
	// bitmap (every port allowed). Real KVM honours RFLAGS.IOPL=3, but PVM
	// (nested KVM here) runs the guest with IOPL 0 and emulates each OUT
	// after a #GP, checking this bitmap; without it every hypercall faults.
	tssAddr   = 0xC000
	tssIOMap  = 0x68              // bitmap offset inside the TSS
	tssLimit  = tssIOMap + 0x2000 // bitmap for 65536 ports, plus the terminating byte
	pageSize  = 0x1000
	largePage = 0x200000
)

// Segment selectors: user code and data are DPL 3 so the guest runs at
// CPL3, the only mode that is not emulated under nested (PVM) KVM.
const (
	selKernelCode = 0x08
	selKernelData = 0x10
	selUserData   = 0x18 | 3
	selUserCode   = 0x20 | 3
	selTSS        = 0x28
	gdtEntries    = 7 // null, kcode, kdata, udata, ucode, tss(2)
)

// Guest memory geometry.
const (
	// MinMemory is the smallest guest memory a machine may have.
	MinMemory = 2 << 20
	// MaxMemory is the largest: four page directories of 2 MiB pages.
	MaxMemory = 4 << 30
	// stackSize is reserved at the top of guest memory, below it a guard
	// page, below that the heap ends.
	stackSize = 256 << 10
	// inlineBodyMax bytes of the request body are placed in guest memory
	// before entry; the rest is read by hypercall.
	inlineBodyMax = 64 << 10
)
