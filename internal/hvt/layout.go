package hvt

import (
	"encoding/binary"
	"fmt"

	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
)

// Page-table entry bits. Accessed and Dirty are preset everywhere so the
// CPU never writes to the tables: a machine's page tables then stay shared
// with the template instead of being copied on write.
const (
	pteP   = 1 << 0
	pteRW  = 1 << 1
	pteUS  = 1 << 2
	pteA   = 1 << 5
	pteD   = 1 << 6
	ptePS  = 1 << 7
	pteNX  = 1 << 63                     // needs EFER.NXE, else a reserved-bit fault
	pteDir = pteP | pteRW | pteUS | pteA // U/S and RW must be set at every level for user access; NX only in leaves

	// Only executable segments and the warm-up stub lack NX: bytes the
	// guest can write, or the monitor wrote as data, never run.
	permNone    = 0
	permUserRX  = pteP | pteUS | pteA
	permUserRO  = pteP | pteUS | pteA | pteNX
	permUserRW  = pteP | pteRW | pteUS | pteA | pteD | pteNX
	permSuperRW = pteP | pteRW | pteA | pteD | pteNX
)

// layout is an image placed in a memory size: the template bytes and the
// geometry written into the boot info.
type layout struct {
	memSize   uint64
	heapStart uint64
	heapEnd   uint64
	stackTop  uint64
	guard     uint64 // unmapped page between heap and stack
	entry     uint64
	// low is guest memory [0, requestEnd): monitor pages and boot info.
	// Segment bytes are not copied in here but written straight from the
	// file into the template (writeTemplate): a buffer spanning the image
	// would let a small file with one byte at a high address cost a
	// gigabyte-sized allocation at every deploy.
	low   []byte
	tsize uint64 // template length: low memory and every byte the file provides; BSS beyond comes from zero pages
	// linux: a Linux program's layout (linuxabi.go), with its stack size.
	linux     bool
	stackSize uint64
}

// buildLayout places img in memSize bytes of guest memory.
func buildLayout(img *elfImage, memSize, tscHz uint64) (*layout, error) {
	if memSize < MinMemory || memSize > MaxMemory || memSize%largePage != 0 {
		return nil, fmt.Errorf("%w: hvt memory %d bytes: want a multiple of 2 MiB in [%d MiB, %d GiB]", machine.ErrBadLimits, memSize, MinMemory>>20, MaxMemory>>30)
	}
	l := &layout{memSize: memSize, stackTop: memSize, entry: img.entry}
	l.guard = memSize - stackSize - pageSize
	l.heapStart = img.end
	l.heapEnd = l.guard
	if img.end > l.guard || l.heapEnd-l.heapStart < 64<<10 {
		return nil, badImage("layout", "image ends at %#x: no room for a 64 KiB heap and the %d KiB stack in %d MiB of guest memory", img.end, stackSize>>10, memSize>>20)
	}

	l.tsize = requestEnd
	for _, s := range img.segments {
		l.tsize = max(l.tsize, alignUp(s.vaddr+uint64(len(s.data)), pageSize))
	}
	t := make([]byte, requestEnd)
	l.low = t
	writeMonitorPages(t)
	if err := l.pageTables(img, t); err != nil {
		return nil, err
	}

	le := binary.LittleEndian
	bi := t[bootInfoAddr:]
	le.PutUint64(bi[biMagic:], bootMagic)
	le.PutUint32(bi[biABIVersion:], abiVersion)
	le.PutUint32(bi[biSize:], bootInfoSize)
	le.PutUint64(bi[biMemSize:], memSize)
	le.PutUint64(bi[biHeapStart:], l.heapStart)
	le.PutUint64(bi[biHeapEnd:], l.heapEnd)
	le.PutUint64(bi[biStackTop:], l.stackTop)
	le.PutUint64(bi[biTSCHz:], tscHz)
	return l, nil
}

// writeMonitorPages writes the GDT, the TSS with its I/O bitmap and the
// warm-up stub into low memory t.
func writeMonitorPages(t []byte) {
	le := binary.LittleEndian

	// GDT: descriptors with the accessed bit preset (see pte comment).
	gdt := []uint64{
		0,
		0x00AF9B000000FFFF, // kernel code64, DPL0
		0x00CF93000000FFFF, // kernel data, DPL0
		0x00CFF3000000FFFF, // user data, DPL3
		0x00AFFB000000FFFF, // user code64, DPL3
	}
	for i, d := range gdt {
		le.PutUint64(t[gdtAddr+8*i:], d)
	}
	tssLo := uint64(tssLimit&0xFFFF) | uint64(tssAddr&0xFFFFFF)<<16 | uint64(0xB)<<40 | 1<<47 |
		uint64(tssLimit>>16&0xF)<<48 | uint64(tssAddr>>24&0xFF)<<56
	le.PutUint64(t[gdtAddr+8*5:], tssLo)
	le.PutUint64(t[gdtAddr+8*6:], uint64(tssAddr)>>32)
	le.PutUint16(t[tssAddr+0x66:], tssIOMap)
	// The bitmap (zero: every port allowed) and its all-ones terminating
	// byte; unknown ports then reach the monitor as a clean exit.
	t[tssAddr+tssLimit] = 0xFF

	copy(t[warmAddr:], warmStub)
}

// perm returns the page-table permission of the 4 KiB page at addr.
func (l *layout) perm(img *elfImage, addr uint64) uint64 {
	if l.linux {
		return l.linuxPerm(img, addr)
	}
	switch {
	case addr == gdtAddr, addr >= tssAddr && addr <= tssAddr+tssLimit:
		return permSuperRW // GDT and TSS: the CPU reads them, the guest may not
	case addr == warmAddr:
		return permUserRX // the warm-up stub and its page list, which only the monitor writes
	case addr < monitorEnd:
		return permNone
	case addr < imageBase:
		return permUserRO // boot info and request
	case addr == l.guard:
		return permNone
	}
	if p, ok := segmentPerm(img, addr); ok {
		return p
	}
	return permUserRW
}

// segmentPerm is the permission of a page inside one of the image's
// segments: writable data is never executable, code never writable.
func segmentPerm(img *elfImage, addr uint64) (uint64, bool) {
	for _, s := range img.segments {
		if addr >= s.vaddr&^(pageSize-1) && addr < s.vaddr+s.memsz {
			switch {
			case s.flags&pfW != 0:
				return permUserRW, true
			case s.flags&pfX != 0:
				return permUserRX, true
			}
			return permUserRO, true
		}
	}
	return 0, false
}

// pageTables writes an identity map of guest memory: 2 MiB pages where a
// region is uniformly user read-write (and not executable), 4 KiB pages
// where permissions vary (monitor pages, code and read-only segments, the
// stack guard). Segments never share a 4 KiB page, so code and data never
// share a leaf.
func (l *layout) pageTables(img *elfImage, t []byte) error {
	le := binary.LittleEndian
	le.PutUint64(t[pml4Addr:], pdptAddr|pteDir)
	nLarge := l.memSize / largePage
	for i := uint64(0); i < (nLarge+511)/512; i++ {
		le.PutUint64(t[pdptAddr+8*i:], (pdAddr+pageSize*i)|pteDir)
	}
	nPT := 0
	for r := uint64(0); r < nLarge; r++ {
		base := r * largePage
		uniform := true
		if base < img.end || (l.guard >= base && l.guard < base+largePage) {
			for a := base; a < base+largePage; a += pageSize {
				if l.perm(img, a) != permUserRW {
					uniform = false
					break
				}
			}
		}
		pde := pdAddr + 8*r
		if !uniform && l.linux && l.unmapped(img, base) {
			continue // a Linux guest's unmapped 2 MiB needs no page table
		}
		if uniform {
			le.PutUint64(t[pde:], base|permUserRW|ptePS)
			continue
		}
		limit := ptMax
		if l.linux {
			limit = ptMax + linuxPTMax
		}
		if nPT == limit {
			return badImage("layout", "image needs more than %d 4 KiB page tables (read-only segments spread over more than %d MiB)", limit, 2*(limit-1))
		}
		pt := uint64(ptAddr + pageSize*nPT)
		if nPT >= ptMax {
			// A Linux program's code, read-only data and data can span
			// many 2 MiB regions (a Go net/http binary: 4 or more); its
			// low memory has room that a Dust guest's request area uses.
			pt = linuxPTAddr + pageSize*uint64(nPT-ptMax)
		}
		nPT++
		le.PutUint64(t[pde:], pt|pteDir)
		for i := uint64(0); i < 512; i++ {
			a := base + i*pageSize
			if p := l.perm(img, a); p != permNone {
				le.PutUint64(t[pt+8*i:], a|p)
			}
		}
	}
	return nil
}

// unmapped reports whether no page of the 2 MiB region at base is mapped.
func (l *layout) unmapped(img *elfImage, base uint64) bool {
	for a := base; a < base+largePage; a += pageSize {
		if l.perm(img, a) != permNone {
			return false
		}
	}
	return true
}

// hostPrivate is the range of guest memory the monitor writes for every
// request (warm.go): boot info and request area for a Dust guest, the top
// of the stack (argv, envp, auxv) for a Linux one.
func (l *layout) hostPrivate() (start, end uint64) {
	if l.linux {
		return l.stackTop - 2*pageSize, l.stackTop
	}
	return hostPrivateStart, hostPrivateEnd
}

// EFER bits. NXE makes the page tables' NX bit mean "no execute"; KVM
// accepts it only if the guest CPUID advertises NX (Prepare checks).
const (
	eferLME = 1 << 8
	eferLMA = 1 << 10
	eferNXE = 1 << 11
)

// initialSregs is the vCPU's special-register state at entry: 64-bit long
// mode, paging on, user (DPL 3) segments, no IDT. Any exception therefore
// escalates to a triple fault, which the monitor reports as a fault.
func initialSregs() kvm.Sregs {
	user := func(sel uint16, typ uint8, l, db uint8) kvm.Segment {
		return kvm.Segment{Base: 0, Limit: 0xFFFFFFFF, Selector: sel, Type: typ, Present: 1, DPL: 3, DB: db, S: 1, L: l, G: 1}
	}
	data := user(selUserData, 3, 0, 1)
	return kvm.Sregs{
		CS: user(selUserCode, 11, 1, 0),
		DS: data, ES: data, FS: data, GS: data, SS: data,
		TR:   kvm.Segment{Base: tssAddr, Limit: tssLimit, Selector: selTSS, Type: 11, Present: 1},
		LDT:  kvm.Segment{Unusable: 1},
		GDT:  kvm.DTable{Base: gdtAddr, Limit: gdtEntries*8 - 1},
		IDT:  kvm.DTable{Base: 0, Limit: 0},
		CR0:  0x80010021, // PE | NE | WP | PG
		CR3:  pml4Addr,
		CR4:  0x620, // PAE | OSFXSR | OSXMMEXCPT: SSE2 usable
		EFER: eferLME | eferLMA | eferNXE,
	}
}

// initialRegs: entry point, stack at the top of memory, boot info in RDI,
// IOPL 3 so the guest's `out` instructions reach the monitor.
func (l *layout) initialRegs() kvm.Regs {
	if l.linux {
		// RSP is set per request, below argv and auxv (placeLinux). No
		// IOPL: a Linux program does no port I/O of its own.
		return kvm.Regs{RIP: l.entry, RSP: l.stackTop, RFLAGS: 0x2}
	}
	return kvm.Regs{RIP: l.entry, RSP: l.stackTop, RDI: bootInfoAddr, RFLAGS: 0x3002}
}
