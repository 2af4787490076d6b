package machine

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// PoolOptions configures a Pool.
type PoolOptions struct {
	// Size is how many never-used machines are kept ready. 0 disables
	// pre-creation: every Get creates a machine (a "cold" start).
	Size int
	// MaxSize bounds Size and later SetSize calls (default max(Size, 64)).
	MaxSize int
	// DestroyWorkers bound the goroutines that close used machines off the
	// request path (default 2).
	DestroyWorkers int
	// DestroyQueue bounds used machines waiting for a worker (default 64).
	// When it is full, Release closes the machine in the caller: slower,
	// but memory stays bounded.
	DestroyQueue int
	// Reuse turns on the restore isolation mode: Recycle restores a
	// machine that ended well (Reusable) on a background worker and puts
	// it back among the ready ones, if the kind can (Resetter).
	Reuse bool
}

// PoolStats are counters since the pool was made.
type PoolStats struct {
	Hits, Misses, Created, Destroyed, CreateErrors int64
	// Restored counts machines reset and made ready again; RestoreErrors
	// those whose reset failed (they were destroyed).
	Restored, RestoreErrors int64
	Ready, Target           int
}

// Pool keeps pristine machines of one image ready, so a request does not
// pay for machine creation, and destroys (or, with Reuse, restores) used
// machines on bounded background workers, so it does not pay for that
// either. A machine handed out by Get is handed out again only after its
// restore has finished.
type Pool struct {
	img     Image
	reuse   bool
	ready   chan Machine
	destroy chan used
	stop    chan struct{}
	wake    chan struct{} // nudges the filler: a machine was taken or the target changed
	target  atomic.Int64
	wg      sync.WaitGroup

	mu     sync.RWMutex
	closed bool

	hits, misses, created, destroyed, createErrs atomic.Int64
	restored, restoreErrs                        atomic.Int64
	// onLoan counts machines handed out that will come back restored
	// (Reuse): the filler counts them as ready, or every request would
	// build a VM that its own machine then makes surplus.
	onLoan atomic.Int64
}

// used is a machine on its way to a background worker: to be reset and
// made ready again, or destroyed.
type used struct {
	m     Machine
	reset bool
}

// NewPool starts a pool for img.
func NewPool(img Image, o PoolOptions) *Pool {
	if o.DestroyWorkers <= 0 {
		o.DestroyWorkers = 2
	}
	if o.DestroyQueue <= 0 {
		o.DestroyQueue = 64
	}
	if o.MaxSize <= 0 {
		o.MaxSize = max(o.Size, 64)
	}
	p := &Pool{
		img:     img,
		reuse:   o.Reuse,
		ready:   make(chan Machine, o.MaxSize),
		destroy: make(chan used, o.DestroyQueue),
		stop:    make(chan struct{}),
		wake:    make(chan struct{}, 1),
	}
	p.target.Store(int64(min(max(o.Size, 0), o.MaxSize)))
	for range o.DestroyWorkers {
		p.wg.Add(1)
		go p.destroyer()
	}
	p.wg.Add(1)
	go p.fill()
	return p
}

// SetSize changes how many ready machines the pool keeps (clamped to
// [0, MaxSize]). Shrinking destroys the extra ones; 0 means nothing waits
// between requests (scale to zero).
func (p *Pool) SetSize(n int) {
	p.target.Store(int64(min(max(n, 0), cap(p.ready))))
	p.poke()
}

func (p *Pool) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// fill keeps len(ready) at the target. fill's sends may block only while
// restored machines fill the room it saw; Close unblocks it.
func (p *Pool) fill() {
	defer p.wg.Done()
	backoff := time.Millisecond
	for {
		for t := p.target.Load(); p.have() >= t; t = p.target.Load() {
			if int64(len(p.ready)) > t {
				select {
				case m := <-p.ready:
					p.hand(used{m: m})
				default:
				}
				continue
			}
			select {
			case <-p.wake:
			case <-p.stop:
				return
			}
		}
		m, err := p.img.NewMachine()
		if err != nil {
			p.createErrs.Add(1)
			// Creation failing (e.g. out of host memory) must not spin.
			select {
			case <-time.After(backoff):
				backoff = min(backoff*2, time.Second)
				continue
			case <-p.stop:
				return
			}
		}
		backoff = time.Millisecond
		p.created.Add(1)
		// Restored machines may have taken the room meanwhile: wait for
		// room or a change of target, and give the machine back if it is
		// no longer wanted.
		for m != nil {
			select {
			case <-p.stop:
				p.closeMachine(m)
				return
			case p.ready <- m:
				m = nil
			case <-p.wake:
				if p.have() > p.target.Load() {
					p.hand(used{m: m})
					m = nil
				}
			}
		}
	}
}

// have is what the filler counts towards the target: ready machines, and
// in restore mode those on loan.
func (p *Pool) have() int64 {
	n := int64(len(p.ready))
	if p.reuse {
		n += p.onLoan.Load()
	}
	return n
}

func (p *Pool) destroyer() {
	defer p.wg.Done()
	for u := range p.destroy {
		if u.reset {
			ok := p.restore(u.m)
			p.returned(u.m) // back in ready, or about to be destroyed
			if ok {
				continue
			}
			p.poke()
		}
		p.closeMachine(u.m)
	}
}

// restore resets m and makes it ready again; it reports false when m is to
// be destroyed instead (the reset failed, or enough machines are ready).
func (p *Pool) restore(m Machine) bool {
	if int64(len(p.ready)) >= p.target.Load() {
		return false // a surplus machine: give its memory back
	}
	if err := m.(Resetter).Reset(); err != nil {
		p.restoreErrs.Add(1)
		return false
	}
	select {
	case p.ready <- m:
		p.restored.Add(1)
		return true
	default:
		return false
	}
}

func (p *Pool) closeMachine(m Machine) {
	m.Close()
	p.destroyed.Add(1)
}

// Get returns a never-used machine: a ready one if there is one (hit),
// otherwise one created now (miss).
func (p *Pool) Get() (m Machine, hit bool, err error) {
	select {
	case m := <-p.ready:
		p.hits.Add(1)
		p.lend(m)
		p.poke()
		return m, true, nil
	default:
	}
	p.misses.Add(1)
	m, err = p.img.NewMachine()
	if err != nil {
		p.createErrs.Add(1)
		return nil, false, err
	}
	p.created.Add(1)
	p.lend(m)
	return m, false, nil
}

// lend counts m on loan if it will come back restored.
func (p *Pool) lend(m Machine) {
	if _, ok := m.(Resetter); ok && p.reuse {
		p.onLoan.Add(1)
	}
}

// returned ends m's loan (a machine lent by Get comes back through
// Recycle or Release exactly once).
func (p *Pool) returned(m Machine) {
	if _, ok := m.(Resetter); ok && p.reuse {
		p.onLoan.Add(-1)
	}
}

// Release hands a machine from Get back to be destroyed.
func (p *Pool) Release(m Machine) {
	p.returned(m)
	p.poke() // it will not come back: the filler may need to make one
	p.hand(used{m: m})
}

// Recycle hands back a machine from Get that served a request ending with
// res: in restore mode, a machine that ended well is restored and made
// ready again; any other is destroyed.
func (p *Pool) Recycle(m Machine, res Result) {
	_, can := m.(Resetter)
	if !(p.reuse && can && Reusable(res)) {
		p.Release(m)
		return
	}
	// Still on loan until the restore is done (restore).
	p.hand(used{m: m, reset: true})
}

func (p *Pool) hand(u used) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if !p.closed {
		select {
		case p.destroy <- u:
			return
		default:
		}
	}
	if u.reset {
		p.returned(u.m)
		p.poke()
	}
	p.closeMachine(u.m)
}

// Do serves one request on a pristine machine and recycles it.
func (p *Pool) Do(ctx context.Context, req *Request, stdout, stderr io.Writer) (Result, error) {
	m, _, err := p.Get()
	if err != nil {
		return Result{}, err
	}
	res := m.Run(ctx, req, stdout, stderr)
	p.Recycle(m, res)
	return res, nil
}

// Stats returns the pool's counters.
func (p *Pool) Stats() PoolStats {
	return PoolStats{
		Hits: p.hits.Load(), Misses: p.misses.Load(), Created: p.created.Load(),
		Destroyed: p.destroyed.Load(), CreateErrors: p.createErrs.Load(), Ready: len(p.ready),
		Restored: p.restored.Load(), RestoreErrors: p.restoreErrs.Load(),
		Target: int(p.target.Load()),
	}
}

// Close stops pre-creation, destroys ready machines, waits for pending
// destructions and returns. The image is not closed.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.stop)
	close(p.destroy)
	p.mu.Unlock()
	p.wg.Wait()
	for {
		select {
		case m := <-p.ready:
			p.closeMachine(m)
		default:
			return
		}
	}
}
