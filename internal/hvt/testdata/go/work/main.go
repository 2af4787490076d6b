// work exercises the Go runtime on green threads: 100 goroutines that
// sleep, talk over channels and allocate enough garbage for several GC
// cycles, then a checksum of what they computed.
package main

import (
	"fmt"
	"runtime"
	"sync"
	"time"
)

func main() {
	const workers = 100
	in := make(chan int)
	out := make(chan uint64, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var sum uint64
			for n := range in {
				time.Sleep(time.Millisecond)
				// Garbage: a short-lived buffer per item.
				b := make([]byte, 64<<10)
				for i := range b {
					b[i] = byte(n + i)
				}
				for _, c := range b {
					sum += uint64(c)
				}
			}
			out <- sum
		}()
	}
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for n := 0; n < 1000; n++ {
		in <- n
		if n%250 == 0 {
			runtime.GC()
		}
	}
	close(in)
	wg.Wait()
	close(out)
	var total uint64
	for s := range out {
		total += s
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	fmt.Printf("Content-Type: text/plain\r\n\r\nsum=%d gcs=%d goroutines=%d\n", total, after.NumGC-before.NumGC, runtime.NumGoroutine())
}
