package hvt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"unsafe"

	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
)

// Linux guests: an ordinary static x86-64 Linux program (gcc -static,
// musl-gcc -static, a static PIE) runs at CPL3 exactly as a Dust guest does,
// but talks to the monitor through the SYSCALL instruction instead of
// libdust's hypercalls. An ELF without a Dust (or Solo5) note is taken for
// one.
//
// Guest memory of a Linux guest:
//
//	0x0000-0xFFFF     monitor pages as for Dust guests (GDT, page tables, TSS, warm-up stub)
//	0x10000           the syscall entry stub: read/execute, LSTAR points here
//	0x11000           a copy of the program headers, user read-only, only when
//	                  no PT_LOAD contains them (AT_PHDR must point at them)
//	0x20000-0x100000  unmapped; page tables beyond the fourth (linuxPTAddr)
//	0x100000-         segments; a static PIE is loaded at linuxPIEBase. Pages of
//	                  the image's span that no segment covers stay unmapped.
//	image end-guard   heap for brk and mmap (linux.Config.HeapStart/HeapEnd)
//	guard             one unmapped page: a stack overflow faults
//	top               the stack (linuxStackSize), argv/envp/auxv at its top
//
// The SYSCALL path: SYSCALL loads RIP from LSTAR, the stub's
// `outb %al, $linuxSyscallPort` exits to the monitor, which serves the call
// from the registers in kvm_run's sync area and writes RAX back. On
// hardware KVM SYSCALL entered CPL0 and the stub's SYSRETQ returns; under
// PVM it stayed at CPL3, and the monitor sets RIP and RFLAGS itself
// (linuxIO). One exit per call either way: RATIONALE.md ("Linux system
// calls") has the measurements.
const (
	linuxStubAddr    = bootInfoAddr // no boot info for a Linux guest
	linuxPhdrAddr    = requestBase
	linuxPIEBase     = 0x400000 // where a static PIE is placed: where ET_EXEC binaries are linked
	linuxSyscallPort = 0xDC     // the stub's 8-bit port (outb imm8: no register is clobbered)
	linuxMinHeap     = 256 << 10
	// Page tables beyond the ptMax Dust guests have, in low memory no
	// Linux program can reach (unmapped, and denied to system calls):
	// 0x20000 up to imageBase, enough for 448 MiB of 4 KiB-mapped image.
	linuxPTAddr = 0x20000
	linuxPTMax  = (imageBase - linuxPTAddr) / pageSize

	// SYSCALL enters with CS = STAR[47:32] (kernel code) and SS = +8;
	// SYSRETQ returns with CS = STAR[63:48]+16 and SS = +8, RPL 3: with
	// STAR[63:48] = 0x13 those are selUserCode and selUserData of the GDT
	// Dust guests already have (kcode, kdata, udata, ucode).
	linuxSTAR = uint64(selKernelCode)<<32 | uint64(0x10|3)<<48
	// SFMASK clears TF, IF, DF, IOPL, NT and AC on entry, as Linux does:
	// a user TF would otherwise trap on the stub's first instruction.
	linuxSFMASK = 0x47700

	msrSTAR   = 0xC0000081
	msrLSTAR  = 0xC0000082
	msrCSTAR  = 0xC0000083
	msrSFMASK = 0xC0000084
	msrFSBase = 0xC0000100
	eferSCE   = 1 << 0

	// Identities the program sees in its auxiliary vector; they must be
	// what internal/linux answers getuid() and friends.
	linuxUID = 1000
	linuxGID = 1000
)

// linuxStub is the syscall entry code at linuxStubAddr.
var linuxStub = []byte{
	0xE6, linuxSyscallPort, // outb %al, $0xDC
	0x48, 0x0F, 0x07, // sysretq
}

// linuxStaticHint is how to build what the monitor runs.
const linuxStaticHint = "build a static executable: gcc -static (glibc, Debian's libc6-dev), musl-gcc -static (musl-tools), or CGO_ENABLED=0 GOOS=linux go build"

// linuxStackSize is the stack of a Linux guest: an eighth of its memory,
// between 256 KiB and 8 MiB (Linux's default RLIMIT_STACK), so that the
// program's own stack use and the heap share small machines fairly.
func linuxStackSize(memSize uint64) uint64 {
	return min(max(memSize/8, 256<<10), 8<<20) &^ (pageSize - 1)
}

// isLinuxProgram reports whether b should be validated as a Linux program:
// a well-formed ELF whose notes name neither Dust nor Solo5. Anything else,
// a broken file included, goes through the Dust validator and gets the
// errors it always got.
func isLinuxProgram(b []byte) bool {
	_, phoff, phnum, _, err := parseHeader(b, true)
	if err != nil {
		return false
	}
	for i := 0; i < int(phnum); i++ {
		ph := readPhdr(b, phoff, i)
		if ph.typ != ptNote {
			continue
		}
		if ph.fileEnd > uint64(len(b)) {
			return false
		}
		dust, solo5, ready, err := scanNotes(b[ph.off:ph.fileEnd], "")
		if err != nil || dust || solo5 || ready {
			return false
		}
	}
	return true
}

// parseImage validates b as a Dust guest or as a static Linux program.
func parseImage(b []byte) (*elfImage, error) {
	if isLinuxProgram(b) {
		return parseLinuxELF(b)
	}
	return parseELF(b)
}

// parseLinuxELF validates a static x86-64 Linux program as strictly as a
// Dust guest (the same segment rules), refuses dynamically linked ones,
// and places a static PIE. A static PIE relocates itself at start-up (its
// _dl_relocate_static_pie or musl's _dlstart); the monitor only checks
// that this needs no write to its code.
func parseLinuxELF(b []byte) (*elfImage, error) {
	entry, phoff, phnum, typ, err := parseHeader(b, true)
	if err != nil {
		return nil, err
	}
	img := &elfImage{linux: true, phnum: uint64(phnum)}
	if typ == etDyn {
		lo := ^uint64(0)
		for i := 0; i < int(phnum); i++ {
			ph := readPhdr(b, phoff, i)
			if ph.typ != ptLoad || ph.memsz == 0 {
				continue
			}
			if ph.align > largePage {
				return nil, badImage(fmt.Sprintf("program header %d", i), "p_align %#x: a static PIE is placed at a 2 MiB boundary, so its segments may ask for at most that", ph.align)
			}
			lo = min(lo, ph.vaddr)
		}
		if lo == ^uint64(0) {
			return nil, badImage("program headers", "no loadable segment")
		}
		// Mod 2^64: the image keeps its internal distances wherever it
		// was linked, and its lowest 2 MiB boundary lands at the base.
		img.bias = linuxPIEBase - lo&^(largePage-1)
	}
	img.entry = entry + img.bias
	var dyn *phdr
	phdrVaddr, hasPhdr := uint64(0), false
	for i := 0; i < int(phnum); i++ {
		ph := readPhdr(b, phoff, i)
		where := fmt.Sprintf("program header %d", i)
		if ph.fileEnd > uint64(len(b)) {
			return nil, badImage(where, "file range [%#x, +%#x) lies outside the %d-byte file", ph.off, ph.filesz, len(b))
		}
		switch ph.typ {
		case ptInterp:
			interp, _, _ := bytes.Cut(b[ph.off:ph.fileEnd], []byte{0})
			if len(interp) > 64 {
				interp = interp[:64]
			}
			return nil, badImage(where, "the program is dynamically linked (interpreter %q); the monitor runs static programs only: %s", interp, linuxStaticHint)
		case ptShlib:
			return nil, badImage(where, "PT_SHLIB: %s", linuxStaticHint)
		case ptDynamic:
			d := ph
			dyn = &d
		case ptPhdr:
			phdrVaddr, hasPhdr = ph.vaddr+img.bias, true
		case ptNote:
			if _, _, _, err := scanNotes(b[ph.off:ph.fileEnd], where); err != nil {
				return nil, err
			}
			img.goRuntime = img.goRuntime || hasGoNote(b[ph.off:ph.fileEnd])
		case ptLoad:
			ph.vaddr += img.bias
			if err := img.addLoad(b, where, ph); err != nil {
				return nil, err
			}
		}
	}
	// A Go program that links dustgo's ready point has one: the Go
	// linker keeps every linked function's name (stripped binaries too),
	// and there is no way to give a Go binary an ELF note of its own.
	img.ready = img.goRuntime && bytes.Contains(b, []byte(goReadyPoint))
	if dyn != nil {
		if err := checkDynamic(b[dyn.off:dyn.fileEnd]); err != nil {
			return nil, err
		}
	}
	if err := img.finish(); err != nil {
		return nil, err
	}
	img.placePhdrs(b, phoff, phdrVaddr, hasPhdr)
	return img, nil
}

// Dynamic-section tags and flags the loader looks at.
const (
	dtNull    = 0
	dtNeeded  = 1
	dtTextrel = 22
	dtFlags   = 30
	dfTextrel = 4
)

// checkDynamic refuses a program that needs shared libraries or whose
// self-relocation would write to its (read-only) code.
func checkDynamic(d []byte) error {
	le := binary.LittleEndian
	for ; len(d) >= 16; d = d[16:] {
		tag, val := le.Uint64(d), le.Uint64(d[8:])
		switch {
		case tag == dtNull:
			return nil
		case tag == dtNeeded:
			return badImage("dynamic section", "the program is dynamically linked (it needs shared libraries); the monitor runs static programs only: %s", linuxStaticHint)
		case tag == dtTextrel, tag == dtFlags && val&dfTextrel != 0:
			return badImage("dynamic section", "the program relocates its own code (DT_TEXTREL), which stays read-only here: rebuild it with -fPIE, or without -static-pie")
		}
	}
	return nil
}

// placePhdrs finds the program headers in guest memory for AT_PHDR: where
// PT_PHDR says if a segment really loads them there, else inside the
// segment that loads their file bytes, else in a monitor-written copy.
func (img *elfImage) placePhdrs(b []byte, phoff, phdrVaddr uint64, hasPhdr bool) {
	size := img.phnum * phdrSize
	want := b[phoff : phoff+size]
	for _, s := range img.segments {
		if hasPhdr && phdrVaddr >= s.vaddr && phdrVaddr-s.vaddr+size <= uint64(len(s.data)) &&
			bytes.Equal(s.data[phdrVaddr-s.vaddr:][:size], want) {
			img.phdrAddr = phdrVaddr
			return
		}
	}
	for _, s := range img.segments {
		if phoff >= s.off && phoff-s.off+size <= uint64(len(s.data)) {
			img.phdrAddr = s.vaddr + (phoff - s.off)
			return
		}
	}
	img.phdrCopy = bytes.Clone(want)
	img.phdrAddr = linuxPhdrAddr
}

// linuxGoMinMemory is the least guest memory a Go program starts in. The
// Go runtime (1.2x to 1.26 on amd64) reserves address space it mostly
// never touches: page-allocator summaries (585 MiB), the scavenger index
// (512 MiB), its first heap arena aligned to 64 MiB (128 MiB reserved,
// then trimmed) and the arena index (32 MiB). Guest memory is identity
// mapped, so those reservations must fit in it; only the pages the
// program touches cost host memory (copy-on-write from the template, and
// mmap does not clear pages never handed out). Below this the runtime
// dies with "failed to reserve page summary memory" or "out of memory",
// or, worse, between about 1 and 1.15 GiB, continues with a scavenger
// index at address 0 that aliases other memory: so it is refused here.
// 1280 MiB holds the reservations but not always the first heap: Go
// 1.26 starts its heap at a random offset up to an arena into its first
// reservation (randomised heap base), so a program that allocates a few
// MiB at start-up can run out at 1280; 1536 leaves room for three more
// arenas (a live heap of roughly 200 MiB).
const linuxGoMinMemory = 1536 << 20

// goReadyPoint is the function of package dustgo that makes the ready
// call on Linux (dustgo/linux.go).
const goReadyPoint = "github.com/dust-run/dust/dustgo.readyPoint"

// hasGoNote reports whether notes hold Go's build ID note ("Go", type 4),
// which every binary the go command links carries.
func hasGoNote(b []byte) bool {
	le := binary.LittleEndian
	for len(b) >= 12 {
		namesz, descsz, typ := uint64(le.Uint32(b)), uint64(le.Uint32(b[4:])), le.Uint32(b[8:])
		end := 12 + alignUp(namesz, 4) + alignUp(descsz, 4)
		if namesz > 1<<16 || descsz > 1<<20 || end > uint64(len(b)) {
			return false
		}
		if typ == 4 && namesz == 4 && string(b[12:16]) == "Go\x00\x00" {
			return true
		}
		b = b[end:]
	}
	return false
}

// buildLinuxLayout places a Linux program in memSize bytes.
func buildLinuxLayout(img *elfImage, memSize uint64) (*layout, error) {
	if memSize < MinMemory || memSize > MaxMemory || memSize%largePage != 0 {
		return nil, fmt.Errorf("%w: hvt memory %d bytes: want a multiple of 2 MiB in [%d MiB, %d GiB]", machine.ErrBadLimits, memSize, MinMemory>>20, MaxMemory>>30)
	}
	if img.goRuntime && memSize < linuxGoMinMemory {
		return nil, fmt.Errorf("%w: a Go program needs at least %d MiB of hvt memory (asked for %d MiB): the Go runtime reserves about 1.2 GiB of address space at start-up, which here must be guest memory; only the pages it touches cost host memory", machine.ErrBadLimits, linuxGoMinMemory>>20, memSize>>20)
	}
	stack := linuxStackSize(memSize)
	l := &layout{memSize: memSize, stackTop: memSize, entry: img.entry, linux: true, stackSize: stack}
	l.guard = memSize - stack - pageSize
	l.heapStart = img.end
	l.heapEnd = l.guard
	if img.end > l.guard || l.heapEnd-l.heapStart < linuxMinHeap {
		return nil, badImage("layout", "the program ends at %#x: no room for a %d KiB heap and its %d KiB stack in %d MiB of guest memory (raise the memory limit)", img.end, linuxMinHeap>>10, stack>>10, memSize>>20)
	}
	l.tsize = requestEnd
	for _, s := range img.segments {
		l.tsize = max(l.tsize, alignUp(s.vaddr+uint64(len(s.data)), pageSize))
	}
	t := make([]byte, requestEnd)
	l.low = t
	writeMonitorPages(t)
	copy(t[linuxStubAddr:], linuxStub)
	copy(t[linuxPhdrAddr:], img.phdrCopy)
	copy(t[vdsoAddr:], vdsoImage())
	if err := l.pageTables(img, t); err != nil {
		return nil, err
	}
	return l, nil
}

// linuxPerm is perm for a Linux guest: nothing is mapped that the program
// was not given, so a stray pointer into the image's gaps or low memory
// faults instead of reading zeros.
func (l *layout) linuxPerm(img *elfImage, addr uint64) uint64 {
	switch {
	case addr == gdtAddr, addr >= tssAddr && addr <= tssAddr+tssLimit:
		return permSuperRW
	case addr == warmAddr, addr == linuxStubAddr, addr == vdsoAddr:
		return permUserRX
	case addr == vdsoDataAddr:
		return permUserRO
	case addr == linuxPhdrAddr && img.phdrCopy != nil:
		return permUserRO
	case addr < imageBase, addr == l.guard:
		return permNone
	}
	if p, ok := segmentPerm(img, addr); ok {
		return p
	}
	if addr < img.end {
		return permNone
	}
	return permUserRW
}

// linuxSregs: as for a Dust guest, plus EFER.SCE so SYSCALL works. It is
// part of the state a restore reloads, so SCE survives every Reset.
func linuxSregs() kvm.Sregs {
	s := initialSregs()
	s.EFER |= eferSCE
	return s
}

// setSyscallMSRs points SYSCALL at the stub. A CPL3 guest cannot write
// MSRs and KVM_SET_SREGS does not touch these, so they hold for the
// vCPU's life, across every restore.
func setSyscallMSRs(vcpufd int) error {
	m := kvm.MSRs{NMSRs: 4}
	m.Entries[0] = kvm.MSREntry{Index: msrSTAR, Data: linuxSTAR}
	m.Entries[1] = kvm.MSREntry{Index: msrLSTAR, Data: linuxStubAddr}
	m.Entries[2] = kvm.MSREntry{Index: msrCSTAR, Data: linuxStubAddr} // compatibility-mode SYSCALL: CS is never 32-bit here
	m.Entries[3] = kvm.MSREntry{Index: msrSFMASK, Data: linuxSFMASK}
	if err := kvm.SetMSRs(vcpufd, &m); err != nil {
		return fmt.Errorf("hvt: syscall MSRs: %w", err)
	}
	return nil
}

// cpuidLeaf returns entry (fn, index 0) of a kvm_cpuid2 list.
func cpuidLeaf(cpuid []byte, fn uint32) (kvm.CPUIDEntry2, bool) {
	hdr := int(unsafe.Sizeof(kvm.CPUID2{}))
	if len(cpuid) < hdr {
		return kvm.CPUIDEntry2{}, false
	}
	n := (len(cpuid) - hdr) / int(unsafe.Sizeof(kvm.CPUIDEntry2{}))
	for _, e := range unsafe.Slice((*kvm.CPUIDEntry2)(unsafe.Pointer(&cpuid[hdr])), n) {
		if e.Function == fn && e.Index == 0 {
			return e, true
		}
	}
	return kvm.CPUIDEntry2{}, false
}

// Auxiliary vector tags (<linux/auxvec.h>, <asm/auxvec.h>).
const (
	atNull     = 0
	atPhdr     = 3
	atPhent    = 4
	atPhnum    = 5
	atPagesz   = 6
	atBase     = 7
	atFlags    = 8
	atEntry    = 9
	atUID      = 11
	atEUID     = 12
	atGID      = 13
	atEGID     = 14
	atPlatform = 15
	atHwcap    = 16
	atClktck   = 17
	atSecure   = 23
	atRandom   = 25
	atHwcap2   = 26
	atExecfn   = 31
	atSysinfo  = 33 // AT_SYSINFO_EHDR: the vDSO
)

// linuxEntry is what the initial stack describes besides argv and envp.
type linuxEntry struct {
	phdr, phnum, entry, hwcap uint64
	vdso                      uint64 // the vDSO's address, 0 for none
	random                    [16]byte
}

// buildStack writes the System V x86-64 initial process stack below top
// (strings, AT_RANDOM bytes, then argc, argv, envp and auxv) and returns
// RSP: 16-byte aligned, pointing at argc. Nothing may go below floor.
func buildStack(mem []byte, top, floor uint64, args, env []string, e *linuxEntry) (uint64, error) {
	need := uint64(8 + 16 + 16 + len("x86_64") + 1)
	for _, s := range append(args[:len(args):len(args)], env...) {
		if strings.IndexByte(s, 0) >= 0 {
			return 0, fmt.Errorf("%w: argument or environment entry %.40q contains a NUL byte", ErrRequestTooLarge, s)
		}
		need += uint64(len(s)) + 1
	}
	const nAux = 20
	vec := 8 * uint64(1+len(args)+1+len(env)+1+2*nAux)
	if need+vec+16 > top-floor {
		return 0, fmt.Errorf("%w: argv and environment need %d bytes, the stack allows %d", ErrRequestTooLarge, need+vec+16, top-floor)
	}
	le := binary.LittleEndian
	p := top - 8 // an end marker of zeros, as Linux leaves
	le.PutUint64(mem[p:], 0)
	str := func(s string) uint64 {
		p -= uint64(len(s)) + 1
		copy(mem[p:], s)
		mem[p+uint64(len(s))] = 0
		return p
	}
	argv := make([]uint64, len(args))
	for i, s := range args {
		argv[i] = str(s)
	}
	envp := make([]uint64, len(env))
	for i, s := range env {
		envp[i] = str(s)
	}
	platform := str("x86_64")
	p = (p - 16) &^ 15
	random := p
	copy(mem[random:], e.random[:])

	sp := (p - vec) &^ 15
	w := sp
	put := func(v uint64) { le.PutUint64(mem[w:], v); w += 8 }
	put(uint64(len(args)))
	for _, a := range argv {
		put(a)
	}
	put(0)
	for _, a := range envp {
		put(a)
	}
	put(0)
	aux := [][2]uint64{
		{atPhdr, e.phdr}, {atPhent, phdrSize}, {atPhnum, e.phnum}, {atPagesz, pageSize},
		{atBase, 0}, {atFlags, 0}, {atEntry, e.entry},
		{atUID, linuxUID}, {atEUID, linuxUID}, {atGID, linuxGID}, {atEGID, linuxGID},
		{atSecure, 0}, {atRandom, random}, {atHwcap, e.hwcap}, {atHwcap2, 0},
		{atClktck, 100}, {atPlatform, platform}, {atExecfn, argv[0]},
	}
	if e.vdso != 0 {
		aux = append(aux, [2]uint64{atSysinfo, e.vdso})
	}
	aux = append(aux, [2]uint64{atNull, 0})
	for _, a := range aux {
		put(a[0])
		put(a[1])
	}
	return sp, nil
}
