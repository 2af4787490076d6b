package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

func us(d time.Duration) float64 { return float64(d) / 1e3 }

// writeCharts draws the report's charts into dir and returns their paths.
func writeCharts(dir string, r *Report) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	put := func(name string, svg []byte) error {
		p := filepath.Join(dir, name)
		files = append(files, p)
		return os.WriteFile(p, svg, 0o644)
	}
	// Whiskers at p1 and p99 rather than min and max: one preempted
	// request on a shared host would otherwise set the scale.
	lat := BoxChart{Title: "One hello request: latency distribution per contender",
		Unit: "µs", Caption: "box: p25-p75, bar: median, whiskers: p1-p99. " + r.Host.KVM + ", " + r.Started.Format("2006-01-02")}
	for _, row := range r.Machine {
		if row.Skip != "" || len(row.samples) == 0 {
			continue
		}
		s := slices.Clone(row.samples)
		slices.Sort(s)
		lat.Boxes = append(lat.Boxes, Box{Label: row.Name, Lo: us(Quantile(s, 0.01)), Q1: us(row.P25), Mid: us(row.P50), Q3: us(row.P75), Hi: us(row.P99)})
	}
	if err := put("latency.svg", lat.SVG()); err != nil {
		return files, err
	}
	if len(r.Concurrency) > 0 {
		rps := LineChart{Title: "Throughput against concurrent clients (HTTP on loopback)", XLabel: "concurrent clients", YLabel: "requests/s", LogX: true, LogY: true,
			Caption: "Go load generator, gateway and targets share the 2 cores"}
		p50 := LineChart{Title: "Median latency against concurrent clients", XLabel: "concurrent clients", YLabel: "p50 µs", LogX: true, LogY: true}
		byName := map[string]int{}
		for _, l := range r.Concurrency {
			if l.Requests == 0 {
				continue
			}
			i, ok := byName[l.Name]
			if !ok {
				i = len(rps.Series)
				byName[l.Name] = i
				rps.Series = append(rps.Series, Series{Name: l.Name})
				p50.Series = append(p50.Series, Series{Name: l.Name})
			}
			rps.Series[i].X = append(rps.Series[i].X, float64(l.Concurrency))
			rps.Series[i].Y = append(rps.Series[i].Y, l.RPS)
			p50.Series[i].X = append(p50.Series[i].X, float64(l.Concurrency))
			p50.Series[i].Y = append(p50.Series[i].Y, us(l.P50))
		}
		if err := put("throughput-concurrency.svg", rps.SVG()); err != nil {
			return files, err
		}
		if err := put("latency-concurrency.svg", p50.SVG()); err != nil {
			return files, err
		}
	}
	for _, sc := range []struct {
		file, title, xlabel string
		pts                 []ScalePoint
		parts               bool
	}{{"scaling-memory.svg", "hvt hello, create + run + destroy, against guest memory", "guest memory", r.GuestMemory, true},
		{"scaling-body.svg", "echo, run only, against request body size", "body size", r.BodySize, false}} {
		if len(sc.pts) == 0 {
			continue
		}
		c := LineChart{Title: sc.title, XLabel: sc.xlabel, YLabel: "p50 µs", LogX: true, LogY: true,
			XFormat: func(v float64) string { return fmtBytes(int64(v)) }}
		idx := map[string]int{}
		add := func(name string, x float64, y time.Duration) {
			i, ok := idx[name]
			if !ok {
				i = len(c.Series)
				idx[name] = i
				c.Series = append(c.Series, Series{Name: name})
			}
			c.Series[i].X = append(c.Series[i].X, x)
			c.Series[i].Y = append(c.Series[i].Y, us(y))
		}
		for _, p := range sc.pts {
			if !sc.parts {
				add(p.Series, float64(p.X), p.P50)
				continue
			}
			add(p.Series+" total", float64(p.X), p.P50)
			{
				for _, k := range []string{"create", "run", "close"} {
					add(k, float64(p.X), p.Parts[k])
				}
			}
		}
		if err := put(sc.file, c.SVG()); err != nil {
			return files, err
		}
	}
	if err := restoreCharts(r, put); err != nil {
		return files, err
	}
	return files, nil
}

// restoreCharts draws the restore sweeps: reset p50 and p99 against pages
// dirtied and against guest memory.
func restoreCharts(r *Report, put func(string, []byte) error) error {
	for _, sc := range []struct {
		series, file, title, xlabel string
		x                           func(RestorePoint) float64
		xfmt                        func(float64) string
	}{{"pages", "restore-pages.svg", "hvt restore (Reset) against pages the request dirtied, 64 MiB guest", "pages dirtied",
		func(p RestorePoint) float64 { return float64(p.Pages) }, func(v float64) string { return fmt.Sprintf("%.0f", v) }},
		{"memory", "restore-memory.svg", "hvt restore (Reset) against guest memory, 16 pages dirtied", "guest memory",
			func(p RestorePoint) float64 { return float64(p.Memory) }, func(v float64) string { return fmtBytes(int64(v)) }}} {
		c := LineChart{Title: sc.title, XLabel: sc.xlabel, YLabel: "µs", LogX: true, LogY: true, XFormat: sc.xfmt,
			Caption: r.Host.KVM + ", " + r.Started.Format("2006-01-02")}
		p50, p99 := Series{Name: "reset p50"}, Series{Name: "reset p99"}
		for _, p := range r.RestoreScaling {
			if p.Series != sc.series || p.Reset.N == 0 {
				continue
			}
			p50.X, p50.Y = append(p50.X, sc.x(p)), append(p50.Y, us(p.Reset.P50))
			p99.X, p99.Y = append(p99.X, sc.x(p)), append(p99.Y, us(p.Reset.P99))
		}
		if len(p50.X) == 0 {
			continue
		}
		c.Series = []Series{p50, p99}
		if err := put(sc.file, c.SVG()); err != nil {
			return err
		}
	}
	return nil
}
