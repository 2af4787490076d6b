// Package kvmtest decides whether a test that needs KVM runs, skips or
// fails: it skips with the reason when /dev/kvm is unusable, unless
// DUST_REQUIRE_KVM=1 says this machine must have KVM (CI), and then fails.
package kvmtest

import (
	"os"
	"testing"

	"github.com/dust-run/dust/internal/kvm"
)

// Require skips or fails t when KVM is not usable here.
func Require(t testing.TB) {
	t.Helper()
	err := kvm.Available()
	if err == nil {
		return
	}
	if os.Getenv("DUST_REQUIRE_KVM") == "1" {
		t.Fatalf("DUST_REQUIRE_KVM=1 but KVM is not usable: %v", err)
	}
	t.Skipf("KVM not usable on this machine (set DUST_REQUIRE_KVM=1 to make this fatal): %v", err)
}
