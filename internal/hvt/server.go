package hvt

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/dust-run/dust/internal/linux"
	"github.com/dust-run/dust/internal/machine"
)

// Server apps (issue 12). An ordinary HTTP server program — a Go net/http
// server, a C server — runs unmodified: at Prepare the monitor starts it
// once, with the app's environment and PORT, serves the socket calls it
// makes against in-monitor byte streams (internal/linux/net.go: no
// network stack, no host socket) and takes the snapshot when it first
// waits for a connection with none pending. Every request then resumes a
// copy of that state, fresh or restored, with exactly one connection
// delivered: the client's HTTP request as the bytes the program reads,
// its writes as the response. The request is over when the program has
// closed the connection and waits for the next one (linux.ActionIdle).
//
// In terms of machine.Machine, a server image's Run takes the raw HTTP/1.1
// request stream as the request's Body (until EOF) and writes the raw
// HTTP response to stdout; the program's own stdout and stderr both go to
// the log. The gateway builds the one and parses the other.

// ServerOptions make a Linux program a server app (Options.Server).
type ServerOptions struct {
	// Args and Env are the program's argv and environment at start-up
	// (nil Args: argv0 alone). The monitor adds PORT=Port unless Env sets
	// PORT itself.
	Args []string
	Env  []string
	// Port is the port the program is told to listen on (0: 8080).
	Port int
}

// DefaultServerPort is what PORT says when ServerOptions.Port is 0.
const DefaultServerPort = 8080

var errServer = errors.New("hvt: server app")

// serverStart is the request the snapshot run of a server app starts
// with: its own arguments and environment, no body.
func (o *ServerOptions) serverStart() machine.Request {
	env := append([]string(nil), o.Env...)
	port := o.Port
	if port == 0 {
		port = DefaultServerPort
	}
	if !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PORT=") }) {
		env = append(env, "PORT="+strconv.Itoa(port))
	}
	return machine.Request{Args: o.Args, Env: env}
}

// connect hands a request's process its one connection: a new one to
// accept, or, in a copy snapshotted at its first read of the template
// connection, that connection's client.
func (s *session) connect(p *linux.Process, req *machine.Request, late bool) error {
	c := linux.Conn{
		Request:  linuxBody{s},
		Response: serverResponse{linuxWriter{s, fdStdout}},
		Peer:     peerOf(req.Env),
	}
	var err error
	if late {
		err = p.Attach(c)
	} else {
		err = p.Connect(c)
	}
	if err != nil {
		return fmt.Errorf("%w: delivering the connection: %w", errServer, err)
	}
	return nil
}

// The template connection's client as the program sees it (accept,
// getpeername): the gateway's side, as behind any reverse proxy. The
// request's client is in X-Forwarded-For.
var templatePeer = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), 40000)

// giveTemplate delivers the snapshot run's placeholder connection.
func (s *session) giveTemplate() error {
	p, ok := s.proc.(interface{ Connect(linux.Conn) error })
	if !ok {
		return fmt.Errorf("%w: the process (%T) cannot take a connection", errServer, s.proc)
	}
	if err := p.Connect(linux.Conn{Template: true, Peer: templatePeer}); err != nil {
		return fmt.Errorf("%w: delivering the template connection: %w", errServer, err)
	}
	s.m.templateGiven = true
	return nil
}

// serverResponse is the program's side of the connection: what it writes
// is the response, written as a CGI program's stdout is (the same limit).
type serverResponse struct{ linuxWriter }

// Close: the program can write no more; the response is complete. The run
// ends when the program next waits for a connection (ActionIdle).
func (w serverResponse) Close() error {
	w.s.responseDone = true
	return nil
}

// peerOf is the client's address as the gateway's CGI variables give it
// (REMOTE_ADDR, REMOTE_PORT); invalid when they are absent or malformed,
// which the process answers with a loopback address.
func peerOf(env []string) netip.AddrPort {
	var addr, port string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "REMOTE_ADDR="); ok {
			addr = v
		} else if v, ok := strings.CutPrefix(kv, "REMOTE_PORT="); ok {
			port = v
		}
	}
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.AddrPort{}
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		p = 0
	}
	return netip.AddrPortFrom(a, uint16(p))
}

// Server reports whether the image is a server app.
func (im *Image) Server() bool { return im.server != nil }
