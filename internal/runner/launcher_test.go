package runner

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestOneLauncher keeps the runner the only starter of child processes: no
// other package of the product (internal/, cmd/) imports os/exec, and the
// libraries that configuration feeds do not import the configuration
// package (the executor's assembly maps it to their own options).
func TestOneLauncher(t *testing.T) {
	forbidden := map[string][]string{
		"":                    {"os/exec"}, // every package but this one
		"internal/workerpool": {"github.com/hearth-build/hearth/internal/config"},
		"internal/builder":    {"github.com/hearth-build/hearth/internal/config"},
		"internal/sandbox":    {"github.com/hearth-build/hearth/internal/config"},
	}
	root := filepath.Join("..", "..")
	checked := 0
	for _, top := range []string{"internal", "cmd"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return nil
			}
			rel, _ := filepath.Rel(root, path)
			pkg := filepath.ToSlash(filepath.Dir(rel))
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
			if err != nil {
				return err
			}
			checked++
			for _, imp := range f.Imports {
				name, _ := strconv.Unquote(imp.Path.Value)
				// Test-support packages (internal/*test, such as redistest,
				// which starts a real redis-server) may start processes:
				// the product never imports them.
				if strings.HasSuffix(name, "test") && strings.HasPrefix(name, "github.com/hearth-build/hearth/internal/") {
					t.Errorf("%s imports the test-support package %s: only tests may", rel, name)
				}
				for _, bad := range forbidden[""] {
					if name == bad && pkg != "internal/runner" && !isTestSupport(pkg) {
						t.Errorf("%s imports %s: start child processes through internal/runner", rel, name)
					}
				}
				for prefix, bads := range forbidden {
					if prefix == "" || (pkg != prefix && !strings.HasPrefix(pkg, prefix+"/")) {
						continue
					}
					for _, bad := range bads {
						if name == bad {
							t.Errorf("%s imports %s: libraries take their own options; the executor's assembly maps the configuration", rel, name)
						}
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if checked < 50 {
		t.Fatalf("checked only %d files: is the source tree where the test expects it?", checked)
	}
}

// isTestSupport reports whether pkg is a package that only tests import.
func isTestSupport(pkg string) bool {
	return strings.HasPrefix(pkg, "internal/") && strings.HasSuffix(pkg, "test")
}
