package executor_test

import (
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/workeraction"
)

// The executor reports its idle warm workers per routing key, and for an
// opt-in without persistentWorkerKey that key is the one the scheduler
// derives from the Command alone, so the two agree without the input tree.
func TestWarmWorkersReportedByRoutingKey(t *testing.T) {
	c := startClusterWith(t, clusterOptions{maxTimeout: time.Minute, workers: workerConfig()})
	props := []*repb.Platform_Property{{Name: "supports-workers", Value: "1"}}
	root := &repb.Directory{
		Files: []*repb.FileNode{{Name: "args.txt", Digest: c.put([]byte("--say=hi\n"))}},
		Directories: []*repb.DirectoryNode{{Name: "tools", Digest: c.putProto(&repb.Directory{Files: []*repb.FileNode{{
			Name: "testworker", Digest: c.put(testWorkerBinary), IsExecutable: true,
			NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: "bazel_tool_input"}}},
		}}})}},
	}
	cmd := &repb.Command{
		Arguments: []string{"tools/testworker", "@args.txt"},
		Platform:  &repb.Platform{Properties: props},
	}
	want := workeraction.RoutingKeyOf(props, cmd)
	if !strings.HasPrefix(want, "derived:") {
		t.Fatalf("routing key %q", want)
	}
	resp := c.run(c.action(cmd, root, func(a *repb.Action) { a.Platform = cmd.Platform }))
	if info := workerInfo(t, resp.GetResult()); info.GetFellBack() || info.GetPoolKey() == "" {
		t.Fatalf("not served by a worker: %+v", info)
	}
	if got := c.builder.Workers.WarmWorkers(); got[want] != 1 || len(got) != 1 {
		t.Fatalf("builder warm workers = %v, want %s: 1", got, want)
	}
	// The Finished message carried the count to the scheduler.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := c.sched.Status()
		if len(st.Executors) == 1 && st.Executors[0].WarmWorkers[want] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("scheduler's view: %+v", st.Executors)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
