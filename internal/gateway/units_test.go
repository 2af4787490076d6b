package gateway

import "testing"

// Sizes a user types read back as the same bytes; sizes shown to be read
// are in the largest unit reached, one decimal where needed.
func TestSizes(t *testing.T) {
	good := map[string]int64{"0": 0, "4096": 4096, "16MiB": 16 << 20, "512KiB": 512 << 10, "1GiB": 1 << 30, "2M": 2 << 20, "10B": 10}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
		if back, err := ParseSize(FormatSize(want)); err != nil || back != want {
			t.Errorf("FormatSize(%d) = %q does not read back", want, FormatSize(want))
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "MiB", "12XB", "99999999999999999999GiB", "1 2"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
	for n, want := range map[int64]string{
		0: "0B", 512: "512B", 1000: "1000B", 1023: "1023B", 1024: "1KiB", 1536: "1.5KiB", 39664: "38.7KiB",
		30032: "29.3KiB", 1<<20 - 1: "1MiB", 16 << 20: "16MiB", 3<<20 + 1<<19: "3.5MiB", 1<<30 + 1<<29: "1.5GiB",
		1 << 40: "1024GiB", -2048: "-2KiB",
	} {
		if got := HumanSize(n); got != want {
			t.Errorf("HumanSize(%d) = %q, want %q", n, got, want)
		}
	}
}
