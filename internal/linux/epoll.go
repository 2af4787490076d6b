package linux

import (
	"math"
	"time"

	"golang.org/x/sys/unix"
)

// epoll, as far as the objects of this process can be polled: pipes,
// eventfds, sockets (net.go) and stdio (stdin always readable: the body is
// already there or at its end; stdout and stderr always writable). The Go
// runtime needs it for its timers: time.Sleep, the scavenger and the GC
// pacer park their M in epoll_pwait with the next timer's delay, and other
// threads wake it by writing to an eventfd (netpollBreak); and for its
// network poller.
//
// Readiness is computed at each wait, never queued. Edge-triggered
// registrations report an object only when some pipe, eventfd or socket
// changed since they last reported it: an approximation of "changed
// since", which may report an edge twice but never loses one; the Go
// runtime, the only edge-triggered user here, reads until EAGAIN and
// tolerates both.

type epoll struct {
	items []*epItem // in registration order
}

type epItem struct {
	fd     int32
	f      *ofile
	events uint32
	data   uint64
	seen   uint64 // ioGen when an edge-triggered item last reported
	seenOK bool
}

const (
	epollIn      = unix.EPOLLIN
	epollOut     = unix.EPOLLOUT
	epollErr     = unix.EPOLLERR
	epollHup     = unix.EPOLLHUP
	epollRdhup   = unix.EPOLLRDHUP
	epollET      = 1 << 31
	epollOneshot = 1 << 30
	epollKnown   = epollIn | epollOut | unix.EPOLLPRI | epollErr | epollHup | epollRdhup | unix.EPOLLRDNORM |
		unix.EPOLLRDBAND | unix.EPOLLWRNORM | unix.EPOLLWRBAND | unix.EPOLLMSG | epollET | epollOneshot |
		unix.EPOLLEXCLUSIVE | unix.EPOLLWAKEUP
	epollEventSize = 12 // packed struct epoll_event on x86-64
	epollMaxEvents = math.MaxInt32 / epollEventSize
)

func sysEpollCreate(p *Process, a [6]uint64) Result {
	if int32(a[0]) <= 0 {
		return fail(unix.EINVAL)
	}
	return p.epollCreate(0)
}

func sysEpollCreate1(p *Process, a [6]uint64) Result {
	if a[0]&^uint64(unix.EPOLL_CLOEXEC) != 0 {
		return fail(unix.EINVAL)
	}
	return p.epollCreate(a[0])
}

func (p *Process) epollCreate(flags uint64) Result {
	if p.live(func(f *ofile) bool { return f.ep != nil }) >= maxEpolls {
		return fail(unix.EMFILE)
	}
	f := p.newOfile(node{kind: kEpoll, path: "anon_inode:[eventpoll]"}, unix.O_RDWR)
	f.ep = &epoll{}
	fd, e := p.install(f, 0, flags&unix.EPOLL_CLOEXEC != 0)
	if e != 0 {
		return fail(e)
	}
	return ok(uint64(fd))
}

func (p *Process) epollOf(fd int32) (*epoll, unix.Errno) {
	f, e := p.file(fd)
	if e != 0 {
		return nil, e
	}
	if f.ep == nil {
		return nil, unix.EINVAL
	}
	return f.ep, 0
}

func sysEpollCtl(p *Process, a [6]uint64) Result {
	epfd, op, fd := int32(a[0]), a[1], int32(a[2])
	ep, e := p.epollOf(epfd)
	if e != 0 {
		return fail(e)
	}
	f, e := p.file(fd)
	if e != 0 {
		return fail(e)
	}
	if fd == epfd {
		return fail(unix.EINVAL)
	}
	switch f.n.kind {
	case kPipe, kEvent, kStdin, kStdout, kStderr, kSock:
	case kEpoll:
		// Nested epoll sets: nobody we serve uses them.
		return fail(unix.EINVAL)
	default:
		// Regular files, directories and devices cannot be polled, as on
		// Linux (the Go runtime then does blocking I/O on them).
		return fail(unix.EPERM)
	}
	var events uint32
	var data uint64
	if op != unix.EPOLL_CTL_DEL {
		b, e := p.rmem(a[3], epollEventSize)
		if e != 0 {
			return fail(e)
		}
		events, data = le.Uint32(b), le.Uint64(b[4:])
		if events&^uint32(epollKnown) != 0 {
			return fail(unix.EINVAL)
		}
	}
	i := -1
	for j, it := range ep.items {
		if it.fd == fd && it.f == f {
			i = j
		}
	}
	switch op {
	case unix.EPOLL_CTL_ADD:
		if i >= 0 {
			return fail(unix.EEXIST)
		}
		if len(ep.items) >= maxFDs {
			return fail(unix.ENOSPC)
		}
		ep.items = append(ep.items, &epItem{fd: fd, f: f, events: events, data: data})
	case unix.EPOLL_CTL_MOD:
		if i < 0 {
			return fail(unix.ENOENT)
		}
		it := ep.items[i]
		it.events, it.data, it.seenOK = events, data, false
	case unix.EPOLL_CTL_DEL:
		if i < 0 {
			return fail(unix.ENOENT)
		}
		ep.items = append(ep.items[:i], ep.items[i+1:]...)
	default:
		return fail(unix.EINVAL)
	}
	return ok(0)
}

// readiness is what f would report now (EPOLLERR and EPOLLHUP always).
func readiness(f *ofile) uint32 {
	var r uint32
	switch {
	case f.pipe != nil:
		q := f.pipe
		if f.flags&unix.O_ACCMODE == unix.O_RDONLY {
			if len(q.buf) > 0 {
				r |= epollIn
			}
			if q.writers == 0 {
				r |= epollHup | epollIn
			}
		} else {
			if len(q.buf) < pipeCap {
				r |= epollOut
			}
			if q.readers == 0 {
				r |= epollErr
			}
		}
	case f.sock != nil:
		r = sockReadiness(f.sock)
	case f.ev != nil:
		if f.ev.count > 0 {
			r |= epollIn
		}
		if f.ev.count < math.MaxUint64-1 {
			r |= epollOut
		}
	case f.n.kind == kStdin:
		r |= epollIn
	case f.n.kind == kStdout, f.n.kind == kStderr:
		r |= epollOut
	}
	return r
}

// collect fills up to max events of ep into guest memory at buf and says
// how many.
func (p *Process) collect(ep *epoll, buf []byte, max int) int {
	n := 0
	live := ep.items[:0]
	for _, it := range ep.items {
		// A registration lives as long as its open file is installed.
		if int(it.fd) >= len(p.st.fds) || p.st.fds[it.fd] == nil || p.st.fds[it.fd].f != it.f {
			continue
		}
		live = append(live, it)
		if n == max {
			continue
		}
		ev := readiness(it.f) & (it.events | epollErr | epollHup)
		if ev == 0 || it.events&epollET != 0 && it.seenOK && it.seen == p.st.ioGen {
			continue
		}
		it.seen, it.seenOK = p.st.ioGen, true
		if it.events&epollOneshot != 0 {
			it.events &= epollET | epollOneshot // disabled until EPOLL_CTL_MOD
		}
		le.PutUint32(buf[n*epollEventSize:], ev)
		le.PutUint64(buf[n*epollEventSize+4:], it.data)
		n++
	}
	clear(ep.items[len(live):])
	ep.items = live
	return n
}

// epollWait: timeout < 0 waits without a deadline. A wait that finds
// nothing ready blocks the thread until a pipe or eventfd changes (the
// call is then re-executed, timeout and all: a wake-up for another object
// extends the wait, an approximation the Go runtime's netpoller, which
// recomputes its delay, does not notice) or until the timeout.
func (p *Process) epollWait(nr uint64, epfd int32, events, maxEvents uint64, timeout time.Duration) Result {
	if int64(maxEvents) <= 0 || maxEvents > epollMaxEvents {
		return fail(unix.EINVAL)
	}
	ep, e := p.epollOf(epfd)
	if e != 0 {
		return fail(e)
	}
	buf, e := p.wmem(events, maxEvents*epollEventSize)
	if e != 0 {
		return fail(e)
	}
	if n := p.collect(ep, buf, int(maxEvents)); n > 0 || timeout == 0 {
		return ok(uint64(n))
	}
	for _, it := range ep.items {
		if watchesListener(it.f, it.events) {
			// A wait for a connection: the ready point, or the end of a
			// request (net.go).
			if r, ok := p.connWait(nr); ok {
				return r
			}
			break
		}
	}
	deadline := int64(noDeadline)
	if timeout > 0 {
		deadline = p.after(timeout)
	}
	return p.blockIO(nr, deadline, 0)
}

func msTimeout(ms uint64) time.Duration {
	if int32(ms) < 0 {
		return -1
	}
	return time.Duration(int32(ms)) * time.Millisecond
}

func sysEpollWait(p *Process, a [6]uint64) Result {
	return p.epollWait(unix.SYS_EPOLL_WAIT, int32(a[0]), a[1], uint64(int32(a[2])), msTimeout(a[3]))
}

// The signal mask of epoll_pwait is checked but not applied: no signal is
// ever delivered during the wait.
func sysEpollPwait(p *Process, a [6]uint64) Result {
	if a[4] != 0 {
		if a[5] != 8 {
			return fail(unix.EINVAL)
		}
		if _, e := p.rmem(a[4], 8); e != 0 {
			return fail(e)
		}
	}
	return p.epollWait(unix.SYS_EPOLL_PWAIT, int32(a[0]), a[1], uint64(int32(a[2])), msTimeout(a[3]))
}

func sysEpollPwait2(p *Process, a [6]uint64) Result {
	timeout := time.Duration(-1)
	if a[3] != 0 {
		sec, nsec, e := p.timespec(a[3])
		if e != 0 {
			return fail(e)
		}
		timeout = duration(sec, nsec)
	}
	if a[4] != 0 {
		if a[5] != 8 {
			return fail(unix.EINVAL)
		}
		if _, e := p.rmem(a[4], 8); e != 0 {
			return fail(e)
		}
	}
	return p.epollWait(unix.SYS_EPOLL_PWAIT2, int32(a[0]), a[1], uint64(int32(a[2])), timeout)
}
