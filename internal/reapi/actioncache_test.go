package reapi

import (
	"bytes"
	"context"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// completeResult stores the blobs of a result with an output file, an output
// directory (as a Tree), stdout and stderr, and returns it.
func completeResult(t *testing.T, s cas.Store, fn digest.Function) *repb.ActionResult {
	t.Helper()
	ds := putBlobs(t, s, fn, []byte("output file"), []byte("file in tree"), []byte("the stdout"), []byte("the stderr"))
	tree := putProto(t, s, fn, &repb.Tree{
		Root: &repb.Directory{Files: []*repb.FileNode{{Name: "inner", Digest: ds[1].Proto()}}},
	})
	return &repb.ActionResult{
		OutputFiles:       []*repb.OutputFile{{Path: "out/file", Digest: ds[0].Proto(), IsExecutable: true}},
		OutputDirectories: []*repb.OutputDirectory{{Path: "out/dir", TreeDigest: tree.Proto()}},
		OutputSymlinks:    []*repb.OutputSymlink{{Path: "out/link", Target: "file"}},
		ExitCode:          3,
		StdoutDigest:      ds[2].Proto(),
		StderrDigest:      ds[3].Proto(),
	}
}

func TestActionCacheRoundTrip(t *testing.T) {
	for _, fn := range []digest.Function{digest.SHA256, digest.BLAKE3} {
		t.Run(fn.String(), func(t *testing.T) {
			conn, cfg := startServer(t)
			client := repb.NewActionCacheClient(conn)
			ctx := context.Background()
			action := storedAction(t, cfg, fn, "an action")
			get := &repb.GetActionResultRequest{InstanceName: "main", ActionDigest: action, DigestFunction: fn}

			_, err := client.GetActionResult(ctx, get)
			wantCode(t, err, codes.NotFound)

			result := completeResult(t, cfg.CAS, fn)
			stored, err := client.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{
				InstanceName: "main", ActionDigest: action, ActionResult: result, DigestFunction: fn,
			})
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(stored, result) {
				t.Errorf("UpdateActionResult returned %v, want %v", stored, result)
			}
			got, err := client.GetActionResult(ctx, get)
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got, result) {
				t.Errorf("GetActionResult = %v, want %v", got, result)
			}

			// Instance names are separate namespaces, and so are digest
			// functions (a SHA256 hash may equal a BLAKE3 one).
			for name, req := range map[string]*repb.GetActionResultRequest{
				"other instance":   {InstanceName: "other", ActionDigest: action, DigestFunction: fn},
				"default instance": {ActionDigest: action, DigestFunction: fn},
				"other function":   {InstanceName: "main", ActionDigest: action, DigestFunction: otherFunction(fn)},
			} {
				_, err := client.GetActionResult(ctx, req)
				if codes.Code(status.Code(err)) != codes.NotFound {
					t.Errorf("%s: got %v, want NOT_FOUND", name, err)
				}
			}
		})
	}
}

func otherFunction(fn digest.Function) digest.Function {
	if fn == digest.SHA256 {
		return digest.BLAKE3
	}
	return digest.SHA256
}

func TestGetActionResultInlines(t *testing.T) {
	conn, cfg := startServer(t)
	client := repb.NewActionCacheClient(conn)
	ctx := context.Background()
	action := storedAction(t, cfg, digest.SHA256, "inline action")
	result := completeResult(t, cfg.CAS, digest.SHA256)
	large := bytes.Repeat([]byte("L"), int(DefaultMaxBatchTotalSizeBytes))
	largeDigest := putBlobs(t, cfg.CAS, digest.SHA256, large)[0]
	result.OutputFiles = append(result.OutputFiles, &repb.OutputFile{Path: "out/large", Digest: largeDigest.Proto()})
	if _, err := client.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: result}); err != nil {
		t.Fatal(err)
	}

	plain, err := client.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action})
	if err != nil {
		t.Fatal(err)
	}
	if len(plain.GetStdoutRaw())+len(plain.GetStderrRaw())+len(plain.GetOutputFiles()[0].GetContents()) != 0 {
		t.Errorf("inlined without being asked: %v", plain)
	}

	got, err := client.GetActionResult(ctx, &repb.GetActionResultRequest{
		ActionDigest: action, InlineStdout: true, InlineStderr: true,
		InlineOutputFiles: []string{"out/file", "out/large", "not/an/output"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.GetStdoutRaw()) != "the stdout" || string(got.GetStderrRaw()) != "the stderr" {
		t.Errorf("stdout/stderr = %q/%q", got.GetStdoutRaw(), got.GetStderrRaw())
	}
	if string(got.GetOutputFiles()[0].GetContents()) != "output file" {
		t.Errorf("out/file contents = %q", got.GetOutputFiles()[0].GetContents())
	}
	// Inlining the large file would push the response past the limit.
	if len(got.GetOutputFiles()[1].GetContents()) != 0 {
		t.Error("out/large was inlined beyond the size budget")
	}
	if proto.Size(got) > int(DefaultMaxBatchTotalSizeBytes) {
		t.Errorf("response is %d bytes", proto.Size(got))
	}
}

// A result is served only while every blob it references exists; otherwise
// the client must see a miss and run the action again.
func TestGetActionResultIncompleteIsNotFound(t *testing.T) {
	fn := digest.SHA256
	absent := blob(fn, "evicted").Proto()
	for name, mutate := range map[string]func(t *testing.T, s cas.Store, r *repb.ActionResult){
		"output file": func(t *testing.T, s cas.Store, r *repb.ActionResult) { r.OutputFiles[0].Digest = absent },
		"stdout":      func(t *testing.T, s cas.Store, r *repb.ActionResult) { r.StdoutDigest = absent },
		"stderr":      func(t *testing.T, s cas.Store, r *repb.ActionResult) { r.StderrDigest = absent },
		"tree":        func(t *testing.T, s cas.Store, r *repb.ActionResult) { r.OutputDirectories[0].TreeDigest = absent },
		"file in tree": func(t *testing.T, s cas.Store, r *repb.ActionResult) {
			tree := &repb.Tree{
				Root:     &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "sub"}}},
				Children: []*repb.Directory{{Files: []*repb.FileNode{{Name: "gone", Digest: absent}}}},
			}
			r.OutputDirectories[0].TreeDigest = putProto(t, s, fn, tree).Proto()
		},
		"directory below root_directory_digest": func(t *testing.T, s cas.Store, r *repb.ActionResult) {
			root := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "sub", Digest: absent}}}
			r.OutputDirectories[0].TreeDigest = nil
			r.OutputDirectories[0].RootDirectoryDigest = putProto(t, s, fn, root).Proto()
		},
		"file below root_directory_digest": func(t *testing.T, s cas.Store, r *repb.ActionResult) {
			sub := putProto(t, s, fn, &repb.Directory{Files: []*repb.FileNode{{Name: "gone", Digest: absent}}})
			root := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "sub", Digest: sub.Proto()}}}
			r.OutputDirectories[0].TreeDigest = nil
			r.OutputDirectories[0].RootDirectoryDigest = putProto(t, s, fn, root).Proto()
		},
	} {
		t.Run(name, func(t *testing.T) {
			conn, cfg := startServer(t)
			client := repb.NewActionCacheClient(conn)
			r := completeResult(t, cfg.CAS, fn)
			mutate(t, cfg.CAS, r)
			action := storedAction(t, cfg, fn, "incomplete")
			if _, err := client.UpdateActionResult(context.Background(), &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: r}); err != nil {
				t.Fatalf("storing a result whose blobs are missing is allowed: %v", err)
			}
			_, err := client.GetActionResult(context.Background(), &repb.GetActionResultRequest{ActionDigest: action})
			wantCode(t, err, codes.NotFound)
		})
	}
}

func TestActionCacheRejectsBadDigests(t *testing.T) {
	conn, cfg := startServer(t)
	client := repb.NewActionCacheClient(conn)
	ctx := context.Background()
	result := completeResult(t, cfg.CAS, digest.SHA256)
	bad := map[string]*repb.Digest{"nil": nil}
	for k, v := range badDigests {
		bad[k] = v
	}
	for name, d := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := client.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: d})
			wantCode(t, err, codes.InvalidArgument)
			_, err = client.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: d, ActionResult: result})
			wantCode(t, err, codes.InvalidArgument)
		})
	}
	action := storedAction(t, cfg, digest.SHA256, "x")
	_, err := client.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action, DigestFunction: repb.DigestFunction_SHA512})
	wantCode(t, err, codes.InvalidArgument)
	_, err = client.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: result, InstanceName: "uploads"})
	wantCode(t, err, codes.InvalidArgument)
}

func TestUpdateActionResultValidates(t *testing.T) {
	fn := digest.SHA256
	malformed := &repb.Digest{Hash: "abc", SizeBytes: 1}
	for _, tc := range []struct {
		name   string
		mutate func(r *repb.ActionResult)
		ok     bool
	}{
		{"complete", func(r *repb.ActionResult) {}, true},
		{"empty result", func(r *repb.ActionResult) { proto.Reset(r) }, true},
		{"path with ..", func(r *repb.ActionResult) { r.OutputFiles[0].Path = "../sibling/out" }, true},
		{"whole working directory", func(r *repb.ActionResult) { r.OutputDirectories[0].Path = "" }, true},
		{"v2.0 symlink lists repeat output_symlinks", func(r *repb.ActionResult) {
			//lint:ignore SA1019 the deprecated field is what this case checks.
			r.OutputFileSymlinks = []*repb.OutputSymlink{{Path: "out/link", Target: "file"}}
		}, true},
		{"absolute symlink target", func(r *repb.ActionResult) { r.OutputSymlinks[0].Target = "/usr/bin/cc" }, true},
		{"no result", func(r *repb.ActionResult) {}, false}, // see below: sent as nil
		{"output file digest malformed", func(r *repb.ActionResult) { r.OutputFiles[0].Digest = malformed }, false},
		{"output file digest missing", func(r *repb.ActionResult) { r.OutputFiles[0].Digest = nil }, false},
		{"output file path empty", func(r *repb.ActionResult) { r.OutputFiles[0].Path = "" }, false},
		{"output file path absolute", func(r *repb.ActionResult) { r.OutputFiles[0].Path = "/etc/passwd" }, false},
		{"output file path trailing slash", func(r *repb.ActionResult) { r.OutputFiles[0].Path = "out/" }, false},
		{"output file path double slash", func(r *repb.ActionResult) { r.OutputFiles[0].Path = "out//file" }, false},
		{"duplicate output files", func(r *repb.ActionResult) { r.OutputFiles = append(r.OutputFiles, r.OutputFiles[0]) }, false},
		{"tree digest malformed", func(r *repb.ActionResult) { r.OutputDirectories[0].TreeDigest = malformed }, false},
		{"root directory digest malformed", func(r *repb.ActionResult) { r.OutputDirectories[0].RootDirectoryDigest = malformed }, false},
		{"output directory without digests", func(r *repb.ActionResult) { r.OutputDirectories[0].TreeDigest = nil }, false},
		{"symlink without target", func(r *repb.ActionResult) { r.OutputSymlinks[0].Target = "" }, false},
		{"symlink path absolute", func(r *repb.ActionResult) { r.OutputSymlinks[0].Path = "/x" }, false},
		{"stdout digest malformed", func(r *repb.ActionResult) { r.StdoutDigest = malformed }, false},
		{"stderr digest malformed", func(r *repb.ActionResult) { r.StderrDigest = malformed }, false},
		{"stdout_raw does not match stdout_digest", func(r *repb.ActionResult) { r.StdoutRaw = []byte("something else") }, false},
		{"contents do not match the file digest", func(r *repb.ActionResult) { r.OutputFiles[0].Contents = []byte("not it") }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, cfg := startServer(t)
			client := repb.NewActionCacheClient(conn)
			r := completeResult(t, cfg.CAS, fn)
			tc.mutate(r)
			if tc.name == "no result" {
				r = nil
			}
			action := storedAction(t, cfg, fn, tc.name)
			_, err := client.UpdateActionResult(context.Background(), &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: r})
			if tc.ok {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				if _, err := client.GetActionResult(context.Background(), &repb.GetActionResultRequest{ActionDigest: action}); err != nil {
					t.Fatalf("stored result not served: %v", err)
				}
				return
			}
			wantCode(t, err, codes.InvalidArgument)
			_, err = client.GetActionResult(context.Background(), &repb.GetActionResultRequest{ActionDigest: action})
			wantCode(t, err, codes.NotFound)
		})
	}
}

// Inline data sent with an update is moved into the CAS: the stored result
// carries digests only, and serves the data back on request.
func TestUpdateActionResultMovesInlineDataToCAS(t *testing.T) {
	conn, cfg := startServer(t)
	client := repb.NewActionCacheClient(conn)
	ctx := context.Background()
	fn := digest.BLAKE3
	action := storedAction(t, cfg, fn, "inline upload")
	stored, err := client.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{
		DigestFunction: fn,
		ActionDigest:   action,
		ActionResult: &repb.ActionResult{
			StdoutRaw:   []byte("raw stdout"),
			OutputFiles: []*repb.OutputFile{{Path: "f", Contents: []byte("raw file"), Digest: blob(fn, "raw file").Proto()}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(stored.GetStdoutRaw()) != 0 || len(stored.GetOutputFiles()[0].GetContents()) != 0 {
		t.Errorf("stored result keeps inline data: %v", stored)
	}
	if !proto.Equal(stored.GetStdoutDigest(), blob(fn, "raw stdout").Proto()) {
		t.Errorf("stdout_digest = %v", stored.GetStdoutDigest())
	}
	got, err := client.GetActionResult(ctx, &repb.GetActionResultRequest{DigestFunction: fn, ActionDigest: action, InlineStdout: true, InlineOutputFiles: []string{"f"}})
	if err != nil {
		t.Fatal(err)
	}
	if string(got.GetStdoutRaw()) != "raw stdout" || string(got.GetOutputFiles()[0].GetContents()) != "raw file" {
		t.Errorf("served %v", got)
	}
}

// storedAction puts a blob standing for an Action into the CAS, as a client
// must before UpdateActionResult, and returns its digest.
func storedAction(t *testing.T, cfg Config, fn digest.Function, name string) *repb.Digest {
	t.Helper()
	d := blob(fn, name)
	if err := cas.Put(context.Background(), cfg.CAS, d, []byte(name)); err != nil {
		t.Fatal(err)
	}
	return d.Proto()
}

func TestUpdateActionResultNeedsTheAction(t *testing.T) {
	conn, _ := startServer(t)
	absent := blob(digest.SHA256, "never uploaded")
	_, err := repb.NewActionCacheClient(conn).UpdateActionResult(context.Background(), &repb.UpdateActionResultRequest{
		ActionDigest: absent.Proto(), ActionResult: &repb.ActionResult{},
	})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), absent.Hash) {
		t.Fatalf("error does not name the missing Action: %v", err)
	}
}

// REAPI: the client "MUST first upload the Action that produced the result,
// along with its Command"; a missing Command is FAILED_PRECONDITION too.
func TestUpdateActionResultNeedsTheCommand(t *testing.T) {
	conn, cfg := startServer(t)
	client := repb.NewActionCacheClient(conn)
	ctx := context.Background()
	cmdData, err := proto.Marshal(&repb.Command{Arguments: []string{"/bin/true"}})
	if err != nil {
		t.Fatal(err)
	}
	cmd := digest.Compute(digest.SHA256, cmdData)
	action := putProto(t, cfg.CAS, digest.SHA256, &repb.Action{CommandDigest: cmd.Proto(), InputRootDigest: digest.Empty(digest.SHA256).Proto()})
	req := &repb.UpdateActionResultRequest{ActionDigest: action.Proto(), ActionResult: &repb.ActionResult{ExitCode: 1}}

	_, err = client.UpdateActionResult(ctx, req)
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), cmd.Hash) {
		t.Fatalf("error does not name the missing Command: %v", err)
	}
	if err := cas.Put(ctx, cfg.CAS, cmd, cmdData); err != nil {
		t.Fatal(err)
	}
	if _, err := client.UpdateActionResult(ctx, req); err != nil {
		t.Fatalf("with the Command uploaded: %v", err)
	}
}

// An output directory carrying both a Tree and a root_directory_digest must
// name the same directory twice: REAPI says the root digest MUST match the
// Tree's root.
func TestUpdateActionResultChecksTreeRoot(t *testing.T) {
	fn := digest.SHA256
	for _, tc := range []struct {
		name     string
		root     func(t *testing.T, s cas.Store, tree *repb.Tree) *repb.Digest
		treeBlob func(t *testing.T, s cas.Store, tree *repb.Tree) *repb.Digest
		code     codes.Code // of UpdateActionResult
		served   bool
	}{
		{"root matches the tree", func(t *testing.T, s cas.Store, tree *repb.Tree) *repb.Digest {
			return putProto(t, s, fn, tree.GetRoot()).Proto()
		}, nil, codes.OK, true},
		{"root is another directory", func(t *testing.T, s cas.Store, tree *repb.Tree) *repb.Digest {
			return putProto(t, s, fn, &repb.Directory{}).Proto()
		}, nil, codes.InvalidArgument, false},
		{"tree blob is not a Tree", func(t *testing.T, s cas.Store, tree *repb.Tree) *repb.Digest {
			return putProto(t, s, fn, tree.GetRoot()).Proto()
		}, func(t *testing.T, s cas.Store, tree *repb.Tree) *repb.Digest {
			return putBlobs(t, s, fn, []byte{0xff, 0xff, 0xff})[0].Proto()
		}, codes.InvalidArgument, false},
		{"tree not uploaded yet", func(t *testing.T, s cas.Store, tree *repb.Tree) *repb.Digest {
			return putProto(t, s, fn, &repb.Directory{}).Proto()
		}, func(t *testing.T, s cas.Store, tree *repb.Tree) *repb.Digest {
			data, _ := proto.Marshal(tree)
			return digest.Compute(fn, append(data, 0x0a, 0x00)).Proto() // a Tree nobody stored
		}, codes.OK, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, cfg := startServer(t)
			client := repb.NewActionCacheClient(conn)
			r := completeResult(t, cfg.CAS, fn)
			tree := &repb.Tree{Root: &repb.Directory{Files: []*repb.FileNode{{Name: "inner", Digest: putBlobs(t, cfg.CAS, fn, []byte("file in tree"))[0].Proto()}}}}
			if tc.treeBlob != nil {
				r.OutputDirectories[0].TreeDigest = tc.treeBlob(t, cfg.CAS, tree)
			}
			r.OutputDirectories[0].RootDirectoryDigest = tc.root(t, cfg.CAS, tree)
			action := storedAction(t, cfg, fn, tc.name)
			_, err := client.UpdateActionResult(context.Background(), &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: r})
			wantCode(t, err, tc.code)
			_, err = client.GetActionResult(context.Background(), &repb.GetActionResultRequest{ActionDigest: action})
			if tc.served {
				if err != nil {
					t.Fatalf("stored result not served: %v", err)
				}
			} else {
				wantCode(t, err, codes.NotFound)
			}
		})
	}
}

func TestTreeRootBytesKeepsTheClientsEncoding(t *testing.T) {
	// A root whose fields are out of tag order: valid protobuf, but not
	// what a re-encoding would produce.
	root := protowire.AppendTag(nil, 2, protowire.BytesType)
	root = protowire.AppendBytes(root, []byte{})
	root = protowire.AppendTag(root, 1, protowire.BytesType)
	root = protowire.AppendBytes(root, []byte{})
	tree := protowire.AppendTag(nil, 1, protowire.BytesType)
	tree = protowire.AppendBytes(tree, root)
	got, err := treeRootBytes(tree)
	if err != nil || !bytes.Equal(got, root) {
		t.Fatalf("treeRootBytes = %x, %v; want %x", got, err, root)
	}
	twice := append(append([]byte(nil), tree...), tree...)
	if _, err := treeRootBytes(twice); err == nil {
		t.Fatal("a Tree with two root fields was accepted")
	}
}
