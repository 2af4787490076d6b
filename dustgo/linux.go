//go:build linux && amd64

package dustgo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

// On linux/amd64 a dustgo program is an ordinary static Linux binary
// (CGO_ENABLED=0 GOOS=linux): Dust's hvt kind runs it and serves its
// system calls. Handle declares the ready point there: Dust runs the
// program's start-up once per deploy, up to the ready call, and every
// request resumes a copy of that state, which reads its own arguments and
// environment through a second call. Run as an ordinary process (any CGI
// server, posix_spawn) the ready call gets ENOSYS and the program serves
// the one request its own environment describes. Either way Handle serves
// one request and exits: code after it never runs.

// The calls (internal/linux/dust.go).
const (
	sysReady   = 0xD0570
	sysRequest = 0xD0571
)

// The random-state descriptor SysReady takes: how Dust finds every
// thread's M from the thread's FS base (the g at FS-8, then g.m at offset
// 48 of the g, which the runtime's assembly relies on), and which bytes of
// the M it refills. The host checks the description against every thread
// before it takes the snapshot, starting with the caller's M, which is
// given here. Unlike wasip1 there are several Ms; runtime.globalRand,
// which seeds new ones, stays as the snapshot left it, but a thread made
// in a request gets its M refilled at its first system calls, before it
// runs any goroutine.
const (
	randDescVersion = 1
	tlsG            = -8
	gM              = 48
)

var randDesc [10]uint64

var autoServe = true

// afterHandle serves the request now: a Linux program has no dust_serve
// for the host to call.
func afterHandle() {
	if !autoServe {
		return
	}
	os.Exit(int(readyPoint()))
}

// readyPoint is the ready point: the function whose name in the binary
// tells Dust that the program has one (internal/hvt/linuxabi.go).
//
//go:noinline
func readyPoint() int32 {
	mp, chacha, cheap, err := locateRandState()
	if err != nil {
		if _, _, e := syscall.RawSyscall(sysRequest, 0, 0, 0); e == syscall.ENOSYS {
			return serve() // not under Dust: nothing is replayed
		}
		fmt.Fprintf(os.Stderr, "dustgo: cannot locate the Go runtime's random state (%s), so a snapshot would replay it: %v\n", runtime.Version(), err)
		return 1
	}
	m := uint64(uintptr(mp))
	tls := int64(tlsG)
	randDesc = [...]uint64{randDescVersion, 2, uint64(tls), gM, m, 2, uint64(chacha), chachaFresh, uint64(cheap), cheapSize}
	// Raw: the thread keeps its P across the call, so a request resumes
	// exactly where the snapshot stopped, with nothing for the scheduler
	// to redo.
	n, _, e := syscall.RawSyscall(sysReady, uintptr(unsafe.Pointer(&randDesc)), 0, 0)
	switch {
	case e == syscall.ENOSYS:
		// An ordinary process: its environment is the request's.
		return serve()
	case e != 0:
		fmt.Fprintf(os.Stderr, "dustgo: the ready call failed: %v\n", e)
		return 1
	}
	req, err := readRequest(n)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dustgo: reading the request: %v\n", err)
		return 1
	}
	requestArgs, requestEnv = req.args, req.env
	fromRequest = true
	return serve()
}

type request struct{ args, env []string }

// maxRequest bounds what readRequest allocates (the host sends at most
// 2 MiB, as ARG_MAX bounds execve).
const maxRequest = 2 << 20

func readRequest(n uintptr) (request, error) {
	if n < 8 || n > maxRequest {
		return request{}, fmt.Errorf("the request takes %d bytes, want 8 to %d", n, maxRequest)
	}
	b := make([]byte, n)
	got, _, e := syscall.RawSyscall(sysRequest, uintptr(unsafe.Pointer(&b[0])), n, 0)
	if e != 0 {
		return request{}, e
	}
	if got != n {
		return request{}, fmt.Errorf("the host gave %d bytes, announced %d", got, n)
	}
	return decodeRequest(b)
}

// decodeRequest parses internal/linux's EncodeRequest: uint32 argc and
// envc, then each string as a uint32 length and its bytes.
func decodeRequest(b []byte) (request, error) {
	le := binary.LittleEndian
	if len(b) < 8 {
		return request{}, errors.New("short request")
	}
	argc, envc := le.Uint32(b), le.Uint32(b[4:])
	b = b[8:]
	// Each string takes at least its 4-byte length.
	if uint64(argc)+uint64(envc) > uint64(len(b))/4 {
		return request{}, fmt.Errorf("%d arguments and %d variables cannot fit in %d bytes", argc, envc, len(b))
	}
	next := func() (string, error) {
		if len(b) < 4 {
			return "", errors.New("truncated length")
		}
		n := le.Uint32(b)
		if uint64(n) > uint64(len(b)-4) {
			return "", fmt.Errorf("a %d-byte string in %d bytes", n, len(b)-4)
		}
		s := string(b[4 : 4+n])
		b = b[4+n:]
		return s, nil
	}
	var r request
	for _, list := range []struct {
		n   uint32
		out *[]string
	}{{argc, &r.args}, {envc, &r.env}} {
		*list.out = make([]string, 0, list.n)
		for range list.n {
			s, err := next()
			if err != nil {
				return request{}, err
			}
			*list.out = append(*list.out, s)
		}
	}
	if len(b) != 0 {
		return request{}, fmt.Errorf("%d bytes after the last string", len(b))
	}
	return r, nil
}

// The request's arguments and environment, once the ready call returned
// under Dust; before that (or as an ordinary process) the process's own.
var (
	fromRequest             bool
	requestArgs, requestEnv []string
)

func environ() ([]string, error) {
	if fromRequest {
		return requestEnv, nil
	}
	return os.Environ(), nil
}

func args() ([]string, error) {
	if fromRequest {
		return requestArgs, nil
	}
	return os.Args, nil
}

// cheapStepped reports whether r and the change from before to after are
// one step of runtime.cheaprand. On amd64 it is wyrand: the state grows by
// a constant, and the output mixes the new state's 128-bit product.
func cheapStepped(before, after []byte, r uint32) bool {
	s := le64(after)
	if s != le64(before)+0xa0761d6478bd642f {
		return false
	}
	hi, lo := bits.Mul64(s, s^0xe7037ed1a0b428db)
	return uint32(hi^lo) == r
}
