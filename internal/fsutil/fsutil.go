// Package fsutil owns the file-system disciplines every part of Hearth
// shares: publishing a file so that it survives a crash once acknowledged
// (write to a temporary file, fsync, rename, fsync the directory), removing
// a directory tree that an action may have left read-only, and creating the
// temporary files of small writes ahead of need (SpareFiles).
package fsutil

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// WriteFileAtomic writes data to path so that readers see either the old
// file or the whole new one, and the new one survives a crash once this
// returns. The temporary file is made beside path.
func WriteFileAtomic(path string, data []byte) error {
	return WriteFileDurably(filepath.Dir(path), path, data)
}

// WriteFileDurably is WriteFileAtomic with the temporary file made in tmpDir,
// which must be on the same file system as final.
func WriteFileDurably(tmpDir, final string, data []byte) error {
	return writeFile(tmpDir, final, data, true)
}

// WriteFileAtomicNoSync publishes data at final by rename, without fsync:
// readers see the old file or the whole new one, but after a power loss the
// new one may be missing or empty. For caches that tolerate that.
func WriteFileAtomicNoSync(tmpDir, final string, data []byte) error {
	return writeFile(tmpDir, final, data, false)
}

func writeFile(tmpDir, final string, data []byte, durable bool) (err error) {
	f, err := os.CreateTemp(tmpDir, ".tmp-*")
	if err != nil {
		return fmt.Errorf("creating a temporary file for %s: %w", final, err)
	}
	return PublishFile(f, final, data, durable)
}

// PublishFile writes data to f, an empty temporary file on final's file
// system (a SpareFiles one, say), and renames it to final; durable, it
// fsyncs the file first and the directory after. f is closed, and removed
// on failure.
func PublishFile(f *os.File, final string, data []byte, durable bool) (err error) {
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", final, err)
	}
	if durable {
		if err = f.Sync(); err != nil {
			return fmt.Errorf("syncing %s: %w", final, err)
		}
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", final, err)
	}
	if err = os.Rename(f.Name(), final); err != nil {
		return fmt.Errorf("publishing %s: %w", final, err)
	}
	if !durable {
		return nil
	}
	return SyncDir(filepath.Dir(final))
}

// SyncDir fsyncs a directory, making the names created in it durable.
func SyncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("opening directory to sync: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}

// RemoveAll removes path like os.RemoveAll, first making directories
// writable where that is what stops it: actions and workers may leave
// read-only directories behind, and nothing of them may survive.
func RemoveAll(path string) error {
	if err := os.RemoveAll(path); err == nil {
		return nil
	}
	_ = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			_ = os.Chmod(p, 0o700) // before WalkDir reads it
		}
		return nil
	})
	return os.RemoveAll(path)
}
