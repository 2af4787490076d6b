package hvt

import "time"

// PhaseHook, when set, receives the duration of every phase of machine
// creation, run and destruction ("create", "KVM_CREATE_VM", d). It exists
// for the benchmark breakdown (bench_test.go, `make bench`); it is nil in
// production, where each phase costs one nil check. Set it before any
// machine is made and do not change it while machines run.
var PhaseHook func(group, phase string, d time.Duration)

// phaseTimer returns a lap function: each call reports the time since the
// previous one.
func phaseTimer(group string) func(string) {
	h := PhaseHook
	if h == nil {
		return func(string) {}
	}
	last := time.Now()
	return func(phase string) {
		now := time.Now()
		h(group, phase, now.Sub(last))
		last = now
	}
}
