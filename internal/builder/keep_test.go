package builder_test

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/builder"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/workerpool"
)

// input is one file of a test action's input tree.
type input struct {
	content    string
	executable bool
}

// inputsTask is workerTask with more input files (path → file, slash
// paths, directories made as needed).
func (r *rig) inputsTask(files map[string]input, request []string) builder.Task {
	r.t.Helper()
	type dir struct {
		files map[string]input
		dirs  map[string]*dir
	}
	newDir := func() *dir { return &dir{files: map[string]input{}, dirs: map[string]*dir{}} }
	root := newDir()
	for p, f := range files {
		d := root
		parts := strings.Split(p, "/")
		for _, name := range parts[:len(parts)-1] {
			if d.dirs[name] == nil {
				d.dirs[name] = newDir()
			}
			d = d.dirs[name]
		}
		d.files[parts[len(parts)-1]] = f
	}
	var encode func(d *dir) *repb.Directory
	encode = func(d *dir) *repb.Directory {
		out := &repb.Directory{}
		for _, name := range sortedKeys(d.files) {
			f := d.files[name]
			out.Files = append(out.Files, &repb.FileNode{Name: name, Digest: r.put([]byte(f.content)), IsExecutable: f.executable})
		}
		for _, name := range sortedKeys(d.dirs) {
			out.Directories = append(out.Directories, &repb.DirectoryNode{Name: name, Digest: r.putProto(encode(d.dirs[name]))})
		}
		return out
	}
	rootDir := encode(root)
	base := r.workerTask(nil, request)
	// Merge in workerTask's args.txt and tools/.
	tmpl := &repb.Directory{
		Files: []*repb.FileNode{{Name: "args.txt", Digest: r.put([]byte(strings.Join(request, "\n") + "\n"))}},
		Directories: []*repb.DirectoryNode{{Name: "tools", Digest: r.putProto(&repb.Directory{Files: []*repb.FileNode{{
			Name: "testworker", Digest: r.put(testWorker), IsExecutable: true,
			NodeProperties: &repb.NodeProperties{Properties: []*repb.NodeProperty{{Name: inputtree.ToolInputProperty}}},
		}}})}},
	}
	rootDir.Files = append(rootDir.Files, tmpl.Files...)
	rootDir.Directories = append(rootDir.Directories, tmpl.Directories...)
	sort.Slice(rootDir.Files, func(i, j int) bool { return rootDir.Files[i].Name < rootDir.Files[j].Name })
	sort.Slice(rootDir.Directories, func(i, j int) bool { return rootDir.Directories[i].Name < rootDir.Directories[j].Name })
	base.Action.InputRootDigest = r.putProto(rootDir)
	base.ActionDigest, _ = digest.FromProto(digest.SHA256, r.putProto(base.Action))
	return base
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// listing is what --ls prints for files (and their directories) plus args.txt.
func listing(files map[string]input) string {
	lines := map[string]bool{"args.txt 444": true}
	for p, f := range files {
		mode := "444"
		if f.executable {
			mode = "555"
		}
		lines[p+" "+mode] = true
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			lines[d+"/"] = true
		}
	}
	return strings.Join(sortedKeys(lines), "\n") + "\n"
}

// Consecutive requests to one worker: the second sees exactly its own
// inputs, with their own contents and modes, whatever the first one had,
// wrote or tampered with, during the request or while the worker was idle.
func TestWorkerWorkspaceBetweenRequests(t *testing.T) {
	base := map[string]input{"src/a.txt": {content: "A"}, "src/b.txt": {content: "B"}, "src/old/c.txt": {content: "C"}}
	with := func(edit func(m map[string]input)) map[string]input {
		m := map[string]input{}
		for k, v := range base {
			m[k] = v
		}
		edit(m)
		return m
	}
	tests := []struct {
		name   string
		first  []string         // request of the first action (on base)
		idle   time.Duration    // wait between the two
		second map[string]input // inputs of the second
		// damaged: the tamper check catches it (on the first action, or
		// on the second when done while idle); the second then runs as
		// the quarantine says, and only its fallback is checked.
		damagedFirst, damagedSecond bool
	}{
		{name: "same inputs", second: base},
		{name: "outputs and strays go", first: []string{"--out=out/x.txt", "--content=x", "--out=src/stray.txt", "--out=top.txt"}, second: base},
		{name: "dropped inputs go with their directories", second: with(func(m map[string]input) { delete(m, "src/old/c.txt") })},
		{name: "new inputs appear", second: with(func(m map[string]input) { m["src/new/d.txt"] = input{content: "D"} })},
		{name: "changed content", second: with(func(m map[string]input) { m["src/a.txt"] = input{content: "A2"} })},
		{name: "changed executable bit", second: with(func(m map[string]input) { m["src/a.txt"] = input{content: "A", executable: true} })},
		{name: "a file becomes a directory", second: with(func(m map[string]input) {
			delete(m, "src/a.txt")
			m["src/a.txt/inner.txt"] = input{content: "I"}
		})},
		{name: "a directory becomes a file", second: with(func(m map[string]input) {
			delete(m, "src/old/c.txt")
			m["src/old"] = input{content: "O"}
		})},
		{name: "removed by the request", first: []string{"--rm=src/a.txt"}, second: base},
		{name: "replaced by the request", first: []string{"--replace=src/a.txt"}, second: base},
		{name: "chmodded by the request", first: []string{"--chmod=src/a.txt"}, damagedFirst: true},
		{name: "removed while idle", first: []string{"--detach=100ms", "--rm=src/a.txt"}, idle: 500 * time.Millisecond, second: base},
		{name: "replaced while idle", first: []string{"--detach=100ms", "--replace=src/a.txt"}, idle: 500 * time.Millisecond, second: base},
		{name: "chmodded while idle", first: []string{"--detach=100ms", "--chmod=src/a.txt"}, idle: 500 * time.Millisecond, second: base, damagedSecond: true},
		{name: "written through while idle", first: []string{"--detach=100ms", "--out=src/b.txt", "--content=evil"}, idle: 500 * time.Millisecond, second: base, damagedSecond: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, workerpool.Options{})
			first := r.b.Build(context.Background(), r.inputsTask(base, append([]string{"--counter"}, tc.first...)))
			i := info(t, first)
			if tc.damagedFirst {
				if !i.GetFellBack() || !strings.Contains(i.GetFallbackReason(), "damaged_inputs") {
					t.Fatalf("first: %+v, want a damaged_inputs fallback", i)
				}
				return
			}
			if i.GetFellBack() || r.stderr(first) != "1\n" {
				t.Fatalf("first: %+v, stderr %q", i, r.stderr(first))
			}
			time.Sleep(tc.idle)
			request := []string{"--counter", "--ls"}
			for _, p := range sortedKeys(tc.second) {
				request = append(request, "--say="+p, "--cat="+p, "--say=")
			}
			second := r.b.Build(context.Background(), r.inputsTask(tc.second, request))
			i = info(t, second)
			if tc.damagedSecond {
				if !i.GetFellBack() || !strings.Contains(i.GetFallbackReason(), "damaged_inputs") {
					t.Fatalf("second: %+v, want a damaged_inputs fallback", i)
				}
				return
			}
			want := "2\n" + listing(tc.second)
			for _, p := range sortedKeys(tc.second) {
				want += p + "\n" + tc.second[p].content + "\n"
			}
			if i.GetFellBack() || !i.GetWarm() || r.stderr(second) != want {
				t.Fatalf("second: %+v\nstderr:\n%s\nwant:\n%s", i, r.stderr(second), want)
			}
		})
	}
}

// Kept inputs are hardlinks of the file cache's entries: the cache evicting
// them (here: all of them, after every request) unlinks only its own name,
// and the kept link still has the bytes.
func TestWorkerKeptInputSurvivesCacheEviction(t *testing.T) {
	r := newRigWith(t, workerpool.Options{}, filecache.Options{MaxBytes: 1})
	files := map[string]input{"src/a.txt": {content: "kept bytes"}, "src/b.txt": {content: "bb"}}
	var stats []string
	for round := range 3 {
		resp := r.b.Build(context.Background(), r.inputsTask(files, []string{"--stat=src/a.txt", "--cat=src/a.txt", fmt.Sprint("--say=", round)}))
		if i := info(t, resp); i.GetFellBack() || !i.GetWarm() && round > 0 {
			t.Fatalf("round %d: %+v", round, i)
		}
		out := strings.SplitN(r.stderr(resp), "\n", 2)
		if want := "kept bytes" + fmt.Sprint(round) + "\n"; out[1] != want {
			t.Fatalf("round %d: read %q, want %q", round, out[1], want)
		}
		stats = append(stats, out[0])
		if n := r.b.Files.Count(); n != 0 {
			t.Fatalf("round %d: the cache holds %d entries; the test needs them evicted", round, n)
		}
	}
	if stats[1] != stats[2] {
		t.Fatalf("src/a.txt was not kept: %q", stats)
	}
}

// An input both requests have, unchanged, is not staged again: its inode's
// ctime (which a link or unlink stamps) stays.
func TestWorkerUnchangedInputIsNotRestaged(t *testing.T) {
	r := newRig(t, workerpool.Options{})
	files := map[string]input{"src/a.txt": {content: "A"}, "src/b.txt": {content: "B"}}
	stat := func(extra string) string {
		t.Helper()
		resp := r.b.Build(context.Background(), r.inputsTask(files, []string{"--stat=src/a.txt", "--say=" + extra}))
		if i := info(t, resp); i.GetFellBack() {
			t.Fatalf("%+v", i)
		}
		return strings.Split(r.stderr(resp), "\n")[0]
	}
	first := stat("1")
	time.Sleep(20 * time.Millisecond) // past the coarse clock's tick
	if second := stat("2"); second != first {
		t.Fatalf("src/a.txt was staged again: %s, then %s", first, second)
	}
}

// A warm worker request with 200 inputs of which one changes from each
// request to the next, staging everything (as before inputs were kept) and
// only the difference.
func BenchmarkWorkerRequestInputs(b *testing.B) {
	for _, mode := range []struct {
		name string
		diff bool
	}{{"stage-all", false}, {"diff", true}} {
		b.Run(mode.name, func(b *testing.B) {
			defer func(was bool) { *builder.DiffStaging = was }(*builder.DiffStaging)
			*builder.DiffStaging = mode.diff
			r := newRig(b, workerpool.Options{})
			var tasks []builder.Task
			for v := range 2 {
				files := map[string]input{"src/changed.txt": {content: fmt.Sprint("version ", v)}}
				for i := range 200 {
					files[fmt.Sprintf("src/d%d/f%d.ts", i%10, i)] = input{content: fmt.Sprint("file ", i)}
				}
				tasks = append(tasks, r.inputsTask(files, []string{"--say=ok"}))
			}
			for i := range 4 { // start the worker, fill the file cache
				if resp := r.b.Build(context.Background(), tasks[i%2]); resp.GetStatus().GetCode() != 0 {
					b.Fatal(resp.GetStatus())
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				resp := r.b.Build(context.Background(), tasks[i%2])
				if resp.GetStatus().GetCode() != 0 || resp.GetResult().GetExitCode() != 0 {
					b.Fatal(resp.GetStatus())
				}
			}
		})
	}
}
