package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// startWorker starts `hearth worker` with one executor, name, that connects
// to srv (a `hearth server`) and runs up to maxInflight actions at once, and
// waits until srv reports it connected. Its configuration file and work
// directory are its own. extraArgs go to `hearth worker`.
func startWorker(t *testing.T, srv *hearthProcess, name string, maxInflight int, extraArgs ...string) *hearthProcess {
	t.Helper()
	return startWorkerOn(t, []*hearthProcess{srv}, name, maxInflight, extraArgs...)
}

// startWorkerOn is startWorker with several servers (replicas sharing
// state): worker_api_endpoint.uris lists them in order, and the worker must
// connect to the first.
func startWorkerOn(t *testing.T, servers []*hearthProcess, name string, maxInflight int, extraArgs ...string) *hearthProcess {
	t.Helper()
	return startWorkerWith(t, servers, name, maxInflight, "", extraArgs...)
}

// startWorkerWith is startWorkerOn with more settings (JSON5 members) in
// the worker's local block.
func startWorkerWith(t *testing.T, servers []*hearthProcess, name string, maxInflight int, settings string, extraArgs ...string) *hearthProcess {
	t.Helper()
	srv := servers[0]
	dir := t.TempDir()
	endpoint := fmt.Sprintf("uri: %q", "grpc://"+srv.GRPCAddr)
	if len(servers) > 1 {
		var uris []string
		for _, s := range servers {
			uris = append(uris, strconv.Quote("grpc://"+s.GRPCAddr))
		}
		endpoint = "uris: [" + strings.Join(uris, ", ") + "]"
	}
	config := fmt.Sprintf(`// written by the e2e test %s
{
  workers: [{
    local: {
      name: %q,
      worker_api_endpoint: { %s },
      work_directory: %q,
      max_inflight_tasks: %d,
      %s
    },
  }],
}
`, t.Name(), name, endpoint, filepath.Join(dir, "work"), maxInflight, settings)
	configPath := filepath.Join(dir, "worker.json5")
	if err := os.WriteFile(configPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	p := launchHearth(t, dir, nil, append([]string{"worker", "--config", configPath}, extraArgs...)...)
	ctx, cancel := context.WithTimeout(t.Context(), readyTimeout)
	defer cancel()
	if _, err := srv.log.waitFor(ctx, p.done, `msg="executor connected" executor=`+name+" "); err != nil {
		t.Fatalf("worker %s did not connect: %v\nworker output:\n%s", name, err, p.log.tail(30))
	}
	return p
}

// childWatch tracks the child processes of one process (an executor's
// actions) by polling /proc, so a test can tell how many actions it started
// and whether one is running now, without any hook in the executor.
type childWatch struct {
	pid  int
	seen map[[2]uint64]bool // (pid, start time) of every child seen
}

func newChildWatch(pid int) *childWatch {
	return &childWatch{pid: pid, seen: map[[2]uint64]bool{}}
}

// poll records the current children and returns how many of them were not
// there at the previous poll.
func (w *childWatch) poll() int {
	fresh := 0
	for _, c := range procChildren(w.pid) {
		if !w.seen[c] {
			w.seen[c] = true
			fresh++
		}
	}
	return fresh
}

// started is the number of distinct children seen so far.
func (w *childWatch) started() int { return len(w.seen) }

// procChildren lists the (pid, start time) of the processes whose parent is
// ppid. Processes that exit while it reads are skipped.
func procChildren(ppid int) [][2]uint64 {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var children [][2]uint64
	for _, e := range entries {
		pid, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// The command name, in parentheses, may contain blanks; the
		// fields after it are state, ppid, ... with starttime 20th.
		s := string(data)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) < 20 || fields[1] != strconv.Itoa(ppid) {
			continue
		}
		start, _ := strconv.ParseUint(fields[19], 10, 64)
		children = append(children, [2]uint64{pid, start})
	}
	return children
}
