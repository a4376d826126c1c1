package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/reapi"
)

type blob struct {
	d    digest.Digest
	data []byte
}

func main() {
	n := 1000
	rng := rand.NewChaCha8([32]byte{byte(time.Now().UnixNano())})
	mk := func() []blob {
		bs := make([]blob, n)
		for i := range bs {
			data := make([]byte, 4096)
			rng.Read(data)
			bs[i] = blob{digest.Compute(digest.SHA256, data), data}
		}
		return bs
	}
	root, _ := os.MkdirTemp("/tmp", "probe")
	defer os.RemoveAll(root)
	ctx := context.Background()
	q := slog.New(slog.DiscardHandler)
	put8 := func(s cas.Store, bs []blob) time.Duration {
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1) - 1)
					if i >= len(bs) {
						return
					}
					if err := cas.Put(ctx, s, bs[i].d, bs[i].data); err != nil {
						panic(err)
					}
				}
			}()
		}
		wg.Wait()
		return time.Since(start)
	}
	for _, mode := range []string{"disk", "verify", "metrics", "grpc", "disk"} {
		d, err := cas.NewDisk(filepath.Join(root, mode+fmt.Sprint(time.Now().UnixNano())), cas.DiskOptions{Logger: q})
		if err != nil {
			panic(err)
		}
		bs := mk()
		var took time.Duration
		switch mode {
		case "disk":
			took = put8(d, bs)
		case "verify":
			took = put8(cas.NewVerifying(d), bs)
		case "metrics":
			took = put8(cas.NewMetrics(cas.NewVerifying(d), nil), bs)
		case "grpc":
			s := grpc.NewServer(grpc.MaxRecvMsgSize(reapi.MaxRecvMsgSize))
			reapi.Register(s, reapi.Config{CAS: cas.NewMetrics(cas.NewVerifying(d), nil)})
			lis, _ := net.Listen("tcp", "127.0.0.1:0")
			go s.Serve(lis)
			conn, _ := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(16<<20)))
			c := repb.NewContentAddressableStorageClient(conn)
			req := &repb.BatchUpdateBlobsRequest{}
			for _, b := range bs {
				req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: b.d.Proto(), Data: b.data})
			}
			start := time.Now()
			if _, err := c.BatchUpdateBlobs(ctx, req); err != nil {
				panic(err)
			}
			took = time.Since(start)
			s.Stop()
		}
		fmt.Printf("%-8s %6.0f blobs/s\n", mode, float64(n)/took.Seconds())
	}
}
