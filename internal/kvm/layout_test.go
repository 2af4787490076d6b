package kvm

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// cLayout compiles a C program against the kernel UAPI headers and returns
// what it prints: "name value" lines for sizes, offsets and ioctl numbers.
func cLayout(t *testing.T) map[string]uint64 {
	t.Helper()
	if _, err := os.Stat("/usr/include/linux/kvm.h"); err != nil {
		t.Skip("linux/kvm.h not installed (Debian package linux-libc-dev): cannot compare layouts")
	}
	cc, err := exec.LookPath("gcc")
	if err != nil {
		t.Skip("gcc not found: cannot compare layouts")
	}
	const src = `#include <stdio.h>
#include <stddef.h>
#include <linux/kvm.h>
#define S(t) printf(#t " %zu\n", sizeof(struct t));
#define O(t, f) printf(#t "." #f " %zu\n", offsetof(struct t, f));
#define I(n) printf(#n " %lu\n", (unsigned long)(n));
int main(void) {
	S(kvm_regs) O(kvm_regs, rip) O(kvm_regs, rflags) O(kvm_regs, r15)
	S(kvm_segment) O(kvm_segment, selector) O(kvm_segment, type) O(kvm_segment, unusable)
	S(kvm_dtable) S(kvm_sregs) O(kvm_sregs, tr) O(kvm_sregs, gdt) O(kvm_sregs, cr0)
	O(kvm_sregs, efer) O(kvm_sregs, apic_base) O(kvm_sregs, interrupt_bitmap)
	S(kvm_userspace_memory_region) O(kvm_userspace_memory_region, userspace_addr)
	S(kvm_cpuid2) S(kvm_cpuid_entry2) O(kvm_cpuid_entry2, edx)
	O(kvm_run, immediate_exit) O(kvm_run, exit_reason) O(kvm_run, cr8) O(kvm_run, apic_base)
	O(kvm_run, io) O(kvm_run, io.port) O(kvm_run, io.count) O(kvm_run, io.data_offset)
	O(kvm_run, fail_entry.cpu) O(kvm_run, internal.data) O(kvm_run, mmio.len) O(kvm_run, mmio.is_write)
	I(KVM_GET_API_VERSION) I(KVM_CREATE_VM) I(KVM_CHECK_EXTENSION) I(KVM_GET_VCPU_MMAP_SIZE)
	I(KVM_GET_SUPPORTED_CPUID) I(KVM_CREATE_VCPU) I(KVM_SET_USER_MEMORY_REGION) I(KVM_RUN)
	I(KVM_GET_REGS) I(KVM_SET_REGS) I(KVM_GET_SREGS) I(KVM_SET_SREGS) I(KVM_SET_CPUID2)
	I(KVM_GET_TSC_KHZ) I(KVM_CAP_USER_MEMORY) I(KVM_CAP_GET_TSC_KHZ) I(KVM_CAP_IMMEDIATE_EXIT)
	I(KVM_EXIT_IO) I(KVM_EXIT_HLT) I(KVM_EXIT_MMIO) I(KVM_EXIT_SHUTDOWN) I(KVM_EXIT_FAIL_ENTRY)
	I(KVM_EXIT_INTR) I(KVM_EXIT_INTERNAL_ERROR) I(KVM_EXIT_SYSTEM_EVENT) I(KVM_EXIT_IO_OUT)
	S(kvm_fpu) O(kvm_fpu, fcw) O(kvm_fpu, last_opcode) O(kvm_fpu, last_ip) O(kvm_fpu, xmm) O(kvm_fpu, mxcsr)
	S(kvm_xcrs) O(kvm_xcrs, xcrs) S(kvm_xcr) S(kvm_debugregs) O(kvm_debugregs, dr7)
	S(kvm_vcpu_events) O(kvm_vcpu_events, sipi_vector) O(kvm_vcpu_events, smi) O(kvm_vcpu_events, triple_fault)
	O(kvm_vcpu_events, exception_has_payload) O(kvm_vcpu_events, exception_payload)
	S(kvm_msrs) S(kvm_msr_entry) S(kvm_mp_state) S(kvm_sync_regs) O(kvm_sync_regs, sregs) O(kvm_sync_regs, events)
	O(kvm_run, kvm_valid_regs) O(kvm_run, kvm_dirty_regs) O(kvm_run, s)
	I(KVM_GET_MSRS) I(KVM_SET_MSRS) I(KVM_GET_FPU) I(KVM_SET_FPU) I(KVM_SET_MP_STATE) I(KVM_GET_VCPU_EVENTS) I(KVM_SET_VCPU_EVENTS)
	I(KVM_GET_DEBUGREGS) I(KVM_SET_DEBUGREGS) I(KVM_GET_XSAVE) I(KVM_SET_XSAVE) I(KVM_GET_XCRS) I(KVM_SET_XCRS)
	I(KVM_GET_XSAVE2) I(KVM_CAP_VCPU_EVENTS) I(KVM_CAP_DEBUGREGS) I(KVM_CAP_XCRS) I(KVM_CAP_SYNC_REGS) I(KVM_CAP_XSAVE2)
	I(KVM_SYNC_X86_REGS) I(KVM_SYNC_X86_SREGS) I(KVM_SYNC_X86_EVENTS) I(KVM_MP_STATE_RUNNABLE)
	printf("kvm_xsave.region %zu\n", sizeof(((struct kvm_xsave *)0)->region));
	S(kvm_device_attr) O(kvm_device_attr, attr) O(kvm_device_attr, addr)
	I(KVM_SET_DEVICE_ATTR) I(KVM_HAS_DEVICE_ATTR) I(KVM_VCPU_TSC_CTRL) I(KVM_VCPU_TSC_OFFSET)
	return 0;
}
`
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "l.c"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "l")
	if out, err := exec.Command(cc, "-o", bin, filepath.Join(dir, "l.c")).CombinedOutput(); err != nil {
		t.Fatalf("compiling layout probe: %v\n%s", err, out)
	}
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]uint64{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		m[f[0]] = v
	}
	return m
}

func TestLayoutMatchesKernelHeaders(t *testing.T) {
	c := cLayout(t)
	var run Run
	var sr Sregs
	go_ := map[string]uint64{
		"kvm_regs":                    uint64(unsafe.Sizeof(Regs{})),
		"kvm_regs.rip":                uint64(unsafe.Offsetof(Regs{}.RIP)),
		"kvm_regs.rflags":             uint64(unsafe.Offsetof(Regs{}.RFLAGS)),
		"kvm_regs.r15":                uint64(unsafe.Offsetof(Regs{}.R15)),
		"kvm_segment":                 uint64(unsafe.Sizeof(Segment{})),
		"kvm_segment.selector":        uint64(unsafe.Offsetof(Segment{}.Selector)),
		"kvm_segment.type":            uint64(unsafe.Offsetof(Segment{}.Type)),
		"kvm_segment.unusable":        uint64(unsafe.Offsetof(Segment{}.Unusable)),
		"kvm_dtable":                  uint64(unsafe.Sizeof(DTable{})),
		"kvm_sregs":                   uint64(unsafe.Sizeof(sr)),
		"kvm_sregs.tr":                uint64(unsafe.Offsetof(sr.TR)),
		"kvm_sregs.gdt":               uint64(unsafe.Offsetof(sr.GDT)),
		"kvm_sregs.cr0":               uint64(unsafe.Offsetof(sr.CR0)),
		"kvm_sregs.efer":              uint64(unsafe.Offsetof(sr.EFER)),
		"kvm_sregs.apic_base":         uint64(unsafe.Offsetof(sr.APICBase)),
		"kvm_sregs.interrupt_bitmap":  uint64(unsafe.Offsetof(sr.InterruptBitmap)),
		"kvm_userspace_memory_region": uint64(unsafe.Sizeof(UserspaceMemoryRegion{})),
		"kvm_userspace_memory_region.userspace_addr": uint64(unsafe.Offsetof(UserspaceMemoryRegion{}.UserspaceAddr)),
		"kvm_cpuid2":                 uint64(unsafe.Sizeof(CPUID2{})),
		"kvm_cpuid_entry2":           uint64(unsafe.Sizeof(CPUIDEntry2{})),
		"kvm_cpuid_entry2.edx":       uint64(unsafe.Offsetof(CPUIDEntry2{}.EDX)),
		"kvm_run.immediate_exit":     uint64(unsafe.Offsetof(run.ImmediateExit)),
		"kvm_run.exit_reason":        uint64(unsafe.Offsetof(run.ExitReason)),
		"kvm_run.cr8":                uint64(unsafe.Offsetof(run.CR8)),
		"kvm_run.apic_base":          uint64(unsafe.Offsetof(run.APICBase)),
		"kvm_run.io":                 uint64(unsafe.Offsetof(run.Exit)),
		"kvm_run.io.port":            uint64(unsafe.Offsetof(run.Exit)) + uint64(unsafe.Offsetof(RunIO{}.Port)),
		"kvm_run.io.count":           uint64(unsafe.Offsetof(run.Exit)) + uint64(unsafe.Offsetof(RunIO{}.Count)),
		"kvm_run.io.data_offset":     uint64(unsafe.Offsetof(run.Exit)) + uint64(unsafe.Offsetof(RunIO{}.DataOffset)),
		"kvm_run.fail_entry.cpu":     uint64(unsafe.Offsetof(run.Exit)) + uint64(unsafe.Offsetof(RunFailEntry{}.CPU)),
		"kvm_run.internal.data":      uint64(unsafe.Offsetof(run.Exit)) + uint64(unsafe.Offsetof(RunInternal{}.Data)),
		"kvm_run.mmio.len":           uint64(unsafe.Offsetof(run.Exit)) + uint64(unsafe.Offsetof(RunMMIO{}.Len)),
		"kvm_run.mmio.is_write":      uint64(unsafe.Offsetof(run.Exit)) + uint64(unsafe.Offsetof(RunMMIO{}.IsWrite)),
		"KVM_GET_API_VERSION":        uint64(KVM_GET_API_VERSION),
		"KVM_CREATE_VM":              uint64(KVM_CREATE_VM),
		"KVM_CHECK_EXTENSION":        uint64(KVM_CHECK_EXTENSION),
		"KVM_GET_VCPU_MMAP_SIZE":     uint64(KVM_GET_VCPU_MMAP_SIZE),
		"KVM_GET_SUPPORTED_CPUID":    uint64(KVM_GET_SUPPORTED_CPUID),
		"KVM_CREATE_VCPU":            uint64(KVM_CREATE_VCPU),
		"KVM_SET_USER_MEMORY_REGION": uint64(KVM_SET_USER_MEMORY_REGION),
		"KVM_RUN":                    uint64(KVM_RUN),
		"KVM_GET_REGS":               uint64(KVM_GET_REGS),
		"KVM_SET_REGS":               uint64(KVM_SET_REGS),
		"KVM_GET_SREGS":              uint64(KVM_GET_SREGS),
		"KVM_SET_SREGS":              uint64(KVM_SET_SREGS),
		"KVM_SET_CPUID2":             uint64(KVM_SET_CPUID2),
		"KVM_GET_TSC_KHZ":            uint64(KVM_GET_TSC_KHZ),
		"KVM_CAP_USER_MEMORY":        KVM_CAP_USER_MEMORY,
		"KVM_CAP_GET_TSC_KHZ":        KVM_CAP_GET_TSC_KHZ,
		"KVM_CAP_IMMEDIATE_EXIT":     KVM_CAP_IMMEDIATE_EXIT,
		"KVM_EXIT_IO":                KVM_EXIT_IO,
		"KVM_EXIT_HLT":               KVM_EXIT_HLT,
		"KVM_EXIT_MMIO":              KVM_EXIT_MMIO,
		"KVM_EXIT_SHUTDOWN":          KVM_EXIT_SHUTDOWN,
		"KVM_EXIT_FAIL_ENTRY":        KVM_EXIT_FAIL_ENTRY,
		"KVM_EXIT_INTR":              KVM_EXIT_INTR,
		"KVM_EXIT_INTERNAL_ERROR":    KVM_EXIT_INTERNAL_ERROR,
		"KVM_EXIT_SYSTEM_EVENT":      KVM_EXIT_SYSTEM_EVENT,
		"KVM_EXIT_IO_OUT":            KVM_EXIT_IO_OUT,

		"kvm_fpu":                               uint64(unsafe.Sizeof(FPU{})),
		"kvm_fpu.fcw":                           uint64(unsafe.Offsetof(FPU{}.FCW)),
		"kvm_fpu.last_opcode":                   uint64(unsafe.Offsetof(FPU{}.LastOpcode)),
		"kvm_fpu.last_ip":                       uint64(unsafe.Offsetof(FPU{}.LastIP)),
		"kvm_fpu.xmm":                           uint64(unsafe.Offsetof(FPU{}.XMM)),
		"kvm_fpu.mxcsr":                         uint64(unsafe.Offsetof(FPU{}.MXCSR)),
		"kvm_xcrs":                              uint64(unsafe.Sizeof(XCRs{})),
		"kvm_xcrs.xcrs":                         uint64(unsafe.Offsetof(XCRs{}.XCRs)),
		"kvm_xcr":                               uint64(unsafe.Sizeof(XCR{})),
		"kvm_debugregs":                         uint64(unsafe.Sizeof(DebugRegs{})),
		"kvm_debugregs.dr7":                     uint64(unsafe.Offsetof(DebugRegs{}.DR7)),
		"kvm_vcpu_events":                       uint64(unsafe.Sizeof(VCPUEvents{})),
		"kvm_vcpu_events.sipi_vector":           uint64(unsafe.Offsetof(VCPUEvents{}.SIPIVector)),
		"kvm_vcpu_events.smi":                   uint64(unsafe.Offsetof(VCPUEvents{}.SMI)),
		"kvm_vcpu_events.triple_fault":          uint64(unsafe.Offsetof(VCPUEvents{}.TripleFault)),
		"kvm_vcpu_events.exception_has_payload": uint64(unsafe.Offsetof(VCPUEvents{}.ExceptionHasPayload)),
		"kvm_vcpu_events.exception_payload":     uint64(unsafe.Offsetof(VCPUEvents{}.ExceptionPayload)),
		"kvm_msrs":                              8,
		"kvm_msr_entry":                         uint64(unsafe.Sizeof(MSREntry{})),
		"kvm_mp_state":                          uint64(unsafe.Sizeof(MPState{})),
		"kvm_sync_regs":                         uint64(unsafe.Sizeof(SyncRegs{})),
		"kvm_sync_regs.sregs":                   uint64(unsafe.Offsetof(SyncRegs{}.Sregs)),
		"kvm_sync_regs.events":                  uint64(unsafe.Offsetof(SyncRegs{}.Events)),
		"kvm_run.kvm_valid_regs":                runValidRegsOff,
		"kvm_run.kvm_dirty_regs":                runDirtyRegsOff,
		"kvm_run.s":                             runSyncRegsOff,
		"KVM_GET_MSRS":                          uint64(KVM_GET_MSRS),
		"KVM_SET_MSRS":                          uint64(KVM_SET_MSRS),
		"KVM_GET_FPU":                           uint64(KVM_GET_FPU),
		"KVM_SET_FPU":                           uint64(KVM_SET_FPU),
		"KVM_SET_MP_STATE":                      uint64(KVM_SET_MP_STATE),
		"KVM_GET_VCPU_EVENTS":                   uint64(KVM_GET_VCPU_EVENTS),
		"KVM_SET_VCPU_EVENTS":                   uint64(KVM_SET_VCPU_EVENTS),
		"KVM_GET_DEBUGREGS":                     uint64(KVM_GET_DEBUGREGS),
		"KVM_SET_DEBUGREGS":                     uint64(KVM_SET_DEBUGREGS),
		"KVM_GET_XSAVE":                         uint64(KVM_GET_XSAVE),
		"KVM_SET_XSAVE":                         uint64(KVM_SET_XSAVE),
		"KVM_GET_XCRS":                          uint64(KVM_GET_XCRS),
		"KVM_SET_XCRS":                          uint64(KVM_SET_XCRS),
		"KVM_GET_XSAVE2":                        uint64(KVM_GET_XSAVE2),
		"KVM_CAP_VCPU_EVENTS":                   KVM_CAP_VCPU_EVENTS,
		"KVM_CAP_DEBUGREGS":                     KVM_CAP_DEBUGREGS,
		"KVM_CAP_XCRS":                          KVM_CAP_XCRS,
		"KVM_CAP_SYNC_REGS":                     KVM_CAP_SYNC_REGS,
		"KVM_CAP_XSAVE2":                        KVM_CAP_XSAVE2,
		"KVM_SYNC_X86_REGS":                     KVM_SYNC_X86_REGS,
		"KVM_SYNC_X86_SREGS":                    KVM_SYNC_X86_SREGS,
		"KVM_SYNC_X86_EVENTS":                   KVM_SYNC_X86_EVENTS,
		"KVM_MP_STATE_RUNNABLE":                 KVM_MP_STATE_RUNNABLE,
		"kvm_xsave.region":                      uint64(unsafe.Sizeof(XSave{})),
		"kvm_device_attr":                       uint64(unsafe.Sizeof(DeviceAttr{})),
		"kvm_device_attr.attr":                  uint64(unsafe.Offsetof(DeviceAttr{}.Attr)),
		"kvm_device_attr.addr":                  uint64(unsafe.Offsetof(DeviceAttr{}.Addr)),
		"KVM_SET_DEVICE_ATTR":                   uint64(KVM_SET_DEVICE_ATTR),
		"KVM_HAS_DEVICE_ATTR":                   uint64(KVM_HAS_DEVICE_ATTR),
		"KVM_VCPU_TSC_CTRL":                     KVM_VCPU_TSC_CTRL,
		"KVM_VCPU_TSC_OFFSET":                   KVM_VCPU_TSC_OFFSET,
	}
	for name, want := range c {
		got, ok := go_[name]
		if !ok {
			t.Errorf("%s: probed in C but not checked in Go", name)
			continue
		}
		if got != want {
			t.Errorf("%s: Go %d, C %d", name, got, want)
		}
	}
	if len(c) != len(go_) {
		t.Errorf("C probe printed %d values, Go table has %d", len(c), len(go_))
	}
	// The exit union is 256 bytes in C; Run must cover it.
	if got := unsafe.Sizeof(run); got != 32+256 {
		t.Errorf("Run is %d bytes, want 288", got)
	}
}
