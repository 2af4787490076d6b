package hvt

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/dust-run/dust/internal/kvm"
	"github.com/dust-run/dust/internal/machine"
)

// kickSignal interrupts KVM_RUN on a vCPU thread. The Go runtime always
// handles SIGURG (it uses it for preemption), so delivering it makes
// KVM_RUN return EINTR without disturbing the process.
const kickSignal = unix.SIGURG

// Machine is one hvt micro-VM. It serves one request.
type Machine struct {
	im     *Image
	vmfd   int
	vcpufd int
	memPtr unsafe.Pointer
	mem    []byte
	runPtr unsafe.Pointer
	runMap []byte
	run    *kvm.Run

	used   atomic.Bool
	kicked atomic.Bool

	mu      sync.Mutex // guards running/tid against the kicker, and the restore fields
	running bool
	tid     int
	closed  bool

	// Restore (restore.go): requests served since creation minus one,
	// the page-map buffer, what the last restore did, and whether a
	// restore failed half-way.
	runs         int
	pmBuf        []byte
	regions      []pageRegion // PAGEMAP_SCAN output buffer
	found        []pageRegion // written ranges of the last restore
	lastCompared int
	lastCopied   int
	broken       bool
	// lastExited: the last run ended in the guest's EXIT hypercall, so
	// no exception happened (see Reset).
	lastExited bool
	// stopAtReady makes the READY hypercall end the run (the snapshot
	// run, snapshot.go); readyHit says it did.
	stopAtReady, readyHit bool
	// lateServer: in a server's snapshot run, deliver the template
	// connection at the first accept and stop at its first read instead
	// (server.go); templateGiven says it was delivered.
	lateServer, templateGiven bool
	// A Linux program's state at its ready point, kept from the snapshot
	// run (the registers of the threads not running, by tid).
	readyProc    syscaller
	readyTid     int
	readyThreads map[int]*savedThread
	// The vCPU's TSC offset, when the monitor set it (the vDSO's time
	// base, vdso.go).
	tscOffset uint64
	tscKnown  bool
	// stubTSC: the guest's and the host's TSC when the warm-up stub ran.
	stubTSC [2]uint64
	// completed: the last run's pending I/O completion was done
	// (completePending).
	completed   bool
	completeErr error
	// proc: the running request's Linux process; once the run is over
	// only its counts are kept (LinuxCalls), so that an idle restored
	// machine holds none of the last request's files, pipes or buffers.
	proc        syscaller
	lastCalls   int
	lastUnknown map[string]int
}

// Close destroys the VM: kvm_run mapping, vCPU and VM descriptors (the
// kernel frees the VM when the last of them goes), then guest memory.
func (m *Machine) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var errs []error
	if m.proc != nil {
		errs = append(errs, m.proc.Close())
	}
	lap := phaseTimer("close")
	if m.runPtr != nil {
		errs = append(errs, unix.MunmapPtr(m.runPtr, uintptr(len(m.runMap))))
		m.runPtr, m.run = nil, nil
		lap("munmap kvm_run")
	}
	if m.vcpufd >= 0 {
		errs = append(errs, unix.Close(m.vcpufd))
		lap("close vcpu fd")
	}
	if m.vmfd >= 0 {
		errs = append(errs, unix.Close(m.vmfd))
		lap("close vm fd (VM teardown)")
	}
	if m.memPtr != nil {
		errs = append(errs, unix.MunmapPtr(m.memPtr, uintptr(len(m.mem))))
		m.memPtr, m.mem = nil, nil
		lap("munmap guest memory")
	}
	return errors.Join(errs...)
}

// kick stops a running vCPU: immediate_exit makes a KVM_RUN that has not
// started yet return at once, the signal interrupts one that is spinning.
// The thread is signalled only while it is still running this VM.
//
// gen is the life (restore count) the kick was armed in: context.AfterFunc
// runs it on its own goroutine, which may start just as the run ends, and
// a kick that lands after a restore must not stop the next request.
func (m *Machine) kick(gen int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if gen != m.runs {
		return
	}
	m.kicked.Store(true)
	if !m.running {
		return
	}
	m.run.ImmediateExit = 1
	for {
		if err := unix.Tgkill(unix.Getpid(), m.tid, kickSignal); err != unix.EAGAIN {
			return
		}
	}
}

// session is the state of one Run.
type session struct {
	lap    func(string)
	m      *Machine
	ctx    context.Context
	limits machine.Limits
	stdout io.Writer
	stderr io.Writer
	body   io.Reader
	// bodyLeft is what the guest may still read; -1 means unknown (until EOF).
	bodyLeft int64
	res      machine.Result
	// A Linux program's process, and whether one of its writers or its
	// body has already ended the run with an outcome.
	proc  syscaller
	ended bool
	// The running thread of a Linux program and the saved registers of
	// the others (linux.go).
	tid     int
	threads map[int]*savedThread
	// responseDone: a server app closed the request's connection
	// (server.go).
	responseDone bool
}

// Run serves one request on this machine (machine.Machine).
func (m *Machine) Run(ctx context.Context, req *machine.Request, stdout, stderr io.Writer) machine.Result {
	start := time.Now()
	if !m.used.CompareAndSwap(false, true) {
		return machine.Result{Outcome: machine.InternalError, Detail: "machine already used", Cause: errors.New("hvt: a machine serves one request per restore")}
	}
	m.mu.Lock()
	broken, gen := m.broken, m.runs // gen: the life a deadline kick belongs to
	m.mu.Unlock()
	if broken {
		return machine.Result{Outcome: machine.InternalError, Detail: "machine left half-restored", Cause: ErrRestore}
	}
	lap := phaseTimer("run")
	s := &session{lap: lap, m: m, limits: m.im.limits, stdout: stdout, stderr: stderr, body: req.Body, bodyLeft: req.BodyLen}
	if s.body == nil {
		s.body, s.bodyLeft = eofReader{}, 0
	}
	// The deadline covers the whole request, reading the inline body
	// included: a client that announces a body and sends none must not
	// hold the machine past it. The body reader itself must give up when
	// the deadline passes (machine.Request.Body); the kick then finds the
	// loop not yet started and the first check stops it.
	ctx, cancel := context.WithTimeout(ctx, s.limits.Timeout)
	defer cancel()
	s.ctx = ctx
	stop := context.AfterFunc(ctx, func() { m.kick(gen) })
	lap("arm deadline")
	if err := s.place(req); err != nil {
		stop()
		if errors.Is(err, ErrRequestTooLarge) {
			return machine.Result{Outcome: machine.Refused, Detail: err.Error(), Cause: err, RunTime: time.Since(start)}
		}
		if errors.Is(err, errServer) {
			// The program's own state keeps it from taking the request's
			// connection (it holds every socket it may): its failure.
			return machine.Result{Outcome: machine.BadOutput, Detail: err.Error(), Cause: err, RunTime: time.Since(start)}
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			s.end(machine.DeadlineExceeded, fmt.Sprintf("the request body did not arrive within %v", s.limits.Timeout))
		} else {
			s.end(machine.Canceled, "reading the request body")
		}
		s.res.Cause = err
		s.res.RunTime = time.Since(start)
		return s.res
	}
	lap("place request in guest memory")
	run := func() {
		m.mu.Lock()
		m.tid = unix.Gettid()
		m.running = true
		m.mu.Unlock()
		s.loop()
		m.mu.Lock()
		m.running = false
		m.mu.Unlock()
		// Only a machine that may be restored needs it, and its
		// failure only makes the restore fail.
		if !m.stopAtReady {
			m.completeErr = m.completePending()
		}
	}
	var err error
	if seccompOn.Load() {
		err = onWorker(run)
	} else {
		// Without the filter there is no reason to hop threads: the
		// caller's thread runs the vCPU, locked only for the run.
		runtime.LockOSThread()
		run()
		runtime.UnlockOSThread()
	}
	stop()
	if err != nil {
		s.end(machine.InternalError, "no vCPU thread")
		s.res.Cause = err
	}
	if m.proc != nil {
		m.lastCalls, m.lastUnknown = m.proc.Calls(), m.proc.Unknown()
		s.res.Syscalls, s.res.Unsupported = m.lastCalls, m.lastUnknown
		if m.readyHit {
			// The snapshot run: the process at the ready point is the
			// one every request's is copied from (snapshot.go).
			m.readyProc, m.readyTid, m.readyThreads = m.proc, s.tid, s.threads
		} else {
			m.proc.Close()
		}
		m.proc, s.proc = nil, nil
	}

	lap("run on vCPU thread, disarm deadline")
	s.res.RunTime = time.Since(start)
	return s.res
}

type eofReader struct{}

func (eofReader) Read([]byte) (int, error) { return 0, io.EOF }

// place writes the per-request part of guest memory: boot info fields,
// argv/envp and the first body bytes. Copy-on-write means these are the
// first private pages of the machine.
func (s *session) place(req *machine.Request) error {
	if s.m.im.lay.linux {
		return s.placeLinux(req)
	}
	mem := s.m.mem
	inline := int64(inlineBodyMax)
	if s.bodyLeft >= 0 {
		inline = min(inline, s.bodyLeft)
	}
	buf := make([]byte, inline)
	n, err := io.ReadFull(s.body, buf)
	bodyLen := s.bodyLeft
	switch {
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		// A body shorter than announced, or an unknown length that ended
		// here: the guest sees exactly what arrived.
		bodyLen = int64(n)
		s.bodyLeft = 0
	case err != nil:
		return err
	default:
		if s.bodyLeft >= 0 {
			s.bodyLeft -= int64(n)
		}
	}
	buf = buf[:n]
	p, err := encodeRequest(mem[requestBase:requestEnd], req.Args, req.Env, buf)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	bi := mem[bootInfoAddr:]
	le.PutUint64(bi[biRealtimeNs:], uint64(time.Now().UnixNano()))
	le.PutUint64(bi[biArgc:], p.argc)
	le.PutUint64(bi[biArgv:], p.argv)
	le.PutUint64(bi[biEnvp:], p.envp)
	if bodyLen < 0 {
		le.PutUint64(bi[biBodyLen:], ^uint64(0))
	} else {
		le.PutUint64(bi[biBodyLen:], uint64(bodyLen))
	}
	le.PutUint64(bi[biBodyInline:], p.bodyAddr)
	le.PutUint64(bi[biBodyInlineLen:], p.bodySize)
	rand.Read(bi[biRandom : biRandom+32])
	return nil
}

func (s *session) end(o machine.Outcome, detail string) {
	s.res.Outcome = o
	s.res.Detail = detail
}

func (s *session) fault(detail string) {
	s.end(machine.Fault, detail)
	var regs kvm.Regs
	if kvm.GetRegs(s.m.vcpufd, &regs) == nil {
		s.res.RIP, s.res.HasRIP = regs.RIP, true
	}
}

// loop runs the vCPU until the guest exits, faults, or is stopped.
func (s *session) loop() {
	m := s.m
	for {
		if m.kicked.Load() {
			s.stopped()
			return
		}
		err := kvm.RunVCPU(m.vcpufd)
		s.lap("KVM_RUN (guest running)")
		s.res.Exits++
		switch err {
		case nil:
		case unix.EINTR:
			// errno first: exit_reason is stale after EINTR.
			m.run.ImmediateExit = 0
			continue
		case unix.EAGAIN:
			continue
		case unix.EFAULT:
			s.fault("host/guest translation fault")
			return
		default:
			s.res.Outcome, s.res.Detail, s.res.Cause = machine.InternalError, "KVM_RUN failed", err
			return
		}
		switch r := m.run.ExitReason; r {
		case kvm.KVM_EXIT_IO:
			ok := s.io()
			s.lap("hypercall handling")
			if !ok {
				return
			}
		case kvm.KVM_EXIT_SHUTDOWN:
			s.fault("triple fault: the guest raised a CPU exception (bad pointer, illegal instruction, stack overflow...)")
			return
		case kvm.KVM_EXIT_HLT:
			s.fault("the guest halted")
			return
		case kvm.KVM_EXIT_MMIO:
			s.fault(fmt.Sprintf("access to unbacked guest-physical address %#x", m.run.MMIO().PhysAddr))
			return
		case kvm.KVM_EXIT_FAIL_ENTRY:
			s.end(machine.InternalError, fmt.Sprintf("VM entry failed: hardware reason %#x", m.run.FailEntry().HardwareEntryFailureReason))
			return
		case kvm.KVM_EXIT_INTERNAL_ERROR:
			s.fault(fmt.Sprintf("KVM internal error (suberror %d): the guest ran something the hypervisor cannot emulate", m.run.Internal().Suberror))
			return
		case kvm.KVM_EXIT_INTR:
			continue
		default:
			s.end(machine.InternalError, fmt.Sprintf("unexpected KVM exit reason %d", r))
			return
		}
	}
}

func (s *session) stopped() {
	if errors.Is(s.ctx.Err(), context.DeadlineExceeded) {
		s.end(machine.DeadlineExceeded, fmt.Sprintf("still running after %v", s.limits.Timeout))
		return
	}
	s.end(machine.Canceled, "the caller went away")
	s.res.Cause = context.Cause(s.ctx)
}

// io handles one port-I/O exit. It returns false when the run is over.
func (s *session) io() bool {
	m := s.m
	if m.im.lay.linux {
		return s.linuxIO()
	}
	io := m.run.IO()
	if io.Direction != kvm.KVM_EXIT_IO_OUT || io.Size != 4 || io.Count != 1 {
		s.end(machine.BadHypercall, fmt.Sprintf("port access: port %#x direction %d size %d count %d; hypercalls are 32-bit OUTs", io.Port, io.Direction, io.Size, io.Count))
		return false
	}
	off := io.DataOffset
	if off > uint64(len(m.runMap)-4) {
		s.end(machine.InternalError, fmt.Sprintf("kvm_run data offset %#x out of range", off))
		return false
	}
	gpa := uint64(binary.LittleEndian.Uint32(m.runMap[off:]))
	switch io.Port {
	case portBase + hcWrite:
		r, err := decodeWrite(m.mem, gpa)
		if err != nil {
			return s.badCall("WRITE", err)
		}
		return s.write(r.fd, m.mem[r.buf:r.buf+r.len])
	case portBase + hcRead:
		r, err := decodeRead(m.mem, gpa)
		if err != nil {
			return s.badCall("READ", err)
		}
		return s.read(gpa, m.mem[r.buf:r.buf+r.len])
	case portBase + hcReady:
		// The snapshot point: it ends the snapshot run at Prepare; in a
		// request it is already behind the guest and returns at once.
		if m.stopAtReady {
			m.readyHit = true
			s.end(machine.Served, "reached its ready point")
			return false
		}
		return true
	case portBase + hcExit:
		r, err := decodeExit(m.mem, gpa)
		if err != nil {
			return s.badCall("EXIT", err)
		}
		// Pending response bytes leave only on a normal exit: abort() does
		// not flush stdio in C either, and a request that ran out of memory
		// should get a clean failure status rather than a truncated answer.
		if r.reason == exitNormal && r.outLen > 0 && !s.write(fdStdout, m.mem[r.outBuf:r.outBuf+r.outLen]) {
			return false
		}
		if r.errLen > 0 && !s.write(fdStderr, m.mem[r.errBuf:r.errBuf+r.errLen]) {
			return false
		}
		switch r.reason {
		case exitOOM:
			s.end(machine.MemoryLimit, fmt.Sprintf("the guest heap (%d KiB) is exhausted", (m.im.lay.heapEnd-m.im.lay.heapStart)>>10))
		case exitAbort:
			// abort() is the guest saying its answer cannot be trusted:
			// a failure, so that a response already streaming is cut
			// rather than ended cleanly.
			s.end(machine.Fault, "the guest called abort()")
		default:
			s.end(machine.Served, "")
		}
		s.res.ExitStatus = int(r.status)
		m.mu.Lock()
		m.lastExited = true
		m.mu.Unlock()
		return false
	default:
		s.end(machine.BadHypercall, fmt.Sprintf("unknown hypercall port %#x", io.Port))
		return false
	}
}

func (s *session) badCall(name string, err error) bool {
	s.end(machine.BadHypercall, name+": "+err.Error())
	return false
}

// write delivers guest output, enforcing the output and log limits.
func (s *session) write(fd uint64, b []byte) bool {
	if fd == fdStdout {
		if s.res.StdoutBytes+int64(len(b)) > s.limits.MaxOutput {
			s.end(machine.OutputLimit, fmt.Sprintf("response exceeds %d bytes", s.limits.MaxOutput))
			return false
		}
		s.res.StdoutBytes += int64(len(b))
		if _, err := s.stdout.Write(b); err != nil {
			s.end(machine.BadOutput, "writing the response")
			s.res.Cause = err
			return false
		}
		return true
	}
	if s.res.StderrBytes+int64(len(b)) > s.limits.MaxLog {
		s.end(machine.LogLimit, fmt.Sprintf("log output exceeds %d bytes", s.limits.MaxLog))
		return false
	}
	s.res.StderrBytes += int64(len(b))
	if _, err := s.stderr.Write(b); err != nil {
		s.end(machine.BadOutput, "writing the log")
		s.res.Cause = err
		return false
	}
	return true
}

// read fills a guest buffer with the next body bytes and stores the count
// in the argument struct (already validated by decodeRead).
func (s *session) read(gpa uint64, dst []byte) bool {
	if s.bodyLeft >= 0 && int64(len(dst)) > s.bodyLeft {
		dst = dst[:s.bodyLeft]
	}
	n := 0
	if len(dst) > 0 {
		var err error
		n, err = io.ReadAtLeast(s.body, dst, 1)
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			s.bodyLeft = 0
		case err != nil:
			s.end(machine.Canceled, "reading the request body")
			s.res.Cause = err
			return false
		case s.bodyLeft > 0:
			s.bodyLeft -= int64(n)
		}
	}
	binary.LittleEndian.PutUint64(s.m.mem[gpa+16:], uint64(n))
	return true
}
