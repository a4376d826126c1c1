package reapi

import (
	"context"
	"errors"
	"fmt"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// actionCacheServer is the ActionCache service. Results are kept per instance
// name; the blobs they reference live in the CAS, which all instances share.
type actionCacheServer struct {
	repb.UnimplementedActionCacheServer
	cfg Config
}

func newActionCacheServer(cfg Config) *actionCacheServer {
	return &actionCacheServer{cfg: cfg}
}

// GetActionResult returns the cached result, NOT_FOUND on a miss. Whether the
// result's blobs all still exist is the store's concern (Config.ActionCache is
// wrapped with actioncache.NewCompletenessChecking). Inlining is done on
// request only and within the batch size limit, so the response stays under
// the clients' message limits; what does not fit is left for the client to
// fetch by digest, as the spec allows.
func (s *actionCacheServer) GetActionResult(ctx context.Context, req *repb.GetActionResultRequest) (*repb.ActionResult, error) {
	action, err := requestAction(req.GetInstanceName(), req.GetDigestFunction(), req.GetActionDigest())
	if err != nil {
		return nil, err
	}
	fn := action.Function
	result, err := s.cfg.ActionCache.Get(ctx, req.GetInstanceName(), action)
	if err != nil {
		return nil, toStatus(err)
	}
	if !req.GetInlineStdout() && !req.GetInlineStderr() && len(req.GetInlineOutputFiles()) == 0 {
		return result, nil
	}
	// The store may hand out shared messages; inline into a copy.
	result = proto.Clone(result).(*repb.ActionResult)
	in := inliner{ctx: ctx, store: s.cfg.CAS, fn: fn, action: action, budget: s.cfg.maxBatch() - int64(proto.Size(result))}
	if req.GetInlineStdout() && len(result.GetStdoutRaw()) == 0 {
		if result.StdoutRaw, err = in.inline(result.GetStdoutDigest(), "stdout"); err != nil {
			return nil, err
		}
	}
	if req.GetInlineStderr() && len(result.GetStderrRaw()) == 0 {
		if result.StderrRaw, err = in.inline(result.GetStderrDigest(), "stderr"); err != nil {
			return nil, err
		}
	}
	if len(req.GetInlineOutputFiles()) > 0 {
		wanted := make(map[string]bool, len(req.GetInlineOutputFiles()))
		for _, p := range req.GetInlineOutputFiles() {
			wanted[p] = true
		}
		for _, f := range result.GetOutputFiles() {
			if !wanted[f.GetPath()] || len(f.GetContents()) > 0 {
				continue
			}
			if f.Contents, err = in.inline(f.GetDigest(), "output file "+f.GetPath()); err != nil {
				return nil, err
			}
		}
	}
	return result, nil
}

// inliner reads blobs into a result while its byte budget lasts.
type inliner struct {
	ctx    context.Context
	store  cas.Store
	fn     digest.Function
	action digest.Digest
	budget int64
}

// inline returns the blob's contents, or nil if it does not fit the budget
// (or there is no blob). A blob gone since the completeness check makes the
// result unusable: NOT_FOUND, so the client runs the action again.
func (in *inliner) inline(pd *repb.Digest, what string) ([]byte, error) {
	if pd == nil {
		return nil, nil
	}
	d, err := digest.FromProto(in.fn, pd)
	if err != nil || d.Size == 0 || d.Size > in.budget {
		return nil, nil
	}
	data, err := readSmallBlob(in.ctx, in.store, d)
	if errors.Is(err, cas.ErrNotFound) {
		return nil, status.Errorf(codes.NotFound, "result of action %s: %s blob %s is no longer in the CAS", in.action, what, d)
	}
	if err != nil {
		return nil, toStatus(err)
	}
	in.budget -= d.Size
	return data, nil
}

// UpdateActionResult validates and stores a result, and returns what was
// stored. Inline data a client sent anyway (stdout_raw, stderr_raw, output
// file contents) is checked against its digest, moved into the CAS and
// dropped from the stored result, so stored results are uniformly "digests
// only" and GetActionResult inlines exactly what is asked for.
func (s *actionCacheServer) UpdateActionResult(ctx context.Context, req *repb.UpdateActionResultRequest) (*repb.ActionResult, error) {
	action, err := requestAction(req.GetInstanceName(), req.GetDigestFunction(), req.GetActionDigest())
	if err != nil {
		return nil, err
	}
	fn := action.Function
	if req.GetActionResult() == nil {
		return nil, invalidf("action_result is missing")
	}
	if err := s.requireUploaded(ctx, action); err != nil {
		return nil, err
	}
	result := proto.Clone(req.GetActionResult()).(*repb.ActionResult)
	if err := s.moveInlineToCAS(ctx, fn, result); err != nil {
		return nil, err
	}
	if err := actioncache.Validate(fn, result); err != nil {
		return nil, invalidf("action_result: %v", err)
	}
	if err := s.checkTreeRoots(ctx, fn, result); err != nil {
		return nil, err
	}
	if err := s.cfg.ActionCache.Put(ctx, req.GetInstanceName(), action, result); err != nil {
		return nil, toStatus(err)
	}
	return result, nil
}

// requireUploaded enforces REAPI's "the client MUST first upload the Action
// that produced the result, along with its Command": either missing is
// FAILED_PRECONDITION naming it. A result for an Action nobody can read could
// never be re-run or checked. A blob that does not decode as an Action has no
// Command to look for; it is let through as before, since clients that cache
// results under digests of their own making exist and are not harmed by it.
func (s *actionCacheServer) requireUploaded(ctx context.Context, action digest.Digest) error {
	if missing, err := s.cfg.CAS.FindMissing(ctx, []digest.Digest{action}); err != nil {
		return toStatus(err)
	} else if len(missing) > 0 {
		return missingStatus(&cas.MissingError{Digests: missing})
	}
	// Actions are small; a huge blob is not one worth reading here.
	if action.Size > s.cfg.maxBatch() {
		return nil
	}
	data, err := readSmallBlob(ctx, s.cfg.CAS, action)
	if errors.Is(err, cas.ErrNotFound) {
		return missingStatus(&cas.MissingError{Digests: []digest.Digest{action}})
	}
	if err != nil {
		return toStatus(fmt.Errorf("reading action %s: %w", action, err))
	}
	a := &repb.Action{}
	if proto.Unmarshal(data, a) != nil || a.GetCommandDigest() == nil {
		return nil
	}
	cmd, err := digest.FromProto(action.Function, a.GetCommandDigest())
	if err != nil {
		return invalidf("action %s has a malformed command_digest: %v", action, err)
	}
	if cmd.IsEmpty() {
		return nil
	}
	if missing, err := s.cfg.CAS.FindMissing(ctx, []digest.Digest{cmd}); err != nil {
		return toStatus(err)
	} else if len(missing) > 0 {
		return missingStatus(&cas.MissingError{Digests: missing})
	}
	return nil
}

// maxTreeCheck bounds the Tree a result's root_directory_digest is checked
// against: Trees of even large output directories are a few MiB.
const maxTreeCheck = 64 << 20

// checkTreeRoots enforces REAPI's "if both [tree_digest] and
// root_directory_digest are set, this field MUST match the digest of the
// root directory contained in the Tree message": a result whose two views of
// one directory disagree would give clients that read the Tree and clients
// that walk from the root different outputs. A Tree not (yet) in the CAS is
// not checked here: results may be stored before their blobs, and the
// completeness check makes such a result a miss until they arrive.
func (s *actionCacheServer) checkTreeRoots(ctx context.Context, fn digest.Function, r *repb.ActionResult) error {
	for _, od := range r.GetOutputDirectories() {
		if od.GetTreeDigest() == nil || od.GetRootDirectoryDigest() == nil {
			continue
		}
		// Both digests were validated with the result.
		td, _ := digest.FromProto(fn, od.GetTreeDigest())
		rd, _ := digest.FromProto(fn, od.GetRootDirectoryDigest())
		if td.Size > maxTreeCheck {
			continue
		}
		data, err := readSmallBlob(ctx, s.cfg.CAS, td)
		if errors.Is(err, cas.ErrNotFound) {
			continue
		}
		if err != nil {
			return toStatus(fmt.Errorf("reading the tree of output directory %q: %w", od.GetPath(), err))
		}
		root, err := treeRootBytes(data)
		if err != nil {
			return invalidf("action_result: tree_digest %s of output directory %q is not a Tree: %v", td, od.GetPath(), err)
		}
		if got := digest.Compute(fn, root); got != rd {
			return invalidf("action_result: root_directory_digest %s of output directory %q is not the digest of its Tree's root (%s)", rd, od.GetPath(), got)
		}
	}
	return nil
}

// treeRootBytes returns the encoded root Directory of an encoded Tree as the
// client wrote it (the bytes its root_directory_digest was computed from),
// not a re-encoding, which could differ from a client's valid encoding.
func treeRootBytes(data []byte) ([]byte, error) {
	if err := proto.Unmarshal(data, &repb.Tree{}); err != nil {
		return nil, err
	}
	var root []byte
	found := false
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		data = data[n:]
		if num == 1 && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(data)
			if m < 0 {
				return nil, protowire.ParseError(m)
			}
			if found {
				return nil, errors.New("it has more than one root field")
			}
			root, found = v, true
			data = data[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, data)
		if m < 0 {
			return nil, protowire.ParseError(m)
		}
		data = data[m:]
	}
	return root, nil
}

func (s *actionCacheServer) moveInlineToCAS(ctx context.Context, fn digest.Function, r *repb.ActionResult) error {
	var err error
	if r.StdoutDigest, err = s.storeInline(ctx, fn, r.GetStdoutRaw(), r.GetStdoutDigest(), "stdout_raw"); err != nil {
		return err
	}
	r.StdoutRaw = nil
	if r.StderrDigest, err = s.storeInline(ctx, fn, r.GetStderrRaw(), r.GetStderrDigest(), "stderr_raw"); err != nil {
		return err
	}
	r.StderrRaw = nil
	for _, f := range r.GetOutputFiles() {
		if f.Digest, err = s.storeInline(ctx, fn, f.GetContents(), f.GetDigest(), "contents of output file "+f.GetPath()); err != nil {
			return err
		}
		f.Contents = nil
	}
	return nil
}

// storeInline puts raw in the CAS and returns its digest; given must be nil or
// that digest. Without raw it returns given unchanged.
func (s *actionCacheServer) storeInline(ctx context.Context, fn digest.Function, raw []byte, given *repb.Digest, what string) (*repb.Digest, error) {
	if len(raw) == 0 {
		return given, nil
	}
	d := digest.Compute(fn, raw)
	if given != nil && (given.GetHash() != d.Hash || given.GetSizeBytes() != d.Size) {
		return nil, invalidf("action_result: %s (%d bytes, digest %s) does not match its digest %s/%d", what, len(raw), d, given.GetHash(), given.GetSizeBytes())
	}
	if err := cas.Put(ctx, s.cfg.CAS, d, raw); err != nil {
		return nil, toStatus(err)
	}
	return d.Proto(), nil
}
