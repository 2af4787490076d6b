// Package kvm is a thin, pure-Go layer over the Linux KVM API (/dev/kvm):
// the ioctls, structures and constants Dust needs, named as in the kernel's
// <linux/kvm.h> and <asm/kvm.h>. It makes no policy decisions; the monitor in
// internal/hvt does.
//
// Every structure here mirrors its C layout exactly; layout_test.go checks
// sizes and offsets against the kernel headers with the host C compiler.
package kvm

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// APIVersion is the only KVM API version that has ever shipped.
const APIVersion = 12

const kvmio = 0xAE

// ioctl number encoding from <asm-generic/ioctl.h>.
const (
	iocNone  = 0
	iocWrite = 1
	iocRead  = 2
)

func ioc(dir, nr, size uintptr) uintptr {
	return dir<<30 | size<<16 | kvmio<<8 | nr
}

// ioctl numbers, as in <linux/kvm.h>.
var (
	KVM_GET_API_VERSION        = ioc(iocNone, 0x00, 0)
	KVM_CREATE_VM              = ioc(iocNone, 0x01, 0)
	KVM_CHECK_EXTENSION        = ioc(iocNone, 0x03, 0)
	KVM_GET_VCPU_MMAP_SIZE     = ioc(iocNone, 0x04, 0)
	KVM_GET_SUPPORTED_CPUID    = ioc(iocRead|iocWrite, 0x05, unsafe.Sizeof(CPUID2{}))
	KVM_CREATE_VCPU            = ioc(iocNone, 0x41, 0)
	KVM_SET_USER_MEMORY_REGION = ioc(iocWrite, 0x46, unsafe.Sizeof(UserspaceMemoryRegion{}))
	KVM_RUN                    = ioc(iocNone, 0x80, 0)
	KVM_GET_REGS               = ioc(iocRead, 0x81, unsafe.Sizeof(Regs{}))
	KVM_SET_REGS               = ioc(iocWrite, 0x82, unsafe.Sizeof(Regs{}))
	KVM_GET_SREGS              = ioc(iocRead, 0x83, unsafe.Sizeof(Sregs{}))
	KVM_SET_SREGS              = ioc(iocWrite, 0x84, unsafe.Sizeof(Sregs{}))
	KVM_SET_CPUID2             = ioc(iocWrite, 0x90, unsafe.Sizeof(CPUID2{}))
	KVM_GET_TSC_KHZ            = ioc(iocNone, 0xa3, 0)
)

// Capabilities for KVM_CHECK_EXTENSION.
const (
	KVM_CAP_USER_MEMORY    = 3
	KVM_CAP_GET_TSC_KHZ    = 61
	KVM_CAP_IMMEDIATE_EXIT = 136
)

// Exit reasons (kvm_run.exit_reason).
const (
	KVM_EXIT_UNKNOWN         = 0
	KVM_EXIT_EXCEPTION       = 1
	KVM_EXIT_IO              = 2
	KVM_EXIT_HYPERCALL       = 3
	KVM_EXIT_DEBUG           = 4
	KVM_EXIT_HLT             = 5
	KVM_EXIT_MMIO            = 6
	KVM_EXIT_IRQ_WINDOW_OPEN = 7
	KVM_EXIT_SHUTDOWN        = 8
	KVM_EXIT_FAIL_ENTRY      = 9
	KVM_EXIT_INTR            = 10
	KVM_EXIT_INTERNAL_ERROR  = 17
	KVM_EXIT_SYSTEM_EVENT    = 24
)

// Port I/O directions (kvm_run.io.direction).
const (
	KVM_EXIT_IO_IN  = 0
	KVM_EXIT_IO_OUT = 1
)

// ErrUnavailable reports that /dev/kvm cannot be used on this host.
var ErrUnavailable = errors.New("kvm: /dev/kvm unavailable")

// System is an open /dev/kvm. One per process is enough: VMs are created
// from it and it holds no per-VM state.
type System struct {
	fd      int
	runSize int
	cpuidMu sync.Mutex
	cpuid   []byte // KVM_GET_SUPPORTED_CPUID result, ready for KVM_SET_CPUID2
}

var (
	sysOnce sync.Once
	sysVal  *System
	sysErr  error
)

// Open returns the process-wide KVM system handle, opening /dev/kvm on first
// use and checking the API version and the capabilities Dust relies on.
func Open() (*System, error) {
	sysOnce.Do(func() { sysVal, sysErr = open("/dev/kvm") })
	return sysVal, sysErr
}

func open(path string) (*System, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: open %s: %v", ErrUnavailable, path, err)
	}
	s := &System{fd: fd}
	v, err := ioctl(fd, KVM_GET_API_VERSION, 0)
	if err != nil || v != APIVersion {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: API version %d (err %v), want %d", ErrUnavailable, v, err, APIVersion)
	}
	for _, c := range []uintptr{KVM_CAP_USER_MEMORY, KVM_CAP_IMMEDIATE_EXIT} {
		if ok, _ := ioctl(fd, KVM_CHECK_EXTENSION, c); ok <= 0 {
			unix.Close(fd)
			return nil, fmt.Errorf("%w: missing capability %d", ErrUnavailable, c)
		}
	}
	n, err := ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: KVM_GET_VCPU_MMAP_SIZE: %v", ErrUnavailable, err)
	}
	if n < int(unsafe.Sizeof(Run{})) {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: vcpu mmap size %d smaller than kvm_run", ErrUnavailable, n)
	}
	s.runSize = n
	return s, nil
}

// Available reports whether KVM can be used here, with the reason if not.
func Available() error {
	_, err := Open()
	return err
}

// RunSize is the size of the per-vCPU shared kvm_run mapping.
func (s *System) RunSize() int { return s.runSize }

// CheckExtension returns KVM_CHECK_EXTENSION for cap.
func (s *System) CheckExtension(cap uintptr) int {
	n, err := ioctl(s.fd, KVM_CHECK_EXTENSION, cap)
	if err != nil {
		return 0
	}
	return n
}

// SupportedCPUID returns the host's KVM_GET_SUPPORTED_CPUID list encoded as
// a struct kvm_cpuid2, cached after the first call. Callers must not modify it.
func (s *System) SupportedCPUID() ([]byte, error) {
	s.cpuidMu.Lock()
	defer s.cpuidMu.Unlock()
	if s.cpuid != nil {
		return s.cpuid, nil
	}
	// The kernel answers E2BIG when nent is too small; grow until it fits.
	for nent := 64; nent <= 4096; nent *= 2 {
		hdr := int(unsafe.Sizeof(CPUID2{}))
		buf := make([]byte, hdr+nent*int(unsafe.Sizeof(CPUIDEntry2{})))
		(*CPUID2)(unsafe.Pointer(&buf[0])).Nent = uint32(nent)
		_, err := ioctl(s.fd, KVM_GET_SUPPORTED_CPUID, uintptr(unsafe.Pointer(&buf[0])))
		if err == unix.E2BIG {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: %w", err)
		}
		got := (*CPUID2)(unsafe.Pointer(&buf[0])).Nent
		s.cpuid = buf[:hdr+int(got)*int(unsafe.Sizeof(CPUIDEntry2{}))]
		return s.cpuid, nil
	}
	return nil, fmt.Errorf("kvm: KVM_GET_SUPPORTED_CPUID: more than 4096 entries")
}

// CreateVM issues KVM_CREATE_VM and returns the VM file descriptor
// (close-on-exec, as the kernel creates it).
func (s *System) CreateVM() (int, error) {
	fd, err := ioctl(s.fd, KVM_CREATE_VM, 0)
	if err != nil {
		return -1, fmt.Errorf("kvm: KVM_CREATE_VM: %w", err)
	}
	return fd, nil
}

// SetUserMemoryRegion registers host memory as guest-physical memory.
func SetUserMemoryRegion(vmfd int, r *UserspaceMemoryRegion) error {
	if _, err := ioctl(vmfd, KVM_SET_USER_MEMORY_REGION, uintptr(unsafe.Pointer(r))); err != nil {
		return fmt.Errorf("kvm: KVM_SET_USER_MEMORY_REGION: %w", err)
	}
	return nil
}

// CreateVCPU issues KVM_CREATE_VCPU.
func CreateVCPU(vmfd int, id int) (int, error) {
	fd, err := ioctl(vmfd, KVM_CREATE_VCPU, uintptr(id))
	if err != nil {
		return -1, fmt.Errorf("kvm: KVM_CREATE_VCPU: %w", err)
	}
	return fd, nil
}

// SetCPUID2 issues KVM_SET_CPUID2 with an encoded struct kvm_cpuid2.
func SetCPUID2(vcpufd int, cpuid []byte) error {
	if _, err := ioctl(vcpufd, KVM_SET_CPUID2, uintptr(unsafe.Pointer(&cpuid[0]))); err != nil {
		return fmt.Errorf("kvm: KVM_SET_CPUID2: %w", err)
	}
	return nil
}

// GetRegs issues KVM_GET_REGS.
func GetRegs(vcpufd int, r *Regs) error {
	if _, err := ioctl(vcpufd, KVM_GET_REGS, uintptr(unsafe.Pointer(r))); err != nil {
		return fmt.Errorf("kvm: KVM_GET_REGS: %w", err)
	}
	return nil
}

// SetRegs issues KVM_SET_REGS.
func SetRegs(vcpufd int, r *Regs) error {
	if _, err := ioctl(vcpufd, KVM_SET_REGS, uintptr(unsafe.Pointer(r))); err != nil {
		return fmt.Errorf("kvm: KVM_SET_REGS: %w", err)
	}
	return nil
}

// GetSregs issues KVM_GET_SREGS.
func GetSregs(vcpufd int, r *Sregs) error {
	if _, err := ioctl(vcpufd, KVM_GET_SREGS, uintptr(unsafe.Pointer(r))); err != nil {
		return fmt.Errorf("kvm: KVM_GET_SREGS: %w", err)
	}
	return nil
}

// SetSregs issues KVM_SET_SREGS.
func SetSregs(vcpufd int, r *Sregs) error {
	if _, err := ioctl(vcpufd, KVM_SET_SREGS, uintptr(unsafe.Pointer(r))); err != nil {
		return fmt.Errorf("kvm: KVM_SET_SREGS: %w", err)
	}
	return nil
}

// GetTSCKHz issues KVM_GET_TSC_KHZ on a vCPU.
func GetTSCKHz(vcpufd int) (uint64, error) {
	n, err := ioctl(vcpufd, KVM_GET_TSC_KHZ, 0)
	if err != nil {
		return 0, fmt.Errorf("kvm: KVM_GET_TSC_KHZ: %w", err)
	}
	return uint64(n), nil
}

// RunVCPU issues one KVM_RUN. It must go through unix.Syscall, never
// RawSyscall: the Go scheduler has to see the thread enter a syscall, or a
// stop-the-world keeps signalling it and KVM_RUN spins on EINTR.
func RunVCPU(vcpufd int) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(vcpufd), KVM_RUN, 0)
	if e != 0 {
		return e
	}
	return nil
}

// ioctl issues a KVM ioctl other than KVM_RUN, retrying when a signal
// (the Go runtime's preemption signal, a vCPU kick) interrupts it: KVM
// set-up ioctls such as KVM_CREATE_VM may return EINTR and are safe to redo.
func ioctl(fd int, req, arg uintptr) (int, error) {
	for {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, arg)
		switch e {
		case 0:
			return int(r), nil
		case unix.EINTR:
			continue
		}
		return int(r), e
	}
}
