package hvt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"time"

	"github.com/dust-run/dust/internal/kvm"
)

// The vDSO. Without one every clock read of a Linux program is a system
// call, one exit (≈ 40 µs here): an unmodified Go HTTP server reads the
// clock about 15 times per request, more than all its other calls. So the
// monitor gives Linux programs a small vDSO of its own (AT_SYSINFO_EHDR),
// as Linux does: clock_gettime, gettimeofday and time computed in the
// guest from the TSC and a data page the monitor writes before each run.
//
// Both sides use one time base, so that readings through the vDSO and
// through the system call (which a program also makes: clock_nanosleep,
// an unknown clock) interleave monotonically: the data page holds the
// guest TSC at a base moment (the host TSC plus the vCPU's TSC offset,
// which the monitor sets itself on every machine), the CLOCK_MONOTONIC and
// CLOCK_REALTIME readings then, and a multiplier; a reading is base +
// ((tsc - tsc0) × mult) >> 32 on either side. Without a settable TSC
// offset (KVM before 5.16) there is no vDSO and every reading is a call.
//
// The vDSO is an ELF shared object the monitor writes itself (below): one
// PT_LOAD at virtual address 0, a PT_DYNAMIC naming a symbol table, its
// strings, a one-bucket SysV hash table and the version LINUX_2.6 every
// symbol has (the Go runtime requires version definitions). The code is
// position-dependent (the data page's address is in it), which is fine:
// both pages are at fixed addresses of the monitor's choosing.
const (
	vdsoDataAddr = 0x12000 // user read-only: the time base (vdso* offsets)
	vdsoAddr     = 0x13000 // user read/execute: the ELF image

	vdsoTSC0  = 0  // guest TSC at the base
	vdsoMono0 = 8  // CLOCK_MONOTONIC (and BOOTTIME, MONOTONIC_RAW, the CPU-time clocks) at the base, ns
	vdsoReal0 = 16 // CLOCK_REALTIME at the base, ns since the epoch
	vdsoMult  = 24 // ns = Δtsc × mult >> 32
)

// vdsoCode is the functions' machine code, assembled from:
//
//	now:            # %r9 = the clock's base; returns ns in %rax
//	  mov $0x12000, %r8d; rdtsc; shl $32, %rdx; or %rdx, %rax
//	  sub (%r8), %rax; jae 1f; xor %eax, %eax   # never before the base
//	1: mulq 24(%r8); shrd $32, %rdx, %rax; add %r9, %rax; ret
//	clock_gettime:  # (clk %edi, ts %rsi); clocks above 7 make the call
//	  cmp $7, %edi; ja 9f
//	  mov $0x12000, %r8d; mov 8(%r8), %r9
//	  cmp $0, %edi; je 2f; cmp $5, %edi; jne 3f   # REALTIME, REALTIME_COARSE
//	2: mov 16(%r8), %r9
//	3: call now; xor %edx, %edx; mov $1000000000, %ecx; div %rcx
//	  mov %rax, (%rsi); mov %rdx, 8(%rsi); xor %eax, %eax; ret
//	9: mov $228, %eax; syscall; ret
//	gettimeofday:   # (tv %rdi, tz %rsi)
//	  test %rsi, %rsi; jz 1f; movq $0, (%rsi)
//	1: test %rdi, %rdi; jz 2f
//	  mov $0x12000, %r8d; mov 16(%r8), %r9; call now
//	  xor %edx, %edx; mov $1000, %ecx; div %rcx
//	  xor %edx, %edx; mov $1000000, %ecx; div %rcx
//	  mov %rax, (%rdi); mov %rdx, 8(%rdi)
//	2: xor %eax, %eax; ret
//	time:           # (t %rdi)
//	  mov $0x12000, %r8d; mov 16(%r8), %r9; call now
//	  xor %edx, %edx; mov $1000000000, %ecx; div %rcx
//	  test %rdi, %rdi; jz 1f; mov %rax, (%rdi)
//	1: ret
var vdsoCode = []byte{
	0x41, 0xb8, 0x00, 0x20, 0x01, 0x00, 0x0f, 0x31, 0x48, 0xc1, 0xe2, 0x20,
	0x48, 0x09, 0xd0, 0x49, 0x2b, 0x00, 0x73, 0x02, 0x31, 0xc0, 0x49, 0xf7,
	0x60, 0x18, 0x48, 0x0f, 0xac, 0xd0, 0x20, 0x4c, 0x01, 0xc8, 0xc3, 0x83,
	0xff, 0x07, 0x77, 0x31, 0x41, 0xb8, 0x00, 0x20, 0x01, 0x00, 0x4d, 0x8b,
	0x48, 0x08, 0x83, 0xff, 0x00, 0x74, 0x05, 0x83, 0xff, 0x05, 0x75, 0x04,
	0x4d, 0x8b, 0x48, 0x10, 0xe8, 0xbb, 0xff, 0xff, 0xff, 0x31, 0xd2, 0xb9,
	0x00, 0xca, 0x9a, 0x3b, 0x48, 0xf7, 0xf1, 0x48, 0x89, 0x06, 0x48, 0x89,
	0x56, 0x08, 0x31, 0xc0, 0xc3, 0xb8, 0xe4, 0x00, 0x00, 0x00, 0x0f, 0x05,
	0xc3, 0x48, 0x85, 0xf6, 0x74, 0x07, 0x48, 0xc7, 0x06, 0x00, 0x00, 0x00,
	0x00, 0x48, 0x85, 0xff, 0x74, 0x2a, 0x41, 0xb8, 0x00, 0x20, 0x01, 0x00,
	0x4d, 0x8b, 0x48, 0x10, 0xe8, 0x7f, 0xff, 0xff, 0xff, 0x31, 0xd2, 0xb9,
	0xe8, 0x03, 0x00, 0x00, 0x48, 0xf7, 0xf1, 0x31, 0xd2, 0xb9, 0x40, 0x42,
	0x0f, 0x00, 0x48, 0xf7, 0xf1, 0x48, 0x89, 0x07, 0x48, 0x89, 0x57, 0x08,
	0x31, 0xc0, 0xc3, 0x41, 0xb8, 0x00, 0x20, 0x01, 0x00, 0x4d, 0x8b, 0x48,
	0x10, 0xe8, 0x52, 0xff, 0xff, 0xff, 0x31, 0xd2, 0xb9, 0x00, 0xca, 0x9a,
	0x3b, 0x48, 0xf7, 0xf1, 0x48, 0x85, 0xff, 0x74, 0x03, 0x48, 0x89, 0x07,
	0xc3,
}

// The exported functions: name and offset in vdsoCode. Each has its
// "__vdso_" name, which the Go runtime, glibc and musl look up.
var vdsoSyms = []struct {
	name string
	off  uint64
}{
	{"__vdso_clock_gettime", 0x23},
	{"__vdso_gettimeofday", 0x61},
	{"__vdso_time", 0x9f},
}

// Offsets in the vDSO page.
const (
	vdsoPhOff   = 64
	vdsoDynOff  = 0x100
	vdsoSymOff  = 0x180
	vdsoHashOff = 0x200
	vdsoStrOff  = 0x240
	vdsoVerSym  = 0x2c0
	vdsoVerDef  = 0x300
	vdsoCodeOff = 0x400
)

// elfHash is the System V ABI's symbol hash.
func elfHash(name string) uint32 {
	var h uint32
	for i := 0; i < len(name); i++ {
		h = h<<4 + uint32(name[i])
		g := h & 0xf0000000
		if g != 0 {
			h ^= g >> 24
		}
		h &^= g
	}
	return h
}

// vdsoImage is the vDSO's page.
func vdsoImage() []byte {
	le := binary.LittleEndian
	b := make([]byte, pageSize)
	// ELF header: 64-bit, little-endian, ET_DYN, x86-64, two program headers.
	copy(b, []byte{0x7f, 'E', 'L', 'F', 2, 1, 1})
	le.PutUint16(b[16:], 3)  // ET_DYN
	le.PutUint16(b[18:], 62) // EM_X86_64
	le.PutUint32(b[20:], 1)
	le.PutUint64(b[32:], vdsoPhOff)
	le.PutUint16(b[52:], 64) // e_ehsize
	le.PutUint16(b[54:], 56) // e_phentsize
	le.PutUint16(b[56:], 2)  // e_phnum
	phdr := func(i int, typ, flags uint32, off, size, align uint64) {
		p := b[vdsoPhOff+56*i:]
		le.PutUint32(p[0:], typ)
		le.PutUint32(p[4:], flags)
		le.PutUint64(p[8:], off)   // p_offset
		le.PutUint64(p[16:], off)  // p_vaddr: linked at 0
		le.PutUint64(p[24:], off)  // p_paddr
		le.PutUint64(p[32:], size) // p_filesz
		le.PutUint64(p[40:], size) // p_memsz
		le.PutUint64(p[48:], align)
	}
	const ptLoadT, ptDynamicT, pfR, pfX = 1, 2, 4, 1
	phdr(0, ptLoadT, pfR|pfX, 0, pageSize, pageSize)
	// Strings, symbols and their hash table.
	strs := []byte{0}
	str := func(name string) uint32 {
		at := uint32(len(strs))
		strs = append(append(strs, name...), 0)
		return at
	}
	nameAt := make([]uint32, len(vdsoSyms))
	for i, s := range vdsoSyms {
		nameAt[i] = str(s.name)
	}
	// Version definitions: the object itself (index 1), then LINUX_2.6
	// (index 2), which every symbol has (DT_VERSYM).
	for i, v := range []string{"linux-vdso.so.1", "LINUX_2.6"} {
		d := b[vdsoVerDef+28*i:]
		le.PutUint16(d[0:], 1) // vd_version
		if i == 0 {
			le.PutUint16(d[2:], 1) // VER_FLG_BASE
		}
		le.PutUint16(d[4:], uint16(i+1)) // vd_ndx
		le.PutUint16(d[6:], 1)           // vd_cnt
		le.PutUint32(d[8:], elfHash(v))
		le.PutUint32(d[12:], 20) // vd_aux: the verdaux right after
		if i == 0 {
			le.PutUint32(d[16:], 28) // vd_next
		}
		le.PutUint32(d[20:], str(v)) // vda_name; vda_next 0
	}
	for i := range vdsoSyms {
		le.PutUint16(b[vdsoVerSym+2*(i+1):], 2)
	}
	copy(b[vdsoStrOff:], strs)
	for i, s := range vdsoSyms {
		sym := b[vdsoSymOff+24*(i+1):] // symbol 0 is the null symbol
		le.PutUint32(sym[0:], nameAt[i])
		sym[4] = 1<<4 | 2 // STB_GLOBAL, STT_FUNC
		// A section index other than SHN_UNDEF (undefined) and SHN_ABS
		// (which glibc does not relocate): the object has no section
		// table, and nobody reads one.
		le.PutUint16(sym[6:], 1)
		le.PutUint64(sym[8:], vdsoCodeOff+s.off)
	}
	// One bucket holding every symbol, chained in order: a lookup walks
	// them all, which for three symbols is the fastest table there is.
	n := uint32(len(vdsoSyms) + 1)
	h := b[vdsoHashOff:]
	le.PutUint32(h[0:], 1) // nbucket
	le.PutUint32(h[4:], n) // nchain
	le.PutUint32(h[8:], 1) // bucket[0]: the first symbol
	for i := uint32(1); i < n; i++ {
		next := i + 1
		if next == n {
			next = 0
		}
		le.PutUint32(h[12+4*i:], next) // chain[i]
	}
	dyn := [][2]uint64{
		{4, vdsoHashOff},         // DT_HASH
		{5, vdsoStrOff},          // DT_STRTAB
		{6, vdsoSymOff},          // DT_SYMTAB
		{10, uint64(len(strs))},  // DT_STRSZ
		{11, 24},                 // DT_SYMENT
		{0x6ffffff0, vdsoVerSym}, // DT_VERSYM
		{0x6ffffffc, vdsoVerDef}, // DT_VERDEF
		{0x6ffffffd, 2},          // DT_VERDEFNUM
		{0, 0},                   // DT_NULL
	}
	for i, d := range dyn {
		le.PutUint64(b[vdsoDynOff+16*i:], d[0])
		le.PutUint64(b[vdsoDynOff+16*i+8:], d[1])
	}
	phdr(1, ptDynamicT, pfR, vdsoDynOff, uint64(16*len(dyn)), 8)
	copy(b[vdsoCodeOff:], vdsoCode)
	return b
}

// vdsoMultFor is mult for a TSC of hz: ns = Δtsc × mult >> 32.
func vdsoMultFor(hz uint64) uint64 {
	if hz == 0 {
		return 0
	}
	hi, lo := bits.Mul64(1e9, 1<<32)
	q, _ := bits.Div64(hi, lo, hz)
	return q
}

// linuxClock writes the data page for a run starting now, with
// CLOCK_MONOTONIC at base, and returns the process's clocks on the same
// time base: the monotonic nanoseconds since the run started and the wall
// clock. Without a vDSO (no known TSC offset) they are the host's.
func (s *session) linuxClock(base int64) (mono func() int64, now func() time.Time) {
	m := s.m
	if !m.vdsoOn() {
		start := time.Now()
		return func() int64 { return int64(time.Since(start)) }, time.Now
	}
	mult := m.im.vdsoMult
	off := m.tscOffset
	tsc0 := kvm.HostTSC() + off
	real0 := time.Now().UnixNano()
	d := m.mem[vdsoDataAddr : vdsoDataAddr+pageSize]
	le := binary.LittleEndian
	le.PutUint64(d[vdsoTSC0:], tsc0)
	le.PutUint64(d[vdsoMono0:], uint64(base))
	le.PutUint64(d[vdsoReal0:], uint64(real0))
	le.PutUint64(d[vdsoMult:], mult)
	elapsed := func() int64 {
		dt := kvm.HostTSC() + off - tsc0
		if int64(dt) < 0 {
			dt = 0 // as the guest's code: never before the base
		}
		hi, lo := bits.Mul64(dt, mult)
		return int64(hi<<32 | lo>>32)
	}
	return elapsed, func() time.Time { return time.Unix(0, real0+elapsed()) }
}

// vdsoOn reports whether this machine's Linux program has the vDSO: the
// image offers it and the machine's TSC offset is known.
func (m *Machine) vdsoOn() bool { return m.im.vdsoMult != 0 && m.tscKnown }

// tscModel is how the TSC a guest reads at CPL3 relates to the host's.
// On hardware KVM it is the host's plus the vCPU's TSC offset. Under PVM
// (this project's nested KVM) the guest's CPL3 code runs as the host
// kernel's user code and reads the host's TSC itself: the offset applies
// only to what KVM emulates. The monitor cannot know which from the API,
// so it has the guest read the TSC once per machine (the warm-up stub's
// RBX) and picks the model that fits; the two differ by the host TSC's
// whole value, so a coarse reading decides.
type tscModel uint8

const (
	tscUnknown       tscModel = iota // not learnt, or neither model fits: no vDSO
	tscOffsetApplied                 // guest = host + offset
	tscHostTSC                       // guest = host
)

var errTSC = errors.New("hvt: the guest's TSC")

// tscSlack is how far a guest reading may be from a model's prediction:
// the stub's exit and the host's reading after it, generously.
const tscSlack = 1 << 28 // ≈ 0.1 s at 2.5 GHz

func (m *Machine) learnTSC(off uint64) error {
	g, h := m.stubTSC[0], m.stubTSC[1]
	near := func(pred uint64) bool { d := int64(pred - g); return d >= 0 && d < tscSlack }
	model := tscUnknown
	switch {
	case near(h + off):
		model = tscOffsetApplied
	case near(h):
		model = tscHostTSC
	}
	im := m.im
	im.tscOnce.Do(func() { im.tscModel = model })
	if model != im.tscModel {
		return fmt.Errorf("%w behaves differently in this machine (model %d) than in the image's first (%d)", errTSC, model, im.tscModel)
	}
	switch model {
	case tscOffsetApplied:
		m.tscOffset, m.tscKnown = off, true
	case tscHostTSC:
		m.tscOffset, m.tscKnown = 0, true
	}
	return nil
}
