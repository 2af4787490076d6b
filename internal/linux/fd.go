package linux

import (
	"errors"
	"fmt"
	"io"
	"io/fs"

	"golang.org/x/sys/unix"
)

// ofile is an open file description: what dup'd descriptors share (the
// offset and the status flags).
type ofile struct {
	n     node
	flags int // O_ACCMODE, O_PATH and the status flags
	off   int64
	refs  int
	ino   uint64 // anonymous objects

	app   fs.File
	appRA io.ReaderAt
	data  []byte // an app file that is not an io.ReaderAt, read whole

	pipe *pipe
	ev   *eventfd
	ep   *epoll
	sock *socket
}

type fdesc struct {
	f       *ofile
	cloexec bool
}

const statusFlags = unix.O_APPEND | unix.O_NONBLOCK | unix.O_ASYNC | unix.O_DIRECT | unix.O_NOATIME | unix.O_SYNC | unix.O_DSYNC

// oLargefile is what F_GETFL shows on x86-64 (unix.O_LARGEFILE is 0 there
// because 64-bit opens never need it, but the kernel sets it anyway).
const oLargefile = 0x8000

func (p *Process) newOfile(n node, flags int) *ofile {
	f := &ofile{n: n, flags: flags, refs: 1}
	if n.kind == kTmp {
		n.tmp.opens++
	}
	if n.kind >= kStdin {
		p.st.inoSeq++
		f.ino = p.st.inoSeq
	}
	return f
}

func (p *Process) release(f *ofile) {
	if f.refs--; f.refs > 0 {
		return
	}
	switch {
	case f.app != nil:
		f.app.Close()
	case f.n.kind == kTmp:
		f.n.tmp.opens--
		p.tmpMaybeFree(f.n.tmp)
	case f.sock != nil:
		p.sockClose(f.sock)
	case f.pipe != nil:
		p.ioChanged() // a reader sees EOF, a writer EPIPE
		if f.flags&unix.O_ACCMODE == unix.O_RDONLY {
			f.pipe.readers--
		} else {
			f.pipe.writers--
		}
	}
}

func (p *Process) file(fd int32) (*ofile, unix.Errno) {
	if fd < 0 || int(fd) >= len(p.st.fds) || p.st.fds[fd] == nil {
		return nil, unix.EBADF
	}
	return p.st.fds[fd].f, 0
}

// install gives f the lowest free descriptor >= min. On failure f is
// released: the caller's reference is the one installed.
func (p *Process) install(f *ofile, min int, cloexec bool) (int, unix.Errno) {
	limit := int(min64(p.st.rlim[unix.RLIMIT_NOFILE].cur, maxFDs))
	fd := min
	for fd < len(p.st.fds) && p.st.fds[fd] != nil {
		fd++
	}
	if fd >= limit {
		p.release(f)
		return -1, unix.EMFILE
	}
	for fd >= len(p.st.fds) {
		p.st.fds = append(p.st.fds, nil)
	}
	p.st.fds[fd] = &fdesc{f: f, cloexec: cloexec}
	return fd, 0
}

func min64(a, b uint64) uint64 { return min(a, b) }

func (p *Process) closeFD(fd int) bool {
	if fd < 0 || fd >= len(p.st.fds) || p.st.fds[fd] == nil {
		return false
	}
	p.release(p.st.fds[fd].f)
	p.st.fds[fd] = nil
	return true
}

func canRead(f *ofile) bool {
	return f.flags&unix.O_PATH == 0 && f.flags&unix.O_ACCMODE != unix.O_WRONLY
}

func canWrite(f *ofile) bool {
	return f.flags&unix.O_PATH == 0 && f.flags&unix.O_ACCMODE != unix.O_RDONLY
}

func seekable(f *ofile) bool {
	switch f.n.kind {
	case kStdin, kStdout, kStderr, kPipe, kEvent, kEpoll, kSock:
		return false
	}
	return true
}

// readAt reads a regular file (app or /tmp) at off; 0 at or past EOF.
func (p *Process) readAt(f *ofile, b []byte, off int64) (int, error) {
	if f.n.kind == kTmp {
		d := f.n.tmp.data
		if off >= int64(len(d)) {
			return 0, nil
		}
		return copy(b, d[off:]), nil
	}
	if f.appRA == nil && f.data == nil {
		if err := p.openApp(f); err != nil {
			return 0, err
		}
	}
	if f.appRA == nil {
		if off >= int64(len(f.data)) {
			return 0, nil
		}
		return copy(b, f.data[off:]), nil
	}
	n, err := f.appRA.ReadAt(b, off)
	if err != nil && err != io.EOF {
		return n, unix.EIO
	}
	return n, nil
}

// openApp opens an app file's host side on first use, so that opening and
// stat-ing many files costs no host file handles.
func (p *Process) openApp(f *ofile) error {
	h, err := p.cfg.Files.Open(appName(f.n.path))
	if err != nil {
		return unix.EIO
	}
	if ra, ok := h.(io.ReaderAt); ok {
		f.app, f.appRA = h, ra
		return nil
	}
	// Trusted, operator-provided files: reading one whole is bounded by
	// what the app was deployed with.
	d, err := io.ReadAll(h)
	h.Close()
	if err != nil {
		return unix.EIO
	}
	if d == nil {
		d = []byte{}
	}
	f.data = d
	return nil
}

// read serves read, readv and pread (pos) on f.
func (p *Process) read(f *ofile, b []byte, off int64, pos bool) (int, error) {
	if !canRead(f) {
		return 0, unix.EBADF
	}
	if pos && !seekable(f) {
		return 0, unix.ESPIPE
	}
	if !pos {
		off = f.off
	}
	switch f.n.kind {
	case kRoot, kDevDir, kAppDir:
		return 0, unix.EISDIR
	case kDev:
		switch f.n.dev {
		case devNull:
			return 0, nil
		case devZero:
			clear(b)
		default:
			p.cfg.Random(b)
		}
		return len(b), nil
	case kStdin:
		return p.readStdin(b)
	case kPipe:
		return p.pipeRead(f, b)
	case kEvent:
		return p.eventRead(f, b)
	case kEpoll, kSock:
		// Socket transfers are served by net.go, which the table routes
		// them to; nothing else reads one.
		return 0, unix.EINVAL
	case kTmp:
		if f.n.tmp.dir {
			return 0, unix.EISDIR
		}
	}
	n, err := p.readAt(f, b, off)
	if !pos {
		f.off += int64(n)
	}
	return n, err
}

func (p *Process) readStdin(b []byte) (int, error) {
	if p.st.stdinEOF {
		return 0, nil
	}
	if p.st.stdinLeft >= 0 && int64(len(b)) > p.st.stdinLeft {
		b = b[:p.st.stdinLeft]
	}
	if len(b) == 0 {
		return 0, nil
	}
	// An io.Reader may return 0, nil; a few retries tell that apart from
	// one that will never produce anything (then: end of body).
	for range 100 {
		n, err := p.cfg.Stdin.Read(b)
		if n > len(b) || n < 0 {
			return 0, fmt.Errorf("reading the request body: reader returned %d for %d bytes", n, len(b))
		}
		if p.st.stdinLeft >= 0 {
			p.st.stdinLeft -= int64(n)
		}
		switch {
		case errors.Is(err, io.EOF):
			p.st.stdinEOF = true
			return n, nil
		case err != nil && n == 0:
			return 0, fmt.Errorf("reading the request body: %w", err)
		case n > 0:
			return n, nil
		}
	}
	p.st.stdinEOF = true
	return 0, nil
}

// write serves write, writev and pwrite (pos) on f.
func (p *Process) write(f *ofile, b []byte, off int64, pos bool) (int, error) {
	if !canWrite(f) {
		return 0, unix.EBADF
	}
	if pos && !seekable(f) {
		return 0, unix.ESPIPE
	}
	switch f.n.kind {
	case kStdout, kStderr:
		w, what := p.cfg.Stdout, "stdout"
		if f.n.kind == kStderr {
			w, what = p.cfg.Stderr, "stderr"
		}
		if len(b) == 0 {
			return 0, nil
		}
		n, err := w.Write(b)
		if err != nil {
			return n, fmt.Errorf("write to %s: %w", what, err)
		}
		return n, nil
	case kDev:
		return len(b), nil
	case kPipe:
		return p.pipeWrite(f, b)
	case kEvent:
		return p.eventWrite(f, b)
	case kEpoll, kSock:
		return 0, unix.EINVAL
	case kTmp:
		if f.n.tmp.dir {
			return 0, unix.EISDIR
		}
	default:
		return 0, unix.EBADF
	}
	t := f.n.tmp
	if !pos {
		off = f.off
	}
	if f.flags&unix.O_APPEND != 0 {
		off = int64(len(t.data))
	}
	if len(b) == 0 {
		return 0, nil
	}
	if off > tmpMaxBytes {
		return 0, unix.ENOSPC
	}
	// As a full disk does: write what fits, ENOSPC when nothing does.
	end := off + int64(len(b))
	if room := int64(len(t.data)) + tmpMaxBytes - p.st.tmp.bytes; end > room {
		end = max(room, off)
	}
	if end == off {
		return 0, unix.ENOSPC
	}
	if end > int64(len(t.data)) {
		if e := p.tmpResize(t, end); e != 0 {
			return 0, e
		}
	}
	n := copy(t.data[off:end], b)
	t.mtime = p.now()
	if !pos {
		f.off = off + int64(n)
	}
	return n, nil
}

// pipe is an in-process pipe. A blocking read of an empty one (or write to
// a full one) waits for another thread (errBlockForever).
type pipe struct {
	buf              []byte
	readers, writers int
}

const pipeCap = 64 << 10

// Kernel objects a process may hold at once. Their buffers are host
// memory, so they are bounded per process rather than per descriptor:
// 64 pipes hold at most 4 MiB, 16 epoll instances 16 × 1024 registrations.
const (
	maxPipes  = 64
	maxEpolls = 16
)

// live counts the distinct open objects for which is reports true.
func (p *Process) live(is func(*ofile) bool) int {
	seen := map[*ofile]bool{}
	for _, d := range p.st.fds {
		if d != nil && is(d.f) {
			seen[d.f] = true
		}
	}
	return len(seen)
}

// errBlockForever: a blocking transfer on a pipe, eventfd or socket that
// cannot proceed now. With other threads the caller waits for a change and
// retries (Process.call); alone, or when every thread waits, nothing can
// ever fill or drain it, and the run ends.
var errBlockForever = errors.New("blocked on a pipe, eventfd or socket that nothing can ever fill or drain")

func (p *Process) pipeRead(f *ofile, b []byte) (int, error) {
	q := f.pipe
	if len(b) == 0 {
		return 0, nil
	}
	if len(q.buf) == 0 {
		switch {
		case q.writers == 0:
			return 0, nil
		case f.flags&unix.O_NONBLOCK != 0:
			return 0, unix.EAGAIN
		}
		return 0, errBlockForever
	}
	n := copy(b, q.buf)
	p.ioChanged()
	q.buf = q.buf[n:]
	if len(q.buf) == 0 {
		q.buf = nil
	}
	return n, nil
}

func (p *Process) pipeWrite(f *ofile, b []byte) (int, error) {
	q := f.pipe
	if len(b) == 0 {
		return 0, nil
	}
	if q.readers == 0 {
		return 0, p.sigpipe()
	}
	room := pipeCap - len(q.buf)
	// Writes of at most PIPE_BUF bytes are atomic.
	if room == 0 || len(b) <= 4096 && room < len(b) {
		if f.flags&unix.O_NONBLOCK != 0 {
			return 0, unix.EAGAIN
		}
		return 0, errBlockForever
	}
	n := min(room, len(b))
	p.ioChanged()
	q.buf = append(q.buf, b[:n]...)
	return n, nil
}

// sigpipe is what a write with no reader gets: EPIPE if SIGPIPE is
// ignored, blocked or handled (handlers do not run in phase 1), else the
// signal's default action ends the program.
func (p *Process) sigpipe() error {
	const sig = unix.SIGPIPE
	if p.st.sigact[sig].handler != sigDFL || p.cur().sigmask&sigbit(sig) != 0 {
		return unix.EPIPE
	}
	return exitError{128 + int(sig)}
}

type eventfd struct {
	count     uint64
	semaphore bool
}

func (p *Process) eventRead(f *ofile, b []byte) (int, error) {
	if len(b) < 8 {
		return 0, unix.EINVAL
	}
	ev := f.ev
	if ev.count == 0 {
		if f.flags&unix.O_NONBLOCK != 0 {
			return 0, unix.EAGAIN
		}
		return 0, errBlockForever
	}
	v := ev.count
	if ev.semaphore {
		v = 1
	}
	ev.count -= v
	p.ioChanged()
	le.PutUint64(b, v)
	return 8, nil
}

func (p *Process) eventWrite(f *ofile, b []byte) (int, error) {
	if len(b) < 8 {
		return 0, unix.EINVAL
	}
	v := le.Uint64(b)
	if v == ^uint64(0) {
		return 0, unix.EINVAL
	}
	if f.ev.count+v < f.ev.count || f.ev.count+v == ^uint64(0) {
		if f.flags&unix.O_NONBLOCK != 0 {
			return 0, unix.EAGAIN
		}
		return 0, errBlockForever
	}
	f.ev.count += v
	p.ioChanged()
	return 8, nil
}
