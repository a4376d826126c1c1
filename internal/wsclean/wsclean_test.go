package wsclean

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// workspace makes a worker workspace: tool files (kept) in a few
// directories, plus a request's inputs and outputs (not kept).
func workspace(t *testing.T) (string, Keep) {
	t.Helper()
	root := t.TempDir()
	tools := []string{"tools/node", "ext/nm/ts/lib/ts.js", "ext/nm/ts/lib/lib.d.ts", "ext/nm/ts/package.json", "ext/nm/tsc/main.js"}
	for _, p := range append(tools, "src/a.ts", "bazel-out/bin/a.js") {
		write(t, root, p)
	}
	keepFiles := map[string]bool{}
	keepDirs := map[string]bool{}
	for _, p := range tools {
		keepFiles[p] = true
		for d := filepath.Dir(p); d != "."; d = filepath.Dir(d) {
			keepDirs[d] = true
		}
	}
	return root, Keep{File: func(rel string) bool { return keepFiles[rel] }, Dir: func(rel string) bool { return keepDirs[rel] }, Skip: "_sandboxes"}
}

func write(t *testing.T, root, rel string) {
	t.Helper()
	p := filepath.Join(root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(rel), 0o644); err != nil {
		t.Fatal(err)
	}
}

// contents lists every path below root.
func contents(t *testing.T, root string) string {
	t.Helper()
	var out []string
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err == nil && p != root {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	return strings.Join(out, " ")
}

func clean(t *testing.T, x *Index, root string, keep Keep) Stats {
	t.Helper()
	st, err := x.Clean(root, keep, func(p string) error {
		os.Chmod(filepath.Dir(p), 0o755)
		return os.RemoveAll(p)
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

const wantKept = "ext ext/nm ext/nm/ts ext/nm/ts/lib ext/nm/ts/lib/lib.d.ts ext/nm/ts/lib/ts.js ext/nm/ts/package.json ext/nm/tsc ext/nm/tsc/main.js tools tools/node"

func TestCleanKeepsOnlyToolsAndTrustsUnchangedDirectories(t *testing.T) {
	root, keep := workspace(t)
	var x Index
	if st := clean(t, &x, root, keep); st.Trusted != 0 || st.Removed != 2 {
		t.Errorf("first clean: %+v, want nothing trusted and src, bazel-out removed", st)
	}
	if got := contents(t, root); got != wantKept {
		t.Fatalf("after clean: %s\nwant %s", got, wantKept)
	}
	time.Sleep(2 * settle)
	clean(t, &x, root, keep) // records the now settled directories
	st := clean(t, &x, root, keep)
	if st.Listed != 1 || st.Trusted != 6 {
		t.Errorf("clean of an unchanged workspace: %+v, want only the root listed and the 6 tool directories trusted", st)
	}

	// Whatever a worker does to a trusted directory shows, even right after
	// it was recorded.
	for name, change := range map[string]func(){
		"new file":      func() { write(t, root, "ext/nm/ts/lib/cache.bin") },
		"new directory": func() { write(t, root, "ext/nm/tsc/tmp/x") },
		"removed and put back": func() {
			os.Remove(filepath.Join(root, "ext/nm/ts/package.json"))
			write(t, root, "ext/nm/ts/package.json")
			write(t, root, "ext/nm/ts/stray")
		},
		"symlink for a directory": func() {
			os.Chmod(filepath.Join(root, "ext/nm"), 0o755)
			os.RemoveAll(filepath.Join(root, "ext/nm/tsc"))
			os.Symlink(t.TempDir(), filepath.Join(root, "ext/nm/tsc"))
		},
	} {
		clean(t, &x, root, keep)
		change()
		clean(t, &x, root, keep)
		got := contents(t, root)
		if strings.Contains(got, "stray") || strings.Contains(got, "cache.bin") || strings.Contains(got, "tmp") {
			t.Errorf("%s: left behind: %s", name, got)
		}
		if name == "symlink for a directory" {
			if fi, err := os.Lstat(filepath.Join(root, "ext/nm/tsc")); err == nil {
				t.Errorf("%s: %s still there (%v)", name, "ext/nm/tsc", fi.Mode())
			}
			write(t, root, "ext/nm/tsc/main.js")
		}
	}

	// A read-only tool directory is made writable again.
	time.Sleep(2 * settle)
	clean(t, &x, root, keep)
	os.Chmod(filepath.Join(root, "ext/nm/ts/lib"), 0o500)
	clean(t, &x, root, keep)
	if fi, _ := os.Stat(filepath.Join(root, "ext/nm/ts/lib")); fi.Mode().Perm() != 0o755 {
		t.Errorf("mode of a kept directory = %v, want 0755", fi.Mode().Perm())
	}

	// The skipped directory is left alone; Forget drops the records.
	write(t, root, "_sandboxes/1/x")
	clean(t, &x, root, keep)
	if _, err := os.Stat(filepath.Join(root, "_sandboxes/1/x")); err != nil {
		t.Errorf("skipped directory touched: %v", err)
	}
	x.Forget(root)
	if st := clean(t, &x, root, keep); st.Trusted != 0 {
		t.Errorf("after Forget: %+v, want nothing trusted", st)
	}

	if _, err := x.Clean(filepath.Join(root, "gone"), keep, os.RemoveAll); err == nil {
		t.Error("cleaning a missing workspace succeeded")
	}
}
