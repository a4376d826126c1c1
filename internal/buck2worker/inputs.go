package buck2worker

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	pb "github.com/hearth-build/hearth/internal/workerproto/workerprotocolpb"
)

// inputLister builds WorkRequest.inputs from the files under the configured
// directories, each with its SHA-256 as lower-case hex (Hearth's convention
// for WorkRequest digests). A digest is recomputed only when the file's size,
// modification time, change time or inode changed, so an unchanged tree
// costs one stat per file per request.
type inputLister struct {
	workDir string
	dirs    []string // as configured: relative to workDir, or absolute

	mu    sync.Mutex
	cache map[string]cachedDigest
}

type cachedDigest struct {
	size         int64
	mtime, ctime time.Time
	ino          uint64
	digest       []byte
}

func newInputLister(workDir string, dirs []string) (*inputLister, error) {
	for _, d := range dirs {
		full := d
		if !filepath.IsAbs(d) {
			full = filepath.Join(workDir, d)
		}
		if fi, err := os.Stat(full); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("input directory %q is not a directory (%v)", d, err)
		}
	}
	return &inputLister{workDir: workDir, dirs: dirs, cache: map[string]cachedDigest{}}, nil
}

// list returns the inputs in walk order; nil when no directory is set.
func (l *inputLister) list() ([]*pb.Input, error) {
	if len(l.dirs) == 0 {
		return nil, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	var inputs []*pb.Input
	for _, dir := range l.dirs {
		root := dir
		if !filepath.IsAbs(dir) {
			root = filepath.Join(l.workDir, dir)
		}
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() {
				return nil
			}
			digest, err := l.digest(path)
			if err != nil {
				return err
			}
			name := path
			if !filepath.IsAbs(dir) {
				if name, err = filepath.Rel(l.workDir, path); err != nil {
					return err
				}
			}
			inputs = append(inputs, &pb.Input{Path: name, Digest: digest})
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return inputs, nil
}

func (l *inputLister) digest(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	key := cachedDigest{size: fi.Size(), mtime: fi.ModTime()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		key.ino, key.ctime = st.Ino, time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	}
	if c, ok := l.cache[path]; ok && c.size == key.size && c.mtime.Equal(key.mtime) &&
		c.ctime.Equal(key.ctime) && c.ino == key.ino {
		return c.digest, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	key.digest = []byte(hex.EncodeToString(h.Sum(nil)))
	l.cache[path] = key
	return key.digest, nil
}
