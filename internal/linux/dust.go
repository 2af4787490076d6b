package linux

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Dust's own calls. A program that wants its start-up paid once per
// deploy (package dustgo does) calls SysReady at the point every request
// may start from, and then SysRequest to read the request's arguments and
// environment: the ones the program's runtime copied at start-up are the
// snapshot's, not the request's.
//
// The numbers are far above Linux's (< 1024) and have bit 30 (x32) clear,
// so the same binary run as an ordinary process gets ENOSYS from a real
// kernel and can tell it is not under Dust.
const (
	// SysReady(desc) declares the ready point. desc is 0 or the address of
	// a random-state descriptor (randDesc below) naming memory that Dust
	// refills with fresh random bytes in every request, for every thread.
	// In the snapshot run (Config.Request nil) the call ends the run
	// (ActionReady); the monitor keeps the process and resumes copies of
	// it, each with RAX = the size of its request (SysRequest). Anywhere
	// else it returns that size at once.
	SysReady = 0xD0570
	// SysRequest(buf, len) copies the request (Config.Request) to buf and
	// returns its size; ERANGE, writing nothing, if len is smaller.
	SysRequest = 0xD0571
)

// EncodeRequest is the request as SysRequest gives it: little-endian
// uint32 argc and envc, then each argument and each environment entry as a
// uint32 length and its bytes. Lengths rather than terminators: an
// argument may be empty or contain any byte.
func EncodeRequest(args, env []string) []byte {
	n := 8
	for _, s := range args {
		n += 4 + len(s)
	}
	for _, s := range env {
		n += 4 + len(s)
	}
	b := make([]byte, 0, n)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(args)))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(env)))
	for _, list := range [][]string{args, env} {
		for _, s := range list {
			b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
			b = append(b, s...)
		}
	}
	return b
}

// The random-state descriptor, little-endian uint64s in guest memory:
//
//	version (randDescVersion)
//	hops, then hops signed offsets: from a thread's FS base, follow
//	      base = *(base + offset) once per hop to the thread's state
//	      (Go on linux/amd64: the g at FS-8, then g.m)
//	self: what the hops give for the calling thread (checked)
//	count, then count (offset, size) pairs: the regions, relative to the
//	      state, that get fresh bytes
//
// The host knows no runtime's layout: the program describes it and the
// host checks the description against every thread at the ready point.
const (
	randDescVersion = 1
	maxRandHops     = 4
	maxRandRegions  = 8
	maxRandRegion   = 512
	maxRandBytes    = 2 << 10
)

type randDesc struct {
	hops    []int64
	regions []randRegion
}

type randRegion struct{ off, size uint64 }

var errRandDesc = errors.New("random-state descriptor")

func (p *Process) readRandDesc(addr uint64) (*randDesc, error) {
	word := func(i uint64) (uint64, error) {
		v, e := p.get64(addr + 8*i)
		if e != 0 {
			return 0, fmt.Errorf("%w at %#x: word %d is not readable", errRandDesc, addr, i)
		}
		return v, nil
	}
	v, err := word(0)
	if err != nil {
		return nil, err
	}
	if v != randDescVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", errRandDesc, v, randDescVersion)
	}
	hops, err := word(1)
	if err != nil {
		return nil, err
	}
	if hops < 1 || hops > maxRandHops {
		return nil, fmt.Errorf("%w: %d hops, want 1 to %d", errRandDesc, hops, maxRandHops)
	}
	d := &randDesc{}
	i := uint64(2)
	for ; i < 2+hops; i++ {
		h, err := word(i)
		if err != nil {
			return nil, err
		}
		d.hops = append(d.hops, int64(h))
	}
	self, err := word(i)
	if err != nil {
		return nil, err
	}
	count, err := word(i + 1)
	if err != nil {
		return nil, err
	}
	if count < 1 || count > maxRandRegions {
		return nil, fmt.Errorf("%w: %d regions, want 1 to %d", errRandDesc, count, maxRandRegions)
	}
	total := uint64(0)
	for j := range count {
		off, err := word(i + 2 + 2*j)
		if err != nil {
			return nil, err
		}
		size, err := word(i + 3 + 2*j)
		if err != nil {
			return nil, err
		}
		if size < 1 || size > maxRandRegion || off > 1<<20 {
			return nil, fmt.Errorf("%w: region %d is %d bytes at +%d (at most %d bytes, within 1 MiB)", errRandDesc, j, size, off, maxRandRegion)
		}
		total += size
		d.regions = append(d.regions, randRegion{off, size})
	}
	if total > maxRandBytes {
		return nil, fmt.Errorf("%w: %d bytes in all, at most %d", errRandDesc, total, maxRandBytes)
	}
	// Every thread must resolve, the caller to what it says it is: a
	// description that is wrong for one thread now would leave that
	// thread's state replayed in every request.
	for _, t := range p.st.threads {
		base, ok := p.randBase(d, t)
		switch {
		case !ok:
			return nil, fmt.Errorf("%w: thread %d's state is not reachable from its FS base %#x", errRandDesc, t.tid, t.fsBase)
		case t == p.st.cur && base != self:
			return nil, fmt.Errorf("%w: the calling thread's state resolves to %#x, the program says %#x", errRandDesc, base, self)
		}
	}
	return d, nil
}

// randBase follows d's hops from t's FS base; ok is false if a hop leaves
// usable memory or a region is not writable there.
func (p *Process) randBase(d *randDesc, t *thread) (uint64, bool) {
	base := t.fsBase
	if base == 0 {
		return 0, false
	}
	for _, h := range d.hops {
		v, e := p.get64(base + uint64(h))
		if e != 0 {
			return 0, false
		}
		base = v
	}
	for _, r := range d.regions {
		if _, e := p.wmem(base+r.off, r.size); e != 0 {
			return 0, false
		}
	}
	return base, true
}

// reseed gives the state of t's thread fresh bytes, once per state per
// request. A state no longer reachable (a thread between clone and its
// own arch_prctl points at its parent's) is left for a later call.
func (p *Process) reseed(t *thread) {
	d := p.st.rand
	if d == nil || t.reseeded {
		return
	}
	base, ok := p.randBase(d, t)
	if !ok {
		return
	}
	t.reseeded = true
	if p.st.seeded[base] {
		return
	}
	if len(p.st.seeded) >= maxThreads {
		// Bounded like the threads that own the states: past that, a
		// state is simply reseeded again.
		clear(p.st.seeded)
	}
	p.st.seeded[base] = true
	for _, r := range d.regions {
		b, _ := p.wmem(base+r.off, r.size)
		for {
			p.cfg.Random(b)
			// All zero is the fixed point of xorshift-style generators.
			if !allZero(b) {
				break
			}
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func sysReady(p *Process, a [6]uint64) Result {
	if p.cfg.Request != nil || p.st.readied {
		return ok(uint64(len(p.cfg.Request)))
	}
	if a[0] != 0 {
		d, err := p.readRandDesc(a[0])
		if err != nil {
			return stop(fmt.Errorf("the ready call's %w", err))
		}
		p.st.rand = d
	}
	p.st.readied = true
	p.st.readyAt = p.cfg.Monotonic()
	return Result{Action: ActionReady}
}

func sysRequest(p *Process, a [6]uint64) Result {
	req := p.cfg.Request
	if a[1] < uint64(len(req)) {
		return fail(unix.ERANGE)
	}
	return okOrFail2(p.put(a[0], req), uint64(len(req)))
}

// Ready reports whether the program reached its ready point (SysReady in
// the snapshot run).
func (p *Process) Ready() bool { return p.st.readied }

// A Go program that declares no random state at its ready point (an
// unmodified server snapshotted at its first accept) still has it: every
// M's runtime.rand and runtime.cheaprand generators. The process finds
// them itself: each thread's M is where Go's TLS points (the g at FS-8,
// then g.m at +48, as the runtime's assembly has it), and in every M the
// chacha8 state is the one place whose counters look like one (i <= n, n
// 32 or 28, c a multiple of 4 below 16) after 36 words, at the same
// offset in all of them; cheaprand is the word after it (runtime.m
// declares the two together). Anything else is refused rather than
// guessed: a snapshot whose randomness cannot be refreshed would replay
// it in every request.
const (
	goTLSG       = -8
	goGM         = 48
	goMWindow    = 4096
	goChachaSize = 300 // buf [32]uint64, seed [4]uint64, i, n, c uint32
	goChachaI    = 288
	goCheapAt    = 304 // the uint64 after the state, aligned
)

var errGoRand = errors.New("cannot locate the Go runtime's random state, so a snapshot would replay it")

func (p *Process) locateGoRand() (*randDesc, error) {
	d := &randDesc{hops: []int64{goTLSG, goGM}, regions: []randRegion{{0, 8}}}
	var ms []uint64
	for _, t := range p.st.threads {
		base, ok := p.randBase(d, t)
		if !ok {
			return nil, fmt.Errorf("%w: thread %d has no M at its FS base %#x", errGoRand, t.tid, t.fsBase)
		}
		ms = append(ms, base)
	}
	at := -1
	for o := 0; o+goCheapAt+8 <= goMWindow; o += 8 {
		all := true
		for _, m := range ms {
			b, e := p.rmem(m+uint64(o), goCheapAt+8)
			if e != 0 || !plausibleChacha8(b) {
				all = false
				break
			}
		}
		if !all {
			continue
		}
		if at >= 0 {
			return nil, fmt.Errorf("%w: two candidates in every M (+%d and +%d)", errGoRand, at, o)
		}
		at = o
	}
	if at < 0 {
		return nil, fmt.Errorf("%w: no chacha8 state at the same place in all %d Ms", errGoRand, len(ms))
	}
	d.regions = []randRegion{{uint64(at), goChachaI}, {uint64(at + goCheapAt), 8}}
	return d, nil
}

func plausibleChacha8(b []byte) bool {
	i, n, c := le.Uint32(b[goChachaI:]), le.Uint32(b[goChachaI+4:]), le.Uint32(b[goChachaI+8:])
	return (n == 32 || n == 28) && i <= n && c%4 == 0 && c < 16 && !allZero(b[:goChachaI])
}

// ReadyAt is the process's CLOCK_MONOTONIC at its ready point: where the
// clock of every copy (Clone) continues from.
func (p *Process) ReadyAt() int64 { return p.st.readyAt }
