package outputs

import (
	"context"
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/fsutil"
)

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cmd  *repb.Command
		ok   bool
	}{
		{"nil command", nil, false},
		{"parent escape", &repb.Command{OutputPaths: []string{"../x"}}, false},
		{"absolute", &repb.Command{OutputPaths: []string{"/etc/passwd"}}, false},
		{"escape after descent", &repb.Command{OutputPaths: []string{"a/../../x"}}, false},
		{"inner dotdot", &repb.Command{OutputPaths: []string{"a/../b"}}, false},
		{"double slash", &repb.Command{OutputPaths: []string{"a//b"}}, false},
		{"trailing slash", &repb.Command{OutputPaths: []string{"a/"}}, false},
		{"dot segment", &repb.Command{OutputPaths: []string{"./a"}}, false},
		{"trailing dot", &repb.Command{OutputPaths: []string{"a/."}}, false},
		{"NUL", &repb.Command{OutputPaths: []string{"a\x00b"}}, false},
		{"duplicate path", &repb.Command{OutputPaths: []string{"a", "a"}}, false},
		{"empty output file", &repb.Command{OutputFiles: []string{""}}, false},
		{"legacy escape", &repb.Command{OutputFiles: []string{"../x"}}, false},
		{"legacy absolute dir", &repb.Command{OutputDirectories: []string{"/abs"}}, false},
		{"file and directory", &repb.Command{OutputFiles: []string{"a"}, OutputDirectories: []string{"a"}}, false},
		{"working directory escape", &repb.Command{WorkingDirectory: "../up", OutputPaths: []string{"a"}}, false},
		{"working directory absolute", &repb.Command{WorkingDirectory: "/abs", OutputPaths: []string{"a"}}, false},
		{"working directory escape after descent", &repb.Command{WorkingDirectory: "a/../..", OutputPaths: []string{"a"}}, false},
		{"unknown node property", &repb.Command{OutputNodeProperties: []string{"owner"}}, false},
		{"output file parent of output file", &repb.Command{OutputFiles: []string{"a", "a/b"}}, false},
		{"output file parent of output directory", &repb.Command{OutputFiles: []string{"a"}, OutputDirectories: []string{"a/d"}}, false},

		{"empty command", &repb.Command{}, true},
		{"whole working directory", &repb.Command{OutputPaths: []string{""}}, true},
		{"legacy whole working directory", &repb.Command{OutputDirectories: []string{""}}, true},
		{"dots in names", &repb.Command{OutputPaths: []string{"..foo", "a/...", "b/.hidden"}}, true},
		{"odd characters", &repb.Command{OutputPaths: []string{"a b/c\\d:e.txt"}}, true},
		{"nested output directories", &repb.Command{OutputDirectories: []string{"a", "a/b"}}, true},
		{"output file inside an output directory", &repb.Command{OutputFiles: []string{"a/f"}, OutputDirectories: []string{"a"}}, true},
		{"sibling prefixes", &repb.Command{OutputFiles: []string{"a", "ab/c"}}, true},
		{"legacy ignored under output_paths", &repb.Command{OutputPaths: []string{"a"}, OutputFiles: []string{"/bad"}}, true},
		{"known node properties", &repb.Command{OutputNodeProperties: []string{PropertyMtime, PropertyUnixMode}}, true},
		{"working directory", &repb.Command{WorkingDirectory: "a/b", OutputPaths: []string{"c"}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(tc.cmd)
			if tc.ok && err != nil {
				t.Fatalf("Validate: %v, want nil", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate: %v, want ErrInvalid", err)
			}
			if !tc.ok {
				// Collect refuses the same commands before touching disk.
				_, err := Collect(context.Background(), newStore(t), digest.SHA256, t.TempDir(), tc.cmd)
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("Collect: %v, want ErrInvalid", err)
				}
			}
		})
	}
}

// withBothResolvers runs f with openat2 and with the component-by-component
// fallback used on kernels without it.
func withBothResolvers(t *testing.T, f func(t *testing.T)) {
	t.Run("openat2", f)
	t.Run("walk", func(t *testing.T) {
		was := noOpenat2.Load()
		noOpenat2.Store(true)
		defer noOpenat2.Store(was)
		f(t)
	})
}

func TestCollectNeverFollowsSymlinks(t *testing.T) {
	const secret = "SECRET outside the input root"
	outside := t.TempDir()
	layout(t, outside, map[string]string{"passwd": secret, "sub/passwd": secret})
	secretDigest := digest.Compute(digest.SHA256, []byte(secret))

	root := t.TempDir()
	layout(t, root, map[string]string{
		"realdir/f":      "inside",
		"out":            "->" + outside,
		"etc":            "->/etc",
		"rel":            "->../" + filepath.Base(outside),
		"in":             "->realdir",
		"wdlink":         "->" + outside,
		"dir/escape":     "->" + outside + "/passwd",
		"dir/escape-dir": "->" + outside,
		"reldir/up":      "->../../" + filepath.Base(outside) + "/passwd",
	})

	withBothResolvers(t, func(t *testing.T) {
		for _, tc := range []struct {
			name string
			cmd  *repb.Command
		}{
			{"parent links outside", &repb.Command{OutputPaths: []string{"out/passwd"}}},
			{"parent links outside, deeper", &repb.Command{OutputPaths: []string{"out/sub/passwd"}}},
			{"parent links to /etc", &repb.Command{OutputPaths: []string{"etc/passwd"}}},
			{"parent links outside relatively", &repb.Command{OutputPaths: []string{"rel/passwd"}}},
			{"parent links inside the root", &repb.Command{OutputPaths: []string{"in/f"}}},
			{"working directory links outside", &repb.Command{WorkingDirectory: "wdlink", OutputPaths: []string{"passwd"}}},
			{"legacy file under linked parent", &repb.Command{OutputFiles: []string{"out/passwd"}}},
			{"legacy directory under linked parent", &repb.Command{OutputDirectories: []string{"out/sub"}}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				store := newStore(t)
				res, err := Collect(context.Background(), store, digest.SHA256, root, tc.cmd)
				if !errors.Is(err, ErrUnexpectedType) {
					t.Fatalf("got %v, %v; want ErrUnexpectedType", res, err)
				}
				if store.creates.Load() != 0 {
					t.Errorf("%d blobs written", store.creates.Load())
				}
			})
		}

		t.Run("absolute symlink outputs fail the action, unfollowed", func(t *testing.T) {
			for _, p := range []string{"etc", "out", "dir"} {
				store := newStore(t)
				_, err := Collect(context.Background(), store, digest.SHA256, root, &repb.Command{OutputPaths: []string{p}})
				if !errors.Is(err, ErrAbsoluteSymlink) {
					t.Errorf("output %q: err = %v, want ErrAbsoluteSymlink", p, err)
				}
				if store.creates.Load() != 0 {
					t.Errorf("output %q: %d blobs written", p, store.creates.Load())
				}
			}
		})

		t.Run("outputs that are symlinks are reported, not followed", func(t *testing.T) {
			store := newStore(t)
			cmd := &repb.Command{OutputPaths: []string{"rel", "reldir"}}
			res, err := Collect(context.Background(), store, digest.SHA256, root, cmd)
			if err != nil {
				t.Fatal(err)
			}
			targets := map[string]string{}
			for _, s := range res.GetOutputSymlinks() {
				targets[s.GetPath()] = s.GetTarget()
			}
			want := map[string]string{"rel": "../" + filepath.Base(outside)}
			for p, tg := range want {
				if targets[p] != tg {
					t.Errorf("symlink %q: target %q, want %q", p, targets[p], tg)
				}
			}
			if len(res.GetOutputFiles()) != 0 || len(res.GetOutputDirectories()) != 1 {
				t.Errorf("got %v", res)
			}
			tree := getTree(t, store, res.GetOutputDirectories()[0].GetTreeDigest(), digest.SHA256)
			if n := len(tree.GetRoot().GetSymlinks()); n != 1 || len(tree.GetChildren()) != 0 || len(tree.GetRoot().GetFiles()) != 0 {
				t.Errorf("reldir: want one symlink only, got %v", tree)
			}
			missing, err := store.FindMissing(context.Background(), []digest.Digest{secretDigest})
			if err != nil || len(missing) != 1 {
				t.Errorf("the secret outside the root was uploaded (missing=%v, err=%v)", missing, err)
			}
		})
	})
}

func TestCreateParents(t *testing.T) {
	t.Run("mkdir", func(t *testing.T) { testCreateParents(t, nil) })
	t.Run("spare directories", func(t *testing.T) {
		dir := t.TempDir()
		spares := fsutil.NewSpareDirs(dir, 8)
		defer spares.Close()
		// The spares are made in the background: wait for them, and
		// remember their inodes to tell that they were used.
		inodes := map[uint64]bool{}
		for deadline := time.Now().Add(10 * time.Second); len(inodes) < 8; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%d spare directories after 10 s, want 8", len(inodes))
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if info, err := e.Info(); err == nil {
					inodes[info.Sys().(*syscall.Stat_t).Ino] = true
				}
			}
		}
		root := testCreateParents(t, spares)
		st, err := os.Stat(filepath.Join(root, "wd/a/b"))
		if err != nil || !inodes[st.Sys().(*syscall.Stat_t).Ino] {
			t.Errorf("wd/a/b is not one of the spare directories (%v)", err)
		}
	})
}

func testCreateParents(t *testing.T, spares *fsutil.SpareDirs) (root string) {
	root = t.TempDir()
	outside := t.TempDir()
	layout(t, root, map[string]string{"link": "->" + outside, "file": "f"})
	cmd := &repb.Command{
		WorkingDirectory:  "wd",
		OutputFiles:       []string{"a/b/file.o", "top.o"},
		OutputDirectories: []string{"c/d/outdir"},
	}
	if err := os.Mkdir(filepath.Join(root, "wd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := CreateParentsWith(root, cmd, spares); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"wd/a", "wd/a/b", "wd/c", "wd/c/d"} {
		if st, err := os.Lstat(filepath.Join(root, p)); err != nil || !st.IsDir() || st.Mode().Perm() != 0o755 {
			t.Errorf("%s not created as a 0755 directory: %v, %v", p, st.Mode(), err)
		}
	}
	// Again: everything exists, nothing changes.
	if err := CreateParentsWith(root, cmd, spares); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"wd/c/d/outdir", "wd/a/b/file.o", "wd/top.o"} {
		if _, err := os.Lstat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s exists (%v); only parents must be created", p, err)
		}
	}
	for _, tc := range []struct {
		name string
		cmd  *repb.Command
		want error
	}{
		{"through a symlink", &repb.Command{OutputPaths: []string{"link/x/y"}}, ErrUnexpectedType},
		{"through a file", &repb.Command{OutputPaths: []string{"file/x"}}, ErrUnexpectedType},
		{"escape", &repb.Command{OutputPaths: []string{"../x/y"}}, ErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := CreateParentsWith(root, tc.cmd, spares); !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if entries, _ := os.ReadDir(outside); len(entries) != 0 {
				t.Fatalf("created %v outside the root", entries)
			}
		})
	}
	return root
}

// FuzzValidate checks that every output path Validate accepts names
// something beneath the input root: after joining it to the working
// directory it is relative, canonical and free of "..".
func FuzzValidate(f *testing.F) {
	for _, seed := range [][2]string{{"", "a"}, {"wd", "../x"}, {"a/b", "c//d"}, {"", "/etc/passwd"}, {"x", ""}, {"..", "a"}} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, wd, p string) {
		outs, _, err := plan(&repb.Command{WorkingDirectory: wd, OutputPaths: []string{p}})
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		rel := outs[0].rel
		if rel == "" {
			return
		}
		if clean := path.Clean(rel); clean != rel || path.IsAbs(rel) || clean == ".." || strings.HasPrefix(clean, "../") || strings.ContainsRune(rel, 0) {
			t.Fatalf("accepted wd %q path %q, giving %q which may leave the root", wd, p, rel)
		}
	})
}
