package workerpool

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hearth-build/hearth/internal/workerproto"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name     string
		stat     string
		want     procEntry
		wantOkay bool
	}{
		{"plain", "42 (sleep) S 7 42 42 0 -1 4194304 95 0 0 0 0 0 0 0 20 0 1 0 100 2000000 3 18446744073709551615",
			procEntry{ppid: 7, rss: 3 * pageSize}, true},
		{"comm with spaces and parens", "9 (a) b (c)) R 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 1 250 0",
			procEntry{ppid: 1, rss: 250 * pageSize}, true},
		{"truncated", "9 (x) R 1 9", procEntry{}, false},
		{"no parens", "garbage", procEntry{}, false},
		{"bad ppid", "9 (x) R p 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 1 250 0", procEntry{}, false},
		{"negative rss", "9 (x) R 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 1 -5 0", procEntry{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := parseStat([]byte(tc.stat))
			if ok != tc.wantOkay || got != tc.want {
				t.Errorf("parseStat = %+v, %v; want %+v, %v", got, ok, tc.want, tc.wantOkay)
			}
		})
	}
}

func TestTreeRSS(t *testing.T) {
	table := map[int]procEntry{
		1:  {ppid: 0, rss: 1000},
		10: {ppid: 1, rss: 100},
		11: {ppid: 10, rss: 10},
		12: {ppid: 11, rss: 1},
		20: {ppid: 1, rss: 200},
	}
	got := treeRSS(table, []int{10, 20, 12, 99})
	want := map[int]uint64{10: 111, 20: 200, 12: 1, 99: 0}
	for root, w := range want {
		if got[root] != w {
			t.Errorf("treeRSS[%d] = %d, want %d", root, got[root], w)
		}
	}
}

func TestMeasureTreesSeesOwnProcess(t *testing.T) {
	pid := os.Getpid()
	sums, err := measureTrees([]int{pid})
	if err != nil {
		t.Fatal(err)
	}
	// A Go test binary is surely above 1 MiB resident.
	if sums[pid] < 1<<20 {
		t.Errorf("resident size of this test process = %d bytes, want > 1 MiB", sums[pid])
	}
}

func TestStderrLogRotatesAndKeepsTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w.log")
	log, err := newStderrLog(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Repeat("x", 99) + "\n"
	for range 25 {
		if n, err := log.Write([]byte(line)); n != len(line) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	_, _ = log.Write([]byte("last words\n"))
	log.Close()
	for _, p := range []string{path, path + ".1"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if fi.Size() > 1000 || fi.Size() == 0 {
			t.Errorf("%s has %d bytes, want 1..1000", p, fi.Size())
		}
	}
	tail := log.Tail()
	if !strings.HasSuffix(tail, "last words") || len(tail) > tailBytes || strings.HasPrefix(tail, "\n") {
		t.Errorf("Tail = %d bytes ending %q, want <= %d bytes ending in the last line", len(tail), tail[max(0, len(tail)-20):], tailBytes)
	}
	log.Remove()
	if _, err := os.Stat(path + ".1"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Remove left %s.1: %v", path, err)
	}
}

func TestSpecValidation(t *testing.T) {
	good := func() *Spec {
		return &Spec{Key: "k", Argv: []string{"/bin/true"}, Env: []string{"A=1", "B="}, Protocol: workerproto.Proto}
	}
	tests := []struct {
		name   string
		mutate func(*Spec)
		want   string // "" means valid
	}{
		{"valid", func(*Spec) {}, ""},
		{"empty key", func(s *Spec) { s.Key = "" }, "empty key"},
		{"no argv", func(s *Spec) { s.Argv = nil }, "empty startup command"},
		{"empty argv0", func(s *Spec) { s.Argv = []string{""} }, "empty startup command"},
		{"NUL in arg", func(s *Spec) { s.Argv = append(s.Argv, "a\x00b") }, "NUL"},
		{"env without =", func(s *Spec) { s.Env = []string{"NOPE"} }, `"NOPE" is not NAME=value`},
		{"env empty name", func(s *Spec) { s.Env = []string{"=x"} }, "not NAME=value"},
		{"env twice", func(s *Spec) { s.Env = []string{"A=1", "A=2"} }, `"A" set twice`},
		{"env NUL", func(s *Spec) { s.Env = []string{"A=\x00"} }, "NUL"},
		{"bad protocol", func(s *Spec) { s.Protocol = 7 }, "unknown protocol"},
		{"sandboxing singleplex", func(s *Spec) { s.Sandboxing = true }, "only defined for multiplex"},
		{"tools", func(s *Spec) { s.Tools = []Tool{{Path: "tools/javac", Executable: true}, {Path: "lib.jar"}} }, ""},
		{"tool absolute", func(s *Spec) { s.Tools = []Tool{{Path: "/etc/passwd"}} }, `tool path "/etc/passwd"`},
		{"tool outside", func(s *Spec) { s.Tools = []Tool{{Path: "../x"}} }, `tool path "../x"`},
		{"tool unclean", func(s *Spec) { s.Tools = []Tool{{Path: "a//b"}} }, `tool path "a//b"`},
		{"tool empty", func(s *Spec) { s.Tools = []Tool{{}} }, `tool path ""`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := good()
			tc.mutate(s)
			err := s.validate()
			if tc.want == "" {
				if err != nil {
					t.Fatalf("validate: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidSpec) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate = %v, want ErrInvalidSpec mentioning %q", err, tc.want)
			}
		})
	}
	var nilSpec *Spec
	if err := nilSpec.validate(); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("nil spec: %v", err)
	}
}

func TestOptionsValidation(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"relative dir", Options{Dir: "pool"}, "absolute"},
		{"root dir", Options{Dir: "/"}, "absolute path other than /"},
		{"negative workers", Options{Dir: "/x", MaxWorkersPerKey: -1}, "max_workers_per_pool is negative"},
		{"negative idle", Options{Dir: "/x", IdleTimeout: -time.Second}, "idle_timeout is negative"},
		{"prewarm above max", Options{Dir: "/x", MaxWorkersPerKey: 1, Prewarm: 2}, "prewarm (2) exceeds"},
		{"unknown sandbox", Options{Dir: "/x", Sandbox: 9}, "unknown sandbox"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts)
			if !errors.Is(err, ErrInvalidOptions) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New = %v, want ErrInvalidOptions mentioning %q", err, tc.want)
			}
		})
	}
}

func TestNewEmptiesDir(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, "workspaces", "3", "ro")
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stale, "f"), []byte("x"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(stale, 0o555); err != nil { // read-only, as staged inputs often are
		t.Fatal(err)
	}
	newPool(t, Options{Dir: dir})
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale workspace survived New: %v", err)
	}
}

func TestMemoryLimitTakesTheLowerOfSpecAndPool(t *testing.T) {
	tests := []struct{ pool, spec, want uint64 }{
		{0, 0, 0}, {100, 0, 100}, {0, 50, 50}, {100, 50, 50}, {100, 500, 100},
	}
	for _, tc := range tests {
		o := Options{MemoryLimitBytes: tc.pool}
		if got := o.memoryLimit(&Spec{MemoryLimit: tc.spec}); got != tc.want {
			t.Errorf("pool %d spec %d: limit %d, want %d", tc.pool, tc.spec, got, tc.want)
		}
	}
}

func TestAcquireRejectsBadSpecAndCancelledContext(t *testing.T) {
	p := newPool(t, Options{})
	if _, err := p.Acquire(context.Background(), &Spec{Key: "k"}); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("Acquire(no argv) = %v, want ErrInvalidSpec", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	spec := &Spec{Key: "k", Argv: []string{"/bin/cat"}, Env: []string{}}
	if _, err := p.Acquire(ctx, spec); !errors.Is(err, context.Canceled) {
		t.Errorf("Acquire(cancelled ctx) = %v, want context.Canceled", err)
	}
}

// TestMeasureTreeCountsDescendantsOnly: the per-release measurement walks
// only the worker's tree and must give what a pass over all of /proc gives:
// a grandchild counted, an unrelated process not.
func TestMeasureTreeCountsDescendantsOnly(t *testing.T) {
	// sh → (sh → sleep) + sleep: a child and a grandchild.
	cmd := exec.Command("sh", "-c", "sh -c 'sleep 30 & wait' & sleep 30 & wait")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() }()
	unrelated := exec.Command("sleep", "30")
	if err := unrelated.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = unrelated.Process.Kill(); _ = unrelated.Wait() }()

	root := cmd.Process.Pid
	var members int
	for deadline := time.Now().Add(5 * time.Second); ; {
		table, err := readProcTable()
		if err != nil {
			t.Fatal(err)
		}
		members = 0
		for pid := range table {
			for p := pid; p > 1; p = table[p].ppid {
				if p == root {
					members++
					break
				}
			}
		}
		if members == 4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if members != 4 {
		t.Fatalf("process tree has %d members, want 4", members)
	}
	got, err := measureTree(root)
	if err != nil {
		t.Fatal(err)
	}
	sums, err := measureTrees([]int{root})
	if err != nil {
		t.Fatal(err)
	}
	rootOnly, _ := parseStat(mustRead(t, "/proc/"+strconv.Itoa(root)+"/stat"))
	if got != sums[root] {
		t.Errorf("measureTree = %d, full /proc pass = %d", got, sums[root])
	}
	if got <= rootOnly.rss {
		t.Errorf("measureTree = %d, not above the root's own %d: descendants not counted", got, rootOnly.rss)
	}
	if gone, err := measureTree(1 << 30); err != nil || gone != 0 {
		t.Errorf("measureTree(absent pid) = %d, %v; want 0, nil", gone, err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// BenchmarkMeasure compares the per-release tree walk with the pass over all
// of /proc it replaced (go test -bench Measure ./internal/workerpool).
func BenchmarkMeasure(b *testing.B) {
	pid := os.Getpid()
	b.Run("tree", func(b *testing.B) {
		for range b.N {
			if _, err := measureTree(pid); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("allproc", func(b *testing.B) {
		for range b.N {
			if _, err := measureTrees([]int{pid}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
