package actioncache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/hearth-build/hearth/internal/fsutil"
)

// maxStoredResultBytes bounds what Get reads from one file. Results arrive in
// gRPC messages of at most a few MiB, so a larger file is damage, not data.
const maxStoredResultBytes = 64 << 20

// Disk stores each ActionResult as one serialized proto file:
//
//	{dir}/{digest function}/{instance key}/{hash[:2]}/{hash}-{size}
//
// where the instance key is the first 32 hex characters of the SHA-256 of the
// instance name, so any instance name (empty, with slashes, with "..") maps to
// one safe directory. Files are written to {dir}/tmp, fsynced and renamed into
// place, so a reader sees either the old result or the new one, never part of
// one, and an acknowledged Put survives a crash.
//
// One Disk owns its directory: NewDisk empties {dir}/tmp, which holds only the
// leftovers of writes interrupted by a crash.
type Disk struct {
	root string
	tmp  string
	// madeDirs remembers directories known to exist durably, so a Put into a
	// familiar shard costs no mkdir or directory fsync beyond the rename's.
	madeDirs *sync.Map // string → struct{}
	// looseDirs remembers directories a relaxed Put created without making
	// their entries durable: relaxed Puts use them as they are, and the
	// first durable Put into one syncs its parents first.
	looseDirs *sync.Map // string → struct{}
	// durable: Put fsyncs the file and its directory (see Relaxed).
	durable bool
	// spares, when set, are Put's temporary files created ahead of need.
	spares *fsutil.SpareFiles
}

// NewDisk opens (creating if needed) an action cache rooted at dir.
func NewDisk(dir string) (*Disk, error) {
	root, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("action cache directory %q: %w", dir, err)
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("creating action cache directory: %w", err)
	}
	d := &Disk{root: root, tmp: filepath.Join(root, "tmp"), madeDirs: &sync.Map{}, looseDirs: &sync.Map{}, durable: true}
	if err := fsutil.SyncDir(filepath.Dir(root)); err != nil {
		return nil, err
	}
	d.madeDirs.Store(root, struct{}{}) // what is above the cache is not its to sync
	if err := os.RemoveAll(d.tmp); err != nil {
		return nil, fmt.Errorf("clearing interrupted writes: %w", err)
	}
	if err := d.ensureDir(d.tmp, true); err != nil {
		return nil, err
	}
	return d, nil
}

// path returns where the result of action under instance lives. The digest is
// validated again here because its hash becomes a file name: a Digest built
// without digest.New must not be able to name "../x".
func (d *Disk) path(instance string, action digest.Digest) (string, error) {
	action, err := digest.New(action.Function, action.Hash, action.Size)
	if err != nil {
		return "", fmt.Errorf("action digest: %w", err)
	}
	sum := sha256.Sum256([]byte(instance))
	instanceKey := hex.EncodeToString(sum[:16])
	return filepath.Join(d.root, digest.Lower(action.Function), instanceKey, action.Hash[:2],
		action.Hash+"-"+strconv.FormatInt(action.Size, 10)), nil
}

// Get returns the stored result. A missing or unreadable (damaged) entry is
// ErrNotFound, so the client runs the action again and its Put repairs it.
func (d *Disk) Get(ctx context.Context, instance string, action digest.Digest) (*repb.ActionResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p, err := d.path(instance, action)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: no result for action %s in instance %q", ErrNotFound, action, instance)
	}
	if err != nil {
		return nil, fmt.Errorf("reading action result: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxStoredResultBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading action result %s: %w", p, err)
	}
	result := &repb.ActionResult{}
	if len(data) > maxStoredResultBytes {
		err = fmt.Errorf("file is larger than %d bytes", maxStoredResultBytes)
	} else {
		err = proto.Unmarshal(data, result)
	}
	if err != nil {
		slog.Warn("action cache entry is damaged; treating it as a miss", "path", p, "err", err)
		return nil, fmt.Errorf("%w: stored result for action %s is damaged: %v", ErrNotFound, action, err)
	}
	return result, nil
}

// Put stores result durably, replacing any earlier result of the action.
func (d *Disk) Put(ctx context.Context, instance string, action digest.Digest, result *repb.ActionResult) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if result == nil {
		return fmt.Errorf("%w: action result is missing", ErrInvalid)
	}
	p, err := d.path(instance, action)
	if err != nil {
		return err
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(result)
	if err != nil {
		return fmt.Errorf("encoding action result: %w", err)
	}
	dir := filepath.Dir(p)
	if err := d.ensureDir(dir, d.durable); err != nil {
		return err
	}
	if d.spares != nil {
		f, err := d.spares.Create()
		if err != nil {
			return fmt.Errorf("creating a temporary file for %s: %w", p, err)
		}
		return fsutil.PublishFile(f, p, data, d.durable)
	}
	if !d.durable {
		return fsutil.WriteFileAtomicNoSync(d.tmp, p, data)
	}
	return fsutil.WriteFileDurably(d.tmp, p, data)
}

// KeepSpareFiles makes Put take its temporary files from n created ahead of
// need (fsutil.SpareFiles: a file's creation is the slow part of writing a
// small one), for this Disk and the Relaxed views made after. Call it once,
// before the first Put; Close removes the spares.
func (d *Disk) KeepSpareFiles(n int) {
	d.spares = fsutil.NewSpareFiles(d.tmp, ".tmp-*", n)
}

// Close removes the spare files, if any. The cache must not be written to
// after.
func (d *Disk) Close() {
	if d.spares != nil {
		d.spares.Close()
	}
}

// Relaxed returns a view of the same cache whose Put skips the fsyncs (the
// rename stays atomic, so a reader sees a whole entry or none). It is for
// results an executor caches on its own: nobody was promised they survive a
// power loss, an entry lost or damaged by one reads as a miss and is
// recomputed, and the two fsyncs would otherwise sit in every action's
// reply path. UpdateActionResult from clients always goes through the
// durable Disk.
func (d *Disk) Relaxed() *Disk {
	return &Disk{root: d.root, tmp: d.tmp, madeDirs: d.madeDirs, looseDirs: d.looseDirs, durable: false, spares: d.spares}
}

// syncDir is fsutil.SyncDir; the tests count its calls.
var syncDir = fsutil.SyncDir

// ensureDir creates dir and any missing parents. Durably, it fsyncs the
// parent of each directory (once per directory and process), so that a
// later rename into dir is reachable after a crash; only then is dir
// remembered in madeDirs. A relaxed Put needs no such promise (a directory
// lost with a power loss loses only entries that are allowed to be lost),
// so its new directories are remembered as loose and synced by the first
// durable Put that passes through them. In a young cache nearly every result
// lands in a new shard directory, and the directory fsync was most of a
// relaxed Put.
func (d *Disk) ensureDir(dir string, durable bool) error {
	if _, ok := d.madeDirs.Load(dir); ok {
		return nil
	}
	if !durable {
		if _, ok := d.looseDirs.Load(dir); ok {
			return nil
		}
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := d.ensureDir(parent, durable); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("creating action cache directory: %w", err)
	}
	if !durable {
		d.looseDirs.Store(dir, struct{}{})
		return nil
	}
	// Whoever created dir (a relaxed Put, an earlier process), its entry
	// is durable once its parent is synced.
	if err := syncDir(parent); err != nil {
		return err
	}
	d.madeDirs.Store(dir, struct{}{})
	return nil
}

// Sync flushes the file system holding the cache (syncfs), so that entries
// written through Relaxed are durable too; for a clean shutdown.
func (d *Disk) Sync() error {
	f, err := os.Open(d.root)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncing the action cache: %w", err)
	}
	return nil
}
