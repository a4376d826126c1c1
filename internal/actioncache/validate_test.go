package actioncache

import (
	"errors"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/hearth-build/hearth/internal/digest"
)

func TestValidate(t *testing.T) {
	fn := digest.SHA256
	d := digest.Compute(fn, []byte("x")).Proto()
	bad := &repb.Digest{Hash: "x", SizeBytes: 1}
	for _, tc := range []struct {
		name    string
		result  *repb.ActionResult
		wantErr error  // nil: valid
		names   string // the error must mention this
	}{
		{"empty", &repb.ActionResult{}, nil, ""},
		{"typical", &repb.ActionResult{
			OutputFiles:       []*repb.OutputFile{{Path: "bazel-out/k8/bin/a.o", Digest: d}},
			OutputDirectories: []*repb.OutputDirectory{{Path: "bazel-out/k8/bin/dir", TreeDigest: d}, {Path: "", RootDirectoryDigest: d}},
			OutputSymlinks:    []*repb.OutputSymlink{{Path: "l", Target: "../../x"}},
			StdoutDigest:      d,
		}, nil, ""},
		{"relative path with dots", &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "../out/./f", Digest: d}}}, nil, ""},
		{"nil", nil, ErrInvalid, "missing"},
		{"bad file digest", &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "f", Digest: bad}}}, digest.ErrInvalid, "output_files[0]"},
		{"empty file path", &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Digest: d}}}, ErrInvalid, "output_files[0]"},
		{"absolute file path", &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "/f", Digest: d}}}, ErrInvalid, `"/f"`},
		{"NUL in path", &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "a\x00b", Digest: d}}}, ErrInvalid, "NUL"},
		{"duplicate files", &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "f", Digest: d}, {Path: "f", Digest: d}}}, ErrInvalid, "output_files[1]"},
		{"directory without digest", &repb.ActionResult{OutputDirectories: []*repb.OutputDirectory{{Path: "d"}}}, ErrInvalid, "output_directories[0]"},
		{"bad tree digest", &repb.ActionResult{OutputDirectories: []*repb.OutputDirectory{{Path: "d", TreeDigest: bad}}}, digest.ErrInvalid, "tree_digest"},
		{"duplicate directories", &repb.ActionResult{OutputDirectories: []*repb.OutputDirectory{{Path: "d", TreeDigest: d}, {Path: "d", TreeDigest: d}}}, ErrInvalid, "output_directories[1]"},
		{"empty symlink target", &repb.ActionResult{OutputSymlinks: []*repb.OutputSymlink{{Path: "l"}}}, ErrInvalid, "output_symlinks[0]"},
		//lint:ignore SA1019 the deprecated field is what this case checks.
		{"bad deprecated symlink", &repb.ActionResult{OutputDirectorySymlinks: []*repb.OutputSymlink{{Path: "l/", Target: "t"}}}, ErrInvalid, "output_directory_symlinks[0]"},
		{"bad stderr digest", &repb.ActionResult{StderrDigest: bad}, digest.ErrInvalid, "stderr_digest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Validate(fn, tc.result)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Validate = %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.names) {
				t.Errorf("error %q does not mention %s", err, tc.names)
			}
		})
	}
}
