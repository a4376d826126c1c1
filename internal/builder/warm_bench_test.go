package builder_test

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/metadatapb"
	"github.com/hearth-build/hearth/internal/workerpool"
)

// tscLikeTask is a warm worker action shaped like one library of the tsc
// bench (bench/cmd/hearthbench): a tool tree of toolFiles files in
// toolFiles/5 directories (node_modules), a tsconfig flag file, one new
// source and the declarations of deps earlier libraries as non-tool inputs,
// and two new small outputs the worker writes (index.js, index.d.ts).
func (r *rig) tscLikeTask(tools *repb.Digest, lib, deps int, persistent bool) builder.Task {
	r.t.Helper()
	out := fmt.Sprintf("bin/lib%05d/", lib)
	request := []string{
		"--out=" + out + "index.js", fmt.Sprintf("--content=exports.v = %d; // %s", lib, strings.Repeat("x", 300)),
		"--out=" + out + "index.d.ts", fmt.Sprintf("--content=export declare const v%d: number;", lib),
		"--say=ok",
	}
	libs := &repb.Directory{}
	for i := 0; i < lib; i++ {
		if i < lib-deps {
			continue
		}
		libs.Directories = append(libs.Directories, &repb.DirectoryNode{Name: fmt.Sprintf("lib%05d", i), Digest: r.putProto(&repb.Directory{
			Files: []*repb.FileNode{{Name: "index.d.ts", Digest: r.put([]byte(fmt.Sprintf("export declare const v%d: number;", i)))}},
		})})
	}
	src := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: fmt.Sprintf("lib%05d", lib), Digest: r.putProto(&repb.Directory{
		Files: []*repb.FileNode{{Name: "index.ts", Digest: r.put([]byte(fmt.Sprintf("export const v%d = %d;", lib, lib)))}},
	})}}}
	root := &repb.Directory{
		Files: []*repb.FileNode{{Name: "args.txt", Digest: r.put([]byte(strings.Join(request, "\n") + "\n"))}},
		Directories: []*repb.DirectoryNode{
			{Name: "bin", Digest: r.putProto(libs)},
			{Name: "node_modules", Digest: tools},
			{Name: "src", Digest: r.putProto(src)},
			{Name: "tools", Digest: r.putProto(&repb.Directory{Files: []*repb.FileNode{{
				Name: "testworker", Digest: r.put(testWorker), IsExecutable: true,
				NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: inputtree.ToolInputProperty}}},
			}}})},
		},
	}
	platform := &repb.Platform{Properties: []*repb.Platform_Property{{Name: "persistentWorkerKey", Value: "k"}}}
	if !persistent {
		platform = nil
	}
	cmd := &repb.Command{
		Arguments:   []string{"tools/testworker", "@args.txt"},
		Platform:    platform,
		OutputPaths: []string{out + "index.js", out + "index.d.ts"},
	}
	action := &repb.Action{CommandDigest: r.putProto(cmd), InputRootDigest: r.putProto(root), Platform: platform}
	ad, _ := digest.FromProto(digest.SHA256, r.putProto(action))
	return builder.Task{ActionDigest: ad, Action: action, Command: cmd, QueuedAt: time.Now()}
}

// toolTree stores a node_modules-like tree of n tool files, five per
// directory, and returns its root.
func (r *rig) toolTree(n int) *repb.Digest {
	r.t.Helper()
	tool := &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: inputtree.ToolInputProperty}}}
	top := &repb.Directory{}
	for d := 0; d < n/5; d++ {
		dir := &repb.Directory{}
		for f := 0; f < 5; f++ {
			dir.Files = append(dir.Files, &repb.FileNode{Name: fmt.Sprintf("f%d.js", f), Digest: r.put([]byte(fmt.Sprintf("module %d/%d", d, f))), NodeProperties: tool})
		}
		top.Directories = append(top.Directories, &repb.DirectoryNode{Name: fmt.Sprintf("pkg%03d", d), Digest: r.putProto(dir)})
	}
	return r.putProto(top)
}

// BenchmarkWarmToolAction runs a chain of tsc-like warm worker actions
// (every one new, as in a clean build) and reports the server-side stages
// from ExecutedActionMetadata, p50 over the run: input fetch (start to
// inputs staged), upload (output upload start to completed) and the
// overhead (worker start to completed, minus execution) the tsc bench
// reports, and the whole Build call. Each sub-benchmark alternates, action
// by action on one worker, between a per-action cut on ("on-") and off
// ("off-"), so that both sides see the same load; "all" switches every cut
// at once.
func BenchmarkWarmToolAction(b *testing.B) {
	benchmarkCuts(b, true, map[string]*bool{"tree-cache": builder.CacheTrees, "async-release": builder.AsyncRelease})
}

// BenchmarkOneShotToolAction is BenchmarkWarmToolAction with the actions
// run one-shot (no persistentWorkerKey): every action stages and removes
// the whole tool tree.
func BenchmarkOneShotToolAction(b *testing.B) {
	benchmarkCuts(b, false, map[string]*bool{"tree-cache": builder.CacheTrees, "async-recycle": builder.AsyncRecycle})
}

func benchmarkCuts(b *testing.B, persistent bool, cuts map[string]*bool) {
	names := []string{"all"}
	for n := range cuts {
		names = append(names, n)
	}
	sort.Strings(names[1:])
	for _, name := range names {
		b.Run(name, func(b *testing.B) {
			set := func(on bool) {
				for n, sw := range cuts {
					if name == "all" || n == name {
						*sw = on
					}
				}
			}
			defer set(true)
			benchmarkToolAction(b, persistent, set)
		})
	}
}

// turnaround is the pause between one action's result and the next action:
// the client's side of a dependency chain (the tsc bench measured 35–40 ms
// between one action's completion and the next one's queueing).
const turnaround = 5 * time.Millisecond

func benchmarkToolAction(b *testing.B, persistent bool, set func(on bool)) {
	r := newRig(b, workerpool.Options{MemoryLimitBytes: 1 << 30})
	// The store stack of `hearth serve`'s embedded executor (cmd/hearth):
	// Directory protos come from memory after their first read.
	r.b.CAS = cas.NewVerifying(cas.NewSmallBlobCache(r.store, 64<<10, 64<<20))
	tools := r.toolTree(600)
	tasks := make([]builder.Task, b.N+4)
	for i := range tasks {
		tasks[i] = r.tscLikeTask(tools, i, 10, persistent)
	}
	for i, t := range tasks[:4] { // start the worker, stage the tools
		set(i%2 == 0)
		if resp := r.b.Build(context.Background(), t); resp.GetStatus().GetCode() != 0 {
			b.Fatal(resp.GetStatus())
		}
	}
	type stages struct{ fetch, upload, overhead, build []time.Duration }
	var sides [2]stages // off, on
	b.ResetTimer()
	for i, t := range tasks[4:] {
		on := i%2 == 0
		b.StopTimer()
		time.Sleep(turnaround)
		b.StartTimer()
		set(on)
		start := time.Now()
		resp := r.b.Build(context.Background(), t)
		took := time.Since(start)
		if resp.GetStatus().GetCode() != 0 || resp.GetResult().GetExitCode() != 0 || len(resp.GetResult().GetOutputFiles()) != 2 {
			b.Fatal(resp.GetStatus(), resp.GetResult())
		}
		if persistent {
			if in := workerInfo(resp); in == nil || in.GetFellBack() || !in.GetWarm() {
				b.Fatalf("action %d was not served warm: %+v", i, in)
			}
		}
		md := resp.GetResult().GetExecutionMetadata()
		span := func(from, to interface{ AsTime() time.Time }) time.Duration { return to.AsTime().Sub(from.AsTime()) }
		s := &sides[btoi(on)]
		s.fetch = append(s.fetch, span(md.GetInputFetchStartTimestamp(), md.GetInputFetchCompletedTimestamp()))
		s.upload = append(s.upload, span(md.GetOutputUploadStartTimestamp(), md.GetOutputUploadCompletedTimestamp()))
		s.overhead = append(s.overhead, span(md.GetWorkerStartTimestamp(), md.GetWorkerCompletedTimestamp())-
			span(md.GetExecutionStartTimestamp(), md.GetExecutionCompletedTimestamp()))
		s.build = append(s.build, took)
	}
	b.StopTimer()
	p50 := func(ds []time.Duration) float64 {
		if len(ds) == 0 {
			return 0
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		return float64(ds[len(ds)/2].Microseconds())
	}
	for side, prefix := range []string{"off-", "on-"} {
		s := sides[side]
		b.ReportMetric(p50(s.fetch), prefix+"fetch-µs")
		b.ReportMetric(p50(s.upload), prefix+"upload-µs")
		b.ReportMetric(p50(s.overhead), prefix+"overhead-µs")
		b.ReportMetric(p50(s.build), prefix+"build-µs")
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func workerInfo(resp *repb.ExecuteResponse) *metadatapb.PersistentWorkerInfo {
	for _, a := range resp.GetResult().GetExecutionMetadata().GetAuxiliaryMetadata() {
		i := &metadatapb.PersistentWorkerInfo{}
		if a.MessageIs(i) && a.UnmarshalTo(i) == nil {
			return i
		}
	}
	return nil
}
