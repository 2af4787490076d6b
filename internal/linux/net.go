package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// TCP sockets against in-monitor byte streams. A server program makes its
// sockets, binds, listens and accepts as on Linux, but no network stack is
// behind them: the only connections are the ones the monitor hands over
// (Process.Connect), each a pair of host streams (Conn), and outbound
// connections are refused. Everything a socket is lives in the process's
// state as plain data (fds → ofile → socket, byte slices, counters), so a
// process copied at its ready point (Process.Clone) copies its sockets;
// the host side of a connection (Conn's reader and writer) is kept apart,
// in netState.conns, and is never copied.
//
// Blocking: bytes from the client come from Conn.Request, whose reads may
// block on the host as a read of the request body (Config.Stdin) does, so
// a connection is readable for as long as the client may still send.
// Writes go straight to Conn.Response and never wait in the process. What
// can wait is an accept with no connection pending and a read once the
// client has sent everything (without closing): those park the thread
// (wIO) and are re-executed when something changes.

var be = binary.BigEndian // ports are in network order

// Bounds on what a process may hold: socket objects are small, but each is
// host memory and a listener's queue is a list of them.
const (
	maxSockets   = 256      // installed, queued in a backlog, or delivered before any listener
	maxListeners = 16       // listening sockets
	maxBacklog   = 128      // connections queued on one listener, whatever listen asks (somaxconn)
	maxConnBuf   = 64 << 10 // bytes read ahead from a client (MSG_PEEK, FIONREAD)
	maxSockaddr  = 128      // sizeof(struct sockaddr_storage)
	maxControl   = 64 << 10 // sendmsg ancillary data examined
	ephemeralLo  = 32768    // ip_local_port_range's default
	ephemeralHi  = 60999
	sinLen       = 16 // sizeof(struct sockaddr_in)
	sin6Len      = 28 // sizeof(struct sockaddr_in6)
	sin6LenMin   = 24 // SIN6_LEN_RFC2133: without sin6_scope_id
	msghdrLen    = 56 // struct msghdr on x86-64
)

// Conn is one client connection the monitor hands the program
// (Process.Connect): what the client sends, where the program's answer
// goes, and the addresses of both ends.
type Conn struct {
	// Request is the byte stream from the client. The program's reads take
	// from it (a read is given guest memory to fill: Read must not keep
	// the slice), and one may block on the host until bytes arrive, as a
	// read of Config.Stdin does. io.EOF says the client will send nothing
	// more; what the program then sees depends on HalfClose. An error
	// wrapping unix.ECONNRESET is the client resetting the connection: the
	// program's read gets ECONNRESET. Any other error ends the run
	// (ActionStop, with the error).
	Request io.Reader
	// HalfClose makes the end of Request the client's FIN: the program
	// reads EOF there. Without it the connection stays open and idle after
	// the request, as an HTTP client waiting for its response keeps it
	// (Go's net/http cancels a request whose client half-closes): a
	// non-blocking read says EAGAIN, a blocking one waits, and a program
	// that nothing else can wake then ends the run.
	HalfClose bool
	// Response receives what the program writes, as it writes it (Write
	// is given guest memory: it must not keep the slice). An error
	// wrapping unix.EPIPE or unix.ECONNRESET is the client gone: the
	// program's write gets it (EPIPE with SIGPIPE unless MSG_NOSIGNAL or
	// SIGPIPE is handled or ignored) and the connection reads EOF from
	// then on; any other error ends the run. If Response is also an
	// io.Closer, Close is called once, when the program can write no more
	// (shutdown with SHUT_WR or SHUT_RDWR, its last descriptor of the
	// connection closed, or the connection dropped unaccepted when its
	// listener closed): the response is complete. Close's error is the
	// monitor's own business; the program never sees it.
	Response io.Writer
	// Peer is the client's address (accept, getpeername): invalid means
	// 127.0.0.1 with a port of the process's choosing. Local is the
	// address the client connected to (getsockname on the accepted
	// socket): invalid means the listener's own (loopback when the
	// listener is bound to the wildcard). A Local port other than 0 picks
	// the listener bound to that port; otherwise the listener with the
	// lowest descriptor that takes the peer's family does. IPv4 addresses
	// reach an IPv6 listener as IPv4-mapped addresses, as on Linux.
	Peer, Local netip.AddrPort
	// Template makes this the snapshot run's placeholder connection (see
	// Attach): the program may accept it and set it up, and the first
	// time it needs the client's bytes the call returns ActionReady
	// (Restart): the post-accept snapshot point. A write to it before
	// that ends the run with ErrTemplateWritten: such a program speaks
	// first, and its snapshot must be taken at the accept instead.
	// Request and Response are not used.
	Template bool
}

// Errors of Process.Connect.
var (
	ErrBadConn        = errors.New("a connection needs both a Request reader and a Response writer")
	ErrNoListener     = errors.New("no listening socket takes the connection")
	ErrBacklogFull    = errors.New("the listening socket's backlog is full")
	ErrTooManySockets = errors.New("the process holds as many sockets as it may")
	// ErrTemplateWritten: the program wrote to the template connection,
	// or shut it, before reading from it.
	ErrTemplateWritten = errors.New("the program wrote to or shut its connection before reading the request")
	// ErrNoTemplate: Attach found no template connection waiting for its
	// client (or more than one).
	ErrNoTemplate = errors.New("the process has no template connection waiting for a client")
)

// Connect hands the program one connection from a client: it is queued on
// the listening socket it is for and accepted when the program accepts.
// Delivered before the program listens at all (a server started fresh for
// a request), it waits for the first listen that takes it. The monitor
// calls Connect between system calls, never during one; a thread blocked
// in accept, poll or epoll_wait retries when it next runs.
func (p *Process) Connect(c Conn) error {
	if c.Template {
		c.Request, c.Response = eofReader{}, io.Discard
	}
	if c.Request == nil || c.Response == nil {
		return ErrBadConn
	}
	n := &p.st.net
	if n.sockets >= maxSockets {
		return fmt.Errorf("%w (%d)", ErrTooManySockets, maxSockets)
	}
	peer := unmapped(c.Peer)
	if !peer.IsValid() {
		peer = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), n.clientPort())
	}
	local := unmapped(c.Local)
	l, listening := p.listenerFor(peer.Addr().Is4(), local)
	switch {
	case l == nil && listening:
		return fmt.Errorf("%w (peer %v, local %v)", ErrNoListener, peer, c.Local)
	case l == nil && len(n.incoming) >= maxBacklog:
		return fmt.Errorf("%w (%d connections wait for the program to listen)", ErrBacklogFull, maxBacklog)
	case l != nil && len(l.queue) >= l.backlog:
		return fmt.Errorf("%w (%d connections)", ErrBacklogFull, l.backlog)
	}
	s := &socket{state: sConn, cpeer: peer, clocal: local, template: c.Template}
	s.conn = n.addHost(hostConn{r: c.Request, w: c.Response, halfClose: c.HalfClose, template: c.Template})
	n.sockets++
	n.delivered++
	n.active++
	if l != nil {
		p.enqueue(l, s)
	} else {
		n.incoming = append(n.incoming, s)
	}
	p.ioChanged()
	return nil
}

// Connections reports how many connections were delivered (Connect) and
// how many of them the program has not finished writing yet.
func (p *Process) Connections() (delivered, open int) { return p.st.net.delivered, p.st.net.active }

func unmapped(a netip.AddrPort) netip.AddrPort {
	if !a.IsValid() {
		return a
	}
	return netip.AddrPortFrom(a.Addr().Unmap().WithZone(""), a.Port())
}

type sockState uint8

const (
	sFresh  sockState = iota // made, perhaps bound, not listening (again, after SHUT_RD)
	sListen                  // listening
	sConn                    // a delivered connection: queued, or accepted
)

// sockAddr is an address as a socket holds it: an IPv4 address unmapped
// (also on an IPv6 socket, where it came in as ::ffff:a.b.c.d), the
// zero Addr for the wildcard; flow and scope are sin6_flowinfo and
// sin6_scope_id, kept as given.
type sockAddr struct {
	ip          netip.Addr
	port        uint16
	flow, scope uint32
}

func (a sockAddr) wildcard() bool { return !a.ip.IsValid() || a.ip.IsUnspecified() }

type socket struct {
	family uint16 // AF_INET or AF_INET6
	state  sockState
	bound  bool
	local  sockAddr
	peer   sockAddr
	opts   map[uint64]int64 // setsockopt values by optKey; absent: the default
	err    unix.Errno       // pending error (SO_ERROR), given to the next transfer

	// listening
	backlog int       // queue capacity
	queue   []*socket // delivered, not yet accepted

	// a connection
	cpeer, clocal netip.AddrPort // as Connect was given them
	conn          int            // 1 + index into netState.conns; 0: no host side (a copy)
	rx            []byte         // read ahead from the client, not yet by the program
	ended         bool           // the client will send nothing more
	fin           bool           // ... and said so: reads see EOF once rx is drained
	gone          bool           // the client went away: writes are EPIPE
	rdShut        bool           // shutdown(SHUT_RD)
	wrShut        bool           // shutdown(SHUT_WR)
	done          bool           // the write side ended: counted out of netState.active
	template      bool           // the snapshot run's placeholder (Conn.Template)
}

// netState is the process's socket bookkeeping.
type netState struct {
	sockets   int       // live socket objects: installed, queued, or in incoming
	listeners int       // sockets in sListen
	port      uint16    // the last ephemeral port handed out
	delivered int       // connections Connect took
	active    int       // of those, the ones whose write side is still open
	incoming  []*socket // delivered before any listener took them
	// conns is the host side of delivered connections, by socket.conn-1:
	// not socket state, and never copied (cloneNet).
	conns []hostConn
}

type hostConn struct {
	r         io.Reader
	w         io.Writer
	halfClose bool
	template  bool // the snapshot run's placeholder (Conn.Template)
}

func (n *netState) addHost(h hostConn) int {
	for i := range n.conns {
		if n.conns[i].r == nil {
			n.conns[i] = h
			return i + 1
		}
	}
	n.conns = append(n.conns, h)
	return len(n.conns)
}

func (n *netState) host(s *socket) *hostConn {
	if s.conn <= 0 || s.conn > len(n.conns) || n.conns[s.conn-1].r == nil {
		return nil
	}
	return &n.conns[s.conn-1]
}

// clientPort is a port for a client that came without an address.
func (n *netState) clientPort() uint16 {
	n.port++
	if n.port < ephemeralLo || n.port > ephemeralHi {
		n.port = ephemeralLo
	}
	return n.port
}

// cloneSocket deep-copies s for a process copy; seen maps the sockets
// copied so far to their copies, so that a socket reachable twice (from
// two descriptors' open file, or a listener's queue) is copied once. The
// copy has no host side: a connection that existed at the copy reads EOF
// and writes EPIPE in it.
func cloneSocket(s *socket, seen map[*socket]*socket) *socket {
	if c, ok := seen[s]; ok {
		return c
	}
	c := *s
	seen[s] = &c
	c.opts = maps.Clone(s.opts)
	c.rx = bytes.Clone(s.rx)
	c.conn = 0
	if s.queue != nil {
		c.queue = make([]*socket, len(s.queue))
		for i, q := range s.queue {
			c.queue[i] = cloneSocket(q, seen)
		}
	}
	return &c
}

// cloneNet gives q, a copy of the process whose state was old
// (Process.Clone), its own sockets: files maps old open files to their
// copies, whose sock fields still point at old's sockets. Call it after
// q's state was copied from old and the files were copied.
func (q *Process) cloneNet(old *state, files map[*ofile]*ofile) {
	seen := map[*socket]*socket{}
	n := old.net
	n.conns = nil
	n.incoming = nil
	for _, s := range old.net.incoming {
		n.incoming = append(n.incoming, cloneSocket(s, seen))
	}
	q.st.net = n
	for _, f := range files {
		if f.sock != nil {
			f.sock = cloneSocket(f.sock, seen)
		}
	}
}

// ---- creating, binding, listening ----

// refuse answers e for a call the sandbox does not serve (outbound
// connections, other families and types) and counts it by name, as
// ENOSYS and EPERM answers are counted.
func (p *Process) refuse(nr uint64, e unix.Errno) Result {
	p.countRefused(nr)
	return fail(e)
}

func sysSocket(p *Process, a [6]uint64) Result {
	domain, typ, proto := int32(a[0]), int32(a[1]), int32(a[2])
	flags := typ &^ 0xf
	typ &= 0xf
	if flags&^(unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC) != 0 {
		return fail(unix.EINVAL)
	}
	if domain != unix.AF_INET && domain != unix.AF_INET6 {
		// AF_UNIX, AF_NETLINK, AF_PACKET...: no such families here.
		return p.refuse(unix.SYS_SOCKET, unix.EAFNOSUPPORT)
	}
	switch typ {
	case unix.SOCK_STREAM:
	case unix.SOCK_DGRAM, unix.SOCK_RAW, unix.SOCK_RDM, unix.SOCK_SEQPACKET, unix.SOCK_DCCP, unix.SOCK_PACKET:
		// UDP (DNS included) and raw IP: TCP connections only.
		return p.refuse(unix.SYS_SOCKET, unix.ESOCKTNOSUPPORT)
	default:
		return fail(unix.EINVAL)
	}
	if proto != 0 && proto != unix.IPPROTO_TCP {
		return p.refuse(unix.SYS_SOCKET, unix.EPROTONOSUPPORT) // SCTP, MPTCP
	}
	n := &p.st.net
	if n.sockets >= maxSockets {
		return fail(unix.EMFILE)
	}
	f := p.newOfile(node{kind: kSock, path: "socket:"}, unix.O_RDWR|int(flags)&unix.O_NONBLOCK)
	fd, e := p.install(f, 0, flags&unix.SOCK_CLOEXEC != 0)
	if e != 0 {
		return fail(e)
	}
	f.sock = &socket{family: uint16(domain)}
	n.sockets++
	return ok(uint64(fd))
}

// socketpair: AF_UNIX is not served (nor is any other family: TCP has no
// socket pairs).
func sysSocketpair(p *Process, a [6]uint64) Result {
	if int32(a[0]) == unix.AF_INET || int32(a[0]) == unix.AF_INET6 {
		return p.refuse(unix.SYS_SOCKETPAIR, unix.EOPNOTSUPP)
	}
	return p.refuse(unix.SYS_SOCKETPAIR, unix.EAFNOSUPPORT)
}

func (p *Process) sockArg(fd uint64) (*ofile, *socket, unix.Errno) {
	f, e := p.file(fdArg(fd))
	if e != 0 {
		return nil, nil, e
	}
	if f.sock == nil {
		return nil, nil, unix.ENOTSOCK
	}
	return f, f.sock, 0
}

// sockaddrIn reads a socket address the program passes (bind, connect),
// as move_addr_to_kernel does: a length outside [0, 128] is EINVAL, an
// unreadable buffer EFAULT.
func (p *Process) sockaddrIn(addr, length uint64, family uint16) (sockAddr, unix.Errno) {
	l := int32(length)
	if l < 0 || l > maxSockaddr {
		return sockAddr{}, unix.EINVAL
	}
	b, e := p.rmem(addr, uint64(l))
	if e != 0 {
		return sockAddr{}, e
	}
	return parseSockaddr(b, family)
}

// parseSockaddr decodes a struct sockaddr_in or sockaddr_in6 for a socket
// of family, with Linux's checks: too short EINVAL, another family
// EAFNOSUPPORT (AF_UNSPEC with INADDR_ANY is accepted on AF_INET, for old
// programs).
func parseSockaddr(b []byte, family uint16) (sockAddr, unix.Errno) {
	if len(b) < 2 {
		return sockAddr{}, unix.EINVAL
	}
	f := le.Uint16(b)
	switch family {
	case unix.AF_INET:
		if len(b) < sinLen {
			return sockAddr{}, unix.EINVAL
		}
		ip := netip.AddrFrom4([4]byte(b[4:8]))
		if f != unix.AF_INET && (f != unix.AF_UNSPEC || !ip.IsUnspecified()) {
			return sockAddr{}, unix.EAFNOSUPPORT
		}
		return sockAddr{ip: ip, port: be.Uint16(b[2:])}, 0
	case unix.AF_INET6:
		if len(b) < sin6LenMin {
			return sockAddr{}, unix.EINVAL
		}
		if f != unix.AF_INET6 {
			return sockAddr{}, unix.EAFNOSUPPORT
		}
		a := sockAddr{ip: netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port: be.Uint16(b[2:]), flow: le.Uint32(b[4:])}
		if len(b) >= sin6Len {
			a.scope = le.Uint32(b[24:])
		}
		return a, 0
	}
	return sockAddr{}, unix.EAFNOSUPPORT
}

// encodeSockaddr is a as a socket of family reports it: 16 or 28 bytes.
func encodeSockaddr(a sockAddr, family uint16) []byte {
	if family == unix.AF_INET {
		b := make([]byte, sinLen)
		le.PutUint16(b, unix.AF_INET)
		be.PutUint16(b[2:], a.port)
		if a.ip.Is4() {
			ip := a.ip.As4()
			copy(b[4:], ip[:])
		}
		return b
	}
	b := make([]byte, sin6Len)
	le.PutUint16(b, unix.AF_INET6)
	be.PutUint16(b[2:], a.port)
	le.PutUint32(b[4:], a.flow)
	if a.ip.IsValid() {
		ip := a.ip.As16() // an IPv4 address as ::ffff:a.b.c.d
		copy(b[8:], ip[:])
	}
	le.PutUint32(b[24:], a.scope)
	return b
}

// putSockaddr gives the program an address as move_addr_to_user does: the
// int at lenp says how much room addr has (negative: EINVAL); as much of
// the address as fits is written, and lenp gets its full length. Both
// buffers are checked before anything is written.
func (p *Process) putSockaddr(addr, lenp uint64, sa []byte) unix.Errno {
	lb, e := p.wmem(lenp, 4)
	if e != 0 {
		return e
	}
	l := int32(le.Uint32(lb))
	if l < 0 {
		return unix.EINVAL
	}
	n := min(int(l), len(sa))
	b, e := p.wmem(addr, uint64(n))
	if e != 0 {
		return e
	}
	copy(b, sa)
	le.PutUint32(lb, uint32(len(sa)))
	return 0
}

// checkSockaddrOut validates (addr, lenp) as putSockaddr will use them,
// for a call that must not consume anything when they are bad (accept).
func (p *Process) checkSockaddrOut(addr, lenp uint64, size int) unix.Errno {
	lb, e := p.wmem(lenp, 4)
	if e != 0 {
		return e
	}
	l := int32(le.Uint32(lb))
	if l < 0 {
		return unix.EINVAL
	}
	_, e = p.wmem(addr, uint64(min(int(l), size)))
	return e
}

func sockaddrSize(family uint16) int {
	if family == unix.AF_INET {
		return sinLen
	}
	return sin6Len
}

func sysBind(p *Process, a [6]uint64) Result {
	_, s, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	sa, e := p.sockaddrIn(a[1], a[2], s.family)
	if e != 0 {
		return fail(e)
	}
	if s.bound || s.state != sFresh {
		return fail(unix.EINVAL)
	}
	switch {
	case !sa.wildcard() && (sa.ip.IsMulticast() || sa.ip == netip.AddrFrom4([4]byte{255, 255, 255, 255})):
		return fail(unix.EADDRNOTAVAIL)
	case s.family == unix.AF_INET6 && sa.ip.Is4() && s.opt(optV6only) != 0:
		return fail(unix.EINVAL) // a mapped address on an IPv6-only socket
	case sa.ip.Is6() && sa.ip.IsLinkLocalUnicast() && sa.scope == 0:
		return fail(unix.EINVAL) // link-local needs an interface
	}
	if sa.port == 0 {
		if sa.port = p.ephemeral(s, sa.ip); sa.port == 0 {
			return fail(unix.EADDRINUSE)
		}
	} else if p.conflict(s, sa.ip, sa.port) {
		return fail(unix.EADDRINUSE)
	}
	s.local, s.bound = sa, true
	return ok(0)
}

// sockets yields the installed sockets in descriptor order (one reached
// through two descriptors twice: every use here tolerates that).
func (p *Process) sockets(yield func(*socket) bool) {
	for _, d := range p.st.fds {
		if d != nil && d.f.sock != nil && !yield(d.f.sock) {
			return
		}
	}
}

// coverage is the set of local addresses a bound socket takes.
type coverage struct {
	v4, all4 bool
	a4       netip.Addr
	v6, all6 bool
	a6       netip.Addr
}

func coverOf(family uint16, ip netip.Addr, v6only bool) coverage {
	var c coverage
	switch {
	case family == unix.AF_INET || ip.Is4():
		c.v4, c.all4, c.a4 = true, !ip.IsValid() || ip.IsUnspecified(), ip
	case !ip.IsValid() || ip.IsUnspecified():
		c.v6, c.all6 = true, true
		c.v4, c.all4 = !v6only, !v6only
	default:
		c.v6, c.a6 = true, ip
	}
	return c
}

func (c coverage) meets(d coverage) bool {
	return c.v4 && d.v4 && (c.all4 || d.all4 || c.a4 == d.a4) ||
		c.v6 && d.v6 && (c.all6 || d.all6 || c.a6 == d.a6)
}

// conflict says whether s may not take (ip, port): another bound socket
// that is not a connection covers an address s would, unless both set
// SO_REUSEPORT, or both set SO_REUSEADDR and the other is not listening.
func (p *Process) conflict(s *socket, ip netip.Addr, port uint16) bool {
	mine := coverOf(s.family, ip, s.opt(optV6only) != 0)
	for o := range p.sockets {
		if o == s || !o.bound || o.state == sConn || o.local.port != port {
			continue
		}
		if s.opt(optReusePort) != 0 && o.opt(optReusePort) != 0 {
			continue
		}
		if s.opt(optReuseAddr) != 0 && o.opt(optReuseAddr) != 0 && o.state != sListen {
			continue
		}
		if mine.meets(coverOf(o.family, o.local.ip, o.opt(optV6only) != 0)) {
			return true
		}
	}
	return false
}

// ephemeral picks a free port for s at ip from ip_local_port_range, or 0.
// At most maxSockets ports can be taken, so that many tries and one more
// always find one if any is free.
func (p *Process) ephemeral(s *socket, ip netip.Addr) uint16 {
	n := &p.st.net
	for range maxSockets + 1 {
		port := n.clientPort()
		if !p.conflict(s, ip, port) {
			return port
		}
	}
	return 0
}

func sysListen(p *Process, a [6]uint64) Result {
	_, s, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	n := &p.st.net
	switch s.state {
	case sConn:
		return fail(unix.EINVAL)
	case sFresh:
		if n.listeners >= maxListeners {
			return fail(unix.ENOBUFS)
		}
		if !s.bound {
			// Linux binds an unbound listener to the wildcard and a port
			// of its choosing.
			var ip netip.Addr
			if s.family == unix.AF_INET {
				ip = netip.IPv4Unspecified()
			}
			port := p.ephemeral(s, ip)
			if port == 0 {
				return fail(unix.EADDRINUSE)
			}
			s.local, s.bound = sockAddr{ip: ip, port: port}, true
		} else if p.conflict(s, s.local.ip, s.local.port) {
			return fail(unix.EADDRINUSE)
		}
		s.state = sListen
		n.listeners++
	}
	// The queue holds backlog+1 connections, as Linux's does, and at most
	// maxBacklog (a negative backlog is a huge unsigned one).
	b := uint32(a[1])
	s.backlog = int(min(uint64(b)+1, maxBacklog))
	// Connections delivered before anything listened go to the first
	// listener that takes them.
	rest := n.incoming[:0]
	for _, c := range n.incoming {
		if len(s.queue) < s.backlog && takes(s, c) {
			p.enqueue(s, c)
		} else {
			rest = append(rest, c)
		}
	}
	clear(n.incoming[len(rest):])
	n.incoming = rest
	p.ioChanged()
	return ok(0)
}

// takes says whether listener l takes connection c: the peer's family,
// and the local port and address c was addressed to, if any.
func takes(l *socket, c *socket) bool {
	if c.cpeer.Addr().Is4() {
		// An IPv6 listener takes IPv4 peers unless it is IPv6-only or
		// bound to an IPv6 address.
		if l.family == unix.AF_INET6 && (l.opt(optV6only) != 0 || !l.local.wildcard() && l.local.ip.Is6()) {
			return false
		}
	} else if l.family != unix.AF_INET6 || !l.local.wildcard() && l.local.ip.Is4() {
		return false
	}
	if c.clocal.IsValid() {
		if c.clocal.Port() != 0 && c.clocal.Port() != l.local.port {
			return false
		}
		if !l.local.wildcard() && c.clocal.Addr() != l.local.ip {
			return false
		}
	}
	return true
}

// listenerFor is the listener a connection from a peer of that family to
// local goes to; listening says whether there is a listener at all.
func (p *Process) listenerFor(v4 bool, local netip.AddrPort) (l *socket, listening bool) {
	probe := &socket{cpeer: netip.AddrPortFrom(netip.IPv6Loopback(), 1), clocal: local}
	if v4 {
		probe.cpeer = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 1)
	}
	for s := range p.sockets {
		if s.state != sListen {
			continue
		}
		listening = true
		if takes(s, probe) {
			return s, true
		}
	}
	return nil, listening
}

// enqueue puts connection c on l's queue, with its addresses in l's family.
func (p *Process) enqueue(l, c *socket) {
	c.family = l.family
	c.opts = maps.Clone(l.opts) // an accepted socket inherits its listener's options
	c.peer = sockAddr{ip: c.cpeer.Addr(), port: c.cpeer.Port()}
	switch {
	case c.clocal.IsValid() && c.clocal.Addr().IsValid():
		c.local = sockAddr{ip: c.clocal.Addr(), port: c.clocal.Port()}
	case !l.local.wildcard():
		c.local = sockAddr{ip: l.local.ip}
	case c.cpeer.Addr().Is4():
		c.local = sockAddr{ip: netip.AddrFrom4([4]byte{127, 0, 0, 1})}
	default:
		c.local = sockAddr{ip: netip.IPv6Loopback()}
	}
	if c.local.port == 0 {
		c.local.port = l.local.port
	}
	c.bound = true
	l.queue = append(l.queue, c)
}

// ---- accepting ----

func sysAccept(p *Process, a [6]uint64) Result {
	return p.accept(unix.SYS_ACCEPT, a[0], a[1], a[2], 0)
}

func sysAccept4(p *Process, a [6]uint64) Result {
	return p.accept(unix.SYS_ACCEPT4, a[0], a[1], a[2], a[3])
}

func (p *Process) accept(nr, fd, addr, lenp, flags uint64) Result {
	if flags&^uint64(unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC) != 0 {
		return fail(unix.EINVAL)
	}
	f, s, e := p.sockArg(fd)
	if e != 0 {
		return fail(e)
	}
	if s.state != sListen {
		return fail(unix.EINVAL)
	}
	if addr != 0 {
		if e := p.checkSockaddrOut(addr, lenp, sockaddrSize(s.family)); e != 0 {
			return fail(e)
		}
	}
	if len(s.queue) == 0 {
		if f.flags&unix.O_NONBLOCK != 0 {
			return fail(unix.EAGAIN)
		}
		if r, ok := p.connWait(nr); ok {
			return r
		}
		return p.blockIO(nr, p.timeout(s, optRcvtimeo), errno(unix.EAGAIN))
	}
	// The descriptor first: with none free the connection stays queued,
	// as Linux's accept fails with EMFILE before it dequeues.
	nf := p.newOfile(node{kind: kSock, path: "socket:"}, unix.O_RDWR|int(flags)&unix.O_NONBLOCK)
	nfd, e := p.install(nf, 0, flags&unix.SOCK_CLOEXEC != 0)
	if e != 0 {
		return fail(e)
	}
	c := s.queue[0]
	s.queue[0] = nil
	s.queue = s.queue[1:]
	if len(s.queue) == 0 {
		s.queue = nil
	}
	nf.sock = c
	if addr != 0 {
		p.putSockaddr(addr, lenp, encodeSockaddr(c.peer, c.family)) // checked above
	}
	p.ioChanged()
	return ok(uint64(nfd))
}

// connWait is the answer of a call about to wait for a connection with
// none pending, if it is not to wait: ActionReady at the ready point
// (Config.ReadyOnAccept, before any connection was delivered), ActionIdle
// in a server run (ReadyOnAccept, or connections delivered) when every
// delivered connection is finished (none yet, or all written to their
// end). Both ask for the call to be re-executed (Restart, RAX = nr) when
// the program resumes, so that a connection delivered meanwhile completes
// it as if it had waited. Anywhere else (a CGI program that listens) the
// wait is an ordinary one.
func (p *Process) connWait(nr uint64) (Result, bool) {
	n := &p.st.net
	switch {
	case p.cfg.ReadyOnAccept && !p.st.readied && n.delivered == 0:
		p.st.readied = true
		p.st.readyAt = p.cfg.Monotonic()
		return Result{Action: ActionReady, Ret: nr, Restart: true}, true
	case (p.cfg.ReadyOnAccept || n.delivered > 0) && n.active == 0:
		return Result{Action: ActionIdle, Ret: nr, Restart: true}, true
	}
	return Result{}, false
}

// timeout is the deadline SO_RCVTIMEO or SO_SNDTIMEO sets for a wait
// starting now, noDeadline if none.
func (p *Process) timeout(s *socket, key uint64) int64 {
	ns := s.opt(key)
	if ns <= 0 {
		return noDeadline
	}
	return p.after(time.Duration(ns))
}

// ---- names ----

func sysGetsockname(p *Process, a [6]uint64) Result {
	_, s, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	return okOrFail(p.putSockaddr(a[1], a[2], encodeSockaddr(s.local, s.family)))
}

func sysGetpeername(p *Process, a [6]uint64) Result {
	_, s, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	if s.state != sConn {
		return fail(unix.ENOTCONN)
	}
	return okOrFail(p.putSockaddr(a[1], a[2], encodeSockaddr(s.peer, s.family)))
}

// sysConnect: outbound connections are refused with ENETUNREACH, "network
// is unreachable", which is the truth here (there is no network) and
// which clients report rather than retry, as they might ECONNREFUSED.
// The arguments are checked first, as Linux does.
func sysConnect(p *Process, a [6]uint64) Result {
	_, s, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	if _, e := p.sockaddrIn(a[1], a[2], s.family); e != 0 {
		return fail(e)
	}
	switch s.state {
	case sListen:
		return fail(unix.EINVAL)
	case sConn:
		return fail(unix.EISCONN)
	}
	return p.refuse(unix.SYS_CONNECT, unix.ENETUNREACH)
}

// ---- shutting down and closing ----

func sysShutdown(p *Process, a [6]uint64) Result {
	_, s, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	how := a[1]
	if how > unix.SHUT_RDWR {
		return fail(unix.EINVAL)
	}
	switch s.state {
	case sConn:
		if how != unix.SHUT_WR {
			s.rdShut = true
		}
		if how != unix.SHUT_RD {
			s.wrShut = true
			p.finish(s)
		}
	case sListen:
		if how == unix.SHUT_WR {
			return ok(0)
		}
		// Linux disconnects a listener shut down for reading: queued
		// connections are dropped and accept fails from then on.
		p.stopListening(s)
	default:
		return fail(unix.ENOTCONN)
	}
	p.ioChanged()
	return ok(0)
}

func (p *Process) stopListening(s *socket) {
	for _, c := range s.queue {
		p.dropConn(c)
	}
	s.queue = nil
	s.state = sFresh
	p.st.net.listeners--
}

// finish ends the write side of connection s (once): the response is
// complete, and the monitor's writer hears it.
func (p *Process) finish(s *socket) {
	if s.done {
		return
	}
	s.done = true
	p.st.net.active--
	if h := p.st.net.host(s); h != nil {
		if c, ok := h.w.(io.Closer); ok {
			c.Close()
		}
	}
}

// dropConn ends a connection nobody will accept.
func (p *Process) dropConn(c *socket) {
	p.finish(c)
	p.freeHost(c)
	p.st.net.sockets--
}

func (p *Process) freeHost(s *socket) {
	if h := p.st.net.host(s); h != nil {
		*h = hostConn{}
	}
	s.conn = 0
}

// sockClose releases a socket whose last descriptor closed.
func (p *Process) sockClose(s *socket) {
	switch s.state {
	case sListen:
		p.stopListening(s)
	case sConn:
		p.finish(s)
		p.freeHost(s)
	}
	p.st.net.sockets--
	p.ioChanged()
}

// ---- transfers ----

// sockOr serves a descriptor call with h, or with s when the descriptor
// (the first argument) is a socket.
func sockOr(h handler, s func(p *Process, f *ofile, a [6]uint64) Result) handler {
	return func(p *Process, a [6]uint64) Result {
		if f, e := p.file(fdArg(a[0])); e == 0 && f.sock != nil {
			return s(p, f, a)
		}
		return h(p, a)
	}
}

func sockRead(p *Process, f *ofile, a [6]uint64) Result {
	b, e := p.upTo(a[1], ioLen(a[2]), true)
	if e != 0 {
		return fail(e)
	}
	return p.recv(unix.SYS_READ, f, [][]byte{b}, 0)
}

func sockWrite(p *Process, f *ofile, a [6]uint64) Result {
	b, e := p.upTo(a[1], ioLen(a[2]), false)
	if e != 0 {
		return fail(e)
	}
	return p.send(f, [][]byte{b}, 0)
}

func sockReadv(p *Process, f *ofile, a [6]uint64) Result {
	bufs, e := p.iovecs(a[1], a[2], true)
	if e != 0 {
		return fail(e)
	}
	return p.recv(unix.SYS_READV, f, bufs, 0)
}

func sockWritev(p *Process, f *ofile, a [6]uint64) Result {
	bufs, e := p.iovecs(a[1], a[2], false)
	if e != 0 {
		return fail(e)
	}
	return p.send(f, bufs, 0)
}

// Flags of recv and send this package knows; others are ignored, as
// Linux's TCP ignores flags it has no use for.
const (
	msgOOB      = unix.MSG_OOB
	msgPeek     = unix.MSG_PEEK
	msgTrunc    = unix.MSG_TRUNC
	msgDontwait = unix.MSG_DONTWAIT
	msgWaitall  = unix.MSG_WAITALL
	msgErrqueue = unix.MSG_ERRQUEUE
	msgNosignal = unix.MSG_NOSIGNAL
)

func sysRecvfrom(p *Process, a [6]uint64) Result {
	f, _, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	b, e := p.upTo(a[1], ioLen(a[2]), true)
	if e != 0 {
		return fail(e)
	}
	// A stream socket gives no source address: *addrlen becomes 0. The
	// length is checked before anything is consumed.
	if a[4] != 0 {
		if e := p.checkSockaddrOut(a[4], a[5], 0); e != 0 {
			return fail(e)
		}
	}
	r := p.recv(unix.SYS_RECVFROM, f, [][]byte{b}, a[3])
	if a[4] != 0 && completed(r) {
		p.put32(a[5], 0)
	}
	return r
}

func sysSendto(p *Process, a [6]uint64) Result {
	f, _, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	b, e := p.upTo(a[1], ioLen(a[2]), false)
	if e != 0 {
		return fail(e)
	}
	// The address of a connected stream socket is ignored, once checked.
	if a[4] != 0 {
		l := int32(a[5])
		if l < 0 || l > maxSockaddr {
			return fail(unix.EINVAL)
		}
		if _, e := p.rmem(a[4], uint64(l)); e != 0 {
			return fail(e)
		}
	}
	return p.send(f, [][]byte{b}, a[3])
}

// completed says whether r is the calling thread's own successful answer
// (not a switch to another thread, a re-execution or an error).
func completed(r Result) bool {
	return r.Action == ActionContinue && r.Next == 0 && !r.Restart && r.Ret < 1<<64-4096
}

// msghdr is struct msghdr on x86-64.
type msghdr struct {
	name       uint64
	namelen    int32
	iov        uint64
	iovlen     uint64
	control    uint64
	controllen uint64
	flags      int32
}

func decodeMsghdr(b []byte) msghdr {
	return msghdr{
		name: le.Uint64(b), namelen: int32(le.Uint32(b[8:])),
		iov: le.Uint64(b[16:]), iovlen: le.Uint64(b[24:]),
		control: le.Uint64(b[32:]), controllen: le.Uint64(b[40:]),
		flags: int32(le.Uint32(b[48:])),
	}
}

// msg reads the msghdr at addr and its iovecs (buffers writable for
// recvmsg), as ___sys_sendmsg and ___sys_recvmsg check them.
func (p *Process) msg(addr uint64, recv bool) (msghdr, [][]byte, unix.Errno) {
	b, e := p.mem(addr, msghdrLen, recv)
	if e != 0 {
		return msghdr{}, nil, e
	}
	m := decodeMsghdr(b)
	if m.name != 0 && m.namelen < 0 {
		return msghdr{}, nil, unix.EINVAL
	}
	if m.iovlen > maxIOV {
		return msghdr{}, nil, unix.EMSGSIZE
	}
	bufs, e := p.iovecs(m.iov, m.iovlen, recv)
	if e != 0 {
		return msghdr{}, nil, e
	}
	if !recv && m.name != 0 {
		if m.namelen > maxSockaddr {
			return msghdr{}, nil, unix.EINVAL
		}
		if _, e := p.rmem(m.name, uint64(m.namelen)); e != 0 {
			return msghdr{}, nil, e
		}
	}
	if !recv && m.controllen != 0 {
		if m.controllen > maxControl {
			return msghdr{}, nil, unix.ENOBUFS
		}
		c, e := p.rmem(m.control, m.controllen)
		if e != 0 {
			return msghdr{}, nil, e
		}
		if e := checkCmsgs(c); e != 0 {
			return msghdr{}, nil, e
		}
	}
	return m, bufs, 0
}

// checkCmsgs walks sendmsg's ancillary data. A stream socket here takes
// none: a malformed header or any SOL_SOCKET message (SCM_RIGHTS,
// SCM_CREDENTIALS, timestamping) is EINVAL; other levels are skipped, as
// Linux's TCP skips them.
func checkCmsgs(c []byte) unix.Errno {
	const hdr = 16 // struct cmsghdr: size_t len, int level, int type
	for len(c) >= hdr {
		n := le.Uint64(c)
		if n < hdr || n > uint64(len(c)) {
			return unix.EINVAL
		}
		if int32(le.Uint32(c[8:])) == unix.SOL_SOCKET {
			return unix.EINVAL
		}
		step := (n + 7) &^ 7 // CMSG_ALIGN
		if step >= uint64(len(c)) {
			break
		}
		c = c[step:]
	}
	return 0
}

func sysSendmsg(p *Process, a [6]uint64) Result {
	f, _, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	_, bufs, e := p.msg(a[1], false)
	if e != 0 {
		return fail(e)
	}
	return p.send(f, bufs, a[2])
}

func sysRecvmsg(p *Process, a [6]uint64) Result {
	f, _, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	_, bufs, e := p.msg(a[1], true)
	if e != 0 {
		return fail(e)
	}
	r := p.recv(unix.SYS_RECVMSG, f, bufs, a[2])
	if completed(r) {
		// No source address, no ancillary data, no flags.
		b, _ := p.wmem(a[1], msghdrLen) // checked by msg
		le.PutUint32(b[8:], 0)
		le.PutUint64(b[40:], 0)
		le.PutUint32(b[48:], 0)
	}
	return r
}

// iovWriter fills a list of buffers in order.
type iovWriter struct {
	bufs [][]byte
	n    int // bytes written
}

func (w *iovWriter) write(b []byte) int {
	done := 0
	for len(w.bufs) > 0 && len(b) > 0 {
		k := copy(w.bufs[0], b)
		w.bufs[0], b, done = w.bufs[0][k:], b[k:], done+k
		if len(w.bufs[0]) == 0 {
			w.bufs = w.bufs[1:]
		}
	}
	w.n += done
	return done
}

// next is the buffer the next host read fills.
func (w *iovWriter) next() []byte {
	for len(w.bufs) > 0 && len(w.bufs[0]) == 0 {
		w.bufs = w.bufs[1:]
	}
	if len(w.bufs) == 0 {
		return nil
	}
	return w.bufs[0]
}

func (w *iovWriter) advance(k int) {
	w.bufs[0] = w.bufs[0][k:]
	w.n += k
}

// recv serves read, readv, recvfrom and recvmsg on a socket: first what
// was read ahead, then the client's stream (one host read, or as many as
// fill the buffers with MSG_WAITALL). With nothing to give, a connection
// whose client has sent everything without closing makes the caller wait
// (EAGAIN if it may not).
func (p *Process) recv(nr uint64, f *ofile, bufs [][]byte, flags uint64) Result {
	s := f.sock
	switch {
	case flags&msgOOB != 0:
		return fail(unix.EINVAL) // no urgent data, ever
	case flags&msgErrqueue != 0:
		return fail(unix.EAGAIN) // nothing is ever queued there
	case flags&msgTrunc != 0:
		return fail(unix.EOPNOTSUPP)
	case s.state != sConn:
		return fail(unix.ENOTCONN)
	}
	if e := s.err; e != 0 {
		s.err = 0
		return fail(e)
	}
	want := 0
	for _, b := range bufs {
		want += len(b)
	}
	if want == 0 {
		return ok(0)
	}
	if s.template && len(s.rx) == 0 {
		if r, ok := p.templateWait(nr, s); ok {
			return r
		}
	}
	w := iovWriter{bufs: bufs}
	more := func() bool { return !s.ended && !s.rdShut }
	if flags&msgPeek != 0 {
		if len(s.rx) == 0 && more() {
			buf := make([]byte, min(want, maxConnBuf))
			n, err := p.hostRead(s, buf)
			if err != nil && n == 0 {
				return result(0, err)
			}
			s.rx = buf[:n:n]
			s.err = errnoOf(err)
		}
		w.write(s.rx)
	} else {
		if len(s.rx) > 0 {
			s.rx = s.rx[w.write(s.rx):]
			if len(s.rx) == 0 {
				s.rx = nil
			}
		}
		for w.next() != nil && more() && (w.n == 0 || flags&msgWaitall != 0) {
			n, err := p.hostRead(s, w.next())
			w.advance(n)
			if err != nil {
				if w.n == 0 {
					return result(0, err)
				}
				s.err = errnoOf(err) // the next call's
				break
			}
		}
	}
	switch {
	case w.n > 0:
		return ok(uint64(w.n))
	case s.fin || s.rdShut || s.gone:
		return ok(0) // end of stream
	case f.flags&unix.O_NONBLOCK != 0 || flags&msgDontwait != 0:
		return fail(unix.EAGAIN)
	}
	return p.blockIO(nr, p.timeout(s, optRcvtimeo), errno(unix.EAGAIN))
}

// hostRead reads the client's stream into b (which is not empty). The end
// of Request marks the connection ended (and at its FIN with HalfClose);
// a reset is ECONNRESET; any other reader error stops the run.
func (p *Process) hostRead(s *socket, b []byte) (int, error) {
	h := p.st.net.host(s)
	if h == nil {
		s.ended, s.fin = true, true // a copy's connection: its client is not here
		return 0, nil
	}
	// An io.Reader may return 0, nil; a few retries tell that apart from
	// one that will never produce anything (then: the client is done).
	for range 100 {
		n, err := h.r.Read(b)
		if n < 0 || n > len(b) {
			return 0, fmt.Errorf("reading a connection: the reader returned %d for %d bytes", n, len(b))
		}
		var e unix.Errno
		switch {
		case errors.Is(err, io.EOF):
			s.ended = true
			if h.halfClose {
				s.fin = true
				p.ioChanged()
			}
			return n, nil
		case errors.As(err, &e) && e == unix.ECONNRESET:
			s.ended, s.fin, s.gone = true, true, true
			p.ioChanged()
			return n, e
		case err != nil && n == 0:
			return 0, fmt.Errorf("reading a connection: %w", err)
		case n > 0:
			return n, nil
		}
	}
	s.ended = true
	return 0, nil
}

// send serves write, writev, sendto and sendmsg on a socket: the bytes go
// to the client's Response as they are written.
func (p *Process) send(f *ofile, bufs [][]byte, flags uint64) Result {
	s := f.sock
	nosig := flags&msgNosignal != 0
	if flags&msgOOB != 0 {
		return fail(unix.EOPNOTSUPP)
	}
	if s.state != sConn {
		return p.epipe(nosig) // as Linux's TCP answers an unconnected socket
	}
	if e := s.err; e != 0 {
		s.err = 0
		return fail(e)
	}
	h := p.st.net.host(s)
	if h != nil && h.template {
		return stop(ErrTemplateWritten)
	}
	if s.wrShut || s.gone || h == nil {
		return p.epipe(nosig)
	}
	total := 0
	for _, b := range bufs {
		if len(b) == 0 {
			continue // a zero-length write reaches nobody
		}
		n, err := h.w.Write(b)
		if n < 0 || n > len(b) {
			n, err = 0, fmt.Errorf("the writer returned %d for %d bytes", n, len(b))
		} else if err == nil && n < len(b) {
			err = io.ErrShortWrite
		}
		total += n
		if err == nil {
			continue
		}
		var e unix.Errno
		if errors.As(err, &e) && (e == unix.EPIPE || e == unix.ECONNRESET) {
			s.gone, s.ended, s.fin = true, true, true
			p.ioChanged()
			switch {
			case total > 0:
				return ok(uint64(total))
			case e == unix.EPIPE:
				return p.epipe(nosig)
			}
			return fail(e)
		}
		return stop(fmt.Errorf("writing a connection's response: %w", err))
	}
	return ok(uint64(total))
}

// errnoOf is the errno err carries, 0 if none.
func errnoOf(err error) unix.Errno {
	var e unix.Errno
	errors.As(err, &e)
	return e
}

func (p *Process) epipe(nosig bool) Result {
	if nosig {
		return fail(unix.EPIPE)
	}
	return result(0, p.sigpipe())
}

// sockReadiness is what s would report to poll or epoll now.
func sockReadiness(s *socket) uint32 {
	const in, out = epollIn | unix.EPOLLRDNORM, epollOut | unix.EPOLLWRNORM
	switch s.state {
	case sListen:
		if len(s.queue) > 0 {
			return in
		}
		return 0
	case sConn:
		// Readable while the client may still send (a read then waits on
		// the host for its bytes), when bytes are read ahead, and at the
		// end of the stream; always writable, even shut down (the write
		// fails at once), as Linux's tcp_poll says.
		r := uint32(out)
		closed := s.fin || s.rdShut || s.gone
		if len(s.rx) > 0 || !s.ended || closed {
			r |= in
		}
		if closed {
			r |= epollRdhup
			if s.wrShut || s.gone {
				r |= epollHup
			}
		}
		if s.err != 0 {
			r |= epollErr
		}
		return r
	}
	return out | epollHup // never connected: Linux's TCP_CLOSE state
}

// watchesListener says whether f is a listening socket and events ask
// for its readability: a wait on it is a wait for a connection.
func watchesListener(f *ofile, events uint32) bool {
	return f.sock != nil && f.sock.state == sListen && events&(epollIn|unix.EPOLLRDNORM) != 0
}

func sockIoctl(p *Process, f *ofile, a [6]uint64) Result {
	const siocoutq, siocatmark = 0x5411, 0x8905
	s := f.sock
	switch uint32(a[1]) {
	case fionread: // SIOCINQ
		if s.state == sListen {
			return fail(unix.EINVAL)
		}
		if _, e := p.wmem(a[2], 4); e != 0 {
			return fail(e)
		}
		if s.state == sConn && len(s.rx) == 0 && !s.ended && !s.rdShut {
			// What is readable is what the client has sent: read it ahead.
			buf := make([]byte, maxConnBuf)
			n, err := p.hostRead(s, buf)
			if err != nil && n == 0 {
				return result(0, err)
			}
			s.rx = buf[:n:n]
			s.err = errnoOf(err)
		}
		return okOrFail(p.put32(a[2], uint32(len(s.rx))))
	case siocoutq, siocatmark:
		return okOrFail(p.put32(a[2], 0)) // nothing unsent, no urgent mark
	}
	return sysIoctl(p, a)
}

// ---- options ----

type optKind uint8

const (
	oBool   optKind = iota // int, kept as 0 or 1
	oInt                   // int in [min, max]
	oBuf                   // SO_RCVBUF, SO_SNDBUF: doubled and clamped, as Linux does
	oLinger                // struct linger
	oTime                  // struct timeval, kept in nanoseconds
	oName                  // TCP_CONGESTION
	oGet                   // read-only
	oPriv                  // needs a capability the program does not have: EPERM
)

type optSpec struct {
	kind     optKind
	def      int64
	min, max int64
	reset    bool // -1 also allowed: back to the default
	v6       bool // IPPROTO_IPV6: AF_INET6 sockets only
}

func optKey(level, name int32) uint64 { return uint64(uint32(level))<<32 | uint64(uint32(name)) }

var (
	optReuseAddr = optKey(unix.SOL_SOCKET, unix.SO_REUSEADDR)
	optReusePort = optKey(unix.SOL_SOCKET, unix.SO_REUSEPORT)
	optRcvtimeo  = optKey(unix.SOL_SOCKET, unix.SO_RCVTIMEO)
	optV6only    = optKey(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
)

// congestion is what TCP_CONGESTION may name (Linux's unprivileged
// choices by default), by the value kept.
var congestion = []string{"cubic", "reno"}

// sockOpts are the options served: set ones are remembered and read back,
// and the few this package acts on are SO_REUSEADDR, SO_REUSEPORT and
// IPV6_V6ONLY (bind), SO_RCVTIMEO (blocking accept and reads). Defaults
// are Linux's.
var sockOpts = map[uint64]optSpec{
	optReuseAddr: {kind: oBool},
	optReusePort: {kind: oBool},
	optKey(unix.SOL_SOCKET, unix.SO_KEEPALIVE):            {kind: oBool},
	optKey(unix.SOL_SOCKET, unix.SO_BROADCAST):            {kind: oBool},
	optKey(unix.SOL_SOCKET, unix.SO_DONTROUTE):            {kind: oBool},
	optKey(unix.SOL_SOCKET, unix.SO_OOBINLINE):            {kind: oBool},
	optKey(unix.SOL_SOCKET, unix.SO_ZEROCOPY):             {kind: oBool},
	optKey(unix.SOL_SOCKET, unix.SO_RCVBUF):               {kind: oBuf, def: 131072},
	optKey(unix.SOL_SOCKET, unix.SO_SNDBUF):               {kind: oBuf, def: 16384},
	optKey(unix.SOL_SOCKET, unix.SO_RCVLOWAT):             {kind: oInt, def: 1, min: 0, max: math.MaxInt32},
	optKey(unix.SOL_SOCKET, unix.SO_PRIORITY):             {kind: oInt, min: 0, max: 6},
	optKey(unix.SOL_SOCKET, unix.SO_INCOMING_CPU):         {kind: oInt, min: -1, max: math.MaxInt32, def: -1},
	optKey(unix.SOL_SOCKET, unix.SO_LINGER):               {kind: oLinger},
	optRcvtimeo:                                           {kind: oTime},
	optKey(unix.SOL_SOCKET, unix.SO_SNDTIMEO):             {kind: oTime},
	optKey(unix.SOL_SOCKET, unix.SO_SNDLOWAT):             {kind: oGet, def: 1},
	optKey(unix.SOL_SOCKET, unix.SO_TYPE):                 {kind: oGet, def: unix.SOCK_STREAM},
	optKey(unix.SOL_SOCKET, unix.SO_PROTOCOL):             {kind: oGet, def: unix.IPPROTO_TCP},
	optKey(unix.SOL_SOCKET, unix.SO_DOMAIN):               {kind: oGet},
	optKey(unix.SOL_SOCKET, unix.SO_ERROR):                {kind: oGet},
	optKey(unix.SOL_SOCKET, unix.SO_ACCEPTCONN):           {kind: oGet},
	optKey(unix.SOL_SOCKET, unix.SO_MARK):                 {kind: oPriv},
	optKey(unix.SOL_SOCKET, unix.SO_BINDTODEVICE):         {kind: oPriv},
	optKey(unix.IPPROTO_TCP, unix.TCP_NODELAY):            {kind: oBool},
	optKey(unix.IPPROTO_TCP, unix.TCP_CORK):               {kind: oBool},
	optKey(unix.IPPROTO_TCP, unix.TCP_QUICKACK):           {kind: oBool, def: 1},
	optKey(unix.IPPROTO_TCP, unix.TCP_MAXSEG):             {kind: oInt, def: 536, min: 0, max: 65535},
	optKey(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE):           {kind: oInt, def: 7200, min: 1, max: 32767},
	optKey(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL):          {kind: oInt, def: 75, min: 1, max: 32767},
	optKey(unix.IPPROTO_TCP, unix.TCP_KEEPCNT):            {kind: oInt, def: 9, min: 1, max: 127},
	optKey(unix.IPPROTO_TCP, unix.TCP_SYNCNT):             {kind: oInt, def: 6, min: 1, max: 127},
	optKey(unix.IPPROTO_TCP, unix.TCP_LINGER2):            {kind: oInt, def: 60, min: math.MinInt32, max: math.MaxInt32},
	optKey(unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT):       {kind: oInt, min: math.MinInt32, max: math.MaxInt32},
	optKey(unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP):       {kind: oInt, min: 0, max: math.MaxInt32},
	optKey(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT):       {kind: oInt, min: 0, max: math.MaxInt32},
	optKey(unix.IPPROTO_TCP, unix.TCP_FASTOPEN):           {kind: oInt, min: 0, max: math.MaxInt32},
	optKey(unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT):      {kind: oInt, min: math.MinInt32, max: math.MaxInt32},
	optKey(unix.IPPROTO_TCP, unix.TCP_CONGESTION):         {kind: oName},
	optKey(unix.IPPROTO_IP, unix.IP_TOS):                  {kind: oInt, min: math.MinInt32, max: math.MaxInt32},
	optKey(unix.IPPROTO_IP, unix.IP_TTL):                  {kind: oInt, def: 64, min: 1, max: 255, reset: true},
	optKey(unix.IPPROTO_IP, unix.IP_FREEBIND):             {kind: oBool},
	optKey(unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT): {kind: oBool},
	optKey(unix.IPPROTO_IP, unix.IP_TRANSPARENT):          {kind: oPriv},
	optV6only: {kind: oBool, v6: true},
	optKey(unix.IPPROTO_IPV6, unix.IPV6_TCLASS):             {kind: oInt, min: 0, max: 255, reset: true, v6: true},
	optKey(unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS):       {kind: oInt, def: 64, min: 0, max: 255, reset: true, v6: true},
	optKey(unix.IPPROTO_IPV6, unix.IPV6_FREEBIND):           {kind: oBool, v6: true},
	optKey(unix.IPPROTO_IPV6, unix.IPV6_RECVERR):            {kind: oBool, v6: true},
	optKey(unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER):       {kind: oInt, min: 0, max: 5, v6: true},
	optKey(unix.IPPROTO_IP, unix.IP_MTU_DISCOVER):           {kind: oInt, min: 0, max: 5},
	optKey(unix.IPPROTO_IP, unix.IP_RECVERR):                {kind: oBool},
	optKey(unix.SOL_SOCKET, unix.SO_TIMESTAMP):              {kind: oBool},
	optKey(unix.SOL_SOCKET, unix.SO_TIMESTAMPNS):            {kind: oBool},
	optKey(unix.SOL_SOCKET, unix.SO_BUSY_POLL):              {kind: oInt, min: 0, max: math.MaxInt32},
	optKey(unix.IPPROTO_TCP, unix.TCP_THIN_LINEAR_TIMEOUTS): {kind: oBool},
}

// opt is the value of option key on s (its default when not set).
func (s *socket) opt(key uint64) int64 {
	if v, ok := s.opts[key]; ok {
		return v
	}
	return sockOpts[key].def
}

func specOf(s *socket, level, name int32) (optSpec, unix.Errno) {
	spec, known := sockOpts[optKey(level, name)]
	if !known || spec.v6 && s.family != unix.AF_INET6 {
		return optSpec{}, unix.ENOPROTOOPT
	}
	return spec, 0
}

func sysSetsockopt(p *Process, a [6]uint64) Result {
	_, s, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	level, name, optval, optlen := int32(a[1]), int32(a[2]), a[3], int32(a[4])
	spec, e := specOf(s, level, name)
	if e != 0 {
		return fail(e)
	}
	size := int32(4)
	switch spec.kind {
	case oGet:
		return fail(unix.ENOPROTOOPT)
	case oPriv:
		return fail(unix.EPERM)
	case oLinger:
		size = 8
	case oTime:
		size = 16
	case oName:
		size = min(max(optlen, 1), 15) // TCP_CA_NAME_MAX - 1
	}
	if optlen < size {
		return fail(unix.EINVAL)
	}
	b, e := p.rmem(optval, uint64(size))
	if e != 0 {
		return fail(e)
	}
	var v int64
	i := int64(int32(le.Uint32(b)))
	switch spec.kind {
	case oBool:
		if i != 0 {
			v = 1
		}
	case oInt:
		switch {
		case i == -1 && spec.reset:
			v = spec.def
		case i < spec.min || i > spec.max:
			return fail(unix.EINVAL)
		default:
			v = i
		}
	case oBuf:
		const memMax, minBuf = 212992, 4608 // net.core.[rw]mem_max, SOCK_MIN_SNDBUF
		v = int64(max(min(uint32(i), memMax)*2, minBuf))
	case oLinger:
		on := int64(0)
		if i != 0 {
			on = 1
		}
		v = on<<32 | int64(le.Uint32(b[4:]))
	case oTime:
		sec, usec := int64(le.Uint64(b)), int64(le.Uint64(b[8:]))
		switch {
		case usec < 0 || usec >= 1e6:
			return fail(unix.EDOM)
		case sec < 0:
			v = 0 // Linux treats a negative timeout as none
		case sec >= math.MaxInt64/1_000_000_000-1:
			v = math.MaxInt64
		default:
			v = sec*1e9 + usec*1e3
		}
	case oName:
		nm := string(b)
		if k := bytes.IndexByte(b, 0); k >= 0 {
			nm = string(b[:k])
		}
		v = -1
		for k, c := range congestion {
			if c == nm {
				v = int64(k)
			}
		}
		if v < 0 {
			return fail(unix.ENOENT)
		}
	}
	if optKey(level, name) == optV6only && s.bound {
		return fail(unix.EINVAL) // fixed once bound
	}
	if s.opts == nil {
		s.opts = map[uint64]int64{}
	}
	s.opts[optKey(level, name)] = v
	return ok(0)
}

func sysGetsockopt(p *Process, a [6]uint64) Result {
	_, s, e := p.sockArg(a[0])
	if e != 0 {
		return fail(e)
	}
	level, name, optval, lenp := int32(a[1]), int32(a[2]), a[3], a[4]
	spec, e := specOf(s, level, name)
	if e != 0 {
		return fail(e)
	}
	lb, e := p.wmem(lenp, 4)
	if e != 0 {
		return fail(e)
	}
	l := int32(le.Uint32(lb))
	if l < 0 {
		return fail(unix.EINVAL)
	}
	key := optKey(level, name)
	v := s.opt(key)
	var out []byte
	switch spec.kind {
	case oPriv:
		out = le.AppendUint32(nil, 0)
	case oLinger:
		out = le.AppendUint32(le.AppendUint32(nil, uint32(v>>32)), uint32(v))
	case oTime:
		out = le.AppendUint64(le.AppendUint64(nil, uint64(v/1e9)), uint64(v%1e9/1e3))
	case oName:
		out = make([]byte, 16) // TCP_CA_NAME_MAX
		copy(out, congestion[v])
	case oGet:
		switch name {
		case unix.SO_DOMAIN:
			v = int64(s.family)
		case unix.SO_ACCEPTCONN:
			if s.state == sListen {
				v = 1
			}
		case unix.SO_ERROR:
			v, s.err = int64(s.err), 0
		}
		out = le.AppendUint32(nil, uint32(v))
	default:
		out = le.AppendUint32(nil, uint32(v))
	}
	n := min(int(l), len(out))
	if e := p.put(optval, out[:n]); e != 0 {
		return fail(e)
	}
	le.PutUint32(lb, uint32(n))
	return ok(0)
}

// sysSendfile copies from a regular file (an app file or a /tmp file) to
// any writable descriptor, a socket above all: what Go's net/http does
// for files it serves (and would otherwise do itself with reads and
// writes). The copy goes through one host buffer of at most 64 KiB at a
// time; at most MAX_RW_COUNT bytes per call.
func sysSendfile(p *Process, a [6]uint64) Result {
	out, e := p.file(fdArg(a[0]))
	if e != 0 {
		return fail(e)
	}
	in, e := p.file(fdArg(a[1]))
	if e != 0 {
		return fail(e)
	}
	switch {
	case !canRead(in) || !canWrite(out):
		return fail(unix.EBADF)
	case in.n.kind != kApp && (in.n.kind != kTmp || in.n.tmp.dir):
		return fail(unix.EINVAL) // Linux wants a file it could map
	case out.flags&unix.O_APPEND != 0:
		return fail(unix.EINVAL)
	}
	offp, count := a[2], ioLen(a[3])
	off := in.off
	if offp != 0 {
		v, e := p.get64(offp)
		if e != 0 {
			return fail(e)
		}
		if int64(v) < 0 {
			return fail(unix.EINVAL)
		}
		if _, e := p.wmem(offp, 8); e != 0 {
			return fail(e)
		}
		off = int64(v)
	}
	var buf []byte
	total := uint64(0)
	var last Result
	for total < count {
		if buf == nil {
			buf = make([]byte, min(count, maxConnBuf))
		}
		n, err := p.readAt(in, buf[:min(uint64(len(buf)), count-total)], off)
		if err != nil && n == 0 {
			last = result(0, err)
			break
		}
		if n == 0 {
			break // end of file
		}
		if out.sock != nil {
			last = p.send(out, [][]byte{buf[:n]}, 0)
		} else {
			last = result(p.write(out, buf[:n], 0, false))
		}
		if !completed(last) {
			break
		}
		w := last.Ret
		total += w
		off += int64(w)
		if w < uint64(n) {
			break
		}
	}
	// A run-ending answer (a failed writer, SIGPIPE) ends it whatever was
	// copied; an errno is the answer only if nothing was.
	if last.Action != ActionContinue || total == 0 && !completed(last) {
		return last
	}
	if offp != 0 {
		p.put64(offp, uint64(off)) // checked above
	} else {
		in.off = off
	}
	return ok(total)
}

// templateWait is the answer of a read that needs the template
// connection's first bytes: in the snapshot run (the template still has
// its placeholder host side) the ready point, to be re-executed in every
// copy once Attach has given it its client. ok is false in a copy, where
// the connection is an ordinary one.
func (p *Process) templateWait(nr uint64, s *socket) (Result, bool) {
	if h := p.st.net.host(s); h == nil || !h.template {
		return Result{}, false
	}
	if s.done || s.wrShut || s.gone || s.rdShut {
		// It already finished with the connection: a copy could not be
		// given its client there. The snapshot is taken at the accept.
		return stop(ErrTemplateWritten), true
	}
	p.st.readied = true
	p.st.readyAt = p.cfg.Monotonic()
	return Result{Action: ActionReady, Ret: nr, Restart: true}, true
}

// Attach gives a copy of a process snapshotted at its template
// connection's first read (Conn.Template) the request's client: the
// connection the program accepted at deploy now reads c.Request and
// writes c.Response (c.Peer and c.Local are the template's: the program
// took them at accept). The monitor calls it before resuming the copy,
// whose read is re-executed.
func (p *Process) Attach(c Conn) error {
	if c.Request == nil || c.Response == nil {
		return ErrBadConn
	}
	var found *socket
	for _, d := range p.st.fds {
		if d == nil || d.f.sock == nil {
			continue
		}
		if s := d.f.sock; s.template && s.state == sConn && s.conn == 0 && !s.done {
			if found != nil && found != s {
				return fmt.Errorf("%w: two of them", ErrNoTemplate)
			}
			found = s
		}
	}
	if found == nil {
		return ErrNoTemplate
	}
	n := &p.st.net
	found.conn = n.addHost(hostConn{r: c.Request, w: c.Response, halfClose: c.HalfClose})
	found.ended, found.fin, found.gone = false, false, false
	p.ioChanged()
	return nil
}
