package linux

// Clone is the process as it was at a snapshot, for a machine restored
// from that snapshot: the guest's memory comes back as it was, so its
// kernel-side state must too (the break and the mappings the program's
// allocator is using, open descriptors and their offsets, /tmp, signal
// dispositions, limits, cwd, every thread's state; the monitor restores
// the threads' registers). cfg is the new request's: its
// memory (the restored copy), body, output, clocks, randomness and
// deadline. The call counters start again at zero.
//
// App files are reopened on their first use, so a clone shares no host
// handle with p; pipes, eventfds and /tmp are copied, so nothing one
// request does is seen by another.
func (p *Process) Clone(cfg Config) *Process {
	q := newProcess(cfg)
	q.Close() // drop the fresh stdio: p's descriptors replace them
	st, old := &q.st, &p.st
	fresh := *st

	*st = *old
	st.ncalls, st.unknown = 0, map[string]int{}
	st.regions = append([]region(nil), old.regions...)
	st.spans = append([]span(nil), old.spans...)
	st.clean = append([]span(nil), old.clean...)
	st.lazy = append([]span(nil), old.lazy...)
	st.threads = make([]*thread, len(old.threads))
	for i, t := range old.threads {
		c := *t
		st.threads[i] = &c
		if t == old.cur {
			st.cur = &c
		}
	}
	st.stdinLeft, st.stdinEOF = fresh.stdinLeft, false
	st.start = fresh.start

	tmps := map[*tmpNode]*tmpNode{}
	st.tmp = &tmpfs{bytes: old.tmp.bytes, files: old.tmp.files}
	st.tmp.root = cloneTmp(old.tmp.root, nil, tmps)

	files := map[*ofile]*ofile{}
	pipes := map[*pipe]*pipe{}
	st.fds = make([]*fdesc, len(old.fds))
	for i, d := range old.fds {
		if d == nil {
			continue
		}
		f, ok := files[d.f]
		if !ok {
			f = cloneOfile(d.f, tmps, pipes)
			files[d.f] = f
		}
		st.fds[i] = &fdesc{f: f, cloexec: d.cloexec}
	}
	q.cloneNet(old, files)
	// Registrations name open files: point them at the copies (one whose
	// file is no longer installed is dropped, as at the next wait).
	for _, f := range files {
		if f.ep == nil {
			continue
		}
		ep := &epoll{}
		for _, it := range f.ep.items {
			if g, ok := files[it.f]; ok {
				c := *it
				c.f = g
				ep.items = append(ep.items, &c)
			}
		}
		f.ep = ep
	}
	// The heap range is the snapshot's: the restored memory has the
	// program's data exactly there.
	q.cfg.HeapStart, q.cfg.HeapEnd = p.cfg.HeapStart, p.cfg.HeapEnd
	// The program's monotonic clock continues from the ready point: a
	// runtime that read it before (Go's timers, sleeping threads'
	// deadlines) must never see it go back.
	if base, mono := old.readyAt, q.cfg.Monotonic; base != 0 {
		q.cfg.Monotonic = func() int64 { return base + mono() }
	}
	// Every thread's random state gets fresh bytes before any of them
	// runs again; threads made later are refilled at their first calls.
	st.seeded = map[uint64]bool{}
	for _, t := range st.threads {
		t.reseeded = false
		q.reseed(t)
	}
	return q
}

// cloneTmp copies the tree under n; seen maps old nodes to new ones so
// descriptors of the same node (or of an unlinked one) stay shared.
func cloneTmp(n, parent *tmpNode, seen map[*tmpNode]*tmpNode) *tmpNode {
	if c, ok := seen[n]; ok {
		return c
	}
	c := *n
	seen[n] = &c
	c.data = append([]byte(nil), n.data...)
	if parent == nil {
		c.parent = &c
	} else {
		c.parent = parent
	}
	if n.dir {
		c.kids = make(map[string]*tmpNode, len(n.kids))
		for name, k := range n.kids {
			c.kids[name] = cloneTmp(k, &c, seen)
		}
	}
	return &c
}

func cloneOfile(f *ofile, tmps map[*tmpNode]*tmpNode, pipes map[*pipe]*pipe) *ofile {
	c := *f
	c.app, c.appRA = nil, nil // reopened on first use
	if f.n.tmp != nil {
		// A node still in the tree was copied with it; an unlinked one is
		// reachable only from descriptors, and its parent is never used.
		c.n.tmp = cloneTmp(f.n.tmp, nil, tmps)
	}
	if f.pipe != nil {
		q, ok := pipes[f.pipe]
		if !ok {
			q = &pipe{buf: append([]byte(nil), f.pipe.buf...), readers: f.pipe.readers, writers: f.pipe.writers}
			pipes[f.pipe] = q
		}
		c.pipe = q
	}
	if f.ev != nil {
		ev := *f.ev
		c.ev = &ev
	}
	return &c
}
