package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
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
func writeReport(w io.Writer, started time.Time, args []string, results map[string]*result, order []string, failures []string) {
	fmt.Fprintf(w, "## hearthbench, %s\n\n", started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "- machine: %s\n", machineSummary())
	fmt.Fprintf(w, "- hearth: %s, %s\n", gitDescribe(), runtime.Version())
	fmt.Fprintf(w, "- command: `%s`\n\n", strings.Join(args, " "))
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
