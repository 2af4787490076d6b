package bench

import (
	"fmt"
	"math"
)

// targets checks issue 5's targets against a report. A target whose
// inputs were skipped is reported as missed with the reason.
func targets(r *Report) []Target {
	row := func(name string) *Row {
		for i := range r.Machine {
			if r.Machine[i].Name == name && r.Machine[i].Skip == "" && r.Machine[i].N > 0 {
				return &r.Machine[i]
			}
		}
		return nil
	}
	load := func(name string) *LoadRow {
		for i := range r.Gateway {
			if r.Gateway[i].Name == name && r.Gateway[i].Requests > 0 {
				return &r.Gateway[i]
			}
		}
		return nil
	}
	var ts []Target
	speedup := func(what, want string, min float64, fast, slow string) {
		t := Target{What: what, Want: want, Value: jsonFloat(math.NaN())}
		f, s := row(fast), row(slow)
		if f == nil || s == nil {
			t.Got, t.Reason = "not measured", fmt.Sprintf("%s or %s did not run", fast, slow)
			ts = append(ts, t)
			return
		}
		x := Ratio(f.P50, s.P50)
		t.Value, t.Met, t.Measured = jsonFloat(x), x >= min, true
		t.Got = fmt.Sprintf("%.1fx (%s %s vs %s %s)", x, fast, fmtDur(f.P50), slow, fmtDur(s.P50))
		if cold := row("hvt-cold"); cold != nil {
			t.Got += fmt.Sprintf("; cold: %.1fx", Ratio(cold.P50, s.P50))
		}
		if !t.Met {
			t.Reason = fmt.Sprintf("short by %.1fx", min/x)
		}
		ts = append(ts, t)
	}
	speedup("hvt fresh machine vs QEMU microvm (p50)", ">= 100x", 100, "hvt-pool-paced", "qemu-microvm")
	speedup("hvt fresh machine vs posix_spawn (p50)", ">= 2x", 2, "hvt-pool-paced", "posix-spawn")

	t := Target{What: "gateway hvt hello req/s vs process-per-request CGI", Want: ">= 1x", Value: jsonFloat(math.NaN())}
	if h, c := load("gateway hvt hello"), load("net/http/cgi process"); h != nil && c != nil {
		x := h.RPS / c.RPS
		t.Value, t.Met, t.Measured = jsonFloat(x), x >= 1, true
		t.Got = fmt.Sprintf("%.2fx (%.0f vs %.0f req/s, %d clients)", x, h.RPS, c.RPS, h.Concurrency)
		if !t.Met {
			t.Reason = fmt.Sprintf("short by %.0f %%: VM create+destroy CPU per request (%s here) exceeds a fork+exec (%s)", (1-x)*100, fmtDur(h.CPUPerReq), fmtDur(c.CPUPerReq))
		}
	} else {
		t.Got, t.Reason = "not measured", "gateway load section did not run"
	}
	ts = append(ts, t)

	mem := Target{What: "host memory per live hvt hello machine", Want: "<= 512 KiB", Value: jsonFloat(math.NaN())}
	cnt := Target{What: "live hvt hello machines in 1 GiB", Want: ">= 2000", Value: jsonFloat(math.NaN())}
	if m := r.Memory; m != nil {
		mem.Measured, cnt.Measured = true, true
		mem.Value, mem.Met = jsonFloat(m.HostKiB), m.HostKiB <= 512
		mem.Got = fmt.Sprintf("%.0f KiB (MemAvailable drop, %d live); %.0f KiB private", m.HostKiB, m.Machines, m.PrivateKiB)
		cnt.Value, cnt.Met = jsonFloat(m.MachinesPerGiB), m.MachinesPerGiB >= 2000
		cnt.Got = fmt.Sprint(m.MachinesPerGiB)
		if !mem.Met {
			mem.Reason = fmt.Sprintf("over by %.0f KiB: KVM's per-VM kernel structures and shadow page tables, not guest pages", m.HostKiB-512)
			cnt.Reason = "follows from the per-machine figure"
		}
	} else {
		mem.Got, mem.Reason = "not measured", "full run only"
		cnt.Got, cnt.Reason = "not measured", "full run only"
	}
	return append(ts, mem, cnt)
}
