package gateway

import (
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dust-run/dust/internal/machine/machinetest"
	"github.com/dust-run/dust/internal/store"
)

// TestHostileClients runs each client-side attack for a while and measures
// a well-behaved client meanwhile: every good request must succeed, and
// the table of its p99 per attack is logged. DUST_ATTACK sets how long each
// attack lasts (default 1s).
func TestHostileClients(t *testing.T) {
	if testing.Short() {
		t.Skip("attacks take a while: skipped with -short")
	}
	per := attackDuration(t)
	ts := startWith(t, t.TempDir(), 500*time.Millisecond)
	ts.deploy(t, "hello", example(t, "hello"), store.Settings{Route: "/hello", MaxConcurrency: 64})
	ts.deploy(t, "echo", example(t, "echo"), store.Settings{Route: "/echo"})
	ts.deploy(t, "flood", example(t, "flood"), store.Settings{Route: "/flood", Timeout: 300 * time.Millisecond})
	ts.deploy(t, "loop", example(t, "loop"), store.Settings{Route: "/loop", Timeout: 200 * time.Millisecond, MaxConcurrency: 2, QueueLen: 4, QueueWait: 50 * time.Millisecond})
	addr := strings.TrimPrefix(ts.url, "http://")
	dial := func() net.Conn {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			return nil
		}
		c.SetDeadline(time.Now().Add(per + 5*time.Second))
		return c
	}
	attacks := []struct {
		name string
		run  func(stop <-chan struct{})
	}{
		{"slowloris x100", func(stop <-chan struct{}) {
			var conns []net.Conn
			for i := 0; i < 100; i++ {
				if c := dial(); c != nil {
					c.Write([]byte("GET /hello HTTP/1.1\r\nHost: x\r\nX-A: "))
					conns = append(conns, c)
				}
			}
			<-stop
			for _, c := range conns {
				c.Close()
			}
		}},
		{"slow reader x16", func(stop <-chan struct{}) {
			// Ask for an endless response and read a byte now and then.
			var wg sync.WaitGroup
			for i := 0; i < 16; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := dial()
					if c == nil {
						return
					}
					defer c.Close()
					c.Write([]byte("GET /flood HTTP/1.1\r\nHost: x\r\n\r\n"))
					b := make([]byte, 1)
					for {
						select {
						case <-stop:
							return
						case <-time.After(20 * time.Millisecond):
						}
						if _, err := c.Read(b); err != nil {
							return
						}
					}
				}()
			}
			wg.Wait()
		}},
		{"malformed HTTP", func(stop <-chan struct{}) {
			junk := []string{"\x00\x01\x02garbage\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "GET /hello HTTP/1.1\r\nHost x\r\n\r\n",
				"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", "GET /" + strings.Repeat("a", 100<<10) + " HTTP/1.1\r\n\r\n"}
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if c := dial(); c != nil {
					c.Write([]byte(junk[i%len(junk)]))
					io.Copy(io.Discard, c)
					c.Close()
				}
			}
		}},
		{"smuggling CL+TE", func(stop <-chan struct{}) {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if c := dial(); c != nil {
					c.Write([]byte("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /loop HTTP/1.1\r\nHost: x\r\n\r\n"))
					c.SetReadDeadline(time.Now().Add(time.Second))
					io.Copy(io.Discard, c)
					c.Close()
				}
			}
		}},
		{"path traversal", func(stop <-chan struct{}) {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, p := range []string{"/hello/../echo", "/%2e%2e/etc/passwd", "/hello/..%2f..%2fadmin"} {
					if resp, err := http.Get(ts.url + p); err == nil {
						io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
			}
		}},
		{"flood beyond queue x64", func(stop <-chan struct{}) {
			var wg sync.WaitGroup
			for i := 0; i < 64; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						if resp, err := http.Get(ts.url + "/loop"); err == nil {
							io.Copy(io.Discard, resp.Body)
							resp.Body.Close()
						}
					}
				}()
			}
			wg.Wait()
		}},
	}
	client := &http.Client{Timeout: 10 * time.Second}
	t.Logf("%-24s %8s %14s", "attack", "good", "good p99 µs")
	for _, a := range attacks {
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { a.run(stop); close(done) }()
		good := wellBehaved(t, client, ts.url+"/hello", per, a.name)
		close(stop)
		<-done
		t.Logf("%-24s %8d %14.0f", a.name, len(good), good.Quantile(0.99))
	}
}

// attackDuration is how long each attack lasts: $DUST_ATTACK, default 1s.
func attackDuration(t *testing.T) time.Duration {
	d := os.Getenv("DUST_ATTACK")
	if d == "" {
		return time.Second
	}
	per, err := time.ParseDuration(d)
	if err != nil {
		t.Fatalf("DUST_ATTACK=%q: %v", d, err)
	}
	return per
}

// wellBehaved asks url for hello again and again for d, failing t if any
// answer is not hello, and returns the sorted latencies (at least one).
func wellBehaved(t *testing.T, client *http.Client, url string, d time.Duration, attack string) machinetest.Latencies {
	var good machinetest.Latencies
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		t0 := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			t.Errorf("%s: a well-behaved request failed: %v", attack, err)
			break
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(body) != "Hello, world!\n" {
			t.Errorf("%s: a well-behaved request got %d %q", attack, resp.StatusCode, body)
			break
		}
		good = append(good, time.Since(t0))
	}
	if len(good) == 0 {
		good = append(good, 0)
	}
	sortDurations(good)
	return good
}
