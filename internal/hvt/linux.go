package hvt

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/linux"
	"github.com/dust-run/dust/internal/machine"
)

// linuxValidRegs: KVM stores the general and special registers into
// kvm_run at every exit of a Linux guest, so a system call is served
// without a KVM_GET_REGS, and CS tells the privilege level the stub ran at.
const linuxValidRegs = kvm.KVM_SYNC_X86_REGS | kvm.KVM_SYNC_X86_SREGS

// syscaller is what the monitor needs of a Linux process: internal/linux's
// Process.
type syscaller interface {
	Call(nr uint64, args [6]uint64) linux.Result
	Unknown() map[string]int
	Calls() int
	Close() error
}

// newProcess makes a request's process; tests may substitute one.
var newProcess = func(cfg linux.Config, im *Image) syscaller {
	p := linux.New(cfg)
	restrictProcess(p, im)
	return p
}

// wrapClone is the process a request of a snapshotted image runs with;
// tests substitute a wrapper, as they do for newProcess.
var wrapClone = func(p *linux.Process) syscaller { return p }

// restrictProcess tells the process which guest memory its system calls
// may not touch. Config.Mem is all of guest memory from address 0, so
// without this a read() into the stub, or a getrandom() into the page
// tables, would have the monitor rewrite its own pages.
func restrictProcess(p *linux.Process, im *Image) {
	lay := im.lay
	p.Deny(0, linuxStubAddr)                          // GDT, TSS, page tables, warm-up stub
	p.ReadOnly(linuxStubAddr, linuxPhdrAddr+pageSize) // the stub and the program-header copy
	p.Deny(linuxPhdrAddr+pageSize, vdsoDataAddr)      // unmapped
	p.ReadOnly(vdsoDataAddr, vdsoAddr+pageSize)       // the vDSO: a program may write(2) it out, as on Linux
	p.Deny(vdsoAddr+pageSize, imageBase)              // unmapped
	for _, sg := range im.elf.segments {
		if sg.flags&pfW == 0 {
			p.ReadOnly(sg.vaddr&^(pageSize-1), alignUp(sg.vaddr+sg.memsz, pageSize))
		}
	}
	p.Deny(lay.guard, lay.guard+pageSize)
	p.SetStackSize(lay.stackSize)
}

// directReturn makes the monitor always return from a system call to
// CPL3 itself (RIP = RCX, RFLAGS = R11, user CS/SS written through the
// sync area), even where the stub's SYSRETQ could; kept switchable so the
// variants can be measured again (BenchmarkLinuxSyscall).
var directReturn = false

// sysretFlags is what SYSRETQ keeps of R11 in RFLAGS; IOPL is dropped as
// well, so that a program jumping into the stub with a crafted R11 gains
// nothing it could not do with popf.
const sysretFlags = 0x3C7FD7 &^ 0x3000

// argv0 is the program name when a request carries no arguments; a CGI
// request's Args start with the script path (internal/cgi, as WAGI does).
const argv0 = "/app/main"

// placeLinux writes a Linux program's initial stack for this request and
// makes its process. The body is not read here: the program reads it from
// stdin, within the deadline, through read(2).
func (s *session) placeLinux(req *machine.Request) error {
	m := s.m
	if m.im.proc != nil {
		return s.placeSnapshot(req)
	}
	lay := m.im.lay
	args := linuxArgs(req)
	e := &linuxEntry{phdr: m.im.elf.phdrAddr, phnum: m.im.elf.phnum, entry: lay.entry, hwcap: m.im.hwcap}
	if m.vdsoOn() {
		e.vdso = vdsoAddr
	}
	rand.Read(e.random[:])
	// A quarter of the stack for arguments and environment, as Linux
	// allows a quarter of RLIMIT_STACK.
	sp, err := buildStack(m.mem, lay.stackTop, lay.stackTop-lay.stackSize/4, args, req.Env, e)
	if err != nil {
		return err
	}
	// Both a fresh machine (registers set by ioctl) and a restored one
	// (registers pending in the sync area) start from the image's entry
	// registers; only RSP differs per request.
	regs := m.im.regs
	regs.RSP = sp
	m.run.Sync().Regs = regs
	*m.run.DirtyRegs() |= kvm.KVM_SYNC_X86_REGS
	s.proc = newProcess(s.linuxConfig(req, 0), m.im)
	s.tid, s.threads = linuxMainTid, nil
	m.proc = s.proc
	return nil
}

// placeSnapshot starts a request of a program snapshotted at its ready
// point: the registers are the snapshot's (the ready call returning, with
// RAX = the size of the request it reads next), the process and the other
// threads are copies of the snapshot's. Nothing is placed on the stack:
// the program takes its request through linux.SysRequest.
func (s *session) placeSnapshot(req *machine.Request) error {
	m := s.m
	cfg := s.linuxConfig(req, m.im.proc.ReadyAt())
	if len(cfg.Request) > maxRequestBlock {
		return fmt.Errorf("%w: the arguments and environment take %d bytes, at most %d", ErrRequestTooLarge, len(cfg.Request), maxRequestBlock)
	}
	regs := m.im.regs
	if m.im.server == nil {
		// The ready call returns the size of the request to read. A
		// server instead re-executes the wait it was snapshotted in,
		// which the delivered connection now completes.
		regs.RAX = uint64(len(cfg.Request))
	}
	m.run.Sync().Regs = regs
	*m.run.DirtyRegs() |= kvm.KVM_SYNC_X86_REGS
	p := m.im.proc.Clone(cfg)
	if m.im.server != nil {
		if err := s.connect(p, req, m.im.serverLate); err != nil {
			p.Close()
			return err
		}
	}
	s.proc = wrapClone(p)
	s.tid, s.threads = m.im.tid, make(map[int]*savedThread, len(m.im.threads))
	for tid, t := range m.im.threads {
		c := *t
		s.threads[tid] = &c
	}
	m.proc = s.proc
	return nil
}

// maxRequestBlock bounds a snapshotted program's request (arguments and
// environment) as Linux's ARG_MAX bounds what execve takes.
const maxRequestBlock = 2 << 20

// linuxConfig is what a request's Linux process may use; base is its
// CLOCK_MONOTONIC when the run starts (a copy's continues from its
// snapshot's, linux.Process.Clone).
func (s *session) linuxConfig(req *machine.Request, base int64) linux.Config {
	m := s.m
	lay := m.im.lay
	mono, now := s.linuxClock(base)
	ctx := s.ctx
	if m.proc != nil {
		m.proc.Close() // the previous request's, on a restored machine
	}
	cfg := linux.Config{
		Mem:       m.mem,
		HeapStart: lay.heapStart,
		HeapEnd:   lay.heapEnd,
		Stdin:     linuxBody{s},
		StdinLen:  s.bodyLeft,
		Stdout:    linuxWriter{s, fdStdout},
		Stderr:    linuxWriter{s, fdStderr},
		Files:     m.im.files,
		Now:       now,
		Monotonic: mono,
		Random:    func(b []byte) { rand.Read(b) },
		HeapZero:  true, // fresh machines and restores both start from the template
		Sleep: func(d time.Duration) bool {
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
				return true
			case <-ctx.Done():
				return false
			}
		},
	}
	switch {
	case m.im.server != nil:
		// A server's stdout is its log; the response is what it writes
		// to the request's connection.
		cfg.Stdout = linuxWriter{s, fdStderr}
		cfg.ReadyOnAccept = m.stopAtReady
		cfg.GoRuntime = m.im.elf.goRuntime
		cfg.Request = []byte{}
	case !m.stopAtReady:
		// The snapshot run has no request: its ready call ends the run.
		cfg.Request = linux.EncodeRequest(linuxArgs(req), req.Env)
	}
	return cfg
}

func linuxArgs(req *machine.Request) []string {
	if len(req.Args) == 0 {
		return []string{argv0}
	}
	return req.Args
}

// linuxMainTid is the tid internal/linux gives the main thread.
const linuxMainTid = 2

// savedThread is a Linux thread that is not running: its registers as
// they are on return from the system call it is in, and its FS base.
type savedThread struct {
	regs kvm.Regs
	fs   uint64
}

// userReturn is regs as SYSRETQ would leave them: what a thread resumes
// with when the monitor switches back to it.
func userReturn(regs kvm.Regs) kvm.Regs {
	regs.RIP, regs.RFLAGS = regs.RCX, regs.R11&sysretFlags|2
	return regs
}

// threadSwitch applies a Result that names threads: a child clone made
// starts from the caller's return state; a switch saves the caller (unless
// it exited) and loads the next thread's registers, FS base and user
// segments through the sync area, so a switch costs no ioctl beyond the
// KVM_RUN that resumes the guest. The thread count is bounded by
// internal/linux (64), and so is this map.
func (s *session) threadSwitch(r linux.Result, regs *kvm.Regs, sr *kvm.Sregs) {
	if s.threads == nil {
		s.threads = map[int]*savedThread{}
	}
	if c := r.Child; c != nil {
		t := &savedThread{regs: userReturn(*regs), fs: sr.FS.Base}
		t.regs.RAX = 0
		if c.Stack != 0 {
			t.regs.RSP = c.Stack
		}
		if c.SetTLS {
			t.fs = c.TLS
		}
		s.threads[c.Tid] = t
	}
	if r.Next == 0 || r.Next == s.tid {
		return
	}
	if !r.Gone {
		s.threads[s.tid] = &savedThread{regs: userReturn(*regs), fs: sr.FS.Base}
	}
	t := s.threads[r.Next]
	delete(s.threads, r.Next)
	*regs = t.regs
	sr.FS.Base = t.fs
	sr.CS, sr.SS = s.m.im.sregs.CS, s.m.im.sregs.SS
	s.tid = r.Next
}

// errStopped is what a writer returns once a limit or the sink has ended
// the run; the session already holds the outcome.
var errStopped = errors.New("hvt: the run is over")

// linuxWriter is a Linux program's stdout or stderr: the same limits and
// sinks as a Dust guest's WRITE hypercall. A write is delivered whole or
// not at all.
type linuxWriter struct {
	s  *session
	fd uint64
}

func (w linuxWriter) Write(b []byte) (int, error) {
	if !w.s.write(w.fd, b) {
		w.s.ended = true
		return 0, errStopped
	}
	return len(b), nil
}

// linuxBody is the request body as stdin; a failing client ends the run
// as Canceled, as a Dust guest's READ does.
type linuxBody struct{ s *session }

func (r linuxBody) Read(b []byte) (int, error) {
	n, err := r.s.body.Read(b)
	if err != nil && err != io.EOF {
		r.s.end(machine.Canceled, "reading the request body")
		r.s.res.Cause = err
		r.s.ended = true
	}
	return n, err
}

// linuxIO serves one exit of a Linux guest: only the stub's OUT is a
// system call. The same OUT from the program's own code (which it may
// execute: the TSS bitmap allows every port) has its RIP elsewhere and is
// refused. The stub page is user-executable, because under PVM SYSCALL
// reaches it at CPL3 (linuxabi.go); a program that jumps there itself
// instead of executing SYSCALL makes a system call with RCX and R11 of its
// choice, which is no more than SYSCALL followed by a jump.
func (s *session) linuxIO() bool {
	m := s.m
	io := m.run.IO()
	regs := &m.run.Sync().Regs
	// KVM reports RIP at the OUT when it completes it on the next entry,
	// after it when it emulated it (PVM): both are the stub.
	fromStub := regs.RIP == linuxStubAddr || regs.RIP == linuxStubAddr+2
	if io.Port != linuxSyscallPort || io.Direction != kvm.KVM_EXIT_IO_OUT || io.Size != 1 || io.Count != 1 || !fromStub {
		hint := ""
		if io.Port >= portBase && io.Port <= portBase+0xFF {
			hint = " (a libdust program without its Dust ABI note?)"
		}
		s.end(machine.BadHypercall, fmt.Sprintf("port access %#x (size %d) at RIP %#x: a Linux program reaches the monitor only through SYSCALL%s", io.Port, io.Size, regs.RIP, hint))
		return false
	}
	r := s.proc.Call(regs.RAX, [6]uint64{regs.RDI, regs.RSI, regs.RDX, regs.R10, regs.R8, regs.R9})
	if s.responseDone && r.Action != linux.ActionStop {
		// A server app closed the request's connection (or shut it for
		// writing): the response is complete and the request served,
		// whatever the program would do next (Go's net/http may linger
		// half a second before closing a connection whose request body it
		// did not read). The machine is restored before any other use.
		s.end(machine.Served, "")
		m.mu.Lock()
		m.lastExited = true
		m.mu.Unlock()
		return false
	}
	switch r.Action {
	case linux.ActionExit:
		s.end(machine.Served, "")
		s.res.ExitStatus = r.Status
		m.mu.Lock()
		m.lastExited = true // no exception: as after a Dust guest's EXIT (see Reset)
		m.mu.Unlock()
		return false
	case linux.ActionStop:
		s.linuxStop(r.Err)
		return false
	case linux.ActionIdle:
		// A server app closed the request's connection and waits for the
		// next one: the request is served.
		s.end(machine.Served, "")
		m.mu.Lock()
		m.lastExited = true // no exception, as after an exit
		m.mu.Unlock()
		return false
	case linux.ActionReady:
		if !m.stopAtReady {
			s.end(machine.InternalError, "the program reached a ready point outside the snapshot run")
			return false
		}
		if m.lateServer && !m.templateGiven {
			// A server's first accept: give it the template connection
			// and let it go on to its first read of it (server.go).
			if err := s.giveTemplate(); err != nil {
				// No post-accept snapshot then (snapshot.go falls back).
				m.templateGiven = true
				s.end(machine.BadOutput, err.Error())
				return false
			}
			return s.linuxReturn(r, regs)
		}
		// The ready point: the call returns as any other (so the state
		// captured is the thread resuming after it), and the run ends.
		// snapshot.go completes the return without running the guest.
		m.readyHit = true
		s.end(machine.Served, "reached its ready point")
		s.linuxReturn(r, regs)
		return false
	}
	return s.linuxReturn(r, regs)
}

// linuxReturn makes the guest return from the system call it is in with
// r's result, switching threads if r says so.
func (s *session) linuxReturn(r linux.Result, regs *kvm.Regs) bool {
	m := s.m
	dirty := uint64(kvm.KVM_SYNC_X86_REGS)
	sr := &m.run.Sync().Sregs
	if r.SetFS {
		// Once per thread (arch_prctl(ARCH_SET_FS) at start-up).
		sr.FS.Base = r.FSBase
		dirty |= kvm.KVM_SYNC_X86_SREGS
	}
	if r.Child != nil || r.Next != 0 && r.Next != s.tid {
		if _, ok := s.threads[r.Next]; r.Next != 0 && r.Next != s.tid && !ok && (r.Child == nil || r.Child.Tid != r.Next) {
			s.end(machine.InternalError, fmt.Sprintf("switch to thread %d, whose registers the monitor does not have", r.Next))
			return false
		}
		s.threadSwitch(r, regs, sr)
		if r.Next != 0 {
			regs.RAX = r.Ret
			if r.Restart {
				regs.RIP -= 2 // back onto the SYSCALL instruction
			}
			*m.run.DirtyRegs() = dirty | kvm.KVM_SYNC_X86_SREGS
			return true
		}
	}
	regs.RAX = r.Ret
	if r.Restart {
		regs.RCX -= 2 // every return path below resumes at RCX
	}
	switch {
	case directReturn:
		regs.RIP, regs.RFLAGS = regs.RCX, regs.R11&sysretFlags|2
		sr.CS, sr.SS = m.im.sregs.CS, m.im.sregs.SS
		dirty |= kvm.KVM_SYNC_X86_SREGS
	case sr.CS.DPL == 0:
		// Hardware KVM: SYSCALL entered CPL0, and the stub's SYSRETQ,
		// one native instruction, returns.
	default:
		// PVM (nested KVM here) delivers a SYSCALL of a guest that is
		// not PVM-aware by jumping to LSTAR without leaving CPL3, where
		// SYSRETQ would #GP: the monitor returns instead, through the
		// general registers only.
		regs.RIP, regs.RFLAGS = regs.RCX, regs.R11&sysretFlags|2
	}
	*m.run.DirtyRegs() = dirty
	return true
}

// linuxStop ends a run that a system call could not complete.
func (s *session) linuxStop(err error) {
	switch {
	case s.ended:
		// A writer or the body already said why.
	case s.ctx.Err() != nil:
		s.stopped()
	case errors.Is(err, context.DeadlineExceeded):
		s.end(machine.DeadlineExceeded, fmt.Sprintf("still running after %v", s.limits.Timeout))
	case errors.Is(err, context.Canceled):
		s.end(machine.Canceled, "the caller went away")
		s.res.Cause = err
	default:
		s.end(machine.BadOutput, fmt.Sprintf("a system call could not be served: %v", err))
		s.res.Cause = err
	}
}

// LinuxCalls reports the system calls the last request's Linux program
// made, and those answered ENOSYS or EPERM by name; zero and nil for a
// Dust guest.
func (m *Machine) LinuxCalls() (calls int, unknown map[string]int) {
	return m.lastCalls, m.lastUnknown
}
