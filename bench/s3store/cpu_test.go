package s3store

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuMeter reports the CPU time the processes of a measurement used: this
// one (the clients), and its children `weed` (SeaweedFS) and `hearth`. On
// two shared cores a throughput is often a CPU budget shared by all three,
// so a ratio alone does not say whose work bounds it.
type cpuMeter struct {
	pids map[string]int // comm → pid
}

func newCPUMeter() *cpuMeter {
	m := &cpuMeter{pids: map[string]int{}}
	self := os.Getpid()
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		comm, ppid, _, ok := readStat(p)
		if ok && ppid == self && (comm == "weed" || comm == "hearth") {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			m.pids[comm] = pid
		}
	}
	return m
}

// cpuSample is the CPU time used so far, by process.
type cpuSample struct {
	at                 time.Time
	self, weed, hearth time.Duration
}

func (m *cpuMeter) sample() cpuSample {
	s := cpuSample{at: time.Now()}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if pid, ok := m.pids["weed"]; ok {
		_, _, s.weed, _ = readStat(fmt.Sprintf("/proc/%d/stat", pid))
	}
	if pid, ok := m.pids["hearth"]; ok {
		_, _, s.hearth, _ = readStat(fmt.Sprintf("/proc/%d/stat", pid))
	}
	return s
}

// since formats the CPU used between a and b, in cores (CPU seconds per
// wall second).
func (b cpuSample) since(a cpuSample) string {
	wall := b.at.Sub(a.at).Seconds()
	f := func(d time.Duration) float64 { return d.Seconds() / wall }
	return fmt.Sprintf("client %.2f, hearth %.2f, weed %.2f cores (sum %.2f)",
		f(b.self-a.self), f(b.hearth-a.hearth), f(b.weed-a.weed), f(b.self-a.self+b.hearth-a.hearth+b.weed-a.weed))
}

// readStat parses /proc/PID/stat: the command name, the parent's pid and
// the user + system CPU time of all its threads.
func readStat(path string) (comm string, ppid int, cpu time.Duration, ok bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", 0, 0, false
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, 0, false
	}
	comm = s[open+1 : end]
	f := strings.Fields(s[end+1:])
	// After the name: state(0) ppid(1) ... utime(11) stime(12), in ticks.
	if len(f) < 13 {
		return "", 0, 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	return comm, ppid, time.Duration(ut+st) * tick, true
}
