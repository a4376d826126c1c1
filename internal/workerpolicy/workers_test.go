package workerpolicy

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/workerpool"
	"github.com/hearth-build/hearth/internal/workerproto"
)

func newWorkers(t *testing.T, o Options) *Workers {
	t.Helper()
	pool, err := workerpool.New(workerpool.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if o.Protocols == nil {
		o.Protocols = []workerproto.Protocol{workerproto.Proto}
	}
	w := New(pool, o)
	t.Cleanup(func() { w.Close() })
	return w
}

func d(s string) digest.Digest { return digest.Compute(digest.SHA256, []byte(s)) }

// workerAction is a Bazel-style worker action with its tool marked
// bazel_tool_input.
func workerAction(args []string, props ...string) Action {
	p := &repb.Platform{}
	for i := 0; i < len(props); i += 2 {
		p.Properties = append(p.Properties, &repb.Platform_Property{Name: props[i], Value: props[i+1]})
	}
	return Action{
		Instance: "i",
		Action:   &repb.Action{Platform: p},
		Command:  &repb.Command{Arguments: args},
		Tree: &inputtree.Tree{Files: []inputtree.File{
			{Path: "tools/javac", Digest: d("javac"), Executable: true, ToolInput: true},
			{Path: "args.txt", Digest: d("args")},
		}},
		Env: []string{"PATH=/bin"},
	}
}

func TestPlan(t *testing.T) {
	w := newWorkers(t, Options{})
	base := workerAction([]string{"tools/javac", "-v", "@args.txt"}, "persistentWorkerKey", "k")
	basePlan := w.Plan(base)
	if basePlan == nil {
		t.Fatal("a worker action got no plan")
	}
	if !slices.Equal(basePlan.Spec.Argv, []string{"tools/javac", "-v"}) || !slices.Equal(basePlan.Request, []string{"@args.txt"}) {
		t.Fatalf("argv %q request %q", basePlan.Spec.Argv, basePlan.Request)
	}
	if len(basePlan.Spec.Tools) != 1 || basePlan.Spec.Tools[0] != (workerpool.Tool{Path: "tools/javac", Digest: d("javac"), Executable: true}) ||
		!basePlan.IsTool("tools/javac") || basePlan.IsTool("args.txt") {
		t.Fatalf("tools %+v", basePlan.Spec.Tools)
	}
	if basePlan.Info.GetPoolKey() != basePlan.Spec.Key || basePlan.Info.GetClientKey() != "k" || basePlan.Info.GetFellBack() {
		t.Fatalf("info %+v", basePlan.Info)
	}

	oneShot := map[string]func(*Action){
		"no opt-in": func(a *Action) { a.Action.Platform = nil },
		"opt-in declined": func(a *Action) {
			a.Action.Platform.Properties[0] = &repb.Platform_Property{Name: "supports-workers", Value: "0"}
		},
		"working directory": func(a *Action) { a.Command.WorkingDirectory = "pkg" },
		"no flag file":      func(a *Action) { a.Command.Arguments = []string{"tools/javac", "-v"} },
		"only flag files":   func(a *Action) { a.Command.Arguments = []string{"@args.txt"} },
		"protocol not spoken": func(a *Action) {
			a.Action.Platform.Properties = append(a.Action.Platform.Properties, prop("persistentWorkerProtocol", "json"))
		},
		"protocol unknown": func(a *Action) {
			a.Action.Platform.Properties = append(a.Action.Platform.Properties, prop("persistentWorkerProtocol", "xml"))
		},
		"action platform wins": func(a *Action) {
			a.Command.Platform = a.Action.Platform
			a.Action.Platform = &repb.Platform{Properties: []*repb.Platform_Property{prop("OSFamily", "Linux")}}
		},
	}
	for name, mutate := range oneShot {
		a := workerAction([]string{"tools/javac", "-v", "@args.txt"}, "persistentWorkerKey", "k")
		mutate(&a)
		if p := w.Plan(a); p != nil {
			t.Errorf("%s: planned for a worker: %+v", name, p.Spec)
		}
	}
	// The Command's platform counts when the Action has none (REAPI < 2.2).
	a := workerAction([]string{"tools/javac", "-v", "@args.txt"}, "persistentWorkerKey", "k")
	a.Command.Platform, a.Action.Platform = a.Action.Platform, nil
	if p := w.Plan(a); p == nil || p.Spec.Key != basePlan.Spec.Key {
		t.Errorf("Command platform: %+v", p)
	}

	// Everything a worker process is started with is in its key.
	variants := map[string]func(*Action){
		"entrypoint": func(a *Action) { a.Entrypoint = []string{"/usr/bin/env", "WRAPPED=1"} },
		"env":        func(a *Action) { a.Env = append(a.Env, "EXTRA=1") },
		"tool":       func(a *Action) { a.Tree.Files[0].Digest = d("javac v2") },
		"startup":    func(a *Action) { a.Command.Arguments = []string{"tools/javac", "-X", "@args.txt"} },
		"instance":   func(a *Action) { a.Instance = "other" },
	}
	for name, mutate := range variants {
		a := workerAction([]string{"tools/javac", "-v", "@args.txt"}, "persistentWorkerKey", "k")
		mutate(&a)
		p := w.Plan(a)
		if p == nil || p.Spec.Key == basePlan.Spec.Key {
			t.Errorf("%s: same pool key (or no plan: %v)", name, p == nil)
			continue
		}
		switch name {
		case "entrypoint":
			// The entrypoint wraps the startup command; the tool is still
			// the one the startup command names.
			if !slices.Equal(p.Spec.Argv, []string{"/usr/bin/env", "WRAPPED=1", "tools/javac", "-v"}) || !p.IsTool("tools/javac") {
				t.Errorf("entrypoint: argv %q", p.Spec.Argv)
			}
		case "env":
			if !slices.Equal(p.Spec.Env, []string{"PATH=/bin", "EXTRA=1"}) {
				t.Errorf("env: %q", p.Spec.Env)
			}
		}
	}
}

func prop(name, value string) *repb.Platform_Property {
	return &repb.Platform_Property{Name: name, Value: value}
}

func TestFallbackAndQuarantine(t *testing.T) {
	w := newWorkers(t, Options{})
	a := workerAction([]string{"tools/javac", "@args.txt"}, "persistentWorkerKey", "k")
	p := w.Plan(a)
	w.FallBack(p, Reason(fmt.Errorf("acquire: %w", workerpool.ErrNoCapacity)), workerpool.ErrNoCapacity)
	if !p.Info.FellBack || !strings.HasPrefix(p.Info.FallbackReason, "no_capacity: ") {
		t.Fatalf("info %+v", p.Info)
	}
	for err, want := range map[error]string{
		workerpool.ErrNoCapacity: "no_capacity", workerpool.ErrStartFailed: "start_failed",
		fmt.Errorf("x: %w", workerpool.ErrWorkerFailed): "worker_failed", errors.New("other"): "error",
	} {
		if got := Reason(err); got != want {
			t.Errorf("Reason(%v) = %q, want %q", err, got, want)
		}
	}
	w.Damaged(w.Plan(a), []string{"in.txt"})
	if q := w.Quarantined(p.Spec.Key); !strings.Contains(q, "in.txt") {
		t.Fatalf("not quarantined: %q", q)
	}
	// Every later plan of the key falls back at once, saying why.
	later := w.Plan(a)
	if later == nil || !later.Info.FellBack || !strings.HasPrefix(later.Info.FallbackReason, "quarantined: wrote to its read-only inputs: in.txt") {
		t.Fatalf("quarantined key planned: %+v", later)
	}
	st := w.Status()
	if len(st.Keys) != 1 || st.Keys[0].ClientKey != "k" ||
		!maps.Equal(st.Keys[0].Fallbacks, map[string]int64{"no_capacity": 1, "damaged_inputs": 1, "quarantined": 1}) {
		t.Fatalf("status %+v", st.Keys)
	}
}

func TestVerification(t *testing.T) {
	draws := []float64{0.1, 0.9}
	w := newWorkers(t, Options{VerifyFraction: 0.5, Random: func() float64 { r := draws[0]; draws = draws[1:]; return r }})
	if !w.ShouldVerify() || w.ShouldVerify() {
		t.Fatal("verify_fraction 0.5 with draws 0.1, 0.9 should verify the first only")
	}
	if newWorkers(t, Options{}).ShouldVerify() {
		t.Fatal("verify_fraction 0 verified")
	}
	a := workerAction([]string{"tools/javac", "@args.txt"}, "persistentWorkerKey", "k")
	p := w.Plan(a)
	if w.Verified(p, nil) || !p.Info.Verified || w.Quarantined(p.Spec.Key) != "" {
		t.Fatalf("a clean comparison quarantined the key: %+v", p.Info)
	}
	p = w.Plan(a)
	if !w.Verified(p, []string{"out.txt"}) || !slices.Equal(p.Info.Mismatch, []string{"out.txt"}) {
		t.Fatalf("a difference did not replace the result: %+v", p.Info)
	}
	st := w.Status().Keys[0]
	if st.Verified != 2 || st.Mismatches != 1 || !strings.Contains(st.Quarantined, "out.txt") {
		t.Fatalf("status %+v", st)
	}
}

func TestDiffResults(t *testing.T) {
	file := func(path, content string, exec bool) *repb.OutputFile {
		return &repb.OutputFile{Path: path, Digest: d(content).Proto(), IsExecutable: exec}
	}
	base := func() *repb.ActionResult {
		return &repb.ActionResult{
			OutputFiles:       []*repb.OutputFile{file("a", "1", false), file("b", "2", true)},
			OutputDirectories: []*repb.OutputDirectory{{Path: "dir", TreeDigest: d("tree").Proto()}},
			OutputSymlinks:    []*repb.OutputSymlink{{Path: "link", Target: "a"}},
			StdoutDigest:      d("out").Proto(),
		}
	}
	tests := []struct {
		name   string
		mutate func(*repb.ActionResult)
		want   []string
	}{
		{"same", func(*repb.ActionResult) {}, nil},
		{"streams and metadata are not compared", func(r *repb.ActionResult) {
			r.StdoutDigest, r.StderrDigest = d("other").Proto(), d("x").Proto()
			r.ExecutionMetadata = &repb.ExecutedActionMetadata{Worker: "w"}
		}, nil},
		{"order is not compared", func(r *repb.ActionResult) { r.OutputFiles[0], r.OutputFiles[1] = r.OutputFiles[1], r.OutputFiles[0] }, nil},
		{"exit code", func(r *repb.ActionResult) { r.ExitCode = 1 }, []string{"exit_code"}},
		{"content", func(r *repb.ActionResult) { r.OutputFiles[0] = file("a", "other", false) }, []string{"a"}},
		{"executable bit", func(r *repb.ActionResult) { r.OutputFiles[1].IsExecutable = false }, []string{"b"}},
		{"missing file", func(r *repb.ActionResult) { r.OutputFiles = r.OutputFiles[:1] }, []string{"b"}},
		{"extra file", func(r *repb.ActionResult) { r.OutputFiles = append(r.OutputFiles, file("c", "3", false)) }, []string{"c"}},
		{"tree", func(r *repb.ActionResult) { r.OutputDirectories[0].TreeDigest = d("tree2").Proto() }, []string{"dir"}},
		{"symlink target", func(r *repb.ActionResult) { r.OutputSymlinks[0].Target = "b" }, []string{"link"}},
		{"file became a directory", func(r *repb.ActionResult) {
			r.OutputFiles = r.OutputFiles[:1]
			r.OutputDirectories = append(r.OutputDirectories, &repb.OutputDirectory{Path: "b", TreeDigest: d("t").Proto()})
		}, []string{"b"}},
		{"several, sorted", func(r *repb.ActionResult) {
			r.ExitCode = 2
			r.OutputSymlinks = nil
			r.OutputFiles[0] = file("a", "x", false)
		}, []string{"a", "exit_code", "link"}},
	}
	for _, tc := range tests {
		r := base()
		tc.mutate(r)
		got := DiffResults(base(), r)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
		if back := DiffResults(r, base()); !slices.Equal(back, tc.want) {
			t.Errorf("%s (reversed): got %q, want %q", tc.name, back, tc.want)
		}
	}
}

func TestCleanWorkspace(t *testing.T) {
	w := newWorkers(t, Options{})
	a := workerAction([]string{"tools/javac", "@args.txt"}, "persistentWorkerKey", "k")
	a.Tree.Files = append(a.Tree.Files, inputtree.File{Path: "tools/lib/dep.jar", Digest: d("dep"), ToolInput: true})
	plan := w.Plan(a)
	dir := t.TempDir()
	write := func(rel string) {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(rel), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"tools/javac", "tools/lib/dep.jar", "tools/stray", "tools/lib/stray", "args.txt", "out/a.txt",
		"readonly/inner/x", workerpool.SandboxRoot + "/1/kept"} {
		write(f)
	}
	// An action may leave read-only directories, a tool directory included.
	for _, ro := range []string{"readonly/inner", "readonly", "tools/lib"} {
		if err := os.Chmod(filepath.Join(dir, ro), 0o555); err != nil {
			t.Fatal(err)
		}
	}
	if err := CleanWorkspace(dir, plan); err != nil {
		t.Fatal(err)
	}
	var left []string
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			left = append(left, filepath.ToSlash(rel))
		}
		return err
	})
	sort.Strings(left)
	want := []string{workerpool.SandboxRoot + "/1/kept", "tools/javac", "tools/lib/dep.jar"}
	if !slices.Equal(left, want) {
		t.Fatalf("left %q, want %q", left, want)
	}
	// The kept tool directory is writable again for the next action.
	if fi, err := os.Stat(filepath.Join(dir, "tools/lib")); err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("tools/lib: %v %v", fi.Mode(), err)
	}
	if err := CleanWorkspace(filepath.Join(dir, "gone"), plan); err == nil {
		t.Fatal("cleaning a missing workspace succeeded")
	}
}

// Close waits for the history writes that served actions started and
// returns their error; none happens after it.
func TestCloseWaitsForHistoryAndReportsItsError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "prewarm.json")
	w := newWorkers(t, Options{HistoryPath: path})
	a := workerAction([]string{"tools/javac", "@args.txt"}, "persistentWorkerKey", "k")
	w.saveMu.Lock() // the first background write waits here, then fails: sub/ is missing
	w.Served(w.Plan(a), time.Millisecond)
	w.saveMu.Unlock()
	w.saves.Wait()
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := w.Close()
	if err == nil || !strings.Contains(err.Error(), "persistent worker history") {
		t.Fatalf("Close = %v, want the failed background write", err)
	}
	if data, err := os.ReadFile(path); err != nil || !strings.Contains(string(data), `"client_key": "k"`) {
		t.Fatalf("Close did not save the history: %v %s", err, data)
	}

	// A write started just before Close is finished by the time it returns.
	path2 := filepath.Join(dir, "second.json")
	w2 := newWorkers(t, Options{HistoryPath: path2})
	w2.Served(w2.Plan(a), time.Millisecond)
	if err := w2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path2); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if _, err := os.Stat(path2); err == nil {
		t.Fatal("the history was written after Close returned")
	}
	// Served after Close starts no write (a new key would start one).
	other := workerAction([]string{"tools/javac", "@args.txt"}, "persistentWorkerKey", "k2")
	w2.Served(w2.Plan(other), time.Millisecond)
	w2.saves.Wait()
	if _, err := os.Stat(path2); err == nil {
		t.Fatal("Served after Close wrote the history")
	}
}

// CleanWorkspaceKeeping keeps the given inputs (and their directories) on
// top of the tools, and removes everything else as CleanWorkspace does.
func TestCleanWorkspaceKeeping(t *testing.T) {
	w := newWorkers(t, Options{})
	plan := w.Plan(workerAction([]string{"tools/javac", "@args.txt"}, "persistentWorkerKey", "k"))
	dir := t.TempDir()
	for _, f := range []string{"tools/javac", "args.txt", "src/a/x.java", "src/a/stray", "src/out.class", "gone/y.java"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.CleanWorkspaceKeeping(dir, plan, map[string]bool{"args.txt": true, "src/a/x.java": true}); err != nil {
		t.Fatal(err)
	}
	var left []string
	filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			left = append(left, filepath.ToSlash(rel))
		}
		return err
	})
	sort.Strings(left)
	want := []string{"args.txt", "src", "src/a", "src/a/x.java", "tools", "tools/javac"}
	if !slices.Equal(left, want) {
		t.Fatalf("left %q, want %q", left, want)
	}
}

// Tools named by the startup arguments (Bazel < 6 marks none) are
// remembered by their ToolSetID: a repeated tool set gets the key a fresh
// derivation gives, and a changed tool a new one, memo or not.
func TestPlanRemembersUnmarkedToolSets(t *testing.T) {
	action := func(repo, src string) Action {
		a := workerAction([]string{"node", "external/npm/main.js", "@args.txt"}, "persistentWorkerKey", "k")
		a.Tree = &inputtree.Tree{
			Dirs: []inputtree.Dir{{Path: ""}, {Path: "external"}, {Path: "external/npm", Digest: d(repo)}},
			Files: []inputtree.File{
				{Path: "args.txt", Digest: d(src)},
				{Path: "external/npm/lib.js", Digest: d("lib " + repo)},
				{Path: "external/npm/main.js", Digest: d("main " + repo)},
			},
		}
		return a
	}
	w := newWorkers(t, Options{})
	first := w.Plan(action("npm v1", "a"))
	again := w.Plan(action("npm v1", "b")) // remembered
	fresh := newWorkers(t, Options{}).Plan(action("npm v1", "b"))
	if first.Spec.Key != again.Spec.Key || again.Spec.Key != fresh.Spec.Key {
		t.Fatalf("keys of one tool set: %s, remembered %s, fresh %s", first.Spec.Key, again.Spec.Key, fresh.Spec.Key)
	}
	if !again.IsTool("external/npm/lib.js") || again.IsTool("args.txt") || len(again.Spec.Tools) != 2 {
		t.Fatalf("remembered tools %+v", again.Spec.Tools)
	}
	if changed := w.Plan(action("npm v2", "b")); changed.Spec.Key == first.Spec.Key {
		t.Fatal("a changed tool repository kept the remembered pool key")
	}
}
