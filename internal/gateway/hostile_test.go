package gateway

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine/machinetest"
	"github.com/dust-run/dust/internal/store"
)

// hostileGuests are adversarial programs, each with the status its
// requests must get. They all print a CGI header first (buffered in the
// guest, so it never leaves before the misbehaviour) to show that a
// half-done response is not passed on.
var hostileGuests = []struct {
	name   string
	body   string // the body of main(), after the header is printed
	status int
}{
	{"null-write", `*(volatile int *)0 = 1;`, 502},
	{"divide-by-zero", `__asm__ volatile("xor %%ecx, %%ecx; mov $1, %%eax; cltd; idiv %%ecx" ::: "eax", "ecx", "edx");`, 502},
	{"invalid-opcode", `__asm__ volatile("ud2");`, 502},
	{"privileged-cli", `__asm__ volatile("cli");`, 502},
	{"privileged-hlt", `__asm__ volatile("hlt");`, 502},
	{"breakpoint", `__asm__ volatile("int3");`, 502},
	{"stack-overflow", `recurse(1);`, 502},
	{"write-page-tables", `*(volatile unsigned long *)0x2000 = 0;`, 502},
	{"write-gdt", `*(volatile unsigned long *)0x1000 = 0;`, 502},
	{"write-boot-info", `*(volatile unsigned long *)0x10000 = 0;`, 502},
	{"write-own-code", `*(volatile unsigned char *)(unsigned long)main = 0xc3;`, 502},
	{"read-beyond-memory", `printf("%d", *(volatile int *)(1UL << 40));`, 502},
	{"port-in", `unsigned v; __asm__ volatile("inl %%dx, %%eax" : "=a"(v) : "d"(0xD001));`, 502},
	{"unknown-hypercall", `static struct dust_hc_write a; dust_hypercall(0x55, &a);`, 502},
	{"wrapping-buffer", `static struct dust_hc_write a = {1, ~0UL - 15, 32}; dust_hypercall(DUST_HC_WRITE, &a);`, 502},
	{"buffer-in-monitor", `static struct dust_hc_write a = {1, 0x2000, 64}; dust_hypercall(DUST_HC_WRITE, &a);`, 502},
	{"args-misaligned", `static char b[64]; dust_hypercall(DUST_HC_WRITE, b + 3);`, 502},
	{"read-into-monitor", `static struct dust_hc_read a = {0x3000, 4096, 0}; dust_hypercall(DUST_HC_READ, &a);`, 502},
	{"exit-storm", `static struct dust_hc_write a = {1, 0x100000, 0}; for (;;) dust_hypercall(DUST_HC_WRITE, &a);`, 504},
	{"spin", `for (;;) __asm__ volatile("");`, 504},
	{"memory-bomb", `for (;;) { char *p = malloc(1 << 20); memset(p, 1, 1 << 20); sink = p; }`, 502},
	// The log limit or, when eight floods share two cores, the deadline.
	{"log-flood", `for (;;) fputs("log log log log log log log log\n", stderr);`, 502},
	{"rdtsc-timing", `unsigned lo, hi; __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi)); printf("tsc %u\n", lo); return 0;`, 200},
}

const hostilePrelude = `#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dust/dust.h>
static char *volatile sink;
static int recurse(int n) { volatile char pad[4096]; pad[0] = (char)n; return recurse(n + 1) + pad[0]; }
int main(void) {
	printf("Content-Type: text/plain\r\n\r\nstarted\n");
	%s
	for (;;) __asm__ volatile("");
}
`

// TestHostileGuests deploys each adversarial guest, attacks with it from
// eight clients for a while, and meanwhile measures a well-behaved client:
// every attack gets its status, every good request gets 200, and the table
// of good-client p99 per attack is logged. DUST_ATTACK sets how long each
// attack lasts (default 1s).
func TestHostileGuests(t *testing.T) {
	if testing.Short() {
		t.Skip("attacks take a while: skipped with -short")
	}
	per := attackDuration(t)
	ts := start(t, t.TempDir())
	ts.deploy(t, "hello", example(t, "hello"), store.Settings{Route: "/hello", MaxConcurrency: 64})
	client := &http.Client{Timeout: 20 * time.Second}
	get := func(path string) (int, time.Duration, error) {
		t0 := time.Now()
		resp, err := client.Get(ts.url + path)
		if err != nil {
			return 0, 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, time.Since(t0), nil
	}
	for _, g := range hostileGuests {
		img := guest(t, fmt.Sprintf(hostilePrelude, g.body))
		ts.deploy(t, g.name, img, store.Settings{Route: "/" + g.name, Timeout: 100 * time.Millisecond, Memory: 4 << 20, MaxConcurrency: 32})
	}
	fds0, threads0 := machinetest.HostUsage(t)
	ready0, rss0 := ts.readyMachines(), rssKiB(t)
	t.Logf("%-20s %8s %10s %14s", "attack", "status", "attacks", "good p99 µs")
	for _, g := range hostileGuests {
		stop := time.Now().Add(per)
		var mu sync.Mutex
		attacks, bad := 0, ""
		var wg sync.WaitGroup
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					code, _, err := get("/" + g.name)
					mu.Lock()
					attacks++
					if err != nil || (code != g.status && !(g.name == "log-flood" && code == 504)) {
						bad = fmt.Sprintf("status %d, err %v", code, err)
					}
					mu.Unlock()
				}
			}()
		}
		good := wellBehaved(t, client, ts.url+"/hello", time.Until(stop), g.name)
		wg.Wait()
		if bad != "" {
			t.Errorf("%s: want %d, got %s", g.name, g.status, bad)
		}
		t.Logf("%-20s %8d %10d %14.0f", g.name, g.status, attacks, good.Quantile(0.99))
	}
	// Idle pools shrink to the floor (0 here) five seconds after their
	// traffic stops; then the host must be back where it started, but for
	// at most 64 idle vCPU worker threads kept on purpose.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	// Idle keep-alive connections hold a descriptor at each end.
	client.CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
	settled := func() bool {
		fds, _ := machinetest.HostUsage(t)
		return ts.readyMachines() <= ready0 && fds <= fds0+16
	}
	for deadline := time.Now().Add(15 * time.Second); !settled() && time.Now().Before(deadline); {
		<-tick.C
	}
	fds1, threads1 := machinetest.HostUsage(t)
	rss1 := rssKiB(t)
	if fds1 > fds0+16 || threads1 > threads0+64+16 || rss1 > rss0+128<<10 {
		t.Errorf("after the attacks: fds %d→%d, threads %d→%d, RSS %d→%d MiB", fds0, fds1, threads0, threads1, rss0>>10, rss1>>10)
	}
	t.Logf("after all attacks and idle pools drained: fds %d→%d, threads %d→%d, RSS %d→%d MiB", fds0, fds1, threads0, threads1, rss0>>10, rss1>>10)
}

// Reading uninitialised memory for the previous request's data, through
// the gateway: the secret example plants a secret in memory and registers,
// and reports whether it found one left by an earlier request.
func TestNoSecretsBetweenRequests(t *testing.T) {
	ts := start(t, t.TempDir())
	ts.deploy(t, "secret", example(t, "secret"), store.Settings{Route: "/secret"})
	for i := 0; i < 5; i++ {
		resp, body := get(t, "GET", fmt.Sprintf("%s/secret?request-%d", ts.url, i), nil)
		if resp.StatusCode != 200 || !strings.Contains(body, "memory=clean") || !strings.Contains(body, "regs=clean") {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
}
