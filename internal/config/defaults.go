package config

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Machine is what the machine-derived defaults are computed from.
type Machine struct {
	// CPUs the process may use: the CPU count, lowered by a cgroup quota.
	CPUs int
	// MemoryBytes the process may use: MemTotal, lowered by a cgroup limit.
	MemoryBytes uint64
	// Hostname is the default worker name.
	Hostname string
}

// FallbackMemoryBytes is assumed when /proc/meminfo cannot be read (not
// Linux, or /proc not mounted): small enough to be safe on a laptop.
const FallbackMemoryBytes = 4 << 30

// minWorkerMemoryLimit is the smallest derived per-worker memory limit: a JVM
// compiler worker (javac, kotlinc, scalac) routinely needs this much, and a
// lower limit would recycle it after nearly every request.
const minWorkerMemoryLimit = 1 << 30

// DetectMachine measures this machine for ApplyDefaults.
func DetectMachine() Machine {
	return detectMachine("/proc", "/sys/fs/cgroup")
}

// detectMachine reads /proc and the cgroup v2 hierarchy under the given
// roots, so tests can point it at files they wrote.
func detectMachine(procRoot, cgroupRoot string) Machine {
	m := Machine{CPUs: runtime.NumCPU(), MemoryBytes: FallbackMemoryBytes}
	if total, ok := memTotal(filepath.Join(procRoot, "meminfo")); ok {
		m.MemoryBytes = total
	}
	// A container's limits live in its cgroup; without them a worker in a
	// 2-CPU container on a 64-core host would size itself for 64 cores.
	cg := cgroupDir(procRoot, cgroupRoot)
	if quota, ok := cgroupCPUs(filepath.Join(cg, "cpu.max")); ok && quota < m.CPUs {
		m.CPUs = quota
	}
	if limit, ok := readUint(filepath.Join(cg, "memory.max")); ok && limit > 0 && limit < m.MemoryBytes {
		m.MemoryBytes = limit
	}
	m.Hostname, _ = os.Hostname()
	return m
}

// memTotal returns MemTotal from a meminfo file, in bytes.
func memTotal(path string) (uint64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kib, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil || kib == 0 {
				return 0, false
			}
			return kib * 1024, true
		}
	}
	return 0, false
}

// cgroupDir finds this process's cgroup v2 directory ("0::/path" in
// /proc/self/cgroup), or the hierarchy root when that is unknown.
func cgroupDir(procRoot, cgroupRoot string) string {
	data, err := os.ReadFile(filepath.Join(procRoot, "self", "cgroup"))
	if err != nil {
		return cgroupRoot
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			dir := filepath.Join(cgroupRoot, filepath.Clean("/"+rel))
			if _, err := os.Stat(dir); err == nil {
				return dir
			}
		}
	}
	return cgroupRoot
}

// cgroupCPUs reads cpu.max ("QUOTA PERIOD" or "max PERIOD") and returns the
// quota in whole CPUs, rounded up.
func cgroupCPUs(path string) (int, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	fields := strings.Fields(string(data))
	if len(fields) != 2 || fields[0] == "max" {
		return 0, false
	}
	quota, err1 := strconv.ParseUint(fields[0], 10, 64)
	period, err2 := strconv.ParseUint(fields[1], 10, 64)
	if err1 != nil || err2 != nil || quota == 0 || period == 0 {
		return 0, false
	}
	return int((quota + period - 1) / period), true
}

// readUint reads a file holding one number ("max" reads as no value).
func readUint(path string) (uint64, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
	return n, err == nil
}

// ApplyDefaults fills every unset field. It is idempotent, and never
// overrides a value the user set. The machine-derived defaults (documented
// in the README) are:
//
//	max_inflight_tasks                      = CPUs
//	persistent_workers.max_workers_per_pool = max_inflight_tasks (at least prewarm)
//	persistent_workers.max_total_memory_bytes = memory / 2 (at least memory_limit_bytes)
//	persistent_workers.memory_limit_bytes   = max(1 GiB, max_total_memory_bytes / max_inflight_tasks),
//	                                          at most max_total_memory_bytes
func (w *LocalWorker) ApplyDefaults(m Machine) {
	if m.CPUs < 1 {
		m.CPUs = 1
	}
	if m.MemoryBytes == 0 {
		m.MemoryBytes = FallbackMemoryBytes
	}
	if w.Name == "" {
		w.Name = m.Hostname
		if w.Name == "" {
			w.Name = "hearth-worker"
		}
	}
	setDuration(&w.MaxActionTimeout, DefaultMaxActionTimeout)
	setDuration(&w.MaxUploadTimeout, DefaultMaxUploadTimeout)
	setDuration(&w.WorkerAPIEndpoint.Timeout, DefaultEndpointTimeout)
	if w.MaxInflightTasks == 0 {
		w.MaxInflightTasks = m.CPUs
	}
	if c := w.DirectoryCache; c != nil && c.CacheRoot == "" && w.WorkDirectory != "" {
		// NativeLink's default: {work_directory}/../directory_cache.
		c.CacheRoot = filepath.Join(filepath.Dir(filepath.Clean(w.WorkDirectory)), "directory_cache")
	}
	pw := &w.PersistentWorkers
	if len(pw.Protocols) == 0 {
		pw.Protocols = []WorkerProtocol{ProtocolProto, ProtocolJSON}
	}
	if pw.MaxWorkersPerPool == 0 {
		pw.MaxWorkersPerPool = max(w.MaxInflightTasks, pw.Prewarm)
	}
	if pw.MaxTotalMemoryBytes == 0 {
		pw.MaxTotalMemoryBytes = max(m.MemoryBytes/2, pw.MemoryLimitBytes)
	}
	if pw.MemoryLimitBytes == 0 {
		perSlot := pw.MaxTotalMemoryBytes / uint64(w.MaxInflightTasks)
		pw.MemoryLimitBytes = min(pw.MaxTotalMemoryBytes, max(minWorkerMemoryLimit, perSlot))
	}
}

func setDuration(d *time.Duration, def time.Duration) {
	if *d == 0 {
		*d = def
	}
}
