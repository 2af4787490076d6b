package linux

import (
	"math/bits"
	"time"

	"golang.org/x/sys/unix"
)

// poll, ppoll, select and pselect6 over every descriptor: readiness is
// epoll's (readiness), and what epoll cannot watch (regular files,
// directories, devices) is always ready, as Linux's poll says of them. A
// call with nothing ready waits like epoll_wait: it is re-executed when a
// pipe, eventfd or socket changes, and once more with a zero timeout when
// its own timeout passes, so that what it writes back (revents, the fd
// sets) is computed by the call that returns. The remaining time is not
// written back into the timeout (glibc's wrappers do not rely on it),
// except that select's timeval reads zero after a timeout.

const (
	pollIn     = unix.POLLIN
	pollOut    = unix.POLLOUT
	pollErr    = unix.POLLERR
	pollHup    = unix.POLLHUP
	pollNval   = unix.POLLNVAL
	pollfdSize = 8 // struct pollfd: int fd; short events, revents
	// What select counts as readable, writable, exceptional: Linux's
	// POLLIN_SET, POLLOUT_SET and POLLEX_SET.
	selIn  = unix.POLLIN | unix.EPOLLRDNORM | unix.EPOLLRDBAND | unix.POLLHUP | unix.POLLERR
	selOut = unix.POLLOUT | unix.EPOLLWRNORM | unix.EPOLLWRBAND | unix.POLLERR
	selEx  = unix.POLLPRI
)

// pollReadiness is what poll reports for f now.
func pollReadiness(f *ofile) uint32 {
	switch f.n.kind {
	case kRoot, kDevDir, kDev, kAppDir, kApp, kTmp:
		return pollIn | unix.EPOLLRDNORM | pollOut | unix.EPOLLWRNORM // DEFAULT_POLLMASK
	case kEpoll:
		return 0 // nested readiness is not served
	}
	r := readiness(f)
	if r&pollIn != 0 {
		r |= unix.EPOLLRDNORM
	}
	if r&pollOut != 0 {
		r |= unix.EPOLLWRNORM
	}
	return r
}

// takeTimedOut says whether the calling thread is re-executing a poll
// whose timeout passed (then it must not wait again).
func (p *Process) takeTimedOut() bool {
	t := p.cur()
	was := t.timedOut
	t.timedOut = false
	return was
}

func sysPoll(p *Process, a [6]uint64) Result {
	return p.poll(unix.SYS_POLL, a[0], a[1], msTimeout(a[2]))
}

func sysPpoll(p *Process, a [6]uint64) Result {
	timeout := time.Duration(-1)
	if a[2] != 0 {
		sec, nsec, e := p.timespec(a[2])
		if e != 0 {
			return fail(e)
		}
		timeout = duration(sec, nsec)
	}
	if e := p.sigmaskArg(a[3], a[4]); e != 0 {
		return fail(e)
	}
	return p.poll(unix.SYS_PPOLL, a[0], a[1], timeout)
}

// sigmaskArg checks the signal mask of ppoll, pselect6 and epoll_pwait:
// checked, not applied (no signal is delivered during a wait).
func (p *Process) sigmaskArg(addr, size uint64) unix.Errno {
	if addr == 0 {
		return 0
	}
	if size != 8 {
		return unix.EINVAL
	}
	_, e := p.rmem(addr, 8)
	return e
}

func (p *Process) nofile() uint64 { return min64(p.st.rlim[unix.RLIMIT_NOFILE].cur, maxFDs) }

func (p *Process) poll(nr, addr, nfds uint64, timeout time.Duration) Result {
	if nfds > p.nofile() {
		return fail(unix.EINVAL)
	}
	b, e := p.wmem(addr, nfds*pollfdSize)
	if e != 0 {
		return fail(e)
	}
	if p.takeTimedOut() {
		timeout = 0
	}
	n, listener := 0, false
	for i := range nfds {
		ent := b[i*pollfdSize:]
		fd, events := int32(le.Uint32(ent)), uint32(le.Uint16(ent[4:]))
		var rev uint32
		if fd >= 0 {
			if f, e := p.file(fd); e != 0 {
				rev = pollNval
			} else {
				rev = pollReadiness(f) & (events | pollErr | pollHup)
				listener = listener || watchesListener(f, events)
			}
		}
		le.PutUint16(ent[6:], uint16(rev))
		if rev != 0 {
			n++
		}
	}
	if n > 0 || timeout == 0 {
		return ok(uint64(n))
	}
	return p.waitReady(nr, listener, timeout)
}

// waitReady parks a poll or select that found nothing ready: a wait for a
// connection may be the ready point or the end of a request (connWait).
func (p *Process) waitReady(nr uint64, listener bool, timeout time.Duration) Result {
	if listener {
		if r, ok := p.connWait(nr); ok {
			return r
		}
	}
	deadline := int64(noDeadline)
	if timeout > 0 {
		deadline = p.after(timeout)
	}
	return p.blockIORetry(nr, deadline)
}

func sysSelect(p *Process, a [6]uint64) Result {
	timeout := time.Duration(-1)
	if a[4] != 0 {
		b, e := p.rmem(a[4], 16)
		if e != 0 {
			return fail(e)
		}
		sec, usec := int64(le.Uint64(b)), int64(le.Uint64(b[8:]))
		if sec < 0 || usec < 0 || usec >= 1e6 {
			return fail(unix.EINVAL)
		}
		timeout = duration(sec, usec*1e3)
	}
	return p.selectFDs(unix.SYS_SELECT, a, timeout, true)
}

func sysPselect6(p *Process, a [6]uint64) Result {
	timeout := time.Duration(-1)
	if a[4] != 0 {
		sec, nsec, e := p.timespec(a[4])
		if e != 0 {
			return fail(e)
		}
		timeout = duration(sec, nsec)
	}
	if a[5] != 0 {
		// struct { const sigset_t *ss; size_t ss_len; }
		b, e := p.rmem(a[5], 16)
		if e != 0 {
			return fail(e)
		}
		if e := p.sigmaskArg(le.Uint64(b), le.Uint64(b[8:])); e != 0 {
			return fail(e)
		}
	}
	return p.selectFDs(unix.SYS_PSELECT6, a, timeout, false)
}

// selectFDs serves select and pselect6: a[0] is nfds, a[1..3] the read,
// write and exception sets (each may be NULL), updated in place only by
// the call that returns.
func (p *Process) selectFDs(nr uint64, a [6]uint64, timeout time.Duration, timeval bool) Result {
	nfds := int32(a[0])
	if nfds < 0 {
		return fail(unix.EINVAL)
	}
	// Linux cuts nfds to its descriptor table's size.
	n := min(uint64(nfds), p.nofile())
	size := (n + 63) / 64 * 8
	var sets [3][]byte
	for i := range sets {
		if a[1+i] == 0 {
			continue
		}
		b, e := p.wmem(a[1+i], size)
		if e != 0 {
			return fail(e)
		}
		sets[i] = b
	}
	if p.takeTimedOut() {
		timeout = 0
	}
	var out [3][]uint64
	for i := range out {
		out[i] = make([]uint64, size/8)
	}
	count, listener := 0, false
	for w := range size / 8 {
		var in [3]uint64
		for i, b := range sets {
			if b != nil {
				in[i] = le.Uint64(b[w*8:])
			}
		}
		all := in[0] | in[1] | in[2]
		for all != 0 {
			bit := uint64(bits.TrailingZeros64(all))
			all &^= 1 << bit
			fd := w*64 + bit
			if fd >= n {
				break
			}
			f, e := p.file(int32(fd))
			if e != 0 {
				return fail(unix.EBADF)
			}
			r := pollReadiness(f)
			for i, mask := range [3]uint32{selIn, selOut, selEx} {
				if in[i]&(1<<bit) != 0 && r&mask != 0 {
					out[i][w] |= 1 << bit
					count++
				}
			}
			listener = listener || in[0]&(1<<bit) != 0 && watchesListener(f, pollIn)
		}
	}
	if count == 0 && timeout != 0 {
		return p.waitReady(nr, listener, timeout)
	}
	for i, b := range sets {
		for w := range out[i] {
			if b != nil {
				le.PutUint64(b[w*8:], out[i][w])
			}
		}
	}
	if count == 0 && timeval && a[4] != 0 {
		// select says how much of its timeout is left: none.
		p.put(a[4], make([]byte, 16))
	}
	return ok(uint64(count))
}
