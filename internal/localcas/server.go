// Package localcas owns Hearth's side of buildbox's LocalCAS protocol
// (build.buildgrid.LocalContentAddressableStorage, vendored in
// proto/build/buildgrid): the service a buildbox runner (buildbox-run-hosttools,
// buildbox-run-bubblewrap, or `hearth run --remote=unix:PATH`) uses instead of
// buildbox-casd to stage an action's input root and capture its outputs. It is
// served on a Unix socket by the executor and backed by the executor's file
// cache (staging is hardlinks from it, as the builder stages) and by the
// server's CAS: captured outputs are uploaded there at once, since Hearth has
// no separate casd upload step and the runner's ActionResult must name blobs
// the server holds.
//
// Input trees are validated by internal/inputtree (no "..", no absolute
// paths, no symlink leaving the root) and outputs are captured by
// internal/outputs (walked beneath the root, symlinks never followed out of
// it), so LocalCAS clients get exactly the checks the executor applies to its
// own actions.
package localcas

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/errcode"
	"github.com/hearth-build/hearth/internal/filecache"
	"github.com/hearth-build/hearth/internal/inputtree"
	"github.com/hearth-build/hearth/internal/localcas/localcaspb"
	"github.com/hearth-build/hearth/internal/outputs"
	"github.com/hearth-build/hearth/internal/reapi"
)

// MaxSocketPath is the longest Unix socket path Linux accepts (sun_path is
// 108 bytes including the terminating NUL).
const MaxSocketPath = 107

// ErrInvalid marks a malformed LocalCAS request (INVALID_ARGUMENT).
var ErrInvalid = inputtree.ErrInvalid

// Options configures New.
type Options struct {
	// CAS is the server's CAS: where missing blobs come from and captured
	// ones go.
	CAS cas.Store
	// ActionCache is the server's action cache. The socket also serves
	// REAPI's CAS, ByteStream, ActionCache and Capabilities, proxied to the
	// server, as buildbox-casd does: a runner reads the Action's Command
	// and input blobs through the same --remote.
	ActionCache actioncache.Store
	// Files is the executor's file cache, fed from CAS.
	Files *filecache.Cache
	// StageDir holds the directories the server picks for StageTree
	// requests without a path. It should be on the file cache's filesystem
	// so that staging is hardlinks.
	StageDir string
	// Function is the digest function of every digest on this socket:
	// LocalCAS requests carry none. Default SHA256.
	Function digest.Function
	// Instance is returned by GetInstanceNameForRemote(s); empty echoes the
	// request's instance name.
	Instance string
}

// Server implements LocalContentAddressableStorage.
type Server struct {
	localcaspb.UnimplementedLocalContentAddressableStorageServer
	opts Options
}

// New returns a server; StageDir is created if needed.
func New(opts Options) (*Server, error) {
	if opts.CAS == nil || opts.Files == nil || opts.ActionCache == nil {
		return nil, errors.New("localcas: CAS, ActionCache and Files are required")
	}
	if opts.StageDir == "" {
		return nil, errors.New("localcas: StageDir is required")
	}
	if err := os.MkdirAll(opts.StageDir, 0o755); err != nil {
		return nil, fmt.Errorf("localcas: %w", err)
	}
	fn, err := digest.Resolve(opts.Function)
	if err != nil {
		return nil, fmt.Errorf("localcas: %w", err)
	}
	opts.Function = fn
	return &Server{opts: opts}, nil
}

// Listen opens the Unix socket path, replacing a stale socket a previous
// process left (never any other kind of file). The socket is made
// owner-only (0600): a client can have the server stage into any directory
// it may write and read any blob of the server's CAS, so it must be no less
// trusted than the worker's own user.
func Listen(path string) (net.Listener, error) {
	if len(path) > MaxSocketPath {
		return nil, fmt.Errorf("socket path %q is %d bytes, longer than the %d a Unix socket allows", path, len(path), MaxSocketPath)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("%s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// Serve registers s on a new gRPC server and serves l until ctx ends.
func Serve(ctx context.Context, l net.Listener, s *Server) error {
	gs := grpc.NewServer(grpc.MaxRecvMsgSize(reapi.MaxRecvMsgSize))
	localcaspb.RegisterLocalContentAddressableStorageServer(gs, s)
	reapi.Register(gs, reapi.Config{CAS: cas.NewVerifying(s.opts.CAS), ActionCache: s.opts.ActionCache})
	go func() { <-ctx.Done(); gs.Stop() }()
	return gs.Serve(l)
}

// toStatus is the service edge: LocalCAS reports a blob absent from a store
// as NOT_FOUND (REAPI's FAILED_PRECONDITION with PreconditionFailure is for
// Execute), everything else as errcode maps it.
func toStatus(err error) *status.Status {
	if err == nil {
		return nil
	}
	var me *cas.MissingError
	if errors.As(err, &me) {
		return status.New(codes.NotFound, err.Error())
	}
	return errcode.Status(err)
}

func toError(err error) error { return toStatus(err).Err() }

func toProto(err error) *spb.Status {
	if err == nil {
		return &spb.Status{}
	}
	return toStatus(err).Proto()
}

func (s *Server) digest(what string, d *repb.Digest) (digest.Digest, error) {
	if d == nil {
		return digest.Digest{}, fmt.Errorf("%w: %s is missing", ErrInvalid, what)
	}
	dg, err := digest.FromProto(s.opts.Function, d)
	if err != nil {
		return digest.Digest{}, fmt.Errorf("%s: %w", what, err)
	}
	return dg, nil
}

// FetchMissingBlobs fetches blobs into the file cache; the response lists
// the failures only, as the proto says.
func (s *Server) FetchMissingBlobs(ctx context.Context, req *localcaspb.FetchMissingBlobsRequest) (*localcaspb.FetchMissingBlobsResponse, error) {
	resp := &localcaspb.FetchMissingBlobsResponse{}
	for i, pd := range req.GetBlobDigests() {
		d, err := s.digest(fmt.Sprintf("blob_digests[%d]", i), pd)
		if err == nil {
			err = s.opts.Files.Fetch(ctx, d)
		}
		if err != nil {
			resp.Responses = append(resp.Responses, &localcaspb.FetchMissingBlobsResponse_Response{Digest: pd, Status: toProto(err)})
		}
	}
	return resp, nil
}

// UploadMissingBlobs uploads blobs of the file cache that the CAS lacks.
func (s *Server) UploadMissingBlobs(ctx context.Context, req *localcaspb.UploadMissingBlobsRequest) (*localcaspb.UploadMissingBlobsResponse, error) {
	resp := &localcaspb.UploadMissingBlobsResponse{}
	var ds []digest.Digest
	for i, pd := range req.GetBlobDigests() {
		d, err := s.digest(fmt.Sprintf("blob_digests[%d]", i), pd)
		if err != nil {
			resp.Responses = append(resp.Responses, &localcaspb.UploadMissingBlobsResponse_Response{Digest: pd, Status: toProto(err)})
			continue
		}
		ds = append(ds, d)
	}
	for _, d := range ds {
		if err := s.uploadLocal(ctx, d); err != nil {
			resp.Responses = append(resp.Responses, &localcaspb.UploadMissingBlobsResponse_Response{Digest: d.Proto(), Status: toProto(err)})
		}
	}
	return resp, nil
}

// uploadLocal makes sure the CAS holds d, uploading the file cache's copy.
func (s *Server) uploadLocal(ctx context.Context, d digest.Digest) error {
	missing, err := s.opts.CAS.FindMissing(ctx, []digest.Digest{d})
	if err != nil || len(missing) == 0 {
		return err
	}
	path, ok := s.opts.Files.LocalPath(d)
	if !ok {
		return &cas.MissingError{Digests: []digest.Digest{d}}
	}
	got, err := outputs.UploadFile(ctx, s.opts.CAS, d.Function, path)
	if errors.Is(err, os.ErrNotExist) {
		return &cas.MissingError{Digests: []digest.Digest{d}} // evicted meanwhile
	}
	if err == nil && got != d {
		err = fmt.Errorf("localcas: the cached file of %s hashes to %s: %w", d, got, filecache.ErrCorrupt)
	}
	return err
}

// FetchTree loads (and so validates) the tree and, if asked, its files into
// the file cache.
func (s *Server) FetchTree(ctx context.Context, req *localcaspb.FetchTreeRequest) (*localcaspb.FetchTreeResponse, error) {
	root, err := s.digest("root_digest", req.GetRootDigest())
	if err != nil {
		return nil, toError(err)
	}
	t, err := inputtree.Load(ctx, s.opts.CAS, s.opts.Function, root)
	if err != nil {
		return nil, toError(err)
	}
	if req.GetFetchFileBlobs() {
		for _, f := range t.Files {
			if err := s.opts.Files.Fetch(ctx, f.Digest); err != nil {
				return nil, toError(fmt.Errorf("file %q: %w", f.Path, err))
			}
		}
	}
	return &localcaspb.FetchTreeResponse{}, nil
}

// UploadTree makes sure the CAS holds the whole tree. Directory protos are
// read through the CAS (the executor keeps none of its own), so a tree whose
// root is absent there is NOT_FOUND; files the CAS lacks are uploaded from
// the file cache.
func (s *Server) UploadTree(ctx context.Context, req *localcaspb.UploadTreeRequest) (*localcaspb.UploadTreeResponse, error) {
	root, err := s.digest("root_digest", req.GetRootDigest())
	if err != nil {
		return nil, toError(err)
	}
	t, err := inputtree.Load(ctx, s.opts.CAS, s.opts.Function, root)
	if err != nil {
		return nil, toError(err)
	}
	for _, f := range t.Files {
		if err := s.uploadLocal(ctx, f.Digest); err != nil {
			return nil, toError(fmt.Errorf("file %q: %w", f.Path, err))
		}
	}
	return &localcaspb.UploadTreeResponse{}, nil
}

// GetInstanceNameForRemote returns the configured instance (Hearth's remote
// is fixed: the executor's server), or echoes the request's.
func (s *Server) GetInstanceNameForRemote(_ context.Context, req *localcaspb.GetInstanceNameForRemoteRequest) (*localcaspb.GetInstanceNameForRemoteResponse, error) {
	return &localcaspb.GetInstanceNameForRemoteResponse{InstanceName: s.instance(req.GetInstanceName())}, nil
}

// GetInstanceNameForRemotes is GetInstanceNameForRemote's newer form.
func (s *Server) GetInstanceNameForRemotes(_ context.Context, req *localcaspb.GetInstanceNameForRemotesRequest) (*localcaspb.GetInstanceNameForRemotesResponse, error) {
	in := req.GetInstanceName()
	if in == "" {
		in = req.GetContentAddressableStorage().GetInstanceName()
	}
	return &localcaspb.GetInstanceNameForRemotesResponse{InstanceName: s.instance(in)}, nil
}

// GetInstanceNameForNamespace echoes the instance: Hearth has no namespaces.
func (s *Server) GetInstanceNameForNamespace(_ context.Context, req *localcaspb.GetInstanceNameForNamespaceRequest) (*localcaspb.GetInstanceNameForNamespaceResponse, error) {
	return &localcaspb.GetInstanceNameForNamespaceResponse{InstanceName: s.instance(req.GetInstanceName())}, nil
}

func (s *Server) instance(requested string) string {
	if s.opts.Instance != "" {
		return s.opts.Instance
	}
	return requested
}

// GetLocalDiskUsage reports the file cache's size and budget.
func (s *Server) GetLocalDiskUsage(context.Context, *localcaspb.GetLocalDiskUsageRequest) (*localcaspb.GetLocalDiskUsageResponse, error) {
	return &localcaspb.GetLocalDiskUsageResponse{SizeBytes: s.opts.Files.SizeBytes(), QuotaBytes: s.opts.Files.MaxBytes()}, nil
}

// GetLocalServerDetails tells a runner who serves the socket and where the
// cache lives.
func (s *Server) GetLocalServerDetails(context.Context, *localcaspb.GetLocalServerDetailsRequest) (*localcaspb.LocalServerDetails, error) {
	host, _ := os.Hostname()
	return &localcaspb.LocalServerDetails{Hostname: host, ProcessUid: int64(os.Getuid()), StorageRoot: s.opts.Files.Dir()}, nil
}
