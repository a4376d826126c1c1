package runner

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeFile creates dir/name with body and mode, creating parent directories.
func writeFile(t *testing.T, dir, name, body string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), mode); err != nil {
		t.Fatal(err)
	}
	// WriteFile applies the umask; tests need the exact mode.
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestResolveExecutable(t *testing.T) {
	root := t.TempDir()
	work := filepath.Join(root, "work")
	bin := filepath.Join(root, "bin")
	other := filepath.Join(root, "other")
	const script = "#!/bin/sh\necho hi\n"
	toolInBin := writeFile(t, bin, "tool", script, 0o755)
	writeFile(t, bin, "plain", script, 0o644)
	laterExec := writeFile(t, other, "plain", script, 0o755)
	writeFile(t, bin, "onlyplain", script, 0o644)
	if err := os.MkdirAll(filepath.Join(bin, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	inWork := writeFile(t, work, "sub/local.sh", script, 0o755)
	relTool := writeFile(t, work, "tools/reltool", script, 0o755)
	dotTool := writeFile(t, work, "dottool", script, 0o755)
	writeFile(t, work, "afile", "x", 0o644)
	link := filepath.Join(bin, "linked")
	if err := os.Symlink(toolInBin, link); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		args0   string
		env     []string
		dir     string
		want    string
		wantErr error
		errHas  string
	}{
		{"absolute path", toolInBin, nil, work, toolInBin, nil, ""},
		{"relative with slash is under dir", "sub/local.sh", []string{"PATH=" + bin}, work, inWork, nil, ""},
		{"dot slash", "./sub/local.sh", nil, work, inWork, nil, ""},
		{"bare name on Command PATH", "tool", []string{"A=1", "PATH=" + bin}, work, toolInBin, nil, ""},
		{"last PATH wins", "tool", []string{"PATH=" + other, "PATH=" + bin}, work, toolInBin, nil, ""},
		{"relative PATH entry is under dir", "reltool", []string{"PATH=" + bin + ":tools"}, work, relTool, nil, ""},
		{"empty PATH entry means dir", "dottool", []string{"PATH=" + bin + "::" + other}, work, dotTool, nil, ""},
		{"symlink kept unresolved", "linked", []string{"PATH=" + bin}, work, link, nil, ""},
		{"non-executable skipped for a later match", "plain", []string{"PATH=" + bin + ":" + other}, work, laterExec, nil, ""},
		{"only non-executable", "onlyplain", []string{"PATH=" + bin}, work, "", ErrNotExecutable, "onlyplain"},
		{"directory on PATH", "adir", []string{"PATH=" + bin}, work, "", ErrNotExecutable, "not a regular file"},
		{"missing bare name", "nosuchtool", []string{"PATH=" + bin + ":" + other}, work, "", ErrCommandNotFound, `"nosuchtool" is not on the Command's PATH`},
		{"missing relative path", "sub/missing.sh", nil, work, "", ErrCommandNotFound, "sub/missing.sh"},
		{"path through a file", "afile/x", nil, work, "", ErrCommandNotFound, "afile/x"},
		{"non-executable by path", "afile", []string{"PATH=" + work}, work, "", ErrNotExecutable, "no execute permission"},
		{"empty PATH value searches dir only", "dottool", []string{"PATH="}, work, dotTool, nil, ""},
		{"no PATH uses DefaultPath", "sh", []string{"HOME=/nonexistent"}, work, "", nil, ""},
		{"empty args0", "", nil, work, "", ErrInvalidRequest, "empty"},
		{"NUL in args0", "a\x00b", nil, work, "", ErrInvalidRequest, "NUL"},
		{"relative dir", "tool", []string{"PATH=" + bin}, "work", "", ErrInvalidRequest, `"work" is not absolute`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ResolveExecutable(tc.args0, tc.env, tc.dir)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("err = %v, want %v", err, tc.wantErr)
				}
				if !strings.Contains(err.Error(), tc.errHas) {
					t.Errorf("err %q does not mention %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatalf("unexpected error: %v", err)
			}
			if tc.want == "" { // DefaultPath case: any sh from DefaultPath.
				if filepath.Base(got) != "sh" || !strings.Contains(DefaultPath, filepath.Dir(got)) {
					t.Errorf("got %q, want sh from %q", got, DefaultPath)
				}
				return
			}
			if got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// The worker's own PATH must never be searched: only the Command's.
func TestResolveIgnoresWorkerPath(t *testing.T) {
	bin := t.TempDir()
	writeFile(t, bin, "workeronly", "#!/bin/sh\n", 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	for _, env := range [][]string{nil, {"PATH=/nonexistent"}} {
		if _, err := ResolveExecutable("workeronly", env, t.TempDir()); !errors.Is(err, ErrCommandNotFound) {
			t.Errorf("env %q: err = %v, want ErrCommandNotFound", env, err)
		}
	}
}
