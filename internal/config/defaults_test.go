package config

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
)

func TestApplyDefaultsScalesWithTheMachine(t *testing.T) {
	cases := []struct {
		name    string
		machine Machine
		want    PersistentWorkers
		slots   int
	}{
		{
			name:    "2-core laptop with 8 GiB",
			machine: Machine{CPUs: 2, MemoryBytes: 8 << 30, Hostname: "laptop"},
			slots:   2,
			want:    PersistentWorkers{MaxWorkersPerPool: 2, MaxTotalMemoryBytes: 4 << 30, MemoryLimitBytes: 2 << 30},
		},
		{
			name:    "64-core executor with 256 GiB",
			machine: Machine{CPUs: 64, MemoryBytes: 256 << 30, Hostname: "big"},
			slots:   64,
			want:    PersistentWorkers{MaxWorkersPerPool: 64, MaxTotalMemoryBytes: 128 << 30, MemoryLimitBytes: 2 << 30},
		},
		{
			name:    "64-core executor with 64 GiB keeps the 1 GiB floor",
			machine: Machine{CPUs: 64, MemoryBytes: 64 << 30},
			slots:   64,
			want:    PersistentWorkers{MaxWorkersPerPool: 64, MaxTotalMemoryBytes: 32 << 30, MemoryLimitBytes: 1 << 30},
		},
		{
			name:    "tiny VM: the per-worker limit never exceeds the total",
			machine: Machine{CPUs: 1, MemoryBytes: 1 << 30},
			slots:   1,
			want:    PersistentWorkers{MaxWorkersPerPool: 1, MaxTotalMemoryBytes: 512 << 20, MemoryLimitBytes: 512 << 20},
		},
		{
			name:    "unknown machine falls back",
			machine: Machine{},
			slots:   1,
			want:    PersistentWorkers{MaxWorkersPerPool: 1, MaxTotalMemoryBytes: FallbackMemoryBytes / 2, MemoryLimitBytes: FallbackMemoryBytes / 2},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := NewLocalWorker()
			w.WorkDirectory = "/x/work"
			w.DirectoryCache = &DirectoryCache{}
			w.ApplyDefaults(tc.machine)
			pw := w.PersistentWorkers
			wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, tc.slots)
			wantEqual(t, "MaxWorkersPerPool", pw.MaxWorkersPerPool, tc.want.MaxWorkersPerPool)
			wantEqual(t, "MaxTotalMemoryBytes", pw.MaxTotalMemoryBytes, tc.want.MaxTotalMemoryBytes)
			wantEqual(t, "MemoryLimitBytes", pw.MemoryLimitBytes, tc.want.MemoryLimitBytes)
			wantEqual(t, "CacheRoot", w.DirectoryCache.CacheRoot, "/x/directory_cache")
			wantEqual(t, "MaxActionTimeout", w.MaxActionTimeout, 20*time.Minute)
			if tc.machine.Hostname == "" {
				wantEqual(t, "Name", w.Name, "hearth-worker")
			} else {
				wantEqual(t, "Name", w.Name, tc.machine.Hostname)
			}
			before := w
			before.PersistentWorkers.Protocols = append([]WorkerProtocol(nil), w.PersistentWorkers.Protocols...)
			w.ApplyDefaults(Machine{CPUs: 3, MemoryBytes: 3 << 30})
			wantEqual(t, "after a second ApplyDefaults", w, before)
		})
	}
}

func TestApplyDefaultsKeepsUserValues(t *testing.T) {
	w := NewLocalWorker()
	w.Name = "mine"
	w.MaxInflightTasks = 3
	w.MaxActionTimeout = time.Minute
	w.PersistentWorkers.MemoryLimitBytes = 100 << 30 // above memory/2
	w.ApplyDefaults(Machine{CPUs: 8, MemoryBytes: 16 << 30})
	wantEqual(t, "Name", w.Name, "mine")
	wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, 3)
	wantEqual(t, "MaxActionTimeout", w.MaxActionTimeout, time.Minute)
	wantEqual(t, "MaxWorkersPerPool", w.PersistentWorkers.MaxWorkersPerPool, 3)
	wantEqual(t, "MemoryLimitBytes", w.PersistentWorkers.MemoryLimitBytes, uint64(100<<30))
	// The derived total never undercuts a per-worker limit the user set.
	wantEqual(t, "MaxTotalMemoryBytes", w.PersistentWorkers.MaxTotalMemoryBytes, uint64(100<<30))
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestDetectMachineReadsProcAndCgroup(t *testing.T) {
	const meminfo = "MemTotal:       16384000 kB\nMemFree:        1000 kB\n"
	cases := []struct {
		name     string
		files    map[string]string
		wantCPUs int
		wantMem  uint64
	}{
		{name: "no cgroup limits", files: map[string]string{"proc/meminfo": meminfo, "proc/self/cgroup": "0::/\n", "cg/cpu.max": "max 100000\n", "cg/memory.max": "max\n"},
			wantCPUs: runtime.NumCPU(), wantMem: 16384000 * 1024},
		{name: "container limits in own cgroup", files: map[string]string{"proc/meminfo": meminfo, "proc/self/cgroup": "0::/box\n",
			"cg/box/cpu.max": "150000 100000\n", "cg/box/memory.max": "2147483648\n"},
			wantCPUs: min(2, runtime.NumCPU()), wantMem: 2 << 30},
		{name: "no proc", files: map[string]string{}, wantCPUs: runtime.NumCPU(), wantMem: FallbackMemoryBytes},
		{name: "garbage meminfo", files: map[string]string{"proc/meminfo": "MemTotal: lots kB\n"}, wantCPUs: runtime.NumCPU(), wantMem: FallbackMemoryBytes},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for name, content := range tc.files {
				writeFile(t, filepath.Join(root, name), content)
			}
			m := detectMachine(filepath.Join(root, "proc"), filepath.Join(root, "cg"))
			wantEqual(t, "CPUs", m.CPUs, tc.wantCPUs)
			wantEqual(t, "MemoryBytes", m.MemoryBytes, tc.wantMem)
		})
	}
}

func TestDefaultsOnThisMachine(t *testing.T) {
	m := DetectMachine()
	if m.CPUs < 1 || m.CPUs > runtime.NumCPU() {
		t.Fatalf("CPUs = %d, NumCPU = %d", m.CPUs, runtime.NumCPU())
	}
	total, ok := memTotal("/proc/meminfo")
	if !ok {
		t.Fatal("cannot read /proc/meminfo on this Linux machine")
	}
	if m.MemoryBytes == 0 || m.MemoryBytes > total {
		t.Fatalf("MemoryBytes = %d, MemTotal = %d", m.MemoryBytes, total)
	}
	f, err := Parse([]byte(`{workers: [{local: {` + baseLocal + `}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	w := f.Workers[0].Local
	wantEqual(t, "MaxInflightTasks", w.MaxInflightTasks, m.CPUs)
	wantEqual(t, "MaxTotalMemoryBytes", w.PersistentWorkers.MaxTotalMemoryBytes, m.MemoryBytes/2)
	if w.PersistentWorkers.MemoryLimitBytes > w.PersistentWorkers.MaxTotalMemoryBytes || w.PersistentWorkers.MemoryLimitBytes == 0 {
		t.Errorf("MemoryLimitBytes = %d, total %d", w.PersistentWorkers.MemoryLimitBytes, w.PersistentWorkers.MaxTotalMemoryBytes)
	}
	if host, _ := os.Hostname(); host != "" {
		wantEqual(t, "Name", w.Name, host)
	}
}
