package hvt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
)

// Warming: why and how.
//
// Under shadow paging (the nested PVM KVM we run on) the first guest access
// to each 4 KiB page costs a fault in the hypervisor, about 17 µs here; a C
// hello touches a dozen pages, which would be most of its request time. So
// at Prepare the monitor runs the app once on a synthetic request in a
// throwaway probe VM and records which pages it touched (from
// /proc/self/pagemap). Every machine then runs a tiny monitor-supplied stub
// before it is handed out: the stub reads each recorded page, and writes
// back the byte it read to each page the probe wrote, so the hypervisor
// builds those mappings (and the host makes its copy-on-write copies) off
// the request path. The stub changes no byte of guest memory; afterwards
// the registers are reset to the ABI entry state, so the app still starts
// exactly as docs/abi.md says. No app code runs in a machine before its
// request.

const (
	warmAddr = 0xF000 // the stub (user read/execute)
	warmList = 0xF400 // zero-terminated page list; bit 0 = write back
	warmMax  = (0x10000-warmList)/8 - 1
	warmPort = portBase + 0xFF // the stub's "done" port; a bad hypercall at any other time
	// probeTimeout bounds the probe run at Prepare: an app that loops
	// forever must not stall a deploy.
	probeTimeout = 250 * time.Millisecond
)

// warmStub is the stub's machine code (assembled from the listing below):
//
//	mov  $0xF400, %esi
//	1: mov (%rsi), %rdi; test %rdi, %rdi; jz 3f
//	   mov %rdi, %rax; and $-2, %rdi; movb (%rdi), %cl
//	   test $1, %al; jz 2f; movb %cl, (%rdi)
//	2: add $8, %rsi; jmp 1b
//	3: rdtsc; shl $32, %rdx; or %rdx, %rax; mov %rax, %rbx   # the TSC as CPL3 reads it
//	   mov $0xD0FF, %edx; xor %eax, %eax; outl %eax, %dx; ud2
var warmStub = []byte{
	0xbe, 0x00, 0xf4, 0x00, 0x00, 0x48, 0x8b, 0x3e, 0x48, 0x85, 0xff, 0x74,
	0x15, 0x48, 0x89, 0xf8, 0x48, 0x83, 0xe7, 0xfe, 0x8a, 0x0f, 0xa8, 0x01,
	0x74, 0x02, 0x88, 0x0f, 0x48, 0x83, 0xc6, 0x08, 0xeb, 0xe3, 0x0f, 0x31,
	0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0, 0x48, 0x89, 0xc3, 0xba, 0xff,
	0xd0, 0x00, 0x00, 0x31, 0xc0, 0xef, 0x0f, 0x0b,
}

// hostPrivatePages are written by the monitor for every request; the
// machine makes its private copies at creation so that writing the request
// later does not invalidate the guest's warmed mappings of them.
const hostPrivateStart, hostPrivateEnd = bootInfoAddr, requestBase + 2*pageSize

// probe runs the app once in a throwaway machine and returns the warm list:
// the pages it touched, each flagged with whether to write it back.
func (im *Image) probe() ([]uint64, error) {
	m, err := im.newMachine()
	if err != nil {
		return nil, err
	}
	defer m.Close()
	req := &machine.Request{
		Args: []string{"/"},
		Env: []string{"GATEWAY_INTERFACE=CGI/1.1", "REQUEST_METHOD=GET", "SCRIPT_NAME=", "PATH_INFO=/",
			"QUERY_STRING=", "SERVER_NAME=localhost", "SERVER_PORT=80", "SERVER_PROTOCOL=HTTP/1.1",
			"SERVER_SOFTWARE=dust", "REMOTE_ADDR=127.0.0.1", "REMOTE_PORT=0", "HTTP_HOST=localhost",
			"HTTP_USER_AGENT=dust-probe", "HTTP_ACCEPT=*/*"},
	}
	if im.server != nil {
		// A server app reads its request from the connection.
		raw := "GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: dust-probe\r\nConnection: close\r\n\r\n"
		req.Body, req.BodyLen = strings.NewReader(raw), -1
	}
	ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
	defer cancel()
	m.Run(ctx, req, io.Discard, io.Discard) // whatever the outcome, the pages it touched are a good guess
	return touchedPages(m.mem, func(addr uint64) uint64 { return im.lay.perm(im.elf, addr) })
}

// touchedPages reads this process's page map for guest memory mem and
// lists the guest pages that are present: a page of the template that is no
// longer the file's page, or any present page of the anonymous part, was
// written.
func touchedPages(mem []byte, perm func(uint64) uint64) ([]uint64, error) {
	f, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	n := len(mem) / pageSize
	buf := make([]byte, 8*n)
	if _, err := f.ReadAt(buf, int64(uintptr(unsafe.Pointer(&mem[0]))/pageSize*8)); err != nil {
		return nil, fmt.Errorf("hvt: reading pagemap: %w", err)
	}
	var list []uint64
	for i := monitorEnd / pageSize; i < n && len(list) < warmMax; i++ {
		e := binary.LittleEndian.Uint64(buf[8*i:])
		const present, fileOrShared = 1 << 63, 1 << 61
		if e&present == 0 {
			continue
		}
		addr := uint64(i) * pageSize
		p := perm(addr)
		if p&pteUS == 0 {
			continue // the stub runs at CPL3: a supervisor page (a Linux guest's syscall stub) would fault it
		}
		if e&fileOrShared == 0 && p == permUserRW {
			addr |= 1
		}
		list = append(list, addr)
	}
	return list, nil
}

var errWarm = errors.New("hvt: warming the machine failed")

// warm runs the stub in a new machine and resets the vCPU to the entry
// state. It also performs the vCPU's first KVM_RUN, which costs more than
// later ones, off the request path.
func (m *Machine) warm() error {
	// MADV_POPULATE_WRITE makes the copy-on-write copies now without
	// changing a byte.
	hpStart, hpEnd := m.im.lay.hostPrivate()
	if err := unix.Madvise(m.mem[hpStart:hpEnd], unix.MADV_POPULATE_WRITE); err != nil {
		return fmt.Errorf("%w: populating request pages: %v", errWarm, err)
	}
	return m.runStub()
}

// runStub runs the warm-up stub (with whatever warm list the template
// has: none before Prepare sets it) and resets the vCPU to the entry
// state. It records in stubTSC the TSC as the guest read it at CPL3 and
// the host's right after the exit (vdso.go): a Linux guest's registers
// come back in kvm_run's sync area, so this costs no ioctl.
func (m *Machine) runStub() error {
	regs := kvm.Regs{RIP: warmAddr, RSP: m.im.lay.stackTop, RFLAGS: 0x3002}
	if err := kvm.SetRegs(m.vcpufd, &regs); err != nil {
		return err
	}
	for {
		err := kvm.RunVCPU(m.vcpufd)
		if err == unix.EINTR || err == unix.EAGAIN {
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: KVM_RUN: %v", errWarm, err)
		}
		break
	}
	host := kvm.HostTSC()
	if r := m.run.ExitReason; r != kvm.KVM_EXIT_IO || m.run.IO().Port != warmPort {
		return fmt.Errorf("%w: exit reason %d", errWarm, r)
	}
	if *m.run.ValidRegs()&kvm.KVM_SYNC_X86_REGS != 0 {
		m.stubTSC = [2]uint64{m.run.Sync().Regs.RBX, host}
	}
	regs = m.im.regs
	return kvm.SetRegs(m.vcpufd, &regs)
}
