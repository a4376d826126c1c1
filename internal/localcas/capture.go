package localcas

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/localcas/localcaspb"
	"github.com/hearth-build/hearth/internal/outputs"
)

// capturePlan is one requested path split into the directory it is captured
// beneath and its path relative to that directory.
type capturePlan struct {
	root, rel string
}

// planCapture checks one requested path. With a root, the path (relative, or
// absolute and inside root) must stay beneath root: no ".." anywhere, and
// outputs.Collect then walks it without following a symlink out of root.
// Without a root the path must be absolute and is captured beneath its parent.
func planCapture(root, path string) (capturePlan, error) {
	if path == "" {
		return capturePlan{}, fmt.Errorf("%w: empty path", ErrInvalid)
	}
	for c := range strings.SplitSeq(path, "/") {
		if c == ".." {
			return capturePlan{}, fmt.Errorf("%w: path %q has a \"..\" component", ErrInvalid, path)
		}
	}
	if root == "" {
		if !filepath.IsAbs(path) {
			return capturePlan{}, fmt.Errorf("%w: path %q is relative and the request has no root", ErrInvalid, path)
		}
		path = filepath.Clean(path)
		if path == "/" {
			return capturePlan{}, fmt.Errorf("%w: refusing to capture /", ErrInvalid)
		}
		return capturePlan{root: filepath.Dir(path), rel: filepath.Base(path)}, nil
	}
	if !filepath.IsAbs(root) {
		return capturePlan{}, fmt.Errorf("%w: root %q is not absolute", ErrInvalid, root)
	}
	root = filepath.Clean(root)
	abs := path
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(root, path)
	}
	abs = filepath.Clean(abs)
	rel, err := filepath.Rel(root, abs)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return capturePlan{}, fmt.Errorf("%w: path %q is outside root %q", ErrInvalid, path, root)
	}
	if rel == "." {
		if root == "/" {
			return capturePlan{}, fmt.Errorf("%w: refusing to capture /", ErrInvalid)
		}
		return capturePlan{root: filepath.Dir(root), rel: filepath.Base(root)}, nil
	}
	if err := inputtree.ValidateRelativePath(rel); err != nil {
		return capturePlan{}, err
	}
	return capturePlan{root: root, rel: rel}, nil
}

// collect captures one planned path with outputs.Collect, which hashes,
// builds the Tree and Directory protos, and uploads everything the CAS lacks.
func (s *Server) collect(ctx context.Context, p capturePlan, props []string, format repb.Command_OutputDirectoryFormat) (*repb.ActionResult, error) {
	cmd := &repb.Command{OutputPaths: []string{p.rel}, OutputNodeProperties: props, OutputDirectoryFormat: format}
	return outputs.Collect(ctx, s.opts.CAS, s.opts.Function, p.root, cmd)
}

func checkHints(bypass, skipUpload bool) error {
	if bypass && skipUpload {
		return status.Error(codes.InvalidArgument, "bypass_local_cache and skip_upload are mutually exclusive")
	}
	return nil
}

// CaptureTree captures directories. Blobs always go to the server's CAS,
// skip_upload notwithstanding: the file cache only holds what the CAS holds,
// so "local only" has no meaning here, and a runner's ActionResult must name
// blobs the server has. move_files is a hint and is not taken.
func (s *Server) CaptureTree(ctx context.Context, req *localcaspb.CaptureTreeRequest) (*localcaspb.CaptureTreeResponse, error) {
	if err := checkHints(req.GetBypassLocalCache(), req.GetSkipUpload()); err != nil {
		return nil, err
	}
	format := req.GetOutputDirectoryFormat()
	resp := &localcaspb.CaptureTreeResponse{}
	for _, path := range req.GetPath() {
		r := &localcaspb.CaptureTreeResponse_Response{Path: path}
		resp.Responses = append(resp.Responses, r)
		p, err := planCapture(req.GetRoot(), path)
		if err != nil {
			r.Status = toProto(err)
			continue
		}
		res, err := s.collect(ctx, p, req.GetNodeProperties(), format)
		switch {
		case err != nil:
			r.Status = toProto(fmt.Errorf("capturing %q: %w", path, err))
		case len(res.OutputDirectories) == 1:
			r.TreeDigest = res.OutputDirectories[0].TreeDigest
			r.RootDirectoryDigest = res.OutputDirectories[0].RootDirectoryDigest
			r.Status = toProto(nil)
		case len(res.OutputFiles)+len(res.OutputSymlinks) > 0:
			r.Status = status.Newf(codes.FailedPrecondition, "%q is not a directory", path).Proto()
		default:
			r.Status = status.Newf(codes.NotFound, "%q does not exist", path).Proto()
		}
	}
	return resp, nil
}

// CaptureFiles captures regular files, as CaptureTree captures directories.
func (s *Server) CaptureFiles(ctx context.Context, req *localcaspb.CaptureFilesRequest) (*localcaspb.CaptureFilesResponse, error) {
	if err := checkHints(req.GetBypassLocalCache(), req.GetSkipUpload()); err != nil {
		return nil, err
	}
	resp := &localcaspb.CaptureFilesResponse{}
	for _, path := range req.GetPath() {
		r := &localcaspb.CaptureFilesResponse_Response{Path: path}
		resp.Responses = append(resp.Responses, r)
		p, err := planCapture(req.GetRoot(), path)
		if err != nil {
			r.Status = toProto(err)
			continue
		}
		res, err := s.collect(ctx, p, req.GetNodeProperties(), repb.Command_TREE_ONLY)
		switch {
		case err != nil:
			r.Status = toProto(fmt.Errorf("capturing %q: %w", path, err))
		case len(res.OutputFiles) == 1:
			f := res.OutputFiles[0]
			r.Digest, r.IsExecutable, r.NodeProperties = f.Digest, f.IsExecutable, f.NodeProperties
			r.Status = toProto(nil)
		case len(res.OutputDirectories)+len(res.OutputSymlinks) > 0:
			r.Status = status.Newf(codes.FailedPrecondition, "%q is not a regular file", path).Proto()
		default:
			r.Status = status.Newf(codes.NotFound, "%q does not exist", path).Proto()
		}
	}
	return resp, nil
}
