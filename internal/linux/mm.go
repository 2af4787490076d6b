package linux

import (
	"slices"

	"golang.org/x/sys/unix"
)

// The heap [HeapStart, HeapEnd) is shared by brk, which grows up from
// HeapStart, and mmap, which hands out page runs from the top down. Both
// only ever give out memory inside it, so the program's memory is bounded
// by the machine's by construction, and both zero what they hand out: the
// program may have used those bytes before an munmap or a brk shrink.
//
// The monitor's page tables are fixed (the whole heap is mapped read-write
// and non-executable from the start), so protections are validated and
// recorded nowhere: mprotect answers 0 and PROT_NONE does not make a page
// fault. A PROT_EXEC request inside the heap is refused, because the page
// would not run.

func (p *Process) heapOK(start, end uint64) bool {
	return start >= alignUp(p.st.brk) && start <= end && end <= p.cfg.HeapEnd && start >= p.cfg.HeapStart
}

// zero clears [start, end) before the program gets it, skipping what is
// still known to be zero: the heap of a fresh machine is all zero pages,
// and the Go runtime reserves more than a gigabyte of address space it
// never touches (page summaries, the scavenger index, 64 MiB arenas), so
// clearing those bytes would cost as much host memory as they span.
// Memory handed out is no longer known to be zero: the program may write
// it. (Writes to heap pages the program was never given are not tracked:
// a program that does that sees its own bytes in a later mmap.)
func (p *Process) zero(start, end uint64) {
	a := start
	for _, c := range p.st.clean {
		if c.end <= a || c.start >= end {
			continue
		}
		if c.start > a {
			clear(p.cfg.Mem[a:c.start])
		}
		a = max(a, c.end)
		if a >= end {
			break
		}
	}
	if a < end {
		clear(p.cfg.Mem[a:end])
	}
	p.st.clean = subtract(p.st.clean, start, end)
}

// reveal clears the parts of [start, end) reserved with PROT_NONE and not
// cleared yet, now that the program may read them.
func (p *Process) reveal(start, end uint64) {
	for _, l := range p.st.lazy {
		if s, e := max(l.start, start), min(l.end, end); s < e {
			p.zero(s, e)
		}
	}
	p.st.lazy = subtract(p.st.lazy, start, end)
}

// addRange adds [start, end), which overlaps none of them, to a sorted
// list of disjoint spans.
func addRange(l []span, start, end uint64) []span {
	i := 0
	for i < len(l) && l[i].start < start {
		i++
	}
	return slices.Insert(l, i, span{start, end})
}

// subtract removes [start, end) from a sorted list of disjoint spans.
func subtract(l []span, start, end uint64) []span {
	var out []span
	for i, c := range l {
		if c.end <= start || c.start >= end {
			continue
		}
		out = append(out, l[:i]...)
		for _, c := range l[i:] {
			switch {
			case c.end <= start || c.start >= end:
				out = append(out, c)
			default:
				if c.start < start {
					out = append(out, span{c.start, start})
				}
				if c.end > end {
					out = append(out, span{end, c.end})
				}
			}
		}
		return out
	}
	return l
}

// free reports whether no span intersects [start, end).
func (p *Process) free(start, end uint64) bool {
	i := p.spanAfter(start)
	return i == len(p.st.spans) || p.st.spans[i].start >= end
}

// spanAfter is the index of the first span ending after addr.
func (p *Process) spanAfter(addr uint64) int {
	i, _ := slices.BinarySearchFunc(p.st.spans, addr, func(s span, a uint64) int {
		if s.end <= a {
			return -1
		}
		return 1
	})
	return i
}

// mapped reports whether [start, end) is wholly covered by spans.
func (p *Process) mapped(start, end uint64) bool {
	i := p.spanAfter(start)
	for a := start; a < end; i++ {
		if i == len(p.st.spans) || p.st.spans[i].start > a {
			return false
		}
		a = p.st.spans[i].end
	}
	return true
}

// findFree is the highest free n-byte run in the heap, 0 if none.
func (p *Process) findFree(n uint64) uint64 {
	top := p.cfg.HeapEnd
	floor := alignUp(p.st.brk)
	for i := len(p.st.spans) - 1; i >= -1; i-- {
		lo := floor
		if i >= 0 {
			lo = max(lo, p.st.spans[i].end)
		}
		if top >= lo && top-lo >= n {
			return top - n
		}
		if i >= 0 {
			top = p.st.spans[i].start
		}
		if top < floor {
			break
		}
	}
	return 0
}

// addSpan records [start, end) as mapped; it must be free. Adjacent runs
// merge, so the count stays low for the common pattern of many mmaps.
func (p *Process) addSpan(start, end uint64) unix.Errno {
	s := p.st.spans
	i := p.spanAfter(start)
	mergeL := i > 0 && s[i-1].end == start
	mergeR := i < len(s) && s[i].start == end
	switch {
	case mergeL && mergeR:
		s[i-1].end = s[i].end
		p.st.spans = slices.Delete(s, i, i+1)
	case mergeL:
		s[i-1].end = end
	case mergeR:
		s[i].start = start
	default:
		if len(s) >= maxMaps {
			return unix.ENOMEM
		}
		p.st.spans = slices.Insert(s, i, span{start, end})
	}
	return 0
}

// removeSpans unmaps [start, end), splitting a span it cuts through.
func (p *Process) removeSpans(start, end uint64) unix.Errno {
	s := p.st.spans
	i := p.spanAfter(start)
	if i < len(s) && s[i].start < start && s[i].end > end {
		if len(s) >= maxMaps {
			return unix.ENOMEM
		}
		p.st.spans = slices.Insert(s, i+1, span{end, s[i].end})
		p.st.spans[i].end = start
		return 0
	}
	j := i
	for j < len(s) && s[j].start < end {
		j++
	}
	if i < j && s[i].start < start {
		s[i].end = start
		i++
	}
	if i < j && s[j-1].end > end {
		s[j-1].start = end
		j--
	}
	p.st.spans = slices.Delete(s, i, j)
	return 0
}

func sysBrk(p *Process, a [6]uint64) Result {
	want, cur := a[0], p.st.brk
	if want < p.cfg.HeapStart || want > p.cfg.HeapEnd {
		return ok(cur)
	}
	if want > cur {
		if len(p.st.spans) > 0 && alignUp(want) > p.st.spans[0].start {
			return ok(cur)
		}
		p.zero(cur, want)
	}
	p.st.brk = want
	return ok(want)
}

const protKnown = unix.PROT_READ | unix.PROT_WRITE | unix.PROT_EXEC | unix.PROT_GROWSDOWN | unix.PROT_GROWSUP | 0x8 // PROT_SEM

func sysMmap(p *Process, a [6]uint64) Result {
	addr, length, prot, flags, fd, off := a[0], a[1], a[2], a[3], int32(a[4]), a[5]
	if length == 0 || !pageAligned(off) {
		return fail(unix.EINVAL)
	}
	typ := flags & unix.MAP_SHARED_VALIDATE
	if typ == 0 {
		return fail(unix.EINVAL)
	}
	if length > 1<<47 {
		return fail(unix.ENOMEM)
	}
	n := alignUp(length)
	if prot&unix.PROT_EXEC != 0 {
		return fail(unix.EPERM)
	}
	fixed := flags&(unix.MAP_FIXED|unix.MAP_FIXED_NOREPLACE) != 0
	if fixed && !pageAligned(addr) {
		return fail(unix.EINVAL)
	}

	var src *ofile
	if flags&unix.MAP_ANONYMOUS == 0 {
		f, e := p.file(fd)
		if e != 0 {
			return fail(e)
		}
		switch {
		case f.n.kind == kDev && f.n.dev == devZero:
			// The old idiom for anonymous memory.
		case f.n.kind != kApp && !(f.n.kind == kTmp && !f.n.tmp.dir):
			return fail(unix.ENODEV)
		case f.flags&unix.O_ACCMODE == unix.O_WRONLY || f.flags&unix.O_PATH != 0:
			return fail(unix.EACCES)
		case typ != unix.MAP_PRIVATE && f.n.kind == kTmp:
			// A shared mapping of a writable file would have to see later
			// writes; copying cannot give that.
			return fail(unix.ENODEV)
		case typ != unix.MAP_PRIVATE && prot&unix.PROT_WRITE != 0:
			return fail(unix.EACCES)
		default:
			src = f
		}
		if off > 1<<62 {
			return fail(unix.EOVERFLOW)
		}
	}

	var start uint64
	switch {
	case fixed:
		if addr > p.cfg.HeapEnd || n > p.cfg.HeapEnd-addr || !p.heapOK(addr, addr+n) {
			return fail(unix.ENOMEM)
		}
		if !p.free(addr, addr+n) {
			if flags&unix.MAP_FIXED_NOREPLACE != 0 {
				return fail(unix.EEXIST)
			}
			if e := p.removeSpans(addr, addr+n); e != 0 {
				return fail(e)
			}
		}
		start = addr
	default:
		hint := addr &^ (pageSize - 1)
		if hint != 0 && hint <= p.cfg.HeapEnd && n <= p.cfg.HeapEnd-hint && p.heapOK(hint, hint+n) && p.free(hint, hint+n) {
			start = hint
		} else if start = p.findFree(n); start == 0 {
			return fail(unix.ENOMEM)
		}
	}
	if e := p.addSpan(start, start+n); e != 0 {
		return fail(e)
	}
	p.st.lazy = subtract(p.st.lazy, start, start+n)
	if prot == unix.PROT_NONE && src == nil {
		// A reservation: nothing can read it before mprotect or a
		// MAP_FIXED mapping makes it accessible, so it is cleared then
		// (reveal). The Go runtime reserves, unreserves and re-reserves
		// 64 MiB ranges while it looks for an arena; clearing each time
		// cost it 65 ms a start.
		p.st.lazy = addRange(p.st.lazy, start, start+n)
	} else {
		p.zero(start, start+n)
	}
	if src != nil {
		if _, err := p.readAt(src, p.cfg.Mem[start:start+n], int64(off)); err != nil {
			p.removeSpans(start, start+n)
			return fail(unix.EIO)
		}
	}
	return ok(start)
}

// rangeArgs checks an (addr, len) pair as munmap, mprotect and madvise
// do: addr page-aligned, the page-rounded end not wrapping.
func rangeArgs(addr, length uint64) (start, end uint64, ok bool) {
	if !pageAligned(addr) || length > 1<<47 || addr > 1<<47 {
		return 0, 0, false
	}
	return addr, addr + alignUp(length), true
}

func sysMunmap(p *Process, a [6]uint64) Result {
	start, end, good := rangeArgs(a[0], a[1])
	if !good || a[1] == 0 {
		return fail(unix.EINVAL)
	}
	// Outside the heap nothing was mapped by us and nothing can be
	// unmapped (fixed page tables): like munmap of an unmapped range, 0.
	start, end = max(start, p.cfg.HeapStart), min(end, p.cfg.HeapEnd)
	if start < end {
		p.st.lazy = subtract(p.st.lazy, start, end)
		return okOrFail(p.removeSpans(start, end))
	}
	return ok(0)
}

func sysMprotect(p *Process, a [6]uint64) Result {
	if !pageAligned(a[0]) || a[2]&^uint64(protKnown) != 0 {
		return fail(unix.EINVAL)
	}
	start, end, good := rangeArgs(a[0], a[1])
	if !good || end > uint64(len(p.cfg.Mem)) {
		return fail(unix.ENOMEM)
	}
	if a[2]&unix.PROT_EXEC != 0 && start < p.cfg.HeapEnd && end > p.cfg.HeapStart {
		return fail(unix.EPERM)
	}
	if a[2] != unix.PROT_NONE {
		p.reveal(start, end)
	}
	return ok(0)
}

func sysMadvise(p *Process, a [6]uint64) Result {
	start, end, good := rangeArgs(a[0], a[1])
	if !good {
		return fail(unix.EINVAL)
	}
	switch adv := a[2]; {
	case adv == unix.MADV_HWPOISON || adv == 101:
		return fail(unix.EPERM)
	case adv > unix.MADV_COLLAPSE || adv == 5 || adv == 6 || adv == 7:
		return fail(unix.EINVAL)
	case adv == unix.MADV_DONTNEED || adv == unix.MADV_REMOVE || adv == 24: // MADV_DONTNEED_LOCKED
		if end > uint64(len(p.cfg.Mem)) {
			return fail(unix.ENOMEM)
		}
		// The next touch must see zeros (the Go runtime relies on it for
		// scavenged memory): zero what is ours in the range.
		if s, e := max(start, p.cfg.HeapStart), min(end, p.st.brk); s < e {
			p.zero(s, e)
		}
		for i := p.spanAfter(start); i < len(p.st.spans) && p.st.spans[i].start < end; i++ {
			sp := p.st.spans[i]
			p.zero(max(sp.start, start), min(sp.end, end))
		}
	}
	if end > uint64(len(p.cfg.Mem)) {
		return fail(unix.ENOMEM)
	}
	return ok(0)
}

func sysMremap(p *Process, a [6]uint64) Result {
	old, oldLen, newLen, flags, newAddr := a[0], a[1], a[2], a[3], a[4]
	const may, fixed, dontUnmap = unix.MREMAP_MAYMOVE, unix.MREMAP_FIXED, unix.MREMAP_DONTUNMAP
	if oldLen <= 1<<47 && old <= 1<<47 {
		// Moved or grown pages must carry cleared bytes, not stale ones.
		p.reveal(old, old+alignUp(oldLen))
	}
	if flags&^uint64(may|fixed|dontUnmap) != 0 || flags&(fixed|dontUnmap) != 0 && flags&may == 0 ||
		flags&dontUnmap != 0 || !pageAligned(old) || newLen == 0 || oldLen == 0 {
		// MREMAP_DONTUNMAP and a zero old size (duplicating a shared
		// mapping) are not served: EINVAL, as a kernel without them says.
		return fail(unix.EINVAL)
	}
	if oldLen > 1<<47 || newLen > 1<<47 || old > 1<<47 {
		return fail(unix.ENOMEM)
	}
	oldN, newN := alignUp(oldLen), alignUp(newLen)
	if !p.mapped(old, old+oldN) {
		return fail(unix.EFAULT)
	}
	move := func(to uint64) Result {
		if e := p.addSpan(to, to+newN); e != 0 {
			return fail(e)
		}
		copy(p.cfg.Mem[to:to+min(oldN, newN)], p.cfg.Mem[old:old+min(oldN, newN)])
		if newN > oldN {
			p.zero(to+oldN, to+newN)
		}
		p.removeSpans(old, old+oldN)
		return ok(to)
	}
	if flags&fixed != 0 {
		if !pageAligned(newAddr) {
			return fail(unix.EINVAL)
		}
		if newAddr > 1<<47 || newAddr < old+oldN && old < newAddr+newN {
			return fail(unix.EINVAL)
		}
		if !p.heapOK(newAddr, newAddr+newN) {
			return fail(unix.ENOMEM)
		}
		if e := p.removeSpans(newAddr, newAddr+newN); e != 0 {
			return fail(e)
		}
		return move(newAddr)
	}
	if newN <= oldN {
		return okOrFail2(p.removeSpans(old+newN, old+oldN), old)
	}
	if p.heapOK(old+oldN, old+newN) && p.free(old+oldN, old+newN) {
		if e := p.addSpan(old+oldN, old+newN); e != 0 {
			return fail(e)
		}
		p.zero(old+oldN, old+newN)
		return ok(old)
	}
	if flags&may == 0 {
		return fail(unix.ENOMEM)
	}
	to := p.findFree(newN)
	if to == 0 {
		return fail(unix.ENOMEM)
	}
	return move(to)
}

func okOrFail2(e unix.Errno, v uint64) Result {
	if e != 0 {
		return fail(e)
	}
	return ok(v)
}
