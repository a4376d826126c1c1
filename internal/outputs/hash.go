package outputs

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hearth-build/hearth/internal/digest"
)

// copyBufferSize is the read size for hashing and uploading files: large
// enough to keep system calls rare, small enough that a pool of workers
// holds little memory whatever the size of the files.
const copyBufferSize = 256 << 10

// buffers recycles copy buffers: every action collects outputs and streams,
// and allocating fresh 256 KiB buffers for each was a measurable share of a
// small action's CPU (garbage collection).
var buffers = sync.Pool{New: func() any { b := make([]byte, copyBufferSize); return &b }}

// queuedFile is a regular file handed to the hash pool. The pool fills node
// (digest, is_executable, node properties) and d; they are read only after
// the pool's wait returns.
type queuedFile struct {
	rel  string
	node *repb.FileNode
	d    digest.Digest
}

type hashJob struct {
	fd int
	q  *queuedFile
}

// hashPool hashes files on a bounded number of goroutines while the walker
// keeps listing directories, so a large output tree costs about the time of
// its biggest sequential read rather than the sum of all of them.
type hashPool struct {
	ctx   context.Context
	fn    digest.Function
	props props
	jobs  chan hashJob
	wg    sync.WaitGroup

	mu  sync.Mutex
	err error // first failure
}

func newHashPool(ctx context.Context, fn digest.Function, pr props, workers int) *hashPool {
	if workers < 1 {
		workers = 1
	}
	p := &hashPool{ctx: ctx, fn: fn, props: pr, jobs: make(chan hashJob, 2*workers)}
	p.wg.Add(workers)
	for range workers {
		go p.work()
	}
	return p
}

// submit queues fd (an open regular file, which the pool closes) for
// hashing. It fails, closing fd, once any earlier job failed or ctx is done.
func (p *hashPool) submit(fd int, q *queuedFile) error {
	if err := p.failed(); err != nil {
		unix.Close(fd)
		return err
	}
	select {
	case p.jobs <- hashJob{fd: fd, q: q}:
		return nil
	case <-p.ctx.Done():
		unix.Close(fd)
		p.fail(p.ctx.Err())
		return p.ctx.Err()
	}
}

// failed returns the first error of the pool, if any.
func (p *hashPool) failed() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *hashPool) fail(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.err == nil {
		p.err = err
	}
}

// wait stops accepting jobs, waits for the queued ones and returns the
// first error.
func (p *hashPool) wait() error {
	close(p.jobs)
	p.wg.Wait()
	return p.failed()
}

func (p *hashPool) work() {
	defer p.wg.Done()
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	for j := range p.jobs {
		if p.failed() != nil || p.ctx.Err() != nil {
			unix.Close(j.fd)
			p.fail(p.ctx.Err())
			continue
		}
		if err := p.hash(j, buf); err != nil {
			p.fail(err)
		}
	}
}

func (p *hashPool) hash(j hashJob, buf []byte) error {
	f := os.NewFile(uintptr(j.fd), j.q.rel)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(j.fd, &st); err != nil {
		return fmt.Errorf("outputs: stat %q: %w", j.q.rel, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: %q changed into a %s while outputs were collected", ErrUnexpectedType, j.q.rel, typeName(st.Mode))
	}
	d, err := hashReader(p.ctx, p.fn, f, buf)
	if err != nil {
		return fmt.Errorf("outputs: hash %q: %w", j.q.rel, err)
	}
	j.q.d = d
	j.q.node.Digest = d.Proto()
	j.q.node.IsExecutable = st.Mode&0o111 != 0
	j.q.node.NodeProperties = nodeProperties(p.props, &st)
	return nil
}

// hashReader hashes everything r yields with fn, checking ctx between reads
// so that cancelling an action stops the hashing of a huge output.
func hashReader(ctx context.Context, fn digest.Function, r io.Reader, buf []byte) (digest.Digest, error) {
	h := digest.NewHasher(fn)
	var size int64
	for {
		if err := ctx.Err(); err != nil {
			return digest.Digest{}, err
		}
		n, err := r.Read(buf)
		h.Write(buf[:n])
		size += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return digest.Digest{}, err
		}
	}
	return digest.Digest{Function: fn, Hash: hex.EncodeToString(h.Sum(nil)), Size: size}, nil
}

// nodeProperties returns the requested node properties of a file whose
// metadata is st, or nil when none were requested.
func nodeProperties(pr props, st *unix.Stat_t) *repb.NodeProperties {
	if !pr.any() {
		return nil
	}
	np := &repb.NodeProperties{}
	if pr.mtime {
		np.Mtime = timestamppb.New(time.Unix(st.Mtim.Sec, st.Mtim.Nsec))
	}
	if pr.unixMode {
		np.UnixMode = wrapperspb.UInt32(st.Mode & 0o7777)
	}
	return np
}
