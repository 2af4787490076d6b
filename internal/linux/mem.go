package linux

import (
	"encoding/binary"

	"golang.org/x/sys/unix"
)

var le = binary.LittleEndian

// span returns Mem[addr:addr+n] if every byte of it may be used (written
// too if write), else EFAULT. n == 0 is always fine, whatever addr is, as
// in Linux (read(fd, NULL, 0) is 0).
func (p *Process) mem(addr, n uint64, write bool) ([]byte, unix.Errno) {
	if n == 0 {
		return nil, 0
	}
	m := uint64(len(p.cfg.Mem))
	if n > m || addr > m-n {
		return nil, unix.EFAULT
	}
	for _, r := range p.st.regions {
		if (write || !r.readable) && r.start < addr+n && addr < r.end {
			return nil, unix.EFAULT
		}
	}
	return p.cfg.Mem[addr : addr+n : addr+n], 0
}

// upTo is mem for a buffer the call may fill or drain only partly: the
// first byte must be usable, the rest is cut where usable memory ends, as
// Linux's copy_to_user stops at the first unmapped page and the call
// returns what it did.
func (p *Process) upTo(addr, n uint64, write bool) ([]byte, unix.Errno) {
	if n == 0 {
		return nil, 0
	}
	m := uint64(len(p.cfg.Mem))
	if addr >= m {
		return nil, unix.EFAULT
	}
	end := m
	if n < m-addr {
		end = addr + n
	}
	for _, r := range p.st.regions {
		if !(write || !r.readable) || r.end <= addr || r.start >= end {
			continue
		}
		if r.start <= addr {
			return nil, unix.EFAULT
		}
		end = r.start
	}
	return p.cfg.Mem[addr:end:end], 0
}

func (p *Process) wmem(addr, n uint64) ([]byte, unix.Errno) { return p.mem(addr, n, true) }
func (p *Process) rmem(addr, n uint64) ([]byte, unix.Errno) { return p.mem(addr, n, false) }

// put copies b to guest memory at addr, all or nothing.
func (p *Process) put(addr uint64, b []byte) unix.Errno {
	d, e := p.wmem(addr, uint64(len(b)))
	if e == 0 {
		copy(d, b)
	}
	return e
}

func (p *Process) put64(addr, v uint64) unix.Errno {
	var b [8]byte
	le.PutUint64(b[:], v)
	return p.put(addr, b[:])
}

func (p *Process) put32(addr uint64, v uint32) unix.Errno {
	var b [4]byte
	le.PutUint32(b[:], v)
	return p.put(addr, b[:])
}

func (p *Process) get64(addr uint64) (uint64, unix.Errno) {
	b, e := p.rmem(addr, 8)
	if e != 0 {
		return 0, e
	}
	return le.Uint64(b), 0
}

// str reads the NUL-terminated string at addr, at most max bytes with the
// NUL: longer is ENAMETOOLONG (the caller's limit), unterminated before
// usable memory ends is EFAULT.
func (p *Process) str(addr uint64, max uint64) (string, unix.Errno) {
	b, e := p.upTo(addr, max, false)
	if e != 0 {
		return "", e
	}
	for i, c := range b {
		if c == 0 {
			return string(b[:i]), 0
		}
	}
	if uint64(len(b)) == max {
		return "", unix.ENAMETOOLONG
	}
	return "", unix.EFAULT
}

// timespec reads a struct timespec, validating it as the kernel does.
func (p *Process) timespec(addr uint64) (sec, nsec int64, e unix.Errno) {
	b, e := p.rmem(addr, 16)
	if e != 0 {
		return 0, 0, e
	}
	sec, nsec = int64(le.Uint64(b)), int64(le.Uint64(b[8:]))
	if sec < 0 || nsec < 0 || nsec >= 1e9 {
		return 0, 0, unix.EINVAL
	}
	return sec, nsec, 0
}

func (p *Process) putTimespec(addr uint64, ns int64) unix.Errno {
	var b [16]byte
	le.PutUint64(b[:], uint64(ns/1e9))
	le.PutUint64(b[8:], uint64(ns%1e9))
	return p.put(addr, b[:])
}
