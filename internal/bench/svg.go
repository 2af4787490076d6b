package bench

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"math"
	"strings"
)

// The charts are plain SVG written by hand: no plotting dependency, and
// the output is small enough to commit and diff.

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf", "#bcbd22"}

// axis maps data values to pixels, linearly or logarithmically.
type axis struct {
	lo, hi   float64 // data range (positive when log)
	from, to float64 // pixel range
	log      bool
}

func (a axis) px(v float64) float64 {
	lo, hi := a.lo, a.hi
	if a.log {
		v, lo, hi = math.Log10(math.Max(v, a.lo)), math.Log10(lo), math.Log10(hi)
	}
	if hi == lo {
		return (a.from + a.to) / 2
	}
	return a.from + (v-lo)/(hi-lo)*(a.to-a.from)
}

// ticks returns tick values: powers of 1, 2, 5 per decade on a log axis,
// about six round steps on a linear one.
func (a axis) ticks() []float64 {
	var ts []float64
	if a.log {
		for e := math.Floor(math.Log10(a.lo)); e <= math.Ceil(math.Log10(a.hi)); e++ {
			for _, m := range []float64{1, 2, 5} {
				if v := m * math.Pow(10, e); v >= a.lo*0.999 && v <= a.hi*1.001 {
					ts = append(ts, v)
				}
			}
		}
		return ts
	}
	step := niceStep((a.hi - a.lo) / 6)
	for v := math.Ceil(a.lo/step) * step; v <= a.hi+step/1e6; v += step {
		ts = append(ts, v)
	}
	return ts
}

func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= raw {
			return m * p
		}
	}
	return 10 * p
}

// logRange widens [lo, hi] to whole 1-2-5 steps so that ticks land on
// the edges.
func logRange(lo, hi float64) (float64, float64) {
	if lo <= 0 {
		lo = hi / 1000
	}
	down := math.Pow(10, math.Floor(math.Log10(lo)))
	up := math.Pow(10, math.Ceil(math.Log10(hi)))
	for _, m := range []float64{5, 2} {
		if m*down <= lo {
			down *= m
			break
		}
	}
	for _, m := range []float64{0.2, 0.5} {
		if m*up >= hi {
			up *= m
			break
		}
	}
	return down, up
}

type svgWriter struct{ bytes.Buffer }

func (w *svgWriter) f(format string, args ...any) { fmt.Fprintf(&w.Buffer, format, args...) }

func esc(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return b.String()
}

func (w *svgWriter) open(width, height int, title string) {
	w.f(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", width, height, width, height)
	w.f(`<title>%s</title>`+"\n", esc(title))
	w.f(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	w.f(`<text x="%d" y="20" font-size="14" font-weight="bold" text-anchor="middle">%s</text>`+"\n", width/2, esc(title))
}

func (w *svgWriter) close() { w.f("</svg>\n") }

// Box is one distribution: whiskers at Lo and Hi, the box from Q1 to Q3,
// a bar at the median.
type Box struct {
	Label               string
	Lo, Q1, Mid, Q3, Hi float64
}

// BoxChart draws horizontal box plots on a shared log axis.
type BoxChart struct {
	Title, Unit, Caption string
	Boxes                []Box
}

// SVG renders the chart.
func (c BoxChart) SVG() []byte {
	const left, right, rowH, top = 230, 30, 28, 40
	width := 820
	height := top + rowH*len(c.Boxes) + 60
	var w svgWriter
	w.open(width, height, c.Title)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, b := range c.Boxes {
		lo, hi = math.Min(lo, b.Lo), math.Max(hi, b.Hi)
	}
	if len(c.Boxes) == 0 || lo <= 0 || math.IsInf(lo, 0) {
		lo, hi = 1, 10
	}
	lo, hi = logRange(lo, hi)
	x := axis{lo: lo, hi: hi, from: left, to: float64(width - right), log: true}
	bottom := float64(top + rowH*len(c.Boxes))
	for _, t := range x.ticks() {
		p := x.px(t)
		w.f(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", p, top, p, bottom)
		w.f(`<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", p, bottom+15, esc(fmtNum(t)))
	}
	w.f(`<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", (x.from+x.to)/2, bottom+35, esc(c.Unit+" (log scale)"))
	for i, b := range c.Boxes {
		y := float64(top + rowH*i + rowH/2)
		col := palette[i%len(palette)]
		w.f(`<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", left-8, y, esc(b.Label))
		w.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", x.px(b.Lo), y, x.px(b.Hi), y, col)
		for _, v := range []float64{b.Lo, b.Hi} {
			w.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>`+"\n", x.px(v), y-6, x.px(v), y+6, col)
		}
		w.f(`<rect x="%.1f" y="%.1f" width="%.1f" height="16" fill="%s" fill-opacity="0.35" stroke="%s"/>`+"\n",
			x.px(b.Q1), y-8, math.Max(1, x.px(b.Q3)-x.px(b.Q1)), col, col)
		w.f(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black" stroke-width="2"/>`+"\n", x.px(b.Mid), y-8, x.px(b.Mid), y+8)
	}
	if c.Caption != "" {
		w.f(`<text x="%d" y="%d" font-size="11" fill="#555">%s</text>`+"\n", 10, height-8, esc(c.Caption))
	}
	w.close()
	return w.Bytes()
}

// Series is one line of a LineChart.
type Series struct {
	Name string
	X, Y []float64
}

// LineChart draws series against shared axes, each optionally log scale.
type LineChart struct {
	Title, XLabel, YLabel, Caption string
	LogX, LogY                     bool
	XFormat                        func(float64) string // tick labels; fmtNum by default
	Series                         []Series
}

// SVG renders the chart.
func (c LineChart) SVG() []byte {
	const left, right, top, bottom = 80, 200, 40, 60
	width, height := 820, 440
	var w svgWriter
	w.open(width, height, c.Title)
	xlo, xhi, ylo, yhi := math.Inf(1), math.Inf(-1), math.Inf(1), math.Inf(-1)
	for _, s := range c.Series {
		for i := range s.X {
			xlo, xhi = math.Min(xlo, s.X[i]), math.Max(xhi, s.X[i])
			ylo, yhi = math.Min(ylo, s.Y[i]), math.Max(yhi, s.Y[i])
		}
	}
	if math.IsInf(xlo, 0) {
		xlo, xhi, ylo, yhi = 1, 10, 1, 10
	}
	if c.LogY {
		ylo, yhi = logRange(ylo, yhi)
	} else {
		ylo = math.Min(0, ylo)
		yhi = math.Ceil(yhi/niceStep(yhi/6)) * niceStep(yhi/6)
	}
	if c.LogX && xlo <= 0 {
		xlo = xhi / 1000
	}
	x := axis{lo: xlo, hi: xhi, from: left, to: float64(width - right), log: c.LogX}
	y := axis{lo: ylo, hi: yhi, from: float64(height - bottom), to: top, log: c.LogY}
	xf := c.XFormat
	if xf == nil {
		xf = fmtNum
	}
	var xt []float64
	if c.LogX {
		// Ticks at the data points: sweeps step by factors, and the
		// points are what the reader looks up.
		seen := map[float64]bool{}
		for _, s := range c.Series {
			for _, v := range s.X {
				if !seen[v] {
					seen[v] = true
					xt = append(xt, v)
				}
			}
		}
	} else {
		xt = x.ticks()
	}
	for _, t := range xt {
		p := x.px(t)
		w.f(`<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#eee"/>`+"\n", p, top, p, height-bottom)
		w.f(`<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", p, height-bottom+15, esc(xf(t)))
	}
	for _, t := range y.ticks() {
		p := y.px(t)
		w.f(`<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, p, width-right, p)
		w.f(`<text x="%d" y="%.1f" text-anchor="end" dominant-baseline="middle">%s</text>`+"\n", left-6, p, esc(fmtNum(t)))
	}
	w.f(`<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", left, top, width-left-right, height-top-bottom)
	w.f(`<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", left+(width-left-right)/2, height-bottom+35, esc(c.XLabel+logNote(c.LogX)))
	w.f(`<text x="16" y="%d" text-anchor="middle" transform="rotate(-90 16 %d)">%s</text>`+"\n", top+(height-top-bottom)/2, top+(height-top-bottom)/2, esc(c.YLabel+logNote(c.LogY)))
	for i, s := range c.Series {
		col := palette[i%len(palette)]
		var pts []string
		for j := range s.X {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x.px(s.X[j]), y.px(s.Y[j])))
		}
		w.f(`<polyline points="%s" fill="none" stroke="%s" stroke-width="2"/>`+"\n", strings.Join(pts, " "), col)
		for _, p := range pts {
			xy := strings.SplitN(p, ",", 2)
			w.f(`<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", xy[0], xy[1], col)
		}
		ly := top + 10 + 20*i
		w.f(`<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="3"/>`+"\n", width-right+10, ly, width-right+30, ly, col)
		w.f(`<text x="%d" y="%d" dominant-baseline="middle">%s</text>`+"\n", width-right+36, ly, esc(s.Name))
	}
	if c.Caption != "" {
		w.f(`<text x="10" y="%d" font-size="11" fill="#555">%s</text>`+"\n", height-8, esc(c.Caption))
	}
	w.close()
	return w.Bytes()
}

func logNote(log bool) string {
	if log {
		return " (log scale)"
	}
	return ""
}

// fmtNum prints a tick value compactly: 0.5, 20, 1k, 2M.
func fmtNum(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1e6:
		return trimFloat(v/1e6) + "M"
	case a >= 1e3:
		return trimFloat(v/1e3) + "k"
	}
	return trimFloat(v)
}

func trimFloat(v float64) string {
	s := fmt.Sprintf("%.2f", v)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "-0" {
		return "0"
	}
	return s
}
