package main

import (
	"errors"
	"fmt"
	"image/color"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// drawPlot writes a PNG: on top, where a VM's lifecycle spends its time
// (p50 of each phase, stacked, beside the bare QEMU boot); below, the
// concurrency curve and the memory per VM.
func drawPlot(path string, r *Results) error {
	var top *plot.Plot
	if l := r.Lifecycle; l != nil && len(l.Phases) > 0 {
		var err error
		if top, err = phasePlot(l); err != nil {
			return err
		}
	}
	var bottom []*plot.Plot
	if len(r.Concurrency) > 0 {
		c, err := concurrencyPlot(r.Concurrency)
		if err != nil {
			return err
		}
		m, err := memoryPlot(r.Concurrency)
		if err != nil {
			return err
		}
		bottom = []*plot.Plot{c, m}
	}
	if top == nil && bottom == nil {
		return errors.New("nothing to plot: the lifecycle and concurrency sections were skipped")
	}
	const w, h = 12 * vg.Inch, 9 * vg.Inch
	img := vgimg.New(w, h)
	dc := draw.New(img)
	switch {
	case top == nil:
		drawRow(dc, bottom)
	case bottom == nil:
		top.Draw(dc)
	default:
		top.Draw(draw.Crop(dc, 0, 0, h*0.62, 0))
		drawRow(draw.Crop(dc, 0, 0, 0, -h*0.4), bottom)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// drawRow draws plots side by side on c.
func drawRow(c draw.Canvas, ps []*plot.Plot) {
	t := draw.Tiles{Rows: 1, Cols: len(ps), PadX: vg.Inch / 4}
	cs := plot.Align([][]*plot.Plot{ps}, t, c)
	for i, p := range ps {
		p.Draw(cs[0][i])
	}
}

// phasePlot stacks the p50 of each lifecycle phase in one bar, beside a
// bar holding the bare QEMU boot.
func phasePlot(l *LifecycleResult) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Where a VM's lifecycle spends its time (p50, %s image)", l.Image)
	p.X.Label.Text = "milliseconds"
	parts := []struct{ name, label string }{
		{"create", "create"},
		{"pre_launch", "start: before QEMU"},
		{"guest_boot", "start: guest boot to ready marker"},
		{"after_marker", "start: agent connect + setup"},
		{"first_command", "first command"},
		{"stop", "stop"},
		{"delete", "delete"},
	}
	bare := 0.0
	if l.Baseline != nil {
		bare = l.Baseline.BootToReady.P50
	}
	var prev *plotter.BarChart
	total := 0.0
	for i, part := range parts {
		s, _ := l.stat(part.name)
		v := plotter.Values{0, s.P50}
		if part.name == "guest_boot" {
			v[0] = bare
		}
		total += max(v[0], v[1])
		bc, err := plotter.NewBarChart(v, vg.Points(64))
		if err != nil {
			return nil, err
		}
		bc.Horizontal = true
		bc.Color = plotutil.Color(i)
		bc.LineStyle.Width = 0
		if prev != nil {
			bc.StackOn(prev)
		}
		prev = bc
		p.Add(bc)
		p.Legend.Add(fmt.Sprintf("%s %.0f ms", part.label, v[1]), bc)
	}
	p.NominalY("bare QEMU", "SmolVM")
	p.X.Min = 0
	p.X.Max = total * 1.5 // room for the legend on the right
	p.Legend.Top = true
	p.Legend.Left = false
	p.Add(plotter.NewGrid())
	return p, nil
}

// concurrencyPlot shows, for N VMs started at once, when the last and the
// median one answered.
func concurrencyPlot(pts []ConcurrencyPoint) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "N VMs started at once"
	p.X.Label.Text = "VMs"
	p.Y.Label.Text = "seconds until ready"
	var all, med plotter.XYs
	for _, c := range pts {
		all = append(all, plotter.XY{X: float64(c.N), Y: c.AllReadyMs / 1000})
		med = append(med, plotter.XY{X: float64(c.N), Y: c.Start.P50 / 1000})
	}
	if err := addLine(p, "all ready", all, 0); err != nil {
		return nil, err
	}
	if err := addLine(p, "median VM ready", med, 1); err != nil {
		return nil, err
	}
	p.Legend.Top, p.Legend.Left = true, true
	p.Add(plotter.NewGrid())
	return p, nil
}

// memoryPlot stacks the parts of QEMU's PSS, averaged over the VMs, for
// each number of VMs running, against the 96 MiB target.
func memoryPlot(pts []ConcurrencyPoint) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Host memory per idle VM (QEMU PSS, mean)"
	p.X.Label.Text = "VMs running"
	p.Y.Label.Text = "MiB"
	parts := []struct {
		name string
		get  func(memory) float64
	}{
		{"guest RAM touched", func(m memory) float64 { return m.GuestRAMMiB }},
		{"TCG code cache", func(m memory) float64 { return m.TCGCacheMiB }},
		{"QEMU heap, buffers", func(m memory) float64 { return m.QEMUAnonMiB }},
		{"files (shared)", func(m memory) float64 { return m.FilesMiB }},
	}
	var names []string
	for _, c := range pts {
		names = append(names, fmt.Sprint(c.N))
	}
	var prev *plotter.BarChart
	top := 0.0
	for i, part := range parts {
		v := make(plotter.Values, len(pts))
		for j, c := range pts {
			for _, m := range c.Mem {
				v[j] += part.get(m) / float64(len(c.Mem))
			}
		}
		bc, err := plotter.NewBarChart(v, vg.Points(28))
		if err != nil {
			return nil, err
		}
		bc.Color = plotutil.Color(i)
		bc.LineStyle.Width = 0
		if prev != nil {
			bc.StackOn(prev)
		}
		prev = bc
		p.Add(bc)
		p.Legend.Add(part.name, bc)
	}
	for _, c := range pts {
		top = max(top, c.PSSMaxMiB)
	}
	target := plotter.NewFunction(func(float64) float64 { return maxIdlePSSMiB })
	target.Color = color.RGBA{R: 200, A: 255}
	target.Width = vg.Points(1.5)
	target.Dashes = []vg.Length{vg.Points(4), vg.Points(4)}
	p.Add(target)
	p.Legend.Add(fmt.Sprintf("target %.0f MiB", maxIdlePSSMiB), target)
	p.NominalX(names...)
	p.Y.Min = 0
	p.Y.Max = max(top, maxIdlePSSMiB) * 1.6 // room for the legend
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	return p, nil
}

func addLine(p *plot.Plot, name string, xys plotter.XYs, i int) error {
	l, s, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color = plotutil.Color(i)
	s.Color = plotutil.Color(i)
	s.Shape = plotutil.Shape(i)
	p.Add(l, s)
	p.Legend.Add(name, l, s)
	return nil
}
