package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"
)

// The report: one markdown table of every scenario's rows, and the notes that
// say how each number was measured.

// row is one line of the results table. Every number is measured in the same
// run as its baseline, so the ratio holds even on a noisy shared machine
// where the absolute numbers do not.
type row struct {
	Scenario string
	Measure  string
	Hearth   string // hearth's number
	Baseline string // the baseline's name and number
	Ratio    string // hearth ÷ baseline
	Goal     string
	Met      string // "yes", "no" or "" without a goal
}

// result is what a scenario reports.
type result struct {
	rows  []row
	notes []string
}

func (r *result) add(rw row) { r.rows = append(r.rows, rw) }
func (r *result) note(format string, args ...any) {
	r.notes = append(r.notes, fmt.Sprintf(format, args...))
}

// ratio formats h ÷ b.
func ratio(h, b float64) string {
	if b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", h/b)
}

// median returns the median of vs (the mean of the middle two for an even
// count), or 0 for none.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(vs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// comparison is one measure taken once per round on hearth and on its
// baseline, the two back to back, so that each round's ratio compares
// numbers taken under the same load.
type comparison struct {
	hearth, base []float64
}

func (c *comparison) add(hearth, base float64) {
	c.hearth = append(c.hearth, hearth)
	c.base = append(c.base, base)
}

// ratios returns each round's hearth ÷ baseline.
func (c *comparison) ratios() []float64 {
	rs := make([]float64, len(c.hearth))
	for i := range rs {
		rs[i] = c.hearth[i] / c.base[i]
	}
	return rs
}

// ratio is the median of the rounds' ratios.
func (c *comparison) ratio() float64 { return median(c.ratios()) }

// row fills a row's numbers: the medians of hearth and the baseline, and the
// median ratio with its range over the rounds.
func (c *comparison) row(scenario, measure, baseName string, format func(float64) string) row {
	rs := c.ratios()
	r := fmt.Sprintf("%.2f×", median(rs))
	if len(rs) > 1 {
		r += fmt.Sprintf(" (%.2f–%.2f)", slices.Min(rs), slices.Max(rs))
	}
	return row{Scenario: scenario, Measure: measure, Hearth: format(median(c.hearth)),
		Baseline: baseName + ": " + format(median(c.base)), Ratio: r}
}

// Formats for comparison.row.
func countFormat(v float64) string   { return formatCount(v) }
func mibFormat(v float64) string     { return fmt.Sprintf("%.0f", v) }
func secondsFormat(v float64) string { return formatDuration(time.Duration(v * float64(time.Second))) }

// metText says whether a goal was met.
func metText(ok bool) string {
	if ok {
		return "yes"
	}
	return "**no**"
}

// perSecond returns n per second over d.
func perSecond(n float64, d time.Duration) float64 { return n / d.Seconds() }

// mibPerSecond returns a throughput in MiB/s.
func mibPerSecond(bytes int64, d time.Duration) float64 {
	return float64(bytes) / (1 << 20) / d.Seconds()
}

// formatCount writes n with thousands separators: 1234567 → "1,234,567".
func formatCount(n float64) string {
	s := fmt.Sprintf("%.0f", n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// formatBytes writes a size in MiB (or KiB below 1 MiB).
func formatBytes(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// formatDuration writes d with three significant digits in a fitting unit.
func formatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.3g ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.3g s", d.Seconds())
	}
}

// writeReport writes the header, the table and the notes as markdown.
func writeReport(w io.Writer, started time.Time, args []string, givenBinary string, results map[string]*result, order []string, failures []string) {
	fmt.Fprintf(w, "## hearthbench, %s\n\n", started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- machine: %s\n", machineSummary())
	if givenBinary != "" {
		fmt.Fprintf(w, "- hearth: the binary %s given with -hearth (checkout at %s), %s\n", givenBinary, gitDescribe(), runtime.Version())
	} else {
		fmt.Fprintf(w, "- hearth: built from the checkout at %s, %s\n", gitDescribe(), runtime.Version())
	}
	fmt.Fprintf(w, "- command: `%s`\n\n", strings.Join(args, " "))
	fmt.Fprintln(w, "Hearth and Baseline are medians over the rounds; Ratio is the median of the rounds' hearth ÷ baseline ratios (range in parentheses), each round measuring both back to back.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| Scenario | Measure | Hearth | Baseline (same run) | Ratio | Goal | Met |")
	fmt.Fprintln(w, "| --- | --- | ---: | --- | ---: | --- | --- |")
	for _, name := range order {
		r := results[name]
		if r == nil {
			continue
		}
		for _, rw := range r.rows {
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", cell(rw.Scenario), cell(rw.Measure), cell(rw.Hearth),
				cell(rw.Baseline), cell(rw.Ratio), cell(rw.Goal), cell(rw.Met))
		}
	}
	fmt.Fprintln(w)
	for _, name := range order {
		r := results[name]
		if r == nil || len(r.notes) == 0 {
			continue
		}
		fmt.Fprintf(w, "**%s**\n", name)
		for _, n := range r.notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
		fmt.Fprintln(w)
	}
	for _, f := range failures {
		fmt.Fprintf(w, "- FAILED: %s\n", f)
	}
}

func cell(s string) string {
	if s == "" {
		return ""
	}
	return strings.ReplaceAll(s, "|", `\|`)
}

// machineSummary names the cores, the CPU model and the memory.
func machineSummary() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	mem := ""
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(line, "MemTotal:") {
				var kb int64
				fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(line, "MemTotal:")), "%d", &kb)
				mem = fmt.Sprintf(", %.0f GiB RAM", float64(kb)/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%d cores (%s)%s, %s/%s", runtime.NumCPU(), model, mem, runtime.GOOS, runtime.GOARCH)
}

// gitDescribe names the commit benchmarked, marked dirty if the tree has
// uncommitted changes.
func gitDescribe() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown commit"
	}
	return "commit " + strings.TrimSpace(string(out))
}
