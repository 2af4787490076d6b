package gateway

import (
	"context"
	"sync"
	"time"
)

// fairGate is the global cap on live machines, shared by every app so that
// no app's clients can take all of it. Of its max slots, reserve are kept
// for apps that hold fewer than guarantee machines: when one app (or
// several) fill the shared part with requests that hold their machines for
// as long as their deadline allows, every other app can still start
// guarantee machines at once. A slot is taken from the shared part when it
// has room, else from the reserve if the app may use it, and goes back to
// the part it came from. docs/gateway.md ("Fairness") has the design.
//
// Waiters are served first come, first served among those eligible: a
// release hands its slot to the oldest waiter that may take it, so a
// waiting small app is not overtaken by a busy one.
type fairGate struct {
	shared, reserve, guarantee int
	queue                      int

	mu           sync.Mutex
	sharedLive   int
	reservedLive int
	held         map[string]int // live machines per app name
	waiters      []*waiter
}

type waiter struct {
	app      string
	granted  chan struct{} // closed once the slot is this waiter's
	reserved bool          // which part the granted slot came from
}

func newFairGate(size, queue, reserve, guarantee int) *fairGate {
	reserve = min(max(reserve, 0), size)
	return &fairGate{shared: size - reserve, reserve: reserve, guarantee: guarantee, queue: queue, held: map[string]int{}}
}

// slotFor says which part app, holding held machines, may take a slot
// from now, if any.
func (g *fairGate) slotFor(held int) (ok, reserved bool) {
	if g.sharedLive < g.shared {
		return true, false
	}
	if held < g.guarantee && g.reservedLive < g.reserve {
		return true, true
	}
	return false, false
}

func (g *fairGate) takeLocked(app string, reserved bool) {
	if reserved {
		g.reservedLive++
	} else {
		g.sharedLive++
	}
	g.held[app]++
}

// acquire takes a slot for app, waiting at most wait in a bounded queue.
func (g *fairGate) acquire(ctx context.Context, app string, wait time.Duration) (func(), error) {
	g.mu.Lock()
	// Every release grants what it can, so whoever still waits may not
	// take a slot now: a newcomer that may is not jumping a fair queue.
	if ok, reserved := g.slotFor(g.held[app]); ok {
		g.takeLocked(app, reserved)
		g.mu.Unlock()
		return g.releaser(app, reserved), nil
	}
	if len(g.waiters) >= g.queue {
		g.mu.Unlock()
		return nil, errQueueFull
	}
	w := &waiter{app: app, granted: make(chan struct{})}
	g.waiters = append(g.waiters, w)
	g.mu.Unlock()

	t := time.NewTimer(wait)
	defer t.Stop()
	var err error
	select {
	case <-w.granted:
		return g.releaser(app, w.reserved), nil
	case <-t.C:
		err = errQueueTimeout
	case <-ctx.Done():
		err = ctx.Err()
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-w.granted:
		// Granted while giving up: hand the slot on.
		g.releaseLocked(app, w.reserved)
	default:
		g.removeLocked(w)
	}
	return nil, err
}

func (g *fairGate) removeLocked(w *waiter) {
	for i, x := range g.waiters {
		if x == w {
			g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
			return
		}
	}
}

// grantLocked gives free slots to the oldest eligible waiters.
func (g *fairGate) grantLocked() {
	for i := 0; i < len(g.waiters); {
		w := g.waiters[i]
		ok, reserved := g.slotFor(g.held[w.app])
		if !ok {
			i++
			continue
		}
		g.takeLocked(w.app, reserved)
		w.reserved = reserved
		g.waiters = append(g.waiters[:i], g.waiters[i+1:]...)
		close(w.granted)
	}
}

func (g *fairGate) releaser(app string, reserved bool) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.releaseLocked(app, reserved)
			g.mu.Unlock()
		})
	}
}

func (g *fairGate) releaseLocked(app string, reserved bool) {
	if reserved {
		g.reservedLive--
	} else {
		g.sharedLive--
	}
	if g.held[app]--; g.held[app] <= 0 {
		delete(g.held, app)
	}
	g.grantLocked()
}

// stats reports live machines and waiting requests.
func (g *fairGate) stats() (live, waiting int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.sharedLive + g.reservedLive, len(g.waiters)
}

// clientLimiter caps the requests one client address has inside the
// gateway at once (reading its body, queued or running). It bounds what a
// single address can make the gateway hold (goroutines, buffered bodies)
// without depending on how it spreads its requests over apps.
type clientLimiter struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

func newClientLimiter(limit int) *clientLimiter {
	return &clientLimiter{max: limit, n: map[string]int{}}
}

// enter admits one more request from addr, or reports false.
func (c *clientLimiter) enter(addr string) bool {
	if c.max <= 0 {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[addr] >= c.max {
		return false
	}
	c.n[addr]++
	return true
}

func (c *clientLimiter) leave(addr string) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[addr]--; c.n[addr] <= 0 {
		delete(c.n, addr)
	}
}
