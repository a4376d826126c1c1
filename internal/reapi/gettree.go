package reapi

import (
	"context"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

const (
	// treeDefaultPageSize is the page size of a GetTree without one, and the
	// most directories any page holds.
	treeDefaultPageSize = 10000
	// treePageBytes bounds the encoded directories of one page (a page holds
	// at least one directory), keeping responses under gRPC's default 4 MiB
	// receive limit of clients.
	treePageBytes = 2 << 20
	// treeMaxDirectoryBytes bounds one Directory blob GetTree reads; a larger
	// one could not be delivered to a client with default limits anyway.
	treeMaxDirectoryBytes = MaxRecvMsgSize
	// treeTokenPrefix versions the page token format.
	treeTokenPrefix = "tree1"
)

// GetTree streams the Directory protos of the tree under root_digest, root
// first, breadth-first, children in the order their parent lists them. A
// Directory that several parents reference is sent once. Subtrees missing
// from the CAS are left out, as the spec says; a missing root is NOT_FOUND and
// a blob in the tree that is not a Directory is INVALID_ARGUMENT.
//
// Each response is one page of at most page_size directories (0: server
// default), and carries the token of the next page, so a client can resume in
// a new call. The token is the root plus the index in the traversal of the
// page's first directory: the traversal is deterministic for given CAS
// contents (which are immutable), so resuming re-walks the tree up to that
// index. That costs reads on resume but keeps tokens small however wide the
// tree is.
func (s *casServer) GetTree(req *repb.GetTreeRequest, stream repb.ContentAddressableStorage_GetTreeServer) error {
	ctx := stream.Context()
	fn, err := requestFunction(req.GetInstanceName(), req.GetDigestFunction())
	if err != nil {
		return err
	}
	root, err := digest.FromProto(fn, req.GetRootDigest())
	if err != nil {
		return invalidf("root_digest: %v", err)
	}
	pageSize := int(req.GetPageSize())
	switch {
	case pageSize < 0:
		return invalidf("page_size %d is negative", pageSize)
	case pageSize == 0 || pageSize > treeDefaultPageSize:
		pageSize = treeDefaultPageSize
	}
	skip := 0
	if req.GetPageToken() != "" {
		if skip, err = parseTreeToken(req.GetPageToken(), root); err != nil {
			return err
		}
	}

	w := newTreeWalker(ctx, s.cfg.CAS, root)
	page := &repb.GetTreeResponse{}
	pageBytes := 0
	for index := 0; ; index++ {
		dir, size, err := w.next()
		if err != nil {
			return toStatus(err)
		}
		if dir == nil {
			break
		}
		if index < skip {
			continue
		}
		if len(page.Directories) > 0 && (len(page.Directories) >= pageSize || pageBytes+size > treePageBytes) {
			// Only now is it known that another page follows, so the last
			// page never carries a token that leads to an empty page.
			page.NextPageToken = treeToken(root, index)
			if err := stream.Send(page); err != nil {
				return err
			}
			page, pageBytes = &repb.GetTreeResponse{}, 0
		}
		page.Directories = append(page.Directories, dir)
		pageBytes += size
	}
	// The last page; empty only when a token pointed past the end (the tree
	// lost subtrees to eviction since the token was issued).
	return stream.Send(page)
}

// treeToken encodes the position of the index-th directory of root's tree.
func treeToken(root digest.Digest, index int) string {
	raw := strings.Join([]string{treeTokenPrefix, digest.Lower(root.Function), root.Hash, strconv.FormatInt(root.Size, 10), strconv.Itoa(index)}, "/")
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

// parseTreeToken returns the index a token resumes at, checking that it was
// issued for this root.
func parseTreeToken(token string, root digest.Digest) (int, error) {
	bad := func(why string) error {
		return invalidf("page_token %q is not a GetTree token of this server: %s", token, why)
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return 0, bad("not base64url")
	}
	parts := strings.Split(string(raw), "/")
	if len(parts) != 5 || parts[0] != treeTokenPrefix {
		return 0, bad("wrong format")
	}
	fn, ok := digest.FunctionFromLower(parts[1])
	if !ok {
		return 0, bad("unknown digest function")
	}
	issued, err := digest.Parse(fn, parts[2]+"/"+parts[3])
	if err != nil {
		return 0, bad("malformed root digest")
	}
	if issued != root {
		return 0, invalidf("page_token was issued for root %s (%s), not for root_digest %s (%s)", issued, issued.Function, root, root.Function)
	}
	index, err := strconv.Atoi(parts[4])
	if err != nil || index < 1 {
		return 0, bad("malformed position")
	}
	return index, nil
}

// treeWalker yields the directories of a tree breadth-first.
type treeWalker struct {
	ctx   context.Context
	store cas.Store
	root  digest.Digest
	queue []digest.Digest
	seen  map[digest.Key]bool
}

func newTreeWalker(ctx context.Context, store cas.Store, root digest.Digest) *treeWalker {
	return &treeWalker{ctx: ctx, store: store, root: root, queue: []digest.Digest{root}, seen: map[digest.Key]bool{root.Key(): true}}
}

// next returns the next present directory and its encoded size, or nil at the
// end.
func (w *treeWalker) next() (*repb.Directory, int, error) {
	for len(w.queue) > 0 {
		d := w.queue[0]
		w.queue = w.queue[1:]
		isRoot := d == w.root
		if d.Size > treeMaxDirectoryBytes {
			return nil, 0, status.Errorf(codes.FailedPrecondition,
				"directory %s in the tree of %s is %d bytes, more than GetTree sends (%d)", d, w.root, d.Size, treeMaxDirectoryBytes)
		}
		data, err := readSmallBlob(w.ctx, w.store, d)
		if errors.Is(err, cas.ErrNotFound) {
			if isRoot {
				return nil, 0, status.Errorf(codes.NotFound, "root directory %s (%s) is not in the CAS", d, d.Function)
			}
			continue // the spec: return the portion present, omit the rest
		}
		if err != nil {
			return nil, 0, err
		}
		dir := &repb.Directory{}
		if err := proto.Unmarshal(data, dir); err != nil {
			if isRoot {
				return nil, 0, invalidf("root_digest %s is not an encoded Directory: %v", d, err)
			}
			return nil, 0, invalidf("blob %s in the tree of %s is not an encoded Directory: %v", d, w.root, err)
		}
		for _, sub := range dir.GetDirectories() {
			sd, err := digest.FromProto(w.root.Function, sub.GetDigest())
			if err != nil {
				return nil, 0, invalidf("directory %s in the tree of %s has subdirectory %q with a bad digest: %v", d, w.root, sub.GetName(), err)
			}
			if !w.seen[sd.Key()] {
				w.seen[sd.Key()] = true
				w.queue = append(w.queue, sd)
			}
		}
		return dir, len(data), nil
	}
	return nil, 0, nil
}
