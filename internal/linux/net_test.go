package linux

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// client is the monitor's side of one test connection: the request it
// sends, the response it receives, and whether the program closed it.
type client struct {
	req    io.Reader
	out    bytes.Buffer
	closes int
	werr   error // what Write fails with, if set
}

func (c *client) Write(b []byte) (int, error) {
	if c.werr != nil {
		return 0, c.werr
	}
	return c.out.Write(b)
}

func (c *client) Close() error { c.closes++; return nil }

func newClient(req string) *client { return &client{req: strings.NewReader(req)} }

func (c *client) conn(peer string) Conn {
	cn := Conn{Request: c.req, Response: c}
	if peer != "" {
		cn.Peer = netip.MustParseAddrPort(peer)
	}
	return cn
}

func (e *env) sockaddr4(ip [4]byte, port uint16) uint64 {
	a := e.buf(sinLen)
	copy(e.mem[a:], encodeSockaddr(sockAddr{ip: netip.AddrFrom4(ip), port: port}, unix.AF_INET))
	return a
}

func (e *env) sockaddr6(ip netip.Addr, port uint16) uint64 {
	a := e.buf(sin6Len)
	copy(e.mem[a:], encodeSockaddr(sockAddr{ip: ip, port: port}, unix.AF_INET6))
	return a
}

// do makes a call and re-executes it for as long as the answer is "run
// this same call again on this thread" (a wait that was woken).
func (e *env) do(nr uint64, args ...uint64) Result {
	e.t.Helper()
	for range 16 {
		r := e.call(nr, args...)
		if r.Action != ActionContinue || !r.Restart || r.Next != 0 || r.Ret != nr {
			return r
		}
	}
	e.t.Fatalf("%s re-executed 16 times", sysName(nr))
	return Result{}
}

// listener makes a socket of family listening on port (0: any) with the
// socket flags, and returns its descriptor.
func (e *env) listener(family, port, flags uint64) uint64 {
	e.t.Helper()
	s := e.ret(unix.SYS_SOCKET, family, unix.SOCK_STREAM|flags, 0)
	addr, l := e.sockaddr4([4]byte{}, uint16(port)), uint64(sinLen)
	if family == unix.AF_INET6 {
		addr, l = e.sockaddr6(netip.IPv6Unspecified(), uint16(port)), sin6Len
	}
	e.want(0, unix.SYS_BIND, s, addr, l)
	e.want(0, unix.SYS_LISTEN, s, 16)
	return s
}

// name reads back the address a getsockname-like call wrote.
func (e *env) name(nr, fd uint64, family uint16) (netip.AddrPort, int) {
	e.t.Helper()
	addr, lenp := e.buf(sin6Len), e.buf(4)
	le.PutUint32(e.mem[lenp:], sin6Len)
	e.want(0, nr, fd, addr, lenp)
	n := int(le.Uint32(e.mem[lenp:]))
	sa, er := parseSockaddr(e.bytes(addr, uint64(n)), family)
	if er != 0 {
		e.t.Fatalf("%s wrote a bad address: %v", sysName(nr), er)
	}
	return netip.AddrPortFrom(sa.ip, sa.port), n
}

func TestSocketCreate(t *testing.T) {
	e := newEnv(t, "")
	s := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if fl := e.ret(unix.SYS_FCNTL, s, unix.F_GETFL); fl&unix.O_NONBLOCK == 0 || fl&unix.O_ACCMODE != unix.O_RDWR {
		t.Fatalf("F_GETFL %#x", fl)
	}
	e.want(unix.FD_CLOEXEC, unix.SYS_FCNTL, s, unix.F_GETFD)
	st := e.buf(144)
	e.want(0, unix.SYS_FSTAT, s, st)
	if mode := le.Uint32(e.mem[st+24:]); mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Fatalf("st_mode %#o", mode)
	}
	e.wantErr(unix.ESPIPE, unix.SYS_LSEEK, s, 0, 0)
	e.wantErr(unix.ESPIPE, unix.SYS_PREAD64, s, e.buf(8), 8, 0)
	e.wantErr(unix.EINVAL, unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM|0x100, 0)
	e.wantErr(unix.EINVAL, unix.SYS_SOCKET, unix.AF_INET, 15, 0)
	e.wantErr(unix.EAFNOSUPPORT, unix.SYS_SOCKET, unix.AF_UNIX, unix.SOCK_STREAM, 0)
	e.wantErr(unix.EAFNOSUPPORT, unix.SYS_SOCKET, unix.AF_NETLINK, unix.SOCK_RAW, 0)
	e.wantErr(unix.EAFNOSUPPORT, unix.SYS_SOCKET, neg(1), unix.SOCK_STREAM, 0)
	e.wantErr(unix.ESOCKTNOSUPPORT, unix.SYS_SOCKET, unix.AF_INET6, unix.SOCK_DGRAM, 0)
	e.wantErr(unix.ESOCKTNOSUPPORT, unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	e.wantErr(unix.EPROTONOSUPPORT, unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	e.wantErr(unix.EAFNOSUPPORT, unix.SYS_SOCKETPAIR, unix.AF_UNIX, unix.SOCK_STREAM, 0, e.buf(8))
	e.wantErr(unix.EOPNOTSUPP, unix.SYS_SOCKETPAIR, unix.AF_INET, unix.SOCK_STREAM, 0, e.buf(8))
	if u := e.p.Unknown(); u["socket"] != 6 || u["socketpair"] != 2 {
		t.Fatalf("refusals counted %v", u)
	}
	// Calls on what is not a socket, or not a descriptor.
	for _, nr := range []uint64{unix.SYS_BIND, unix.SYS_LISTEN, unix.SYS_ACCEPT4, unix.SYS_CONNECT, unix.SYS_GETSOCKNAME,
		unix.SYS_GETPEERNAME, unix.SYS_SHUTDOWN, unix.SYS_SETSOCKOPT, unix.SYS_GETSOCKOPT, unix.SYS_RECVFROM,
		unix.SYS_SENDTO, unix.SYS_RECVMSG, unix.SYS_SENDMSG} {
		e.wantErr(unix.ENOTSOCK, nr, 0, 0, 0, 0, 0, 0)
		e.wantErr(unix.EBADF, nr, 77, 0, 0, 0, 0, 0)
		e.wantErr(unix.EBADF, nr, neg(1), 0, 0, 0, 0, 0)
	}
	e.want(0, unix.SYS_CLOSE, s)
	if e.p.st.net.sockets != 0 {
		t.Fatalf("%d sockets after close", e.p.st.net.sockets)
	}
}

// Thousands of sockets: the process's bound says no, the descriptors and
// the host memory behind them stay bounded, and closing frees them all.
func TestSocketBounds(t *testing.T) {
	e := newEnv(t, "")
	var fds []uint64
	refused := 0
	for range 5000 {
		r := e.ret(unix.SYS_SOCKET, unix.AF_INET6, unix.SOCK_STREAM, 0)
		if r == errno(unix.EMFILE) {
			refused++
			continue
		}
		fds = append(fds, r)
	}
	if len(fds) != maxSockets || refused != 5000-maxSockets {
		t.Fatalf("%d sockets made, %d refused", len(fds), refused)
	}
	// Listeners are bounded on their own.
	listening := 0
	for _, fd := range fds {
		if e.ret(unix.SYS_LISTEN, fd, 4096) == 0 {
			listening++
		} else if r := e.ret(unix.SYS_LISTEN, fd, 1); r != errno(unix.ENOBUFS) {
			t.Fatalf("listen past the bound: %s", show(r))
		}
	}
	if listening != maxListeners {
		t.Fatalf("%d listeners", listening)
	}
	// A backlog is capped however large the program asks.
	for fd := range e.p.sockets {
		if fd.state == sListen && fd.backlog != maxBacklog {
			t.Fatalf("backlog %d", fd.backlog)
		}
	}
	for _, fd := range fds {
		e.want(0, unix.SYS_CLOSE, fd)
	}
	if n := &e.p.st.net; n.sockets != 0 || n.listeners != 0 {
		t.Fatalf("%d sockets, %d listeners after closing all", n.sockets, n.listeners)
	}
	// And epoll instances, thousands of them, are refused past theirs.
	made := 0
	for range 2000 {
		if r := e.ret(unix.SYS_EPOLL_CREATE1, 0); r < 1<<63 {
			made++
		} else if r != errno(unix.EMFILE) {
			t.Fatalf("epoll_create1: %s", show(r))
		}
	}
	if made != maxEpolls {
		t.Fatalf("%d epoll instances", made)
	}
}

func TestBindAndNames(t *testing.T) {
	e := newEnv(t, "")
	s := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	// Unbound: the wildcard, port 0.
	if a, n := e.name(unix.SYS_GETSOCKNAME, s, unix.AF_INET); a != netip.MustParseAddrPort("0.0.0.0:0") || n != sinLen {
		t.Fatalf("unbound name %v (%d bytes)", a, n)
	}
	e.wantErr(unix.ENOTCONN, unix.SYS_GETPEERNAME, s, e.buf(16), e.buf(4))
	sa := e.sockaddr4([4]byte{192, 0, 2, 7}, 8080)
	e.wantErr(unix.EINVAL, unix.SYS_BIND, s, sa, 15)
	e.wantErr(unix.EINVAL, unix.SYS_BIND, s, sa, neg(1))
	e.wantErr(unix.EINVAL, unix.SYS_BIND, s, sa, 129)
	e.wantErr(unix.EFAULT, unix.SYS_BIND, s, tMem-8, 16)
	e.wantErr(unix.EFAULT, unix.SYS_BIND, s, 0, 16)
	v6 := e.sockaddr6(netip.IPv6Loopback(), 80)
	e.wantErr(unix.EAFNOSUPPORT, unix.SYS_BIND, s, v6, sin6Len) // AF_INET6 address, AF_INET socket
	e.wantErr(unix.EADDRNOTAVAIL, unix.SYS_BIND, s, e.sockaddr4([4]byte{224, 0, 0, 1}, 80), sinLen)
	e.want(0, unix.SYS_BIND, s, sa, sinLen)
	e.wantErr(unix.EINVAL, unix.SYS_BIND, s, sa, sinLen) // bound already
	if a, _ := e.name(unix.SYS_GETSOCKNAME, s, unix.AF_INET); a != netip.MustParseAddrPort("192.0.2.7:8080") {
		t.Fatalf("bound name %v", a)
	}
	// move_addr_to_user: a short buffer gets what fits, the length the
	// whole; a negative length is EINVAL; bad pointers EFAULT.
	addr, lenp := e.buf(16), e.buf(4)
	le.PutUint32(e.mem[lenp:], 4)
	fill(e.mem[addr:addr+16], 0xee)
	e.want(0, unix.SYS_GETSOCKNAME, s, addr, lenp)
	if le.Uint32(e.mem[lenp:]) != sinLen || e.mem[addr+4] != 0xee || be.Uint16(e.mem[addr+2:]) != 8080 {
		t.Fatalf("short getsockname: len %d, %x", le.Uint32(e.mem[lenp:]), e.bytes(addr, 16))
	}
	le.PutUint32(e.mem[lenp:], uint32(neg(1)))
	e.wantErr(unix.EINVAL, unix.SYS_GETSOCKNAME, s, addr, lenp)
	le.PutUint32(e.mem[lenp:], 16)
	e.wantErr(unix.EFAULT, unix.SYS_GETSOCKNAME, s, tMem-4, lenp)
	e.wantErr(unix.EFAULT, unix.SYS_GETSOCKNAME, s, addr, tMem)

	// Another socket on the same port: in use, unless both reuse it.
	t2 := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	e.wantErr(unix.EADDRINUSE, unix.SYS_BIND, t2, e.sockaddr4([4]byte{}, 8080), sinLen)
	e.want(0, unix.SYS_BIND, t2, e.sockaddr4([4]byte{192, 0, 2, 8}, 8080), sinLen) // another address
	one := e.buf(4)
	le.PutUint32(e.mem[one:], 1)
	t3 := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	e.want(0, unix.SYS_SETSOCKOPT, t3, unix.SOL_SOCKET, unix.SO_REUSEPORT, one, 4)
	e.wantErr(unix.EADDRINUSE, unix.SYS_BIND, t3, sa, sinLen) // s does not reuse the port
	e.want(0, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_REUSEPORT, one, 4)
	e.want(0, unix.SYS_BIND, t3, sa, sinLen)
	e.want(0, unix.SYS_LISTEN, s, 8)
	e.want(0, unix.SYS_LISTEN, t3, 8) // SO_REUSEPORT: both may listen

	// SO_REUSEADDR lets a second socket bind while the first does not
	// listen, not listen beside it.
	a1 := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	a2 := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	for _, fd := range []uint64{a1, a2} {
		e.want(0, unix.SYS_SETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, one, 4)
		e.want(0, unix.SYS_BIND, fd, e.sockaddr4([4]byte{}, 9000), sinLen)
	}
	e.want(0, unix.SYS_LISTEN, a1, 8)
	e.wantErr(unix.EADDRINUSE, unix.SYS_LISTEN, a2, 8)

	// IPv6: a dual-stack wildcard takes the IPv4 port too; IPv6-only not.
	d := e.ret(unix.SYS_SOCKET, unix.AF_INET6, unix.SOCK_STREAM, 0)
	e.wantErr(unix.EADDRINUSE, unix.SYS_BIND, d, e.sockaddr6(netip.IPv6Unspecified(), 9000), sin6Len)
	e.want(0, unix.SYS_SETSOCKOPT, d, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, one, 4)
	e.wantErr(unix.EINVAL, unix.SYS_BIND, d, e.sockaddr6(netip.MustParseAddr("::ffff:127.0.0.1"), 0), sin6Len)
	e.wantErr(unix.EINVAL, unix.SYS_BIND, d, e.sockaddr6(netip.MustParseAddr("fe80::1"), 0), sin6Len)
	e.wantErr(unix.EINVAL, unix.SYS_BIND, d, e.sockaddr6(netip.IPv6Loopback(), 0), sin6LenMin-1)
	e.wantErr(unix.EAFNOSUPPORT, unix.SYS_BIND, d, e.sockaddr4([4]byte{}, 1), sin6Len)
	e.want(0, unix.SYS_BIND, d, e.sockaddr6(netip.IPv6Unspecified(), 9000), sin6LenMin)
	e.wantErr(unix.EINVAL, unix.SYS_SETSOCKOPT, d, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, one, 4) // fixed once bound

	// Port 0 is a port of the process's choosing; listen binds too.
	g := e.ret(unix.SYS_SOCKET, unix.AF_INET6, unix.SOCK_STREAM, 0)
	e.want(0, unix.SYS_BIND, g, e.sockaddr6(netip.MustParseAddr("::ffff:127.0.0.1"), 0), sin6Len) // Go's probe
	if a, n := e.name(unix.SYS_GETSOCKNAME, g, unix.AF_INET6); a.Addr() != netip.MustParseAddr("127.0.0.1") || a.Port() < ephemeralLo || a.Port() > ephemeralHi || n != sin6Len {
		t.Fatalf("ephemeral name %v", a)
	}
	h := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	e.want(0, unix.SYS_LISTEN, h, 0)
	if a, _ := e.name(unix.SYS_GETSOCKNAME, h, unix.AF_INET); !a.Addr().IsUnspecified() || a.Port() < ephemeralLo {
		t.Fatalf("autobound name %v", a)
	}
	e.wantErr(unix.EINVAL, unix.SYS_BIND, h, e.sockaddr4([4]byte{}, 0), sinLen)
	e.wantErr(unix.EINVAL, unix.SYS_ACCEPT4, t2, 0, 0, 0) // not listening
	e.wantErr(unix.EINVAL, unix.SYS_ACCEPT4, h, 0, 0, 0x10)

	// Outbound connections: checked, then refused and counted.
	e.wantErr(unix.ENETUNREACH, unix.SYS_CONNECT, t2, e.sockaddr4([4]byte{127, 0, 0, 1}, 5432), sinLen)
	e.wantErr(unix.EINVAL, unix.SYS_CONNECT, t2, e.sockaddr4([4]byte{127, 0, 0, 1}, 5432), 8)
	e.wantErr(unix.EFAULT, unix.SYS_CONNECT, t2, tMem-2, sinLen)
	e.wantErr(unix.EINVAL, unix.SYS_CONNECT, h, e.sockaddr4([4]byte{127, 0, 0, 1}, 5432), sinLen) // listening
	if u := e.p.Unknown(); u["connect"] != 1 {
		t.Fatalf("connect counted %d times", u["connect"])
	}
}

func TestSockopts(t *testing.T) {
	e := newEnv(t, "")
	s := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	val, lenp := e.buf(16), e.buf(4)
	get := func(level, name uint64) (uint32, uint32) {
		t.Helper()
		le.PutUint32(e.mem[lenp:], 16)
		e.want(0, unix.SYS_GETSOCKOPT, s, level, name, val, lenp)
		return le.Uint32(e.mem[val:]), le.Uint32(e.mem[lenp:])
	}
	set := func(level, name uint64, v uint32) uint64 {
		le.PutUint32(e.mem[val:], v)
		return e.ret(unix.SYS_SETSOCKOPT, s, level, name, val, 4)
	}
	for _, c := range []struct {
		level, name uint64
		want        uint32
	}{
		{unix.SOL_SOCKET, unix.SO_TYPE, unix.SOCK_STREAM},
		{unix.SOL_SOCKET, unix.SO_DOMAIN, unix.AF_INET},
		{unix.SOL_SOCKET, unix.SO_PROTOCOL, unix.IPPROTO_TCP},
		{unix.SOL_SOCKET, unix.SO_ERROR, 0},
		{unix.SOL_SOCKET, unix.SO_ACCEPTCONN, 0},
		{unix.SOL_SOCKET, unix.SO_RCVBUF, 131072},
		{unix.SOL_SOCKET, unix.SO_SNDBUF, 16384},
		{unix.SOL_SOCKET, unix.SO_REUSEADDR, 0},
		{unix.IPPROTO_TCP, unix.TCP_NODELAY, 0},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 7200},
		{unix.IPPROTO_IP, unix.IP_TTL, 64},
	} {
		if v, n := get(c.level, c.name); v != c.want || n != 4 {
			t.Errorf("getsockopt(%d, %d) = %d (%d bytes), want %d", c.level, c.name, v, n, c.want)
		}
	}
	// Booleans are kept as 0 or 1; ints in range; buffers doubled.
	e.want(0, unix.SYS_SETSOCKOPT, s, unix.IPPROTO_TCP, unix.TCP_NODELAY, e.buf(4), 4) // zero
	if set(unix.IPPROTO_TCP, unix.TCP_NODELAY, 7) != 0 {
		t.Fatal("TCP_NODELAY")
	}
	if v, _ := get(unix.IPPROTO_TCP, unix.TCP_NODELAY); v != 1 {
		t.Fatalf("TCP_NODELAY reads %d", v)
	}
	if set(unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1) != 0 || set(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 15) != 0 {
		t.Fatal("keepalive")
	}
	if v, _ := get(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL); v != 15 {
		t.Fatalf("TCP_KEEPINTVL reads %d", v)
	}
	if r := set(unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 0); r != errno(unix.EINVAL) {
		t.Fatalf("TCP_KEEPCNT 0: %s", show(r))
	}
	if r := set(unix.IPPROTO_IP, unix.IP_TTL, 0); r != errno(unix.EINVAL) {
		t.Fatalf("IP_TTL 0: %s", show(r))
	}
	set(unix.SOL_SOCKET, unix.SO_RCVBUF, 10000)
	if v, _ := get(unix.SOL_SOCKET, unix.SO_RCVBUF); v != 20000 {
		t.Fatalf("SO_RCVBUF reads %d", v)
	}
	set(unix.SOL_SOCKET, unix.SO_SNDBUF, 0xffffffff)
	if v, _ := get(unix.SOL_SOCKET, unix.SO_SNDBUF); v != 2*212992 {
		t.Fatalf("huge SO_SNDBUF reads %d", v)
	}
	// Structs: SO_LINGER, SO_RCVTIMEO; TCP_CONGESTION by name.
	le.PutUint32(e.mem[val:], 5)
	le.PutUint32(e.mem[val+4:], 30)
	e.want(0, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_LINGER, val, 8)
	e.wantErr(unix.EINVAL, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_LINGER, val, 4)
	clear(e.mem[val : val+16])
	le.PutUint32(e.mem[lenp:], 8)
	e.want(0, unix.SYS_GETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_LINGER, val, lenp)
	if le.Uint32(e.mem[val:]) != 1 || le.Uint32(e.mem[val+4:]) != 30 {
		t.Fatalf("SO_LINGER %x", e.bytes(val, 8))
	}
	le.PutUint64(e.mem[val:], 2)
	le.PutUint64(e.mem[val+8:], 500000)
	e.want(0, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, val, 16)
	clear(e.mem[val : val+16])
	le.PutUint32(e.mem[lenp:], 16)
	e.want(0, unix.SYS_GETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, val, lenp)
	if le.Uint64(e.mem[val:]) != 2 || le.Uint64(e.mem[val+8:]) != 500000 {
		t.Fatalf("SO_RCVTIMEO %x", e.bytes(val, 16))
	}
	le.PutUint64(e.mem[val+8:], 1e6)
	e.wantErr(unix.EDOM, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, val, 16)
	name := e.str("reno")
	e.want(0, unix.SYS_SETSOCKOPT, s, unix.IPPROTO_TCP, unix.TCP_CONGESTION, name, 4)
	e.wantErr(unix.ENOENT, unix.SYS_SETSOCKOPT, s, unix.IPPROTO_TCP, unix.TCP_CONGESTION, e.str("bbr2x"), 5)
	le.PutUint32(e.mem[lenp:], 16)
	e.want(0, unix.SYS_GETSOCKOPT, s, unix.IPPROTO_TCP, unix.TCP_CONGESTION, val, lenp)
	if got := strings.TrimRight(string(e.bytes(val, 16)), "\x00"); got != "reno" {
		t.Fatalf("TCP_CONGESTION %q", got)
	}
	// Errors: unknown options, read-only ones, privileged ones, another
	// family's level, short lengths, bad pointers.
	e.wantErr(unix.ENOPROTOOPT, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, 9999, val, 4)
	e.wantErr(unix.ENOPROTOOPT, unix.SYS_SETSOCKOPT, s, 12345, 1, val, 4)
	e.wantErr(unix.ENOPROTOOPT, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_TYPE, val, 4)
	e.wantErr(unix.ENOPROTOOPT, unix.SYS_SETSOCKOPT, s, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, val, 4)
	e.wantErr(unix.ENOPROTOOPT, unix.SYS_GETSOCKOPT, s, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, val, lenp)
	e.wantErr(unix.EPERM, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_MARK, val, 4)
	e.wantErr(unix.EINVAL, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_REUSEADDR, val, 3)
	e.wantErr(unix.EINVAL, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_REUSEADDR, val, neg(1))
	e.wantErr(unix.EFAULT, unix.SYS_SETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_REUSEADDR, tMem-2, 4)
	e.wantErr(unix.EFAULT, unix.SYS_GETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_TYPE, val, tMem)
	le.PutUint32(e.mem[lenp:], uint32(neg(1)))
	e.wantErr(unix.EINVAL, unix.SYS_GETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_TYPE, val, lenp)
	le.PutUint32(e.mem[lenp:], 4)
	e.wantErr(unix.EFAULT, unix.SYS_GETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_TYPE, tMem-2, lenp)
	// A short buffer gets what fits.
	le.PutUint32(e.mem[lenp:], 2)
	fill(e.mem[val:val+4], 0xee)
	e.want(0, unix.SYS_GETSOCKOPT, s, unix.SOL_SOCKET, unix.SO_RCVBUF, val, lenp)
	if le.Uint32(e.mem[lenp:]) != 2 || e.mem[val+2] != 0xee {
		t.Fatalf("short getsockopt: %d bytes, %x", le.Uint32(e.mem[lenp:]), e.bytes(val, 4))
	}
	// The options of a listener are its accepted connections'.
	e.want(0, unix.SYS_LISTEN, s, 1)
	if v, _ := get(unix.SOL_SOCKET, unix.SO_ACCEPTCONN); v != 1 {
		t.Fatal("SO_ACCEPTCONN")
	}
	c := newClient("")
	if err := e.p.Connect(c.conn("")); err != nil {
		t.Fatal(err)
	}
	s = e.ret(unix.SYS_ACCEPT, s, 0, 0)
	if v, _ := get(unix.IPPROTO_TCP, unix.TCP_NODELAY); v != 1 {
		t.Fatal("accepted socket did not inherit TCP_NODELAY")
	}
	if v, _ := get(unix.SOL_SOCKET, unix.SO_ACCEPTCONN); v != 0 {
		t.Fatal("accepted socket says it listens")
	}
}

// A C server: a blocking accept with nothing pending is the ready point;
// a copy handed a connection completes the accept, reads the request,
// writes the response, closes, and its next accept is the end of the
// request.
func TestAcceptBlockingReadyAndIdle(t *testing.T) {
	e := newEnv(t, "")
	e.p.cfg.ReadyOnAccept = true
	l := e.listener(unix.AF_INET, 8080, 0)
	addr, lenp := e.buf(16), e.buf(4)
	le.PutUint32(e.mem[lenp:], 16)
	r := e.call(unix.SYS_ACCEPT, l, addr, lenp)
	if r.Action != ActionReady || !r.Restart || r.Ret != unix.SYS_ACCEPT || !e.p.Ready() {
		t.Fatalf("first accept: %+v", r)
	}
	// The snapshot's copy, for one request.
	cp := e.p.Clone(e.p.cfg)
	e.p = cp
	c := newClient("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if err := cp.Connect(c.conn("203.0.113.9:41000")); err != nil {
		t.Fatal(err)
	}
	fd := e.ret(unix.SYS_ACCEPT, l, addr, lenp)
	if le.Uint32(e.mem[lenp:]) != sinLen {
		t.Fatalf("accept address length %d", le.Uint32(e.mem[lenp:]))
	}
	if sa, _ := parseSockaddr(e.bytes(addr, sinLen), unix.AF_INET); sa.ip != netip.MustParseAddr("203.0.113.9") || sa.port != 41000 {
		t.Fatalf("accept address %v", sa)
	}
	if a, _ := e.name(unix.SYS_GETPEERNAME, fd, unix.AF_INET); a != netip.MustParseAddrPort("203.0.113.9:41000") {
		t.Fatalf("peer %v", a)
	}
	if a, _ := e.name(unix.SYS_GETSOCKNAME, fd, unix.AF_INET); a != netip.MustParseAddrPort("127.0.0.1:8080") {
		t.Fatalf("local %v", a)
	}
	buf := e.buf(4096)
	n := e.ret(unix.SYS_READ, fd, buf, 4096)
	if got := string(e.bytes(buf, n)); !strings.HasPrefix(got, "GET / HTTP/1.1") || !strings.HasSuffix(got, "\r\n\r\n") {
		t.Fatalf("request %q", got)
	}
	resp := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
	copy(e.mem[buf:], resp)
	e.want(uint64(len(resp)), unix.SYS_WRITE, fd, buf, uint64(len(resp)))
	if c.out.String() != resp || c.closes != 0 {
		t.Fatalf("response %q, closed %d", c.out.String(), c.closes)
	}
	if d, open := cp.Connections(); d != 1 || open != 1 {
		t.Fatalf("connections %d, %d open", d, open)
	}
	e.want(0, unix.SYS_CLOSE, fd)
	if c.closes != 1 {
		t.Fatalf("response closed %d times", c.closes)
	}
	if r := e.call(unix.SYS_ACCEPT, l, addr, lenp); r.Action != ActionIdle || !r.Restart || r.Ret != unix.SYS_ACCEPT {
		t.Fatalf("accept after the request: %+v", r)
	}
	// Without a connection delivered, a copy is idle at once.
	idle := e.p.Clone(e.p.cfg)
	if r := idle.Call(unix.SYS_ACCEPT, [6]uint64{l}); r.Action != ActionIdle {
		t.Fatalf("idle copy: %+v", r)
	}
}

// Go's net/http: a non-blocking listener in an edge-triggered epoll set,
// accept4 answering EAGAIN, then epoll_pwait with nothing ready: the
// ready point. The connection is delivered, the wait completes, and the
// request is read until EAGAIN, answered and closed; the next wait is the
// end of the request.
func TestAcceptEpollReadyAndIdle(t *testing.T) {
	e := newEnv(t, "")
	e.p.cfg.ReadyOnAccept = true
	l := e.listener(unix.AF_INET6, 8080, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	ep := e.ret(unix.SYS_EPOLL_CREATE1, unix.EPOLL_CLOEXEC)
	efd := e.ret(unix.SYS_EVENTFD2, 0, unix.EFD_NONBLOCK)
	ev, out := e.buf(12), e.buf(12*8)
	goEvents := uint32(unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | epollET)
	for _, fd := range []uint64{l, efd} {
		le.PutUint32(e.mem[ev:], goEvents)
		if fd == efd {
			le.PutUint32(e.mem[ev:], unix.EPOLLIN) // netpollBreak's eventfd
		}
		le.PutUint64(e.mem[ev+4:], 0x1000+fd)
		e.want(0, unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_ADD, fd, ev)
	}
	e.wantErr(unix.EAGAIN, unix.SYS_ACCEPT4, l, 0, 0, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	e.want(0, unix.SYS_EPOLL_PWAIT, ep, out, 8, 0, 0, 0) // Go's non-blocking poll
	r := e.call(unix.SYS_EPOLL_PWAIT, ep, out, 8, 10000, 0, 0)
	if r.Action != ActionReady || !r.Restart || r.Ret != unix.SYS_EPOLL_PWAIT {
		t.Fatalf("first blocking wait: %+v", r)
	}
	c := newClient("POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
	if err := e.p.Connect(c.conn("198.51.100.1:5000")); err != nil {
		t.Fatal(err)
	}
	e.want(1, unix.SYS_EPOLL_PWAIT, ep, out, 8, 10000, 0, 0)
	if le.Uint32(e.mem[out:])&unix.EPOLLIN == 0 || le.Uint64(e.mem[out+4:]) != 0x1000+l {
		t.Fatalf("event %x", e.bytes(out, 12))
	}
	addr, lenp := e.buf(sin6Len), e.buf(4)
	le.PutUint32(e.mem[lenp:], sin6Len)
	fd := e.ret(unix.SYS_ACCEPT4, l, addr, lenp, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
	if sa, _ := parseSockaddr(e.bytes(addr, sin6Len), unix.AF_INET6); sa.ip != netip.MustParseAddr("198.51.100.1") || e.mem[addr+18] != 0xff {
		t.Fatalf("an IPv4 client on an IPv6 listener: %v %x", sa, e.bytes(addr, sin6Len))
	}
	e.wantErr(unix.EAGAIN, unix.SYS_ACCEPT4, l, 0, 0, unix.SOCK_NONBLOCK)
	if fl := e.ret(unix.SYS_FCNTL, fd, unix.F_GETFL); fl&unix.O_NONBLOCK == 0 {
		t.Fatal("SOCK_NONBLOCK not applied")
	}
	le.PutUint32(e.mem[ev:], goEvents)
	le.PutUint64(e.mem[ev+4:], 0x2000)
	e.want(0, unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_ADD, fd, ev)
	if n := e.ret(unix.SYS_EPOLL_PWAIT, ep, out, 8, 0, 0, 0); n != 1 || le.Uint32(e.mem[out:])&(unix.EPOLLIN|unix.EPOLLOUT) != unix.EPOLLIN|unix.EPOLLOUT {
		t.Fatalf("a new connection: %d events %x", n, e.bytes(out, 12))
	}
	buf := e.buf(4096)
	var req []byte
	for {
		r := e.ret(unix.SYS_READ, fd, buf, 16)
		if r == errno(unix.EAGAIN) {
			break
		}
		if r == 0 || r > 16 {
			t.Fatalf("read %s", show(r))
		}
		req = append(req, e.bytes(buf, r)...)
	}
	if string(req) != "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" {
		t.Fatalf("request %q", req)
	}
	// Everything read, the client waits: nothing new (edge-triggered),
	// and level-triggered only writable.
	e.want(0, unix.SYS_EPOLL_PWAIT, ep, out, 8, 0, 0, 0)
	le.PutUint32(e.mem[ev:], unix.EPOLLIN|unix.EPOLLOUT)
	e.want(0, unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_MOD, fd, ev)
	if n := e.ret(unix.SYS_EPOLL_PWAIT, ep, out, 8, 0, 0, 0); n != 1 || le.Uint32(e.mem[out:]) != unix.EPOLLOUT {
		t.Fatalf("after the request: %d events %x", n, e.bytes(out, 12))
	}
	iov := e.buf(32)
	copy(e.mem[buf:], "HTTP/1.1 200 OK\r\n\r\nbody")
	le.PutUint64(e.mem[iov:], buf)
	le.PutUint64(e.mem[iov+8:], 19)
	le.PutUint64(e.mem[iov+16:], buf+19)
	le.PutUint64(e.mem[iov+24:], 4)
	e.want(23, unix.SYS_WRITEV, fd, iov, 2)
	e.want(0, unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_DEL, fd, 0)
	e.want(0, unix.SYS_CLOSE, fd)
	if c.out.String() != "HTTP/1.1 200 OK\r\n\r\nbody" || c.closes != 1 {
		t.Fatalf("response %q, closed %d", c.out.String(), c.closes)
	}
	e.wantErr(unix.EAGAIN, unix.SYS_ACCEPT4, l, 0, 0, unix.SOCK_NONBLOCK)
	if r := e.call(unix.SYS_EPOLL_PWAIT, ep, out, 8, neg(1), 0, 0); r.Action != ActionIdle || !r.Restart {
		t.Fatalf("wait after the request: %+v", r)
	}
}

// Reads and writes on a connection: every call, their flags, and the ends
// of the stream.
func TestConnTransfers(t *testing.T) {
	e := newEnv(t, "")
	l := e.listener(unix.AF_INET, 80, 0)
	c := newClient("abcdefghij")
	cn := c.conn("")
	cn.HalfClose = true
	if err := e.p.Connect(cn); err != nil {
		t.Fatal(err)
	}
	fd := e.ret(unix.SYS_ACCEPT4, l, 0, 0, 0)
	if a, _ := e.name(unix.SYS_GETPEERNAME, fd, unix.AF_INET); a.Addr() != netip.MustParseAddr("127.0.0.1") || a.Port() == 0 {
		t.Fatalf("default peer %v", a)
	}
	buf, alen := e.buf(64), e.buf(4)
	// MSG_PEEK reads without consuming; recvfrom says no address.
	le.PutUint32(e.mem[alen:], 16)
	e.want(3, unix.SYS_RECVFROM, fd, buf, 3, msgPeek, e.buf(16), alen)
	if string(e.bytes(buf, 3)) != "abc" || le.Uint32(e.mem[alen:]) != 0 {
		t.Fatalf("peek %q, addrlen %d", e.bytes(buf, 3), le.Uint32(e.mem[alen:]))
	}
	cnt := e.buf(4)
	e.want(0, unix.SYS_IOCTL, fd, fionread, cnt)
	if le.Uint32(e.mem[cnt:]) != 3 {
		t.Fatalf("FIONREAD %d", le.Uint32(e.mem[cnt:]))
	}
	e.want(2, unix.SYS_RECVFROM, fd, buf, 2, 0, 0, 0)
	if string(e.bytes(buf, 2)) != "ab" {
		t.Fatal("recvfrom after peek")
	}
	e.wantErr(unix.EINVAL, unix.SYS_RECVFROM, fd, buf, 2, msgOOB, 0, 0)
	e.wantErr(unix.EAGAIN, unix.SYS_RECVFROM, fd, buf, 2, msgErrqueue, 0, 0)
	e.wantErr(unix.EFAULT, unix.SYS_RECVFROM, fd, tMem, 2, 0, 0, 0)
	e.wantErr(unix.EFAULT, unix.SYS_RECVFROM, fd, buf, 2, 0, buf, tMem)
	le.PutUint32(e.mem[alen:], uint32(neg(1)))
	e.wantErr(unix.EINVAL, unix.SYS_RECVFROM, fd, buf, 2, 0, buf, alen)
	// recvmsg into two buffers, MSG_WAITALL filling both.
	msg, iov := e.buf(msghdrLen), e.buf(32)
	le.PutUint64(e.mem[iov:], buf)
	le.PutUint64(e.mem[iov+8:], 2)
	le.PutUint64(e.mem[iov+16:], buf+10)
	le.PutUint64(e.mem[iov+24:], 3)
	setMsg := func(name uint64, namelen uint32, iovlen, ctl, ctllen uint64) {
		clear(e.mem[msg : msg+msghdrLen])
		le.PutUint64(e.mem[msg:], name)
		le.PutUint32(e.mem[msg+8:], namelen)
		le.PutUint64(e.mem[msg+16:], iov)
		le.PutUint64(e.mem[msg+24:], iovlen)
		le.PutUint64(e.mem[msg+32:], ctl)
		le.PutUint64(e.mem[msg+40:], ctllen)
		le.PutUint32(e.mem[msg+48:], 0xffff)
	}
	setMsg(e.buf(16), 16, 2, e.buf(64), 64)
	e.want(5, unix.SYS_RECVMSG, fd, msg, msgWaitall)
	if string(e.bytes(buf, 2))+string(e.bytes(buf+10, 3)) != "cdefg" {
		t.Fatalf("recvmsg %q %q", e.bytes(buf, 2), e.bytes(buf+10, 3))
	}
	if le.Uint32(e.mem[msg+8:]) != 0 || le.Uint64(e.mem[msg+40:]) != 0 || le.Uint32(e.mem[msg+48:]) != 0 {
		t.Fatalf("msghdr written back %x", e.bytes(msg, msghdrLen))
	}
	setMsg(0, 0, maxIOV+1, 0, 0)
	e.wantErr(unix.EMSGSIZE, unix.SYS_RECVMSG, fd, msg, 0)
	setMsg(e.buf(16), uint32(neg(1)), 2, 0, 0)
	e.wantErr(unix.EINVAL, unix.SYS_RECVMSG, fd, msg, 0)
	e.wantErr(unix.EFAULT, unix.SYS_RECVMSG, fd, tMem-8, 0)
	setMsg(0, 0, 2, 0, 0)
	le.PutUint64(e.mem[iov+16:], tMem-1)
	e.wantErr(unix.EFAULT, unix.SYS_RECVMSG, fd, msg, 0)
	le.PutUint64(e.mem[iov+16:], buf+10)
	// The rest, then the client's FIN: EOF, readable, EPOLLRDHUP.
	e.want(3, unix.SYS_READ, fd, buf, 64)
	e.want(0, unix.SYS_READ, fd, buf, 64)
	if r := sockReadiness(e.p.st.fds[fd].f.sock); r&(epollIn|epollRdhup) != epollIn|epollRdhup || r&epollHup != 0 {
		t.Fatalf("readiness at FIN %#x", r)
	}

	// Writes: write, sendto (address ignored once checked), sendmsg.
	copy(e.mem[buf:], "12345")
	e.want(2, unix.SYS_SENDTO, fd, buf, 2, msgNosignal, e.sockaddr4([4]byte{1, 2, 3, 4}, 1), sinLen)
	e.wantErr(unix.EINVAL, unix.SYS_SENDTO, fd, buf, 2, 0, buf, 129)
	e.wantErr(unix.EFAULT, unix.SYS_SENDTO, fd, buf, 2, 0, tMem-4, sinLen)
	e.wantErr(unix.EOPNOTSUPP, unix.SYS_SENDTO, fd, buf, 2, msgOOB, 0, 0)
	le.PutUint64(e.mem[iov:], buf+2)
	le.PutUint64(e.mem[iov+8:], 3)
	setMsg(0, 0, 1, 0, 0)
	e.want(3, unix.SYS_SENDMSG, fd, msg, 0)
	// Ancillary data: none accepted at SOL_SOCKET, other levels skipped,
	// malformed headers refused.
	ctl := e.buf(32)
	le.PutUint64(e.mem[ctl:], 20)
	le.PutUint32(e.mem[ctl+8:], unix.SOL_SOCKET)
	le.PutUint32(e.mem[ctl+12:], unix.SCM_RIGHTS)
	setMsg(0, 0, 1, ctl, 24)
	e.wantErr(unix.EINVAL, unix.SYS_SENDMSG, fd, msg, 0)
	le.PutUint32(e.mem[ctl+8:], unix.IPPROTO_IP)
	e.want(3, unix.SYS_SENDMSG, fd, msg, 0)
	le.PutUint64(e.mem[ctl:], 99)
	e.wantErr(unix.EINVAL, unix.SYS_SENDMSG, fd, msg, 0)
	setMsg(0, 0, 1, ctl, maxControl+1)
	e.wantErr(unix.ENOBUFS, unix.SYS_SENDMSG, fd, msg, 0)
	setMsg(buf, 200, 1, 0, 0)
	e.wantErr(unix.EINVAL, unix.SYS_SENDMSG, fd, msg, 0)
	if c.out.String() != "12345345" {
		t.Fatalf("response %q", c.out.String())
	}
	e.want(0, unix.SYS_WRITE, fd, buf, 0)

	// shutdown(SHUT_WR): the response is complete; writing again is
	// EPIPE, and SIGPIPE's default action ends the program.
	e.wantErr(unix.EINVAL, unix.SYS_SHUTDOWN, fd, 3)
	e.want(0, unix.SYS_SHUTDOWN, fd, unix.SHUT_WR)
	if c.closes != 1 {
		t.Fatalf("closed %d times", c.closes)
	}
	if r := sockReadiness(e.p.st.fds[fd].f.sock); r&epollHup == 0 || r&epollOut == 0 {
		t.Fatalf("readiness after FIN and SHUT_WR %#x", r)
	}
	e.wantErr(unix.EPIPE, unix.SYS_SENDTO, fd, buf, 2, msgNosignal, 0, 0)
	if r := e.call(unix.SYS_WRITE, fd, buf, 2); r.Action != ActionExit || r.Status != 128+int(unix.SIGPIPE) {
		t.Fatalf("write after SHUT_WR: %+v", r)
	}
	e.want(0, unix.SYS_CLOSE, fd)
	if c.closes != 1 {
		t.Fatal("closed twice")
	}
}

// The client's stream ending without a FIN, failing, resetting; the
// response writer failing.
func TestConnEnds(t *testing.T) {
	e := newEnv(t, "")
	l := e.listener(unix.AF_INET, 80, 0)
	accept := func(c Conn) uint64 {
		t.Helper()
		if err := e.p.Connect(c); err != nil {
			t.Fatal(err)
		}
		return e.ret(unix.SYS_ACCEPT, l, 0, 0)
	}
	buf := e.buf(64)

	// Everything sent, no FIN, one thread: a blocking read could never
	// end; with SO_RCVTIMEO it times out.
	c := newClient("x")
	fd := accept(c.conn(""))
	e.want(1, unix.SYS_READ, fd, buf, 64)
	if r := e.call(unix.SYS_READ, fd, buf, 64); r.Action != ActionStop || !errors.Is(r.Err, errBlockForever) {
		t.Fatalf("blocking read after the request: %+v", r)
	}
	e.wantErr(unix.EAGAIN, unix.SYS_RECVFROM, fd, buf, 64, msgDontwait, 0, 0)
	tv := e.buf(16)
	le.PutUint64(e.mem[tv+8:], 250000)
	e.want(0, unix.SYS_SETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, tv, 16)
	slept := len(e.slept)
	e.wantErr(unix.EAGAIN, unix.SYS_READ, fd, buf, 64)
	if len(e.slept) != slept+1 || e.slept[slept] != 250e6 {
		t.Fatalf("slept %v", e.slept[slept:])
	}
	// SHUT_RD: EOF.
	e.want(0, unix.SYS_SHUTDOWN, fd, unix.SHUT_RD)
	e.want(0, unix.SYS_READ, fd, buf, 64)
	e.want(0, unix.SYS_CLOSE, fd)

	// A reset: ECONNRESET, then EOF.
	c = &client{req: io.MultiReader(strings.NewReader("ab"), errReader{unix.ECONNRESET})}
	fd = accept(c.conn(""))
	e.want(2, unix.SYS_READ, fd, buf, 64)
	e.wantErr(unix.ECONNRESET, unix.SYS_READ, fd, buf, 64)
	e.want(0, unix.SYS_READ, fd, buf, 64)
	e.wantErr(unix.EPIPE, unix.SYS_SENDTO, fd, buf, 1, msgNosignal, 0, 0)
	e.want(0, unix.SYS_CLOSE, fd)

	// A reader failing otherwise ends the run.
	c = &client{req: errReader{errors.New("client body broke")}}
	fd = accept(c.conn(""))
	if r := e.call(unix.SYS_READ, fd, buf, 64); r.Action != ActionStop || !strings.Contains(r.Err.Error(), "client body broke") {
		t.Fatalf("failing reader: %+v", r)
	}
	e.want(0, unix.SYS_CLOSE, fd)

	// The client gone: EPIPE (SIGPIPE ignored here); a writer failing
	// otherwise (the output limit) ends the run.
	act := e.buf(32)
	le.PutUint64(e.mem[act:], sigIGN)
	e.want(0, unix.SYS_RT_SIGACTION, uint64(unix.SIGPIPE), act, 0, 8)
	c = newClient("")
	c.werr = unix.EPIPE
	fd = accept(c.conn(""))
	e.wantErr(unix.EPIPE, unix.SYS_WRITE, fd, buf, 8)
	e.wantErr(unix.EPIPE, unix.SYS_WRITE, fd, buf, 8)
	e.want(0, unix.SYS_READ, fd, buf, 64)
	c.werr = errors.New("output limit")
	e.want(0, unix.SYS_CLOSE, fd)
	c = newClient("")
	c.werr = errors.New("output limit")
	fd = accept(c.conn(""))
	if r := e.call(unix.SYS_WRITE, fd, buf, 8); r.Action != ActionStop || !strings.Contains(r.Err.Error(), "output limit") {
		t.Fatalf("failing writer: %+v", r)
	}
	// Transfers on sockets that are not connections.
	e.wantErr(unix.ENOTCONN, unix.SYS_READ, l, buf, 8)
	e.wantErr(unix.EPIPE, unix.SYS_SENDTO, l, buf, 8, msgNosignal, 0, 0)
	e.wantErr(unix.EISCONN, unix.SYS_CONNECT, fd, e.sockaddr4([4]byte{1, 1, 1, 1}, 1), sinLen)
	e.wantErr(unix.EINVAL, unix.SYS_LISTEN, fd, 1)
	e.wantErr(unix.EINVAL, unix.SYS_IOCTL, l, fionread, buf)
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// What Connect refuses, and connections delivered before anything
// listens.
func TestConnectBounds(t *testing.T) {
	e := newEnv(t, "")
	if err := e.p.Connect(Conn{Request: strings.NewReader("")}); !errors.Is(err, ErrBadConn) {
		t.Fatalf("no writer: %v", err)
	}
	// Before any listener: queued, up to a bound.
	var clients []*client
	for i := range maxBacklog + 10 {
		c := newClient("req")
		err := e.p.Connect(c.conn(""))
		if i < maxBacklog && err != nil || i >= maxBacklog && !errors.Is(err, ErrBacklogFull) {
			t.Fatalf("connection %d before listen: %v", i, err)
		}
		clients = append(clients, c)
	}
	// The first listener takes what its backlog holds (backlog 0: one).
	l := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK, 0)
	e.want(0, unix.SYS_BIND, l, e.sockaddr4([4]byte{}, 80), sinLen)
	e.want(0, unix.SYS_LISTEN, l, 0)
	fd := e.ret(unix.SYS_ACCEPT, l, 0, 0)
	e.wantErr(unix.EAGAIN, unix.SYS_ACCEPT, l, 0, 0)
	if len(e.p.st.net.incoming) != maxBacklog-1 {
		t.Fatalf("%d still waiting", len(e.p.st.net.incoming))
	}
	e.want(0, unix.SYS_LISTEN, l, 4) // a larger backlog takes more
	if len(e.p.st.net.incoming) != maxBacklog-1-5 {
		t.Fatalf("%d still waiting after a larger backlog", len(e.p.st.net.incoming))
	}
	if err := e.p.Connect(newClient("").conn("")); !errors.Is(err, ErrBacklogFull) {
		t.Fatalf("full backlog: %v", err)
	}
	// A listener elsewhere: a connection for another port has nowhere to go.
	if err := e.p.Connect(Conn{Request: strings.NewReader(""), Response: io.Discard, Local: netip.MustParseAddrPort("127.0.0.1:81")}); !errors.Is(err, ErrNoListener) {
		t.Fatalf("another port: %v", err)
	}
	// An IPv6 client and an IPv4 listener: nowhere to go either.
	if err := e.p.Connect(newClient("").conn("[2001:db8::1]:9")); !errors.Is(err, ErrNoListener) {
		t.Fatalf("IPv6 client: %v", err)
	}
	// Closing the listener drops what it queued: those responses end.
	e.want(0, unix.SYS_CLOSE, l)
	for i, c := range clients[1:6] {
		if c.closes != 1 || c.out.Len() != 0 {
			t.Fatalf("dropped connection %d: closed %d, %q", i, c.closes, c.out.String())
		}
	}
	e.want(0, unix.SYS_CLOSE, fd)
	if clients[0].closes != 1 {
		t.Fatal("accepted connection not finished at close")
	}
	// The bound on sockets covers delivered ones.
	for range maxSockets {
		e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	}
	if err := e.p.Connect(newClient("").conn("")); !errors.Is(err, ErrTooManySockets) {
		t.Fatalf("past the socket bound: %v", err)
	}
}

// A server with a thread per connection: the main thread's accept waits
// while a connection is open, the worker answers and closes it, and the
// retried accept is then the end of the request.
func TestAcceptThreads(t *testing.T) {
	e := newEnv(t, "")
	l := e.listener(unix.AF_INET, 80, 0)
	c := newClient("ping")
	if err := e.p.Connect(c.conn("")); err != nil {
		t.Fatal(err)
	}
	fd := e.ret(unix.SYS_ACCEPT, l, 0, 0)
	e.call(unix.SYS_CLONE, goCloneFlags, 0x300000)
	// Main waits for another connection: the worker (tid 3) runs.
	if r := e.call(unix.SYS_ACCEPT, l, 0, 0); r.Next != 3 || r.Action != ActionContinue {
		t.Fatalf("accept with a connection open: %+v", r)
	}
	buf := e.buf(16)
	e.want(4, unix.SYS_READ, fd, buf, 16)
	e.want(4, unix.SYS_WRITE, fd, buf, 4)
	e.want(0, unix.SYS_CLOSE, fd)
	if c.out.String() != "ping" || c.closes != 1 {
		t.Fatalf("response %q closed %d", c.out.String(), c.closes)
	}
	// Another connection comes; the worker waits on a futex: main
	// re-executes its accept, which takes it.
	c2 := newClient("pong")
	if err := e.p.Connect(c2.conn("")); err != nil {
		t.Fatal(err)
	}
	r := e.call(unix.SYS_FUTEX, e.buf(4), futexWait, 0, 0)
	if r.Next != pid || !r.Restart || r.Ret != unix.SYS_ACCEPT {
		t.Fatalf("switch back: %+v", r)
	}
	fd = e.ret(unix.SYS_ACCEPT, l, 0, 0)
	e.want(0, unix.SYS_SHUTDOWN, fd, unix.SHUT_RDWR)
	if c2.closes != 1 {
		t.Fatal("SHUT_RDWR did not end the response")
	}
	// Written to its end, if not closed: the request is over.
	if r := e.call(unix.SYS_ACCEPT, l, 0, 0); r.Action != ActionIdle || r.Ret != unix.SYS_ACCEPT {
		t.Fatalf("accept after both: %+v", r)
	}
}

// Bad pointers and lengths on socket transfers and accept: EFAULT, and
// nothing is lost (the connection stays queued, the bytes unread).
func TestSocketBadPointers(t *testing.T) {
	e := newEnv(t, "")
	l := e.listener(unix.AF_INET, 80, 0)
	c := newClient("payload")
	if err := e.p.Connect(c.conn("")); err != nil {
		t.Fatal(err)
	}
	lenp := e.buf(4)
	le.PutUint32(e.mem[lenp:], 16)
	e.wantErr(unix.EFAULT, unix.SYS_ACCEPT4, l, tMem-2, lenp, 0)
	e.wantErr(unix.EFAULT, unix.SYS_ACCEPT4, l, e.buf(16), tMem-2, 0)
	e.wantErr(unix.EFAULT, unix.SYS_ACCEPT4, l, e.buf(16), 0, 0)
	le.PutUint32(e.mem[lenp:], uint32(neg(5)))
	e.wantErr(unix.EINVAL, unix.SYS_ACCEPT4, l, e.buf(16), lenp, 0)
	if len(e.p.st.fds[l].f.sock.queue) != 1 {
		t.Fatal("a failed accept lost the connection")
	}
	// A zero-length address buffer takes nothing and learns the length.
	le.PutUint32(e.mem[lenp:], 0)
	fd := e.ret(unix.SYS_ACCEPT4, l, e.buf(16), lenp, 0)
	if le.Uint32(e.mem[lenp:]) != sinLen {
		t.Fatalf("addrlen %d", le.Uint32(e.mem[lenp:]))
	}
	e.wantErr(unix.EFAULT, unix.SYS_READ, fd, tMem, 8)
	e.wantErr(unix.EFAULT, unix.SYS_READ, fd, 100, 8) // the null page
	e.wantErr(unix.EFAULT, unix.SYS_WRITE, fd, tMem+1, 8)
	e.wantErr(unix.EFAULT, unix.SYS_READV, fd, tMem-8, 1)
	e.wantErr(unix.EINVAL, unix.SYS_READV, fd, e.buf(16), maxIOV+1)
	iov := e.buf(16)
	le.PutUint64(e.mem[iov:], tMem-4)
	le.PutUint64(e.mem[iov+8:], 8)
	e.wantErr(unix.EFAULT, unix.SYS_READV, fd, iov, 1)
	e.wantErr(unix.EFAULT, unix.SYS_WRITEV, fd, iov, 1)
	e.wantErr(unix.EFAULT, unix.SYS_RECVMSG, fd, 0, 0)
	e.wantErr(unix.EFAULT, unix.SYS_SENDMSG, fd, tMem, 0)
	// A read cut where usable memory ends, as Linux's copy stops there.
	e.want(4, unix.SYS_READ, fd, tMem-4, 100)
	if string(e.mem[tMem-4:]) != "payl" {
		t.Fatalf("read %q", e.mem[tMem-4:])
	}
	buf := e.buf(16)
	e.want(3, unix.SYS_READ, fd, buf, 16)
	if string(e.bytes(buf, 3)) != "oad" || c.out.Len() != 0 {
		t.Fatal("bytes lost to the faults")
	}
}

// A copy's sockets are its own: options, queues and states change in one
// without the other seeing it; descriptors sharing a socket share its copy.
func TestSocketClone(t *testing.T) {
	e := newEnv(t, "")
	l := e.listener(unix.AF_INET6, 8080, 0)
	dup := e.ret(unix.SYS_DUP, l)
	one := e.buf(4)
	le.PutUint32(e.mem[one:], 1)
	e.want(0, unix.SYS_SETSOCKOPT, l, unix.IPPROTO_TCP, unix.TCP_NODELAY, one, 4)
	c := newClient("old")
	if err := e.p.Connect(c.conn("")); err != nil {
		t.Fatal(err)
	}
	old := e.p
	cp := old.Clone(old.cfg)
	ls, cs := old.st.fds[l].f.sock, cp.st.fds[l].f.sock
	if ls == cs || cp.st.fds[dup].f.sock != cs || len(cs.queue) != 1 || cs.queue[0] == ls.queue[0] {
		t.Fatal("sockets shared with the copy, or dup'd descriptors not sharing theirs")
	}
	if cs.opts[optKey(unix.IPPROTO_TCP, unix.TCP_NODELAY)] != 1 {
		t.Fatal("options not copied")
	}
	clear(e.mem[one : one+4])
	e.p = cp
	e.want(0, unix.SYS_SETSOCKOPT, l, unix.IPPROTO_TCP, unix.TCP_NODELAY, one, 4)
	if ls.opt(optKey(unix.IPPROTO_TCP, unix.TCP_NODELAY)) != 1 {
		t.Fatal("the copy's setsockopt reached the original")
	}
	// The copied queued connection has no client here: EOF, EPIPE.
	fd := e.ret(unix.SYS_ACCEPT, l, 0, 0)
	buf := e.buf(8)
	e.want(0, unix.SYS_READ, fd, buf, 8)
	e.wantErr(unix.EPIPE, unix.SYS_SENDTO, fd, buf, 1, msgNosignal, 0, 0)
	e.want(0, unix.SYS_CLOSE, fd)
	if len(ls.queue) != 1 || c.closes != 0 {
		t.Fatal("the copy's accept and close reached the original")
	}
}

func TestPoll(t *testing.T) {
	e := newEnv(t, "")
	pfd := e.buf(8)
	e.want(0, unix.SYS_PIPE2, pfd, 0)
	r, w := uint64(le.Uint32(e.mem[pfd:])), uint64(le.Uint32(e.mem[pfd+4:]))
	file := e.open("/app/index.lua", 0)
	l := e.listener(unix.AF_INET, 80, 0)
	fds := e.buf(5 * pollfdSize)
	set := func(i int, fd uint64, events uint16) {
		le.PutUint32(e.mem[fds+uint64(i)*8:], uint32(fd))
		le.PutUint16(e.mem[fds+uint64(i)*8+4:], events)
		le.PutUint16(e.mem[fds+uint64(i)*8+6:], 0xffff)
	}
	rev := func(i int) uint16 { return le.Uint16(e.mem[fds+uint64(i)*8+6:]) }
	set(0, r, pollIn)
	set(1, w, pollOut)
	set(2, file, pollIn|pollOut)
	set(3, 99, pollIn)
	set(4, neg(1), pollIn)
	e.want(3, unix.SYS_POLL, fds, 5, 0)
	if rev(0) != 0 || rev(1) != pollOut || rev(2) != pollIn|pollOut || rev(3) != pollNval || rev(4) != 0 {
		t.Fatalf("revents %#x %#x %#x %#x %#x", rev(0), rev(1), rev(2), rev(3), rev(4))
	}
	e.wantErr(unix.EINVAL, unix.SYS_POLL, fds, maxFDs+1, 0)
	e.wantErr(unix.EFAULT, unix.SYS_POLL, tMem-8, 2, 0)
	e.want(0, unix.SYS_POLL, 0, 0, 0)
	// Nothing ready: a timed wait sleeps, then the re-executed call
	// answers 0 with revents cleared.
	set(0, r, pollIn)
	slept := len(e.slept)
	ts := e.buf(16)
	e.want(0, unix.SYS_PPOLL, fds, 1, ts, 0, 0) // zero timeout: no wait
	le.PutUint64(e.mem[ts+8:], 5e6)
	if res := e.do(unix.SYS_PPOLL, fds, 1, ts, 0, 0); res.Ret != 0 || rev(0) != 0 || len(e.slept) != slept+1 {
		t.Fatalf("timed out ppoll: %+v revents %#x slept %v", res, rev(0), e.slept[slept:])
	}
	e.wantErr(unix.EINVAL, unix.SYS_PPOLL, fds, 1, ts, e.buf(8), 16)
	e.wantErr(unix.EFAULT, unix.SYS_PPOLL, fds, 1, tMem, 0, 0)
	// Forever, alone: nothing can ever write the pipe.
	if res := e.call(unix.SYS_POLL, fds, 1, neg(1)); res.Action != ActionStop || !errors.Is(res.Err, errBlockForever) {
		t.Fatalf("poll forever: %+v", res)
	}
	// In a server run a wait that includes a listener is a wait for a
	// connection: the ready point, then, once the connection is
	// finished, the end of the request.
	e.p.cfg.ReadyOnAccept = true
	set(1, l, pollIn)
	if res := e.call(unix.SYS_POLL, fds, 2, neg(1)); res.Action != ActionReady || res.Ret != unix.SYS_POLL || !res.Restart {
		t.Fatalf("poll on a listener: %+v", res)
	}
	if err := e.p.Connect(newClient("").conn("")); err != nil {
		t.Fatal(err)
	}
	e.want(1, unix.SYS_POLL, fds, 2, neg(1))
	if rev(1) != pollIn {
		t.Fatalf("listener revents %#x", rev(1))
	}
	e.want(0, unix.SYS_CLOSE, e.ret(unix.SYS_ACCEPT, l, 0, 0))
	if res := e.call(unix.SYS_POLL, fds, 2, neg(1)); res.Action != ActionIdle || res.Ret != unix.SYS_POLL || !res.Restart {
		t.Fatalf("poll after the connection: %+v", res)
	}
}

func TestSelect(t *testing.T) {
	e := newEnv(t, "")
	pfd := e.buf(8)
	e.want(0, unix.SYS_PIPE2, pfd, 0)
	r, w := uint64(le.Uint32(e.mem[pfd:])), uint64(le.Uint32(e.mem[pfd+4:]))
	rs, ws, xs := e.buf(128), e.buf(128), e.buf(128)
	put := func(set uint64, fds ...uint64) {
		clear(e.mem[set : set+128])
		for _, fd := range fds {
			e.mem[set+fd/8] |= 1 << (fd % 8)
		}
	}
	has := func(set, fd uint64) bool { return e.mem[set+fd/8]&(1<<(fd%8)) != 0 }
	put(rs, r, 1)
	put(ws, w, 1)
	put(xs, r)
	e.want(2, unix.SYS_SELECT, w+1, rs, ws, xs, 0)
	if has(rs, r) || has(rs, 1) || !has(ws, w) || !has(ws, 1) || has(xs, r) {
		t.Fatalf("select sets %x %x %x", e.bytes(rs, 8), e.bytes(ws, 8), e.bytes(xs, 8))
	}
	put(rs, 77)
	e.wantErr(unix.EBADF, unix.SYS_SELECT, 78, rs, 0, 0, 0)
	e.want(0, unix.SYS_SELECT, 77, rs, 0, 0, e.buf(16)) // the bit is past nfds
	e.wantErr(unix.EINVAL, unix.SYS_SELECT, neg(1), 0, 0, 0, 0)
	e.wantErr(unix.EFAULT, unix.SYS_SELECT, 64, tMem-4, 0, 0, 0)
	tv := e.buf(16)
	le.PutUint64(e.mem[tv+8:], 1e6)
	e.wantErr(unix.EINVAL, unix.SYS_SELECT, 1, 0, 0, 0, tv)
	// A timeout: the sets come back empty, the timeval zero.
	put(rs, r)
	le.PutUint64(e.mem[tv:], 1)
	le.PutUint64(e.mem[tv+8:], 0)
	if res := e.do(unix.SYS_SELECT, r+1, rs, 0, 0, tv); res.Ret != 0 || has(rs, r) || le.Uint64(e.mem[tv:]) != 0 {
		t.Fatalf("select timeout: %+v %x", res, e.bytes(rs, 8))
	}
	// pselect6: a timespec, and a signal mask checked.
	put(ws, w)
	sig := e.buf(16)
	le.PutUint64(e.mem[sig:], e.buf(8))
	le.PutUint64(e.mem[sig+8:], 8)
	e.want(1, unix.SYS_PSELECT6, w+1, 0, ws, 0, 0, sig)
	le.PutUint64(e.mem[sig+8:], 4)
	e.wantErr(unix.EINVAL, unix.SYS_PSELECT6, w+1, 0, ws, 0, 0, sig)
	e.wantErr(unix.EFAULT, unix.SYS_PSELECT6, w+1, 0, ws, 0, 0, tMem)
	// A listener in the read set, outside a server run: an ordinary wait,
	// which nothing can end here; a connection makes it readable.
	l := e.listener(unix.AF_INET, 80, 0)
	put(rs, l)
	if res := e.call(unix.SYS_PSELECT6, l+1, rs, 0, 0, 0, 0); res.Action != ActionStop || !errors.Is(res.Err, errBlockForever) {
		t.Fatalf("pselect6 on a listener: %+v", res)
	}
	if err := e.p.Connect(newClient("").conn("")); err != nil {
		t.Fatal(err)
	}
	e.want(1, unix.SYS_PSELECT6, l+1, rs, 0, 0, 0, 0)
	if !has(rs, l) {
		t.Fatal("listener not readable")
	}
}

// Sockets in epoll: readiness of each state, level and edge triggered.
func TestEpollSockets(t *testing.T) {
	e := newEnv(t, "")
	l := e.listener(unix.AF_INET, 80, unix.SOCK_NONBLOCK)
	fresh := e.ret(unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_STREAM, 0)
	ep := e.ret(unix.SYS_EPOLL_CREATE1, 0)
	ev, out := e.buf(12), e.buf(12*4)
	add := func(fd uint64, events uint32) {
		le.PutUint32(e.mem[ev:], events)
		le.PutUint64(e.mem[ev+4:], fd)
		e.want(0, unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_ADD, fd, ev)
	}
	add(l, unix.EPOLLIN)
	add(fresh, unix.EPOLLOUT)
	e.want(1, unix.SYS_EPOLL_WAIT, ep, out, 4, 0)
	if le.Uint64(e.mem[out+4:]) != fresh || le.Uint32(e.mem[out:]) != unix.EPOLLOUT|unix.EPOLLHUP {
		t.Fatalf("unconnected socket %x", e.bytes(out, 12))
	}
	e.want(0, unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_DEL, fresh, 0)
	c := newClient("data")
	cn := c.conn("")
	cn.HalfClose = true
	if err := e.p.Connect(cn); err != nil {
		t.Fatal(err)
	}
	e.want(1, unix.SYS_EPOLL_WAIT, ep, out, 4, 0)
	e.want(1, unix.SYS_EPOLL_WAIT, ep, out, 4, 0) // level-triggered: again
	fd := e.ret(unix.SYS_ACCEPT, l, 0, 0)
	e.want(0, unix.SYS_EPOLL_WAIT, ep, out, 4, 0)
	add(fd, unix.EPOLLIN|unix.EPOLLRDHUP|epollET)
	e.want(1, unix.SYS_EPOLL_WAIT, ep, out, 4, 0)
	e.want(0, unix.SYS_EPOLL_WAIT, ep, out, 4, 0) // edge-triggered: once
	buf := e.buf(16)
	e.want(4, unix.SYS_READ, fd, buf, 16)
	e.want(0, unix.SYS_READ, fd, buf, 16) // the FIN
	e.want(1, unix.SYS_EPOLL_WAIT, ep, out, 4, 0)
	if le.Uint32(e.mem[out:]) != unix.EPOLLIN|unix.EPOLLRDHUP {
		t.Fatalf("at FIN %#x", le.Uint32(e.mem[out:]))
	}
	e.want(0, unix.SYS_SHUTDOWN, fd, unix.SHUT_RDWR)
	le.PutUint32(e.mem[ev:], unix.EPOLLIN|unix.EPOLLOUT)
	e.want(0, unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_MOD, fd, ev)
	e.want(1, unix.SYS_EPOLL_WAIT, ep, out, 4, 0)
	if got := le.Uint32(e.mem[out:]); got != unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLHUP {
		t.Fatalf("shut down both ways %#x", got)
	}
	// A listener shut down for reading stops listening.
	e.want(0, unix.SYS_SHUTDOWN, l, unix.SHUT_WR)
	e.want(0, unix.SYS_SHUTDOWN, l, unix.SHUT_RD)
	e.wantErr(unix.EINVAL, unix.SYS_ACCEPT, l, 0, 0)
	e.wantErr(unix.ENOTCONN, unix.SYS_SHUTDOWN, fresh, unix.SHUT_RD)
}

func FuzzSockaddr(f *testing.F) {
	f.Add(encodeSockaddr(sockAddr{ip: netip.MustParseAddr("192.0.2.1"), port: 80}, unix.AF_INET), false)
	f.Add(encodeSockaddr(sockAddr{ip: netip.MustParseAddr("2001:db8::1"), port: 443, flow: 7, scope: 2}, unix.AF_INET6), true)
	f.Add(encodeSockaddr(sockAddr{ip: netip.MustParseAddr("10.0.0.1"), port: 1}, unix.AF_INET6), true)
	f.Add(make([]byte, 16), false) // AF_UNSPEC, INADDR_ANY
	f.Add([]byte{10, 0}, true)
	f.Add(encodeSockaddr(sockAddr{}, unix.AF_INET6)[:sin6LenMin], true)
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		family := uint16(unix.AF_INET)
		if v6 {
			family = unix.AF_INET6
		}
		a, e := parseSockaddr(b, family)
		if e != 0 {
			if e != unix.EINVAL && e != unix.EAFNOSUPPORT {
				t.Fatalf("parse: %v", e)
			}
			return
		}
		enc := encodeSockaddr(a, family)
		if len(enc) != sockaddrSize(family) {
			t.Fatalf("encoded %d bytes", len(enc))
		}
		if a2, e := parseSockaddr(enc, family); e != 0 || a2 != a {
			t.Fatalf("%x parsed as %+v, re-encoded as %x, parsed as %+v (%v)", b, a, enc, a2, e)
		}
		// Through a process: bind, then getsockname says what was bound.
		env := newEnv(t, "")
		s := env.ret(unix.SYS_SOCKET, uint64(family), unix.SOCK_STREAM, 0)
		addr := env.buf(uint64(len(b)))
		copy(env.mem[addr:], b)
		r := env.ret(unix.SYS_BIND, s, addr, uint64(len(b)))
		if r != 0 {
			if r != errno(unix.EINVAL) && r != errno(unix.EADDRNOTAVAIL) && r != errno(unix.EAFNOSUPPORT) {
				t.Fatalf("bind %s", show(r))
			}
			return
		}
		got, _ := env.name(unix.SYS_GETSOCKNAME, s, family)
		if got.Addr() != a.ip || a.port != 0 && got.Port() != a.port {
			t.Fatalf("bound %+v, name %v", a, got)
		}
	})
}

// FuzzSockMsg: msghdr, iovec and ancillary-data decoding through sendmsg
// and recvmsg on a connection, with the pointers the input holds aimed
// into a window of program memory, so that most of them decode; nothing
// outside program memory may change, and the client sees at most what the
// calls said they sent.
func FuzzSockMsg(f *testing.F) {
	seed := make([]byte, 256)
	le.PutUint64(seed[16:], 64)  // iov
	le.PutUint64(seed[24:], 2)   // iovlen
	le.PutUint64(seed[32:], 128) // control
	le.PutUint64(seed[40:], 32)  // controllen
	le.PutUint64(seed[64:], 192) // iov[0].base
	le.PutUint64(seed[72:], 16)  // iov[0].len
	le.PutUint64(seed[80:], 200) // iov[1].base
	le.PutUint64(seed[88:], 8)   // iov[1].len
	le.PutUint64(seed[128:], 20) // cmsg_len
	le.PutUint32(seed[136:], 0)  // IPPROTO_IP
	f.Add(seed, uint32(0))
	f.Add(seed, uint32(msgPeek|msgWaitall))
	f.Add(seed[:60], uint32(msgNosignal))
	const window = 8192
	f.Fuzz(func(t *testing.T, data []byte, flags uint32) {
		e := newEnv(t, "")
		guard := bytes.Repeat([]byte{0x5a}, tMem-tHeapEnd)
		copy(e.mem[tHeapEnd:], guard)
		e.p.Deny(tHeapEnd, tMem)
		l := e.listener(unix.AF_INET, 80, 0)
		c := newClient("request bytes, some of them")
		if err := e.p.Connect(c.conn("")); err != nil {
			t.Fatal(err)
		}
		fd := e.ret(unix.SYS_ACCEPT, l, 0, 0)
		base := e.buf(window)
		copy(e.mem[base:base+window], data)
		aim := func(off uint64) {
			if v := le.Uint64(e.mem[off:]); v>>63 == 0 {
				le.PutUint64(e.mem[off:], base+v%window)
			}
		}
		aim(base)      // msg_name
		aim(base + 16) // msg_iov
		aim(base + 32) // msg_control
		if iov := le.Uint64(e.mem[base+16:]); iov >= base && iov+16*8 <= base+window {
			for i := range uint64(8) {
				aim(iov + 16*i)
			}
		}
		sent := 0
		for _, nr := range []uint64{unix.SYS_SENDMSG, unix.SYS_RECVMSG, unix.SYS_SENDMSG} {
			r := e.call(nr, fd, base, uint64(flags))
			if r.Action == ActionStop && r.Err == nil || r.Action == ActionReady {
				t.Fatalf("%s: %+v", sysName(nr), r)
			}
			if nr == unix.SYS_SENDMSG && completed(r) {
				sent += int(r.Ret)
			}
			if !bytes.Equal(e.mem[tHeapEnd:], guard) {
				t.Fatalf("%s wrote outside program memory", sysName(nr))
			}
		}
		if c.out.Len() != sent {
			t.Fatalf("client got %d bytes, calls said %d", c.out.Len(), sent)
		}
		_ = checkCmsgs(data) // any input: no panic
	})
}

func TestSendfile(t *testing.T) {
	e := newEnv(t, "")
	l := e.listener(unix.AF_INET, 80, 0)
	c := newClient("")
	if err := e.p.Connect(c.conn("")); err != nil {
		t.Fatal(err)
	}
	fd := e.ret(unix.SYS_ACCEPT, l, 0, 0)
	big := e.open("/app/big.bin", 0)
	size := uint64(3*pageSize + 17)
	// From the file's offset, which moves.
	e.want(100, unix.SYS_SENDFILE, fd, big, 0, 100)
	e.want(100, unix.SYS_LSEEK, big, 0, unix.SEEK_CUR)
	e.want(size-100, unix.SYS_SENDFILE, fd, big, 0, 1<<40)
	e.want(0, unix.SYS_SENDFILE, fd, big, 0, 10) // at the end
	// From an offset the call updates; the file's stays.
	off := e.buf(8)
	le.PutUint64(e.mem[off:], size-7)
	e.want(7, unix.SYS_SENDFILE, fd, big, off, 100)
	if le.Uint64(e.mem[off:]) != size || e.ret(unix.SYS_LSEEK, big, 0, unix.SEEK_CUR) != size {
		t.Fatal("offsets")
	}
	if c.out.Len() != int(size)+7 || !bytes.Equal(c.out.Bytes(), bytes.Repeat([]byte{0xab}, int(size)+7)) {
		t.Fatalf("client got %d bytes", c.out.Len())
	}
	// To a /tmp file, as Linux allows.
	tmp := e.open("/tmp/copy", unix.O_CREAT|unix.O_RDWR)
	le.PutUint64(e.mem[off:], 0)
	e.want(size, unix.SYS_SENDFILE, tmp, big, off, size)
	// Errors.
	le.PutUint64(e.mem[off:], neg(1))
	e.wantErr(unix.EINVAL, unix.SYS_SENDFILE, fd, big, off, 1)
	e.wantErr(unix.EFAULT, unix.SYS_SENDFILE, fd, big, tMem-4, 1)
	e.wantErr(unix.EINVAL, unix.SYS_SENDFILE, fd, l, 0, 1) // from a socket
	e.wantErr(unix.EINVAL, unix.SYS_SENDFILE, fd, 0, 0, 1) // from stdin
	e.wantErr(unix.EBADF, unix.SYS_SENDFILE, big, big, 0, 1)
	e.wantErr(unix.EBADF, unix.SYS_SENDFILE, 99, big, 0, 1)
	e.wantErr(unix.EINVAL, unix.SYS_SENDFILE, e.open("/tmp/a", unix.O_CREAT|unix.O_WRONLY|unix.O_APPEND), big, 0, 1)
	e.want(0, unix.SYS_SHUTDOWN, fd, unix.SHUT_WR)
	le.PutUint64(e.mem[off:], 0)
	if r := e.call(unix.SYS_SENDFILE, fd, big, off, 1); r.Action != ActionExit || r.Status != 128+int(unix.SIGPIPE) {
		t.Fatalf("sendfile after SHUT_WR: %+v", r)
	}
}

// netInvariants checks the socket bookkeeping against the sockets there
// are: every counter matches what the descriptors, queues and incoming
// list hold.
func netInvariants(p *Process) error {
	n := &p.st.net
	seen := map[*socket]bool{}
	sockets, listeners := 0, 0
	for _, d := range p.st.fds {
		if d == nil || d.f.sock == nil || seen[d.f.sock] {
			continue
		}
		s := d.f.sock
		seen[s] = true
		sockets++
		if s.state == sListen {
			listeners++
			sockets += len(s.queue)
			// A listen again with a smaller backlog keeps what is queued.
			if len(s.queue) > maxBacklog || s.backlog > maxBacklog {
				return fmt.Errorf("queue %d, backlog %d", len(s.queue), s.backlog)
			}
		} else if len(s.queue) != 0 {
			return errors.New("a socket that does not listen has a queue")
		}
	}
	sockets += len(n.incoming)
	switch {
	case sockets != n.sockets:
		return fmt.Errorf("%d sockets counted, %d there", n.sockets, sockets)
	case listeners != n.listeners:
		return fmt.Errorf("%d listeners counted, %d there", n.listeners, listeners)
	case n.sockets > maxSockets || n.listeners > maxListeners || len(n.incoming) > maxBacklog:
		return fmt.Errorf("bounds passed: %d sockets, %d listeners, %d incoming", n.sockets, n.listeners, len(n.incoming))
	case n.active < 0 || n.active > n.delivered:
		return fmt.Errorf("%d active of %d delivered", n.active, n.delivered)
	case len(n.conns) > maxSockets:
		return fmt.Errorf("%d host slots", len(n.conns))
	}
	return nil
}

// FuzzNet drives random sequences of socket calls, connections and copies
// over a small alphabet of descriptors and ports, checking the
// bookkeeping after every step and that every connection's response is
// closed at most once.
func FuzzNet(f *testing.F) {
	f.Add([]byte{0, 1, 2, 9, 3, 4, 5, 6, 7, 8})
	f.Add([]byte{0, 0x11, 0x22, 9, 9, 9, 3, 0x13, 4, 0xd, 0xe, 5, 10, 3, 11, 12})
	f.Add([]byte{0, 1, 2, 12, 9, 15, 3, 4, 14, 13, 6, 5})
	f.Fuzz(func(t *testing.T, ops []byte) {
		e := newEnv(t, "")
		e.p.cfg.ReadyOnAccept = len(ops) > 0 && ops[0]&0x80 != 0
		var clients []*client
		buf, ev, out := e.buf(256), e.buf(12), e.buf(12*8)
		lenp := e.buf(4)
		ep := e.ret(unix.SYS_EPOLL_CREATE1, 0)
		for step, op := range ops[min(len(ops), 1):] {
			if step > 200 {
				break
			}
			fd := uint64(op>>4) % 8
			var r Result
			switch op & 0xf {
			case 0:
				r = e.call(unix.SYS_SOCKET, unix.AF_INET6-uint64(op>>4&1)*8, unix.SOCK_STREAM|unix.SOCK_NONBLOCK*uint64(op>>5&1), 0)
			case 1:
				port := uint16(op>>4) % 3 * 1000
				r = e.call(unix.SYS_BIND, fd, e.sockaddr6(netip.IPv6Unspecified(), port), sin6Len)
				if r.Ret == errno(unix.EAFNOSUPPORT) {
					r = e.call(unix.SYS_BIND, fd, e.sockaddr4([4]byte{}, port), sinLen)
				}
			case 2:
				r = e.call(unix.SYS_LISTEN, fd, uint64(op>>4)%4)
			case 3:
				le.PutUint32(e.mem[lenp:], 28)
				r = e.call(unix.SYS_ACCEPT4, fd, buf, lenp, unix.SOCK_NONBLOCK*uint64(op>>7))
			case 4:
				r = e.call(unix.SYS_READ, fd, buf, uint64(op>>4)*16)
			case 5:
				r = e.call(unix.SYS_SENDTO, fd, buf, uint64(op>>4)*16, msgNosignal, 0, 0)
			case 6:
				r = e.call(unix.SYS_CLOSE, fd)
			case 7:
				r = e.call(unix.SYS_SHUTDOWN, fd, uint64(op>>4)%3)
			case 8:
				r = e.call(unix.SYS_DUP, fd)
			case 9:
				c := newClient(strings.Repeat("r", int(op>>4)))
				cn := c.conn("")
				cn.HalfClose = op&0x80 != 0
				if err := e.p.Connect(cn); err == nil {
					clients = append(clients, c)
				}
			case 10:
				le.PutUint32(e.mem[ev:], unix.EPOLLIN|unix.EPOLLOUT|epollET*uint32(op>>7))
				le.PutUint64(e.mem[ev+4:], fd)
				r = e.call(unix.SYS_EPOLL_CTL, ep, unix.EPOLL_CTL_ADD, fd, ev)
			case 11:
				r = e.call(unix.SYS_EPOLL_WAIT, ep, out, 8, uint64(op>>4)%2)
			case 12:
				le.PutUint32(e.mem[buf:], uint32(fd))
				le.PutUint16(e.mem[buf+4:], pollIn|pollOut)
				r = e.call(unix.SYS_POLL, buf, 1, uint64(op>>4)%2)
			case 13:
				e.p = e.p.Clone(e.p.cfg)
			case 14:
				le.PutUint32(e.mem[buf:], 1)
				r = e.call(unix.SYS_SETSOCKOPT, fd, unix.SOL_SOCKET, unix.SO_REUSEADDR+uint64(op>>7)*(unix.SO_REUSEPORT-unix.SO_REUSEADDR), buf, 4)
			case 15:
				r = e.call(unix.SYS_IOCTL, fd, fionread, buf)
			}
			if r.Action == ActionStop && r.Err == nil {
				t.Fatalf("step %d: stopped with no reason", step)
			}
			if r.Action == ActionExit {
				return // SIGPIPE
			}
			if err := netInvariants(e.p); err != nil {
				t.Fatalf("step %d (op %#x): %v", step, op, err)
			}
		}
		for _, c := range clients {
			if c.closes > 1 {
				t.Fatalf("a response closed %d times", c.closes)
			}
		}
		e.p.Close()
		for _, c := range clients {
			if c.closes > 1 {
				t.Fatalf("a response closed %d times", c.closes)
			}
		}
	})
}

// BenchmarkServeRequest is the host side of one server-app request from a
// snapshot: copy the process, deliver the connection, and the calls a C
// server makes (accept, read, write, close, accept again: idle).
func BenchmarkServeRequest(b *testing.B) {
	mem := make([]byte, tMem)
	tmpl := New(Config{Mem: mem, HeapStart: tHeapStart, HeapEnd: tHeapEnd, ReadyOnAccept: true})
	sa, buf := uint64(scratch), uint64(scratch+64)
	copy(mem[sa:], encodeSockaddr(sockAddr{ip: netip.IPv4Unspecified(), port: 8080}, unix.AF_INET))
	l := tmpl.Call(unix.SYS_SOCKET, [6]uint64{unix.AF_INET, unix.SOCK_STREAM}).Ret
	tmpl.Call(unix.SYS_BIND, [6]uint64{l, sa, sinLen})
	tmpl.Call(unix.SYS_LISTEN, [6]uint64{l, 16})
	if r := tmpl.Call(unix.SYS_ACCEPT, [6]uint64{l}); r.Action != ActionReady {
		b.Fatal(r)
	}
	req := "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	for b.Loop() {
		p := tmpl.Clone(tmpl.cfg)
		c := &client{req: strings.NewReader(req)}
		if err := p.Connect(Conn{Request: c.req, Response: c}); err != nil {
			b.Fatal(err)
		}
		fd := p.Call(unix.SYS_ACCEPT, [6]uint64{l}).Ret
		n := p.Call(unix.SYS_READ, [6]uint64{fd, buf, 4096}).Ret
		p.Call(unix.SYS_WRITE, [6]uint64{fd, buf, n})
		p.Call(unix.SYS_CLOSE, [6]uint64{fd})
		if r := p.Call(unix.SYS_ACCEPT, [6]uint64{l}); r.Action != ActionIdle {
			b.Fatal(r)
		}
	}
}
