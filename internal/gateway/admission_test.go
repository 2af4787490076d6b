package gateway

import (
	"context"
	"errors"
	"testing"
	"time"
)

// One app filling the shared part of the global cap cannot take the
// reserve; another app still gets its guaranteed machines at once, and
// waiters are served oldest first among those that may take a slot.
func TestFairGate(t *testing.T) {
	ctx := context.Background()
	g := newFairGate(8, 16, 4, 2) // 4 shared, 4 reserved, 2 guaranteed per app
	var busy []func()
	for range 4 {
		rel, err := g.acquire(ctx, "busy", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		busy = append(busy, rel)
	}
	if _, err := g.acquire(ctx, "busy", 10*time.Millisecond); !errors.Is(err, errQueueTimeout) {
		t.Fatalf("busy app took a reserved slot: %v", err)
	}
	var small []func()
	for _, app := range []string{"a", "a", "b", "b"} {
		rel, err := g.acquire(ctx, app, 0)
		if err != nil {
			t.Fatalf("%s could not take a guaranteed slot: %v", app, err)
		}
		small = append(small, rel)
	}
	if live, _ := g.stats(); live != 8 {
		t.Fatalf("live %d, want 8", live)
	}
	// Full: a waiter of the busy app queues, and gets the shared slot the
	// busy app frees, though the reserve is still full of small apps.
	got := make(chan error, 1)
	go func() {
		rel, err := g.acquire(ctx, "busy", 5*time.Second)
		if err == nil {
			rel()
		}
		got <- err
	}()
	for {
		if _, w := g.stats(); w == 1 {
			break
		}
		time.Sleep(time.Millisecond) // until the waiter is queued
	}
	busy[0]()
	if err := <-got; err != nil {
		t.Fatalf("busy waiter not granted the slot its own app freed: %v", err)
	}
	// A release is idempotent: releasing twice must not free two slots.
	busy[1]()
	busy[1]()
	if live, _ := g.stats(); live != 6 {
		t.Fatalf("live %d after releases, want 6", live)
	}
	for _, r := range append(busy[2:], small...) {
		r()
	}
	if live, w := g.stats(); live != 0 || w != 0 || len(g.held) != 0 {
		t.Fatalf("after all releases: live %d waiting %d held %v", live, w, g.held)
	}
}

func TestFairGateQueueBound(t *testing.T) {
	g := newFairGate(1, 1, 0, 0)
	rel, err := g.acquire(context.Background(), "x", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rel()
	ctx, cancel := context.WithCancel(context.Background())
	waited := make(chan error, 1)
	go func() {
		_, err := g.acquire(ctx, "x", time.Minute)
		waited <- err
	}()
	for {
		if _, w := g.stats(); w == 1 {
			break
		}
		time.Sleep(time.Millisecond) // until the waiter is queued
	}
	if _, err := g.acquire(context.Background(), "y", time.Minute); !errors.Is(err, errQueueFull) {
		t.Fatalf("beyond the queue: %v, want errQueueFull", err)
	}
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	if _, w := g.stats(); w != 0 {
		t.Fatalf("cancelled waiter still queued")
	}
}

func TestClientLimiter(t *testing.T) {
	c := newClientLimiter(2)
	if !c.enter("a") || !c.enter("a") || c.enter("a") || !c.enter("b") {
		t.Fatal("per-address cap not applied per address")
	}
	c.leave("a")
	if !c.enter("a") {
		t.Fatal("a slot freed by leave was not reusable")
	}
	off := newClientLimiter(-1)
	for range 10 {
		if !off.enter("a") {
			t.Fatal("a disabled limiter refused")
		}
	}
}
