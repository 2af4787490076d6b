package machine

import (
	"context"
	"errors"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeImage makes fakeMachines and tracks how many are alive.
type fakeImage struct {
	made, live atomic.Int64
	fail       atomic.Bool
}

func (f *fakeImage) Kind() string   { return "fake" }
func (f *fakeImage) Limits() Limits { return Limits{} }
func (f *fakeImage) Close() error   { return nil }
func (f *fakeImage) NewMachine() (Machine, error) {
	if f.fail.Load() {
		return nil, errors.New("no more machines")
	}
	f.live.Add(1)
	return &fakeMachine{img: f, id: f.made.Add(1)}, nil
}

type fakeMachine struct {
	img    *fakeImage
	id     int64
	runs   atomic.Int32
	closed atomic.Int32
}

func (m *fakeMachine) Run(ctx context.Context, req *Request, stdout, stderr io.Writer) Result {
	if m.runs.Add(1) > 1 {
		return Result{Outcome: InternalError, Detail: "reused"}
	}
	return Result{Outcome: Served}
}

func (m *fakeMachine) Close() error {
	if m.closed.Add(1) == 1 {
		m.img.live.Add(-1)
	}
	return nil
}

func TestPoolHandsOutEachMachineOnce(t *testing.T) {
	img := &fakeImage{}
	p := NewPool(img, PoolOptions{Size: 4, DestroyWorkers: 2})
	seen := sync.Map{}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				m, _, err := p.Get()
				if err != nil {
					t.Error(err)
					return
				}
				fm := m.(*fakeMachine)
				if _, dup := seen.LoadOrStore(fm.id, true); dup {
					t.Errorf("machine %d handed out twice", fm.id)
				}
				if res := m.Run(context.Background(), &Request{}, io.Discard, io.Discard); res.Outcome != Served {
					t.Errorf("machine %d: %v", fm.id, res.Detail)
				}
				p.Release(m)
			}
		}()
	}
	wg.Wait()
	p.Close()
	st := p.Stats()
	if st.Hits+st.Misses != 1600 {
		t.Errorf("hits %d + misses %d != 1600", st.Hits, st.Misses)
	}
	if n := img.live.Load(); n != 0 {
		t.Errorf("%d machines still alive after Close", n)
	}
	if st.Created != st.Destroyed {
		t.Errorf("created %d, destroyed %d", st.Created, st.Destroyed)
	}
}

func TestPoolColdAndErrors(t *testing.T) {
	img := &fakeImage{}
	p := NewPool(img, PoolOptions{Size: 0})
	defer p.Close()
	m, hit, err := p.Get()
	if err != nil || hit {
		t.Fatalf("cold get: hit=%v err=%v", hit, err)
	}
	p.Release(m)
	img.fail.Store(true)
	if _, _, err := p.Get(); err == nil {
		t.Fatal("Get succeeded although the image cannot make machines")
	}
	if st := p.Stats(); st.CreateErrors != 1 || st.Misses != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestReleaseAfterCloseStillDestroys(t *testing.T) {
	img := &fakeImage{}
	p := NewPool(img, PoolOptions{Size: 1})
	m, _, _ := p.Get()
	p.Close()
	p.Release(m)
	if n := img.live.Load(); n != 0 {
		t.Errorf("%d machines alive", n)
	}
}

func TestResultErrWrapsSentinels(t *testing.T) {
	cause := errors.New("pipe closed")
	r := Result{Outcome: BadOutput, Detail: "writing the response", Cause: cause}
	err := r.Err()
	if !errors.Is(err, ErrBadOutput) || !errors.Is(err, cause) {
		t.Fatalf("%v does not wrap both the sentinel and the cause", err)
	}
	var oe *OutcomeError
	if !errors.As(err, &oe) || oe.Result.Outcome != BadOutput {
		t.Fatal("not an *OutcomeError")
	}
	if (&Result{Outcome: Served, ExitStatus: 3}).Err() != nil {
		t.Fatal("Served is not an error")
	}
	for o := Served; o <= Refused; o++ {
		if strings.HasPrefix(o.String(), "outcome(") {
			t.Errorf("outcome %d has no name", o)
		}
	}
}

func TestLimits(t *testing.T) {
	l := Limits{}.WithDefaults()
	if l.Memory != DefaultMemory || l.Timeout != DefaultTimeout || l.MaxOutput != DefaultMaxOutput || l.MaxLog != DefaultMaxLog {
		t.Fatalf("defaults %+v", l)
	}
	if err := (Limits{Memory: -1}).Validate(); !errors.Is(err, ErrBadLimits) {
		t.Fatalf("negative memory: %v", err)
	}
}

func TestPoolResize(t *testing.T) {
	img := &fakeImage{}
	p := NewPool(img, PoolOptions{Size: 0, MaxSize: 8})
	defer p.Close()
	if st := p.Stats(); st.Ready != 0 || st.Target != 0 {
		t.Fatalf("scale to zero: %+v", st)
	}
	p.SetSize(5)
	for p.Stats().Ready < 5 {
		m, _, _ := p.Get() // Get nudges the filler; returning machines keeps the count moving
		p.Release(m)
	}
	p.SetSize(100) // clamped to MaxSize
	if st := p.Stats(); st.Target != 8 {
		t.Fatalf("target %d, want 8", st.Target)
	}
	p.SetSize(1)
	for p.Stats().Ready > 1 {
		p.poke()
		runtimeGosched()
	}
}
func runtimeGosched() { runtime.Gosched() }

// resettable is a fakeMachine that a restore makes usable again.
type resettable struct {
	fakeMachine
	resets   atomic.Int32
	failNext atomic.Bool
}

func (m *resettable) Reset() error {
	if m.failNext.Load() {
		return errors.New("reset failed")
	}
	m.resets.Add(1)
	m.runs.Store(0)
	return nil
}

type resettableImage struct{ fakeImage }

func (f *resettableImage) NewMachine() (Machine, error) {
	f.live.Add(1)
	return &resettable{fakeMachine: fakeMachine{img: &f.fakeImage, id: f.made.Add(1)}}, nil
}

// In restore mode sequential requests keep coming back to the machines
// the pool already has: no VM is built while one is on loan, and an idle
// pool still shrinks to its target.
func TestPoolReuseRestores(t *testing.T) {
	img := &resettableImage{}
	p := NewPool(img, PoolOptions{Size: 1, MaxSize: 32, Reuse: true})
	defer p.Close()
	for p.Stats().Ready < 1 {
		runtime.Gosched()
	}
	for i := range 20 {
		res, err := p.Do(context.Background(), &Request{}, io.Discard, io.Discard)
		if err != nil || res.Outcome != Served {
			t.Fatalf("request %d: %v %v", i, res, err)
		}
		for p.Stats().Ready < 1 {
			runtime.Gosched() // the restore runs on a background worker
		}
	}
	st := p.Stats()
	if st.Created != 1 || st.Restored != 20 || st.Destroyed != 0 {
		t.Fatalf("after 20 sequential requests: %+v, want one machine restored 20 times", st)
	}
	// A failed outcome or a failed reset destroys the machine, and the
	// filler makes another.
	m, _, _ := p.Get()
	p.Recycle(m, Result{Outcome: Fault})
	m, _, _ = p.Get()
	m.(*resettable).failNext.Store(true)
	m.Run(context.Background(), &Request{}, io.Discard, io.Discard)
	p.Recycle(m, Result{Outcome: Served})
	for p.Stats().Ready < 1 || p.Stats().Destroyed < 2 {
		runtime.Gosched()
	}
	if st := p.Stats(); st.RestoreErrors != 1 || st.Created < 2 {
		t.Fatalf("after a fault and a failed reset: %+v", st)
	}
	// Shrinking with restored machines around does not leave extras.
	// A machine leaves the ready list before it is closed, on the
	// destroying goroutine: wait for the count of live ones, bounded.
	p.SetSize(0)
	for deadline := time.Now().Add(10 * time.Second); img.live.Load() != 0; runtime.Gosched() {
		if time.Now().After(deadline) {
			t.Fatalf("%d machines alive in an idle pool of target 0 (%+v)", img.live.Load(), p.Stats())
		}
	}
}
