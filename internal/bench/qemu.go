package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
)

// qemuGuestSource is the smallest guest QEMU can boot directly: a 32-bit
// ELF with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY = 18), so no
// firmware, bootloader or kernel runs. It writes "ok\n" to the serial port
// and leaves through isa-debug-exit (QEMU exits with status 0x31<<1|1 = 99);
// everything measured besides those few instructions is the VMM.
const qemuGuestSource = `
	.section .note.pvh, "a", @note
	.balign 4
	.long 4, 4, 18
	.asciz "Xen"
	.long _start
	.text
	.code32
	.globl _start
_start:
	mov $0x3f8, %dx
	mov $'o', %al
	out %al, %dx
	mov $'k', %al
	out %al, %dx
	mov $'\n', %al
	out %al, %dx
	mov $0x31, %al
	out %al, $0xf4
1:	hlt
	jmp 1b
`

const qemuExitStatus = 0x31<<1 | 1

func buildQEMUGuest(dir string) (string, error) {
	src := filepath.Join(dir, "qemu-guest.S")
	obj := filepath.Join(dir, "qemu-guest.o")
	elf := filepath.Join(dir, "qemu-guest.elf")
	if err := os.WriteFile(src, []byte(qemuGuestSource), 0o644); err != nil {
		return "", err
	}
	for _, c := range [][]string{
		{"as", "--32", "-o", obj, src},
		// Note and code in the first MiB above the legacy hole, inside
		// the guest's 16 MiB.
		{"ld", "-m", "elf_i386", "-nostdlib", "-Ttext=0x100000", "--section-start=.note.pvh=0x100800", "-e", "_start", "-o", elf, obj},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("building the QEMU guest: %s: %v: %s", c[0], err, out)
		}
	}
	return elf, nil
}

// qemuBinary finds Debian's qemu-system-x86_64.
func qemuBinary() (string, error) {
	p, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return "", errors.New("qemu-system-x86_64 not installed (bench/setup.sh, or: apt-get install qemu-system-x86)")
	}
	return p, nil
}

// qemuCPUs are the -cpu models tried in order; the first that boots the
// guest is used for every request.
//
// Plain "host" aborts QEMU 7.2 on AMD hosts whose KVM lists
// IA32_ARCH_CAPABILITIES (MSR 0x10a) as a feature MSR but refuses the
// value QEMU copies from it ("failed to set MSR 0x10a", seen nested under
// PVM; "max" fails the same way). Turning the CPUID bit off
// (CPUID.7.0:EDX[29]) makes QEMU clear the whole MSR feature word before
// vCPU init (its feature_dependencies table, applied for every vendor),
// so it writes 0, which KVM accepts. On Intel the bit is real and the
// guest then simply does not see the MSR; our guest reads no MSR at all,
// so the spelling is harmless there. "host" stays as the fallback for a
// QEMU too old to know the flag name.
var qemuCPUs = []string{"host,-arch-capabilities", "host"}

// qemuArgs strips the microvm machine to what the guest needs: no option
// ROMs, no legacy timers or interrupt controllers, one serial port, the
// debug-exit device, KVM.
func qemuArgs(guest, cpu string) []string {
	return []string{
		"-nodefaults", "-no-user-config", "-display", "none",
		"-M", "microvm,x-option-roms=off,rtc=off,pic=off,pit=off,isa-serial=on",
		"-accel", "kvm", "-cpu", cpu, "-m", "16M", "-smp", "1",
		"-kernel", guest, "-serial", "stdio",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=1", "-no-reboot",
	}
}

// qemuCPU returns the first of qemuCPUs with which the guest boots, or
// every model's error.
func qemuCPU(ctx context.Context, bin, guest string) (string, error) {
	var errs []error
	for _, cpu := range qemuCPUs {
		err := runQEMU(ctx, bin, guest, cpu)
		if err == nil {
			return cpu, nil
		}
		errs = append(errs, fmt.Errorf("-cpu %s: %w", cpu, err))
	}
	return "", errors.Join(errs...)
}

// runQEMU boots the guest once: process start to exit.
func runQEMU(ctx context.Context, bin, guest, cpu string) error {
	cmd := exec.CommandContext(ctx, bin, qemuArgs(guest, cpu)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != qemuExitStatus || !bytes.Contains(out.Bytes(), []byte("ok")) {
		return fmt.Errorf("qemu microvm: %v (want exit status %d), stdout %q, stderr %q", err, qemuExitStatus, out.Bytes(), errb.Bytes())
	}
	return nil
}
