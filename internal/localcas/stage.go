package localcas

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/hearth-build/hearth/internal/fsutil"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/localcas/localcaspb"
)

// StageTree stages the requested tree by hardlink from the file cache
// (inputtree.Stage, as the builder stages an action's input root), answers
// with its path, and removes it when the client sends its second request or
// closes the stream, answering once more when that is done.
func (s *Server) StageTree(stream localcaspb.LocalContentAddressableStorage_StageTreeServer) error {
	ctx := stream.Context()
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	root, err := s.digest("root_digest", req.GetRootDigest())
	if err != nil {
		return toError(err)
	}
	if req.GetStagingMode() == localcaspb.StageTreeRequest_FUSE {
		return toError(fmt.Errorf("%w: staging_mode FUSE is not supported (Hearth stages by hardlink)", ErrInvalid))
	}
	t, err := inputtree.Load(ctx, s.opts.CAS, s.opts.Function, root)
	if err != nil {
		return toError(err)
	}
	dir, created, err := s.stageDir(req.GetPath())
	if err != nil {
		return toError(err)
	}
	defer s.unstage(dir, created)
	if err := inputtree.Stage(ctx, t, s.opts.Files, dir); err != nil {
		return toError(fmt.Errorf("staging %s at %s: %w", root, dir, err))
	}
	if err := stream.Send(&localcaspb.StageTreeResponse{Path: dir}); err != nil {
		return err
	}
	// Any second message or the end of the stream means "done"; a broken
	// stream too, and then there is nobody to answer.
	if _, err := stream.Recv(); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := s.unstage(dir, created); err != nil {
		return toError(err)
	}
	return stream.Send(&localcaspb.StageTreeResponse{})
}

// stageDir returns the directory to stage into: a fresh one under StageDir
// for an empty path, else path itself, which must be absolute and an empty
// directory or absent (then it is created, and removed again afterwards).
func (s *Server) stageDir(path string) (dir string, created bool, err error) {
	if path == "" {
		dir, err := os.MkdirTemp(s.opts.StageDir, "stage-")
		return dir, true, err
	}
	if !filepath.IsAbs(path) {
		return "", false, fmt.Errorf("%w: path %q is not absolute", ErrInvalid, path)
	}
	path = filepath.Clean(path)
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := os.Mkdir(path, 0o755); err != nil {
			return "", false, fmt.Errorf("%w: path %q: %w", ErrInvalid, path, err)
		}
		return path, true, nil
	case err != nil:
		return "", false, err
	case !st.IsDir():
		return "", false, fmt.Errorf("%w: path %q exists and is not a directory", ErrInvalid, path)
	}
	names, err := readNames(path)
	if err != nil {
		return "", false, err
	}
	if len(names) > 0 {
		return "", false, fmt.Errorf("%w: path %q is not empty", ErrInvalid, path)
	}
	return path, false, nil
}

// unstage removes what was staged: the directory itself if the server
// created it, else only its contents (the client's directory stays). It is
// idempotent, so that the deferred call after a successful one is harmless.
func (s *Server) unstage(dir string, created bool) error {
	if created {
		return fsutil.RemoveAll(dir)
	}
	names, err := readNames(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	var errs []error
	for _, n := range names {
		errs = append(errs, fsutil.RemoveAll(filepath.Join(dir, n)))
	}
	return errors.Join(errs...)
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
