// stuck waits on a futex word nothing will ever change, from a goroutine
// in a raw system call, while the runtime's other threads keep sleeping
// with timeouts: only the request's deadline can end it.
package main

import (
	"syscall"
	"unsafe"
)

func main() {
	var word uint32
	const futexWait = 0
	syscall.Syscall6(syscall.SYS_FUTEX, uintptr(unsafe.Pointer(&word)), futexWait, 0, 0, 0, 0)
	println("woke up")
}
