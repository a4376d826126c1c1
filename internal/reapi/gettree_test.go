package reapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// testTree is a tree stored in the CAS:
//
//	root ─┬─ a ── c ── (file)
//	      └─ b ─┬─ c        (c again: sent once)
//	            ├─ e        (empty directory: the empty blob)
//	            └─ gone     (never uploaded: skipped)
type testTree struct {
	root digest.Digest
	// want is the expected traversal: root, a, b, c, e.
	want []*repb.Directory
}

func storeTestTree(t *testing.T, s cas.Store, fn digest.Function) testTree {
	t.Helper()
	file := putBlobs(t, s, fn, []byte("file contents"))[0]
	c := &repb.Directory{Files: []*repb.FileNode{{Name: "f", Digest: file.Proto()}}}
	cd := putProto(t, s, fn, c)
	e := &repb.Directory{}
	ed := digest.Empty(fn) // an empty Directory encodes to zero bytes
	gone := blob(fn, "a directory nobody uploaded")
	a := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "c", Digest: cd.Proto()}}}
	b := &repb.Directory{Directories: []*repb.DirectoryNode{
		{Name: "c", Digest: cd.Proto()}, {Name: "e", Digest: ed.Proto()}, {Name: "gone", Digest: gone.Proto()}}}
	ad, bd := putProto(t, s, fn, a), putProto(t, s, fn, b)
	root := &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "a", Digest: ad.Proto()}, {Name: "b", Digest: bd.Proto()}}}
	return testTree{root: putProto(t, s, fn, root), want: []*repb.Directory{root, a, b, c, e}}
}

// getTree runs one GetTree call and returns its pages.
func getTree(t *testing.T, client repb.ContentAddressableStorageClient, req *repb.GetTreeRequest) ([]*repb.GetTreeResponse, error) {
	t.Helper()
	stream, err := client.GetTree(context.Background(), req)
	if err != nil {
		return nil, err
	}
	var pages []*repb.GetTreeResponse
	for {
		page, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return pages, nil
		}
		if err != nil {
			return pages, err
		}
		pages = append(pages, page)
	}
}

func sameDirectories(t *testing.T, got, want []*repb.Directory) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d directories, want %d", len(got), len(want))
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Errorf("directory %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestGetTreePages(t *testing.T) {
	for _, fn := range []digest.Function{digest.SHA256, digest.BLAKE3} {
		conn, cfg := startServer(t)
		client := repb.NewContentAddressableStorageClient(conn)
		tree := storeTestTree(t, cfg.CAS, fn)
		for _, tc := range []struct {
			pageSize  int32
			wantPages int
		}{{0, 1}, {1, 5}, {2, 3}, {5, 1}, {100, 1}} {
			t.Run(fmt.Sprintf("%s/page_size=%d", fn, tc.pageSize), func(t *testing.T) {
				pages, err := getTree(t, client, &repb.GetTreeRequest{DigestFunction: fn, RootDigest: tree.root.Proto(), PageSize: tc.pageSize})
				if err != nil {
					t.Fatal(err)
				}
				if len(pages) != tc.wantPages {
					t.Fatalf("page_size %d: %d pages, want %d", tc.pageSize, len(pages), tc.wantPages)
				}
				var all []*repb.Directory
				for i, p := range pages {
					if n := len(p.GetDirectories()); tc.pageSize > 0 && n > int(tc.pageSize) || n == 0 {
						t.Errorf("page %d has %d directories (page_size %d)", i, n, tc.pageSize)
					}
					if last := i == len(pages)-1; last != (p.GetNextPageToken() == "") {
						t.Errorf("page %d of %d: next_page_token %q", i, len(pages), p.GetNextPageToken())
					}
					all = append(all, p.GetDirectories()...)

					// Every token resumes, in a new call, exactly where the
					// next page of this call starts.
					if p.GetNextPageToken() == "" {
						continue
					}
					rest, err := getTree(t, client, &repb.GetTreeRequest{DigestFunction: fn, RootDigest: tree.root.Proto(), PageSize: tc.pageSize, PageToken: p.GetNextPageToken()})
					if err != nil {
						t.Fatalf("resuming after page %d: %v", i, err)
					}
					var resumed []*repb.Directory
					for _, rp := range rest {
						resumed = append(resumed, rp.GetDirectories()...)
					}
					sameDirectories(t, resumed, tree.want[len(all):])
				}
				sameDirectories(t, all, tree.want)
			})
		}
	}
}

func TestGetTreeErrors(t *testing.T) {
	conn, cfg := startServer(t)
	client := repb.NewContentAddressableStorageClient(conn)
	tree := storeTestTree(t, cfg.CAS, digest.SHA256)
	other := storeTestTree(t, cfg.CAS, digest.BLAKE3)
	pages, err := getTree(t, client, &repb.GetTreeRequest{RootDigest: tree.root.Proto(), PageSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	token := pages[0].GetNextPageToken()
	notDirectory := putBlobs(t, cfg.CAS, digest.SHA256, []byte{0xff, 0xff, 0xff})[0]
	badChild := putProto(t, cfg.CAS, digest.SHA256, &repb.Directory{Directories: []*repb.DirectoryNode{{Name: "x", Digest: &repb.Digest{Hash: "nope", SizeBytes: 1}}}})
	for name, tc := range map[string]struct {
		req  *repb.GetTreeRequest
		want codes.Code
	}{
		"missing root":            {&repb.GetTreeRequest{RootDigest: blob(digest.SHA256, "no such root").Proto()}, codes.NotFound},
		"root is not a Directory": {&repb.GetTreeRequest{RootDigest: notDirectory.Proto()}, codes.InvalidArgument},
		"child digest malformed":  {&repb.GetTreeRequest{RootDigest: badChild.Proto()}, codes.InvalidArgument},
		"no root digest":          {&repb.GetTreeRequest{}, codes.InvalidArgument},
		"malformed root digest":   {&repb.GetTreeRequest{RootDigest: &repb.Digest{Hash: "xyz", SizeBytes: 1}}, codes.InvalidArgument},
		"negative page size":      {&repb.GetTreeRequest{RootDigest: tree.root.Proto(), PageSize: -1}, codes.InvalidArgument},
		"garbage token":           {&repb.GetTreeRequest{RootDigest: tree.root.Proto(), PageToken: "not a token!"}, codes.InvalidArgument},
		"base64 garbage token":    {&repb.GetTreeRequest{RootDigest: tree.root.Proto(), PageToken: "aGVsbG8"}, codes.InvalidArgument},
		"token of another root":   {&repb.GetTreeRequest{RootDigest: other.root.Proto(), DigestFunction: digest.BLAKE3, PageToken: token}, codes.InvalidArgument},
		"unsupported function":    {&repb.GetTreeRequest{RootDigest: tree.root.Proto(), DigestFunction: repb.DigestFunction_SHA384}, codes.InvalidArgument},
		"bad instance":            {&repb.GetTreeRequest{RootDigest: tree.root.Proto(), InstanceName: "x/operations"}, codes.InvalidArgument},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := getTree(t, client, tc.req)
			wantCode(t, err, tc.want)
		})
	}
}

// The page token names a root and a position, not a stream: a token whose
// position is past the end of the (shrunk) tree yields one empty last page.
func TestGetTreeTokenPastTheEnd(t *testing.T) {
	conn, cfg := startServer(t)
	client := repb.NewContentAddressableStorageClient(conn)
	tree := storeTestTree(t, cfg.CAS, digest.SHA256)
	pages, err := getTree(t, client, &repb.GetTreeRequest{RootDigest: tree.root.Proto(), PageToken: treeToken(tree.root, 99)})
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) != 1 || len(pages[0].GetDirectories()) != 0 || pages[0].GetNextPageToken() != "" {
		t.Fatalf("pages = %v, want one empty last page", pages)
	}
}
