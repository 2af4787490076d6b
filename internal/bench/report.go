package bench

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dust-run/dust/internal/machine"
)

// Report is everything one run measured.
type Report struct {
	Started  time.Time      `json:"started"`
	Elapsed  time.Duration  `json:"elapsed_ns"`
	Host     HostInfo       `json:"host"`
	Quick    bool           `json:"quick"`
	Baseline string         `json:"baseline"`
	Machine  []Row          `json:"machine"`
	Gateway  []LoadRow      `json:"gateway,omitempty"`
	TTFB     []TTFBRow      `json:"ttfb,omitempty"`
	Memory   *MemoryResult  `json:"memory,omitempty"`
	Cluster  *ClusterResult `json:"cluster,omitempty"`
	// Scaling sections.
	Concurrency []LoadRow    `json:"concurrency,omitempty"`
	GuestMemory []ScalePoint `json:"guest_memory,omitempty"`
	BodySize    []ScalePoint `json:"body_size,omitempty"`
	// Restore mode: the restore's cost against pages dirtied and guest
	// size, and a restored request phase by phase.
	RestoreScaling []RestorePoint `json:"restore_scaling,omitempty"`
	Breakdown      []Phase        `json:"breakdown,omitempty"`
	Targets        []Target       `json:"targets"`
	Skipped        []string       `json:"skipped,omitempty"`
	Charts         []string       `json:"charts,omitempty"`
}

// HostInfo says what the figures were taken on.
type HostInfo struct {
	CPU     string `json:"cpu"`
	Cores   int    `json:"cores"`
	Kernel  string `json:"kernel"`
	KVM     string `json:"kvm"` // e.g. "kvm_pvm (nested, shadow paging)"
	Go      string `json:"go"`
	LoadAvg string `json:"loadavg"`
}

// Row is one machine-layer contender.
type Row struct {
	Name       string        `json:"name"`
	Isolation  string        `json:"isolation"`
	Note       string        `json:"note"`
	Skip       string        `json:"skip,omitempty"`
	Paced      bool          `json:"paced,omitempty"`
	Requests   int           `json:"requests"`
	RPS        float64       `json:"rps"`
	CPUPerReq  time.Duration `json:"cpu_per_request_ns"`
	VsBaseline jsonFloat     `json:"p50_speedup_vs_baseline"`
	// Pool is the row's machine pool's counters at the end, for the pool
	// rows.
	Pool *machine.PoolStats `json:"pool,omitempty"`
	// Exits and Syscalls per request, for the rows of a Linux program on
	// hvt (each system call is one exit to the monitor).
	Exits    float64 `json:"exits_per_request,omitempty"`
	Syscalls float64 `json:"system_calls_per_request,omitempty"`
	Summary
	samples []time.Duration
}

// LoadRow is one target under concurrent load through HTTP.
type LoadRow struct {
	Name        string        `json:"name"`
	Isolation   string        `json:"isolation"`
	Concurrency int           `json:"concurrency"`
	Requests    int           `json:"requests"`
	Errors      int           `json:"errors"`
	FirstError  string        `json:"first_error,omitempty"`
	RPS         float64       `json:"rps"`
	CPUPerReq   time.Duration `json:"cpu_per_request_ns"`
	Pool        *LoadPool     `json:"pool,omitempty"`
	Summary
}

// LoadPool is how a gateway app's machine pool served one load row:
// counter deltas over the row's slices, from the gateway's admin API.
type LoadPool struct {
	Mode          string `json:"isolation_mode"` // effective: restore or fresh
	Hits          int64  `json:"hits"`
	Misses        int64  `json:"misses"`
	Restored      int64  `json:"restored"`
	RestoreErrors int64  `json:"restore_errors"`
}

// TTFBRow is the time to the first and last byte of a 1 MiB response.
type TTFBRow struct {
	Name  string  `json:"name"`
	Skip  string  `json:"skip,omitempty"`
	First Summary `json:"first_byte"`
	Last  Summary `json:"last_byte"`
}

// MemoryResult is what live hvt machines cost the host.
type MemoryResult struct {
	Machines          int     `json:"machines"`
	GuestMiB          int     `json:"guest_mib"`
	PrivateKiB        float64 `json:"private_kib_per_machine"`
	HostKiB           float64 `json:"host_kib_per_machine"` // drop in MemAvailable
	MachinesPerGiB    int     `json:"machines_per_gib"`
	ThreadsWhileLive  int     `json:"threads_while_live"`
	CreateAllDuration string  `json:"create_all"`
}

// ScalePoint is one step of a scaling sweep.
type ScalePoint struct {
	Series string        `json:"series"`
	X      int64         `json:"x"` // bytes
	P50    time.Duration `json:"p50_ns"`
	P99    time.Duration `json:"p99_ns"`
	N      int           `json:"n"`
	// Parts are medians of the phases when the sweep splits them
	// (create, run, close).
	Parts map[string]time.Duration `json:"parts_ns,omitempty"`
}

// Target is one of the issues' targets, met or not.
type Target struct {
	Issue string    `json:"issue"`
	What  string    `json:"what"`
	Want  string    `json:"want"`
	Got   string    `json:"got"`
	Value jsonFloat `json:"value"`
	Met   bool      `json:"met"`
	// Measured is false when the run did not produce the figure (a
	// skipped contender, a --quick run).
	Measured bool   `json:"measured"`
	Reason   string `json:"reason,omitempty"`
}

// jsonFloat encodes NaN (a ratio against a skipped row) as null.
type jsonFloat float64

func (f jsonFloat) MarshalJSON() ([]byte, error) {
	if math.IsNaN(float64(f)) || math.IsInf(float64(f), 0) {
		return []byte("null"), nil
	}
	return []byte(strconv.FormatFloat(float64(f), 'g', 6, 64)), nil
}

func hostInfo() HostInfo {
	h := HostInfo{Cores: runtime.NumCPU(), Go: runtime.Version(), KVM: "none"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				h.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		h.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if _, err := os.Stat("/dev/kvm"); err == nil {
		h.KVM = "kvm"
		// /proc/modules may be absent; /sys/module lists built-in and
		// loaded modules alike.
		for _, m := range []struct{ mod, desc string }{
			{"kvm_pvm", "kvm_pvm: nested, PVM software hypervisor, shadow paging"},
			{"kvm_intel", "kvm_intel"}, {"kvm_amd", "kvm_amd"},
		} {
			if _, err := os.Stat("/sys/module/" + m.mod); err == nil {
				h.KVM = m.desc
				break
			}
		}
	}
	return h
}

// fmtDur prints a duration with three significant digits in a unit that
// suits it.
func fmtDur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < time.Millisecond:
		return fmt.Sprintf("%.3g µs", float64(d)/1e3)
	case d < time.Second:
		return fmt.Sprintf("%.3g ms", float64(d)/1e6)
	}
	return fmt.Sprintf("%.3g s", d.Seconds())
}

func fmtRatio(f jsonFloat) string {
	if math.IsNaN(float64(f)) {
		return "-"
	}
	if f >= 10 {
		return fmt.Sprintf("%.0fx", float64(f))
	}
	return fmt.Sprintf("%.2fx", float64(f))
}

func fmtBytes(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}

// WriteText prints the report as aligned tables.
func (r *Report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "dust bench, %s: %s, %d cores, Linux %s, KVM: %s, load %s\n\n",
		r.Started.Format("2006-01-02 15:04 UTC"), r.Host.CPU, r.Host.Cores, r.Host.Kernel, r.Host.KVM, r.Host.LoadAvg)
	fmt.Fprintln(w, "One hello request, machine layer (contenders alternate in rounds):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "contender\tisolation\tp50\tp99\treq/s\tCPU/req\tp50 vs %s\tn\n", r.Baseline)
	for _, row := range r.Machine {
		if row.Skip != "" {
			fmt.Fprintf(tw, "%s\t%s\tskipped: %s\t\t\t\t\t\n", row.Name, row.Isolation, row.Skip)
			continue
		}
		rps := fmt.Sprintf("%.0f", row.RPS)
		if row.Paced {
			rps += " (paced)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", row.Name, row.Isolation, fmtDur(row.P50), fmtDur(row.P99),
			rps, fmtDur(row.CPUPerReq), fmtRatio(row.VsBaseline), row.N)
	}
	tw.Flush()
	for _, row := range r.Machine {
		if row.Skip == "" {
			fmt.Fprintf(w, "  %s: %s\n", row.Name, row.Note)
		}
	}
	if len(r.Gateway) > 0 {
		fmt.Fprintf(w, "\nEnd to end over HTTP on loopback, %d concurrent clients (Go load generator in-process):\n", r.Gateway[0].Concurrency)
		writeLoad(w, r.Gateway)
	}
	if len(r.TTFB) > 0 {
		fmt.Fprintln(w, "\nTime to first / last byte of a 1 MiB response, one client:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "target\tfirst byte p50\tp99\tlast byte p50\tp99")
		for _, t := range r.TTFB {
			if t.Skip != "" {
				fmt.Fprintf(tw, "%s\tskipped: %s\t\t\t\n", t.Name, t.Skip)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Name, fmtDur(t.First.P50), fmtDur(t.First.P99), fmtDur(t.Last.P50), fmtDur(t.Last.P99))
		}
		tw.Flush()
	}
	if r.Cluster != nil {
		writeCluster(w, r.Cluster)
	}
	if m := r.Memory; m != nil {
		fmt.Fprintf(w, "\nHost memory per live hvt hello machine (%d live, %d MiB guests, fresh process): %.0f KiB (MemAvailable drop), %.0f KiB private to the process; %d machines per GiB; %d threads while live\n",
			m.Machines, m.GuestMiB, m.HostKiB, m.PrivateKiB, m.MachinesPerGiB, m.ThreadsWhileLive)
	}
	if len(r.Concurrency) > 0 {
		fmt.Fprintln(w, "\nThroughput against concurrency (through HTTP):")
		writeLoad(w, r.Concurrency)
	}
	for _, s := range []struct {
		title string
		pts   []ScalePoint
	}{{"Latency against guest memory (hvt hello, create + run + destroy):", r.GuestMemory},
		{"Latency against request body size (echo, run only):", r.BodySize}} {
		if len(s.pts) == 0 {
			continue
		}
		fmt.Fprintln(w, "\n"+s.title)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "series\tsize\tp50\tp99\tn\tparts (p50)")
		for _, p := range s.pts {
			var parts []string
			for _, k := range []string{"create", "run", "close"} {
				if d, ok := p.Parts[k]; ok {
					parts = append(parts, k+" "+fmtDur(d))
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", p.Series, fmtBytes(p.X), fmtDur(p.P50), fmtDur(p.P99), p.N, strings.Join(parts, ", "))
		}
		tw.Flush()
	}
	if len(r.RestoreScaling) > 0 {
		fmt.Fprintln(w, "\nRestore cost (hvt.Machine.Reset after a request) against pages dirtied and guest memory:")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "dirtied pages\tguest memory\treset p50\tp99\tpages compared\tcopied\trun p50\tn")
		for _, p := range r.RestoreScaling {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\t%s\t%d\n", p.Pages, fmtBytes(p.Memory), fmtDur(p.Reset.P50), fmtDur(p.Reset.P99), p.Compared, p.Copied, fmtDur(p.Run), p.Reset.N)
		}
		tw.Flush()
	}
	if len(r.Breakdown) > 0 {
		fmt.Fprintln(w, "\nA restored hello request phase by phase (one machine, run then Reset):")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "phase\tp50\tp99\tn")
		for _, p := range r.Breakdown {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", p.Name, fmtDur(p.P50), fmtDur(p.P99), p.N)
		}
		tw.Flush()
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "\nTargets (issues 5, 10 and 11):")
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, t := range r.Targets {
			verdict := "MET"
			switch {
			case !t.Measured:
				verdict = "n/a"
			case !t.Met:
				verdict = "MISSED"
			}
			fmt.Fprintf(tw, "#%s\t%s\t%s\t%s\t%s\t%s\n", t.Issue, t.What, t.Want, t.Got, verdict, t.Reason)
		}
		tw.Flush()
	}
	for _, s := range r.Skipped {
		fmt.Fprintln(w, "skipped:", s)
	}
	fmt.Fprintf(w, "\n(%.0f s in all)\n", r.Elapsed.Seconds())
}

func writeLoad(w io.Writer, rows []LoadRow) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "target\tisolation\tclients\treq/s\tp50\tp99\tCPU/req\terrors\tmachines")
	for _, l := range rows {
		errs := fmt.Sprint(l.Errors)
		if l.FirstError != "" {
			errs += " (" + l.FirstError + ")"
		}
		pool := ""
		if p := l.Pool; p != nil {
			pool = fmt.Sprintf("%s: pool hits %.0f %%, %d restored", p.Mode, 100*float64(p.Hits)/float64(max(1, p.Hits+p.Misses)), p.Restored)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.0f\t%s\t%s\t%s\t%s\t%s\n", l.Name, l.Isolation, l.Concurrency, l.RPS, fmtDur(l.P50), fmtDur(l.P99), fmtDur(l.CPUPerReq), errs, pool)
	}
	tw.Flush()
}
