package workeraction

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/inputtree"
)

func props(kv ...string) []*repb.Platform_Property {
	var out []*repb.Platform_Property
	for i := 0; i < len(kv); i += 2 {
		out = append(out, &repb.Platform_Property{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

func TestParseHints(t *testing.T) {
	tests := []struct {
		name    string
		props   []*repb.Platform_Property
		want    Hints
		wantErr bool
	}{
		{"none", nil, Hints{Protocol: "proto"}, false},
		{"bazel 6 key", props("persistentWorkerKey", "abc"), Hints{OptIn: true, ClientKey: "abc", Protocol: "proto"}, false},
		{"buck2 key", props("persistentWorkerKey", "ab12:345"), Hints{OptIn: true, ClientKey: "ab12:345", Protocol: "proto"}, false},
		{"exec_properties opt-in", props("supports-workers", "1"), Hints{OptIn: true, Protocol: "proto"}, false},
		{"opt-in false", props("supports-workers", "0"), Hints{Protocol: "proto"}, false},
		{"json via newer bazel", props("persistentWorkerKey", "k", "persistentWorkerProtocol", "JSON"), Hints{OptIn: true, ClientKey: "k", Protocol: "json"}, false},
		{"json via requirement", props("supports-workers", "1", "requires-worker-protocol", "json"), Hints{OptIn: true, Protocol: "json"}, false},
		{"multiplex sandboxed cancellable", props("supports-workers", "1", "supports-multiplex-workers", "1", "supports-multiplex-sandboxing", "1", "supports-worker-cancellation", "1"),
			Hints{OptIn: true, Protocol: "proto", Multiplex: true, Sandboxing: true, Cancellable: true}, false},
		{"sandboxing needs multiplex", props("supports-workers", "1", "supports-multiplex-sandboxing", "1"), Hints{OptIn: true, Protocol: "proto"}, false},
		{"unknown protocol", props("supports-workers", "1", "requires-worker-protocol", "xml"), Hints{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHints(tt.props)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err == nil && got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSplitArgs(t *testing.T) {
	tests := []struct {
		args, startup, request []string
	}{
		{[]string{"javac", "@args"}, []string{"javac"}, []string{"@args"}},
		{[]string{"tool", "--flag", "@a", "-x", "--flagfile=b", "-flagfile=c", "@@d"}, []string{"tool", "--flag", "-x"}, []string{"@a", "--flagfile=b", "-flagfile=c", "@@d"}},
		{[]string{"tool", "plain"}, []string{"tool", "plain"}, nil},
		{[]string{"@"}, []string{"@"}, nil}, // "@" alone names no file
		{[]string{"tool", "--flagfile="}, []string{"tool", "--flagfile="}, nil},
		// Bazel's FLAG_FILE_PATTERN: an external label is split off like a
		// flag file (ExpandArgs then passes it through unread).
		{[]string{"tool", "@repo//pkg:x", "@args"}, []string{"tool"}, []string{"@repo//pkg:x", "@args"}},
		{[]string{"tool", "@@repo//pkg:x"}, []string{"tool"}, []string{"@@repo//pkg:x"}},
		{[]string{"tool", "---flagfile=x", "--flagfile"}, []string{"tool", "---flagfile=x", "--flagfile"}, nil},
		// Java's matches() covers the whole argument, and its "." stops at
		// every line terminator.
		{[]string{"tool", "@a\nb", "@a\r", "--flagfile=a\u2028", "-flagfile=x\u0085", "@\n"},
			[]string{"tool", "@a\nb", "@a\r", "--flagfile=a\u2028", "-flagfile=x\u0085", "@\n"}, nil},
		{[]string{"tool", "@a\tb", "@ü"}, []string{"tool"}, []string{"@a\tb", "@ü"}},
	}
	for _, tt := range tests {
		s, r := SplitArgs(tt.args)
		if !slices.Equal(s, tt.startup) || !slices.Equal(r, tt.request) {
			t.Errorf("SplitArgs(%q) = %q, %q; want %q, %q", tt.args, s, r, tt.startup, tt.request)
		}
	}
}

func TestExpandArgs(t *testing.T) {
	dir := t.TempDir()
	outside := t.TempDir()
	write := func(dir, name, content string) {
		t.Helper()
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(dir, "args", "-d\nout dir\n@nested\n@@literal\n--flagfile=kept\n")
	write(dir, "sub/nested", "a.java\r\nb.java")
	os.Rename(filepath.Join(dir, "sub/nested"), filepath.Join(dir, "nested"))
	write(dir, "empty", "")
	write(dir, "self", "@self\n")
	write(outside, "secret", "leaked\n")
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}

	got, err := ExpandArgs(dir, []string{"@args", "@empty", "--flagfile=other", "@@x"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"-d", "out dir", "a.java", "b.java", "@@literal", "--flagfile=kept", "--flagfile=other", "@@x"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	// Bazel's expandArgument: an external label is an argument, never a
	// file to read, at any depth; "\r", "\n" and "\r\n" all end a line.
	write(dir, "labels", "@rules_go//go:def\r@@x//y\r\n@//:local\n\n@nested\n")
	got, err = ExpandArgs(dir, []string{"@repo//pkg:x", "@labels", "@repo//missing"})
	if err != nil {
		t.Fatalf("external labels: %v", err)
	}
	want = []string{"@repo//pkg:x", "@rules_go//go:def", "@@x//y", "@//:local", "", "a.java", "b.java", "@repo//missing"}
	if !slices.Equal(got, want) {
		t.Fatalf("external labels: got %q\nwant %q", got, want)
	}
	for _, bad := range []string{"@missing", "@pkg/x", "@a\n//b", "@self", "@../" + filepath.Base(outside) + "/secret", "@escape", "@" + filepath.Join(outside, "secret")} {
		if _, err := ExpandArgs(dir, []string{bad}); !errors.Is(err, ErrFlagFile) {
			t.Errorf("ExpandArgs(%q) err = %v, want ErrFlagFile", bad, err)
		}
	}
}

func TestToolFilesAndPoolKey(t *testing.T) {
	d := func(s string) digest.Digest { return digest.Compute(digest.SHA256, []byte(s)) }
	tree := &inputtree.Tree{Files: []inputtree.File{
		{Path: "tools/javac", Digest: d("javac v1"), Executable: true},
		{Path: "tools/lib.jar", Digest: d("lib")},
		{Path: "src/A.java", Digest: d("A")},
	}}
	named := ToolFiles(tree, []string{"tools/javac", "--classpath=tools/lib.jar", "-v"}, "")
	if len(named) != 2 || named[0].Path != "tools/javac" || named[1].Path != "tools/lib.jar" {
		t.Fatalf("tools named by argv = %+v", named)
	}
	// A named tool in an external repository brings that repository's other
	// inputs (its runtime), not those of other repositories or the main one.
	ext := &inputtree.Tree{Files: []inputtree.File{
		{Path: "external/npm/node_modules/typescript/lib/typescript.js", Digest: d("ts")},
		{Path: "external/npm/node_modules/tsc_wrapped/main.js", Digest: d("main")},
		{Path: "external/npmother/x.js", Digest: d("x")},
		{Path: "external/other/y.js", Digest: d("y")},
		{Path: "external/npm", Digest: d("file named like the repository")},
		{Path: "src/a.ts", Digest: d("a")},
	}}
	got := ToolFiles(ext, []string{"/usr/bin/node", "external/npm/node_modules/tsc_wrapped/main.js"}, "")
	var paths []string
	for _, f := range got {
		paths = append(paths, f.Path)
	}
	if want := []string{"external/npm/node_modules/typescript/lib/typescript.js", "external/npm/node_modules/tsc_wrapped/main.js"}; !slices.Equal(paths, want) {
		t.Fatalf("tools of a named external-repository entry point = %q, want %q", paths, want)
	}
	if got := ToolFiles(ext, []string{"node", "src/a.ts"}, ""); len(got) != 1 || got[0].Path != "src/a.ts" {
		t.Fatalf("a named main-repository file brought others: %+v", got)
	}

	tree.Files[1].ToolInput = true
	if marked := ToolFiles(tree, []string{"tools/javac"}, ""); len(marked) != 1 || marked[0].Path != "tools/lib.jar" {
		t.Fatalf("marked tools = %+v", marked)
	}

	base := KeyInput{Instance: "i", ClientKey: "k", Startup: []string{"tools/javac"}, Env: []string{"A=1", "B=2"}, Protocol: "proto", Tools: named}
	key := PoolKey(base)
	same := base
	same.Env = []string{"B=2", "A=1"}
	if PoolKey(same) != key {
		t.Error("environment order changed the key")
	}
	variants := map[string]func(*KeyInput){
		"instance":   func(k *KeyInput) { k.Instance = "other" },
		"client key": func(k *KeyInput) { k.ClientKey = "k2" },
		"startup":    func(k *KeyInput) { k.Startup = []string{"tools/javac", "-J-Xmx1g"} },
		"env":        func(k *KeyInput) { k.Env = []string{"A=1"} },
		"protocol":   func(k *KeyInput) { k.Protocol = "json" },
		"multiplex":  func(k *KeyInput) { k.Multiplex = true },
		"workdir":    func(k *KeyInput) { k.WorkingDir = "pkg" },
		"tool changed": func(k *KeyInput) {
			k.Tools = []inputtree.File{{Path: "tools/javac", Digest: d("javac v2"), Executable: true}, named[1]}
		},
		"field boundaries": func(k *KeyInput) { k.Startup = []string{"tools/", "javac"} },
	}
	for name, mutate := range variants {
		k := base
		mutate(&k)
		if PoolKey(k) == key {
			t.Errorf("%s did not change the pool key", name)
		}
	}

	// Keys outlive a process (the prewarm history): the encoding is fixed.
	golden := KeyInput{Instance: "i", ClientKey: "k", Startup: []string{"tools/javac", "-v"}, Env: []string{"B=2", "A=1"}, WorkingDir: "w", Protocol: "proto",
		Multiplex: true, Cancellable: true, Tools: []inputtree.File{{Path: "tools/lib.jar", Digest: d("lib")}, {Path: "tools/javac", Digest: d("javac"), Executable: true}}}
	if got, want := PoolKey(golden), "a88482b128a1af5f41fbb235a28083862b3e8668daa9d0bfa20161cf09148be3"; got != want {
		t.Errorf("PoolKey = %s, want %s (the key's encoding changed)", got, want)
	}
}

func TestToolSetID(t *testing.T) {
	d := func(s string) digest.Digest { return digest.Compute(digest.SHA256, []byte(s)) }
	startup := []string{"/usr/bin/node", "external/npm/main.js", "tools/run.sh"}
	tree := func(repo, runSh, src string, runExec bool) *inputtree.Tree {
		return &inputtree.Tree{
			Dirs: []inputtree.Dir{{Path: ""}, {Path: "external"}, {Path: "external/npm", Digest: d(repo)}, {Path: "src"}, {Path: "tools"}},
			Files: []inputtree.File{
				{Path: "external/npm/main.js", Digest: d("main " + repo)},
				{Path: "src/a.ts", Digest: d(src)},
				{Path: "tools/run.sh", Digest: d(runSh), Executable: runExec},
			},
		}
	}
	base := ToolSetID(tree("npm v1", "run v1", "a v1", true), startup, "")
	if base == "" {
		t.Fatal("no ID for tools named by their startup arguments")
	}
	for _, tc := range []struct {
		name string
		tree *inputtree.Tree
		same bool
	}{
		{"another source file", tree("npm v1", "run v1", "a v2", true), true},
		{"another repository tree", tree("npm v2", "run v1", "a v1", true), false},
		{"another named file", tree("npm v1", "run v2", "a v1", true), false},
		{"the named file not executable", tree("npm v1", "run v1", "a v1", false), false},
	} {
		if got := ToolSetID(tc.tree, startup, ""); (got == base) != tc.same || got == "" {
			t.Errorf("%s: ID %q vs %q, want same=%v", tc.name, got, base, tc.same)
		}
	}
	marked := tree("npm v1", "run v1", "a v1", true)
	marked.Files[2].ToolInput = true
	if got := ToolSetID(marked, startup, ""); got != "" {
		t.Errorf("marked tool inputs have an ID %q; they are only known by listing them", got)
	}
	noDirs := tree("npm v1", "run v1", "a v1", true)
	noDirs.Dirs = nil
	if got := ToolSetID(noDirs, startup, ""); got != "" {
		t.Errorf("a repository without its Directory has an ID %q", got)
	}
}
