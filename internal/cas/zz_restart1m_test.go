package cas

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"
	"log/slog"
	"syscall"
)

func TestZZRestart1M(t *testing.T) {
	dir := "/tmp/cas1m"
	if _, err := os.Stat(dir); err != nil {
		for i := 0; i < 256; i++ {
			os.MkdirAll(filepath.Join(dir, "sha256", shardNames[i]), 0o755)
		}
		start := time.Now()
		var b [8]byte
		for i := 0; i < 1_000_000; i++ {
			binary.LittleEndian.PutUint64(b[:], uint64(i))
			h := sha256.Sum256(b[:])
			hs := hex.EncodeToString(h[:])
			f, err := os.OpenFile(filepath.Join(dir, "sha256", hs[:2], hs+"-0"), os.O_CREATE|os.O_WRONLY, 0o444)
			if err != nil { t.Fatal(err) }
			f.Close()
		}
		t.Logf("created in %v", time.Since(start))
	}
	for _, max := range []int64{0, 1 << 40} {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		before := ms.HeapAlloc
		var ru0, ru1 syscall.Rusage
		syscall.Getrusage(0, &ru0)
		start := time.Now()
		d, err := NewDisk(dir, DiskOptions{MaxBytes: max, Logger: slog.New(slog.DiscardHandler)})
		if err != nil { t.Fatal(err) }
		el := time.Since(start)
		syscall.Getrusage(0, &ru1)
		t.Logf("cpu user %v sys %v", time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()), time.Duration(ru1.Stime.Nano()-ru0.Stime.Nano()))
		runtime.GC()
		runtime.ReadMemStats(&ms)
		t.Logf("max=%d: %d blobs in %v, heap +%d MB", max, d.Count(), el, (ms.HeapAlloc-before)>>20)
		runtime.KeepAlive(d)
	}
}
