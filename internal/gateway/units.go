package gateway

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Sizes are shown and read in the units people type: 16MiB, 512KiB, 4096.

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}

// FormatSize writes n bytes in the largest binary unit that divides it
// exactly, so that ParseSize(FormatSize(n)) == n.
func FormatSize(n int64) string {
	for _, u := range sizeUnits[:3] {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// ParseSize reads a size such as 32MiB, 512KiB, 1GiB or 4096 (bytes).
func ParseSize(v string) (int64, error) {
	mult := int64(1)
	num := strings.TrimSpace(v)
	for _, u := range sizeUnits {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || strconv.FormatInt(n, 10) != num {
		return 0, fmt.Errorf("size %q: want a non-negative integer with an optional unit (KiB, MiB, GiB)", v)
	}
	if n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q is too large", v)
	}
	return n * mult, nil
}

// HumanSize writes n bytes for reading rather than typing back: in the
// largest binary unit n reaches, with one decimal where the unit does not
// divide it (39664 is "38.7KiB", 4096 "4KiB", 1000 "1000B"). Settings are
// shown with FormatSize instead, exactly as they are typed.
func HumanSize(n int64) string {
	if n < 0 {
		return "-" + HumanSize(-max(n, -(1<<62)))
	}
	for _, u := range sizeUnits[:3] {
		if n < u.mult {
			// 1023.96KiB is 1MiB, not "1024KiB".
			if lower := u.mult >> 10; lower > 1 && math.Round(float64(n)*10/float64(lower)) >= 10240 {
				return "1" + u.suffix
			}
			continue
		}
		tenths := int64(math.Round(float64(n) * 10 / float64(u.mult)))
		if tenths%10 == 0 {
			return strconv.FormatInt(tenths/10, 10) + u.suffix
		}
		return strconv.FormatInt(tenths/10, 10) + "." + strconv.FormatInt(tenths%10, 10) + u.suffix
	}
	return strconv.FormatInt(n, 10) + "B"
}
