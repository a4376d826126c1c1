package main

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"github.com/hearth-build/hearth/internal/cas"
)

// Scenario restart: how long a disk store of many blobs takes to rebuild its
// index when it is opened, against a plain filepath.WalkDir over the same
// tree (the least any rebuild from directory listings can do). The store is
// created with the cas package itself, which fsyncs every blob, so creating
// it is slow; that time is reported separately. A later run with the same
// -work directory reuses the store.

func runRestart(ctx context.Context, b *bench) (*result, error) {
	n := b.opts.restartBlobs
	dir, err := b.scratch("restart")
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(dir, "data")
	casDir := filepath.Join(dataDir, "cas")
	r := &result{}
	if err := createStore(ctx, b, r, casDir, n); err != nil {
		return nil, err
	}

	walk := func() (time.Duration, error) {
		start := time.Now()
		files, err := countFiles(casDir)
		if err == nil && files != n {
			err = fmt.Errorf("WalkDir found %d files in %s, want %d", files, casDir, n)
		}
		return time.Since(start), err
	}
	open := func(maxBytes int64) (time.Duration, error) {
		runtime.GC()
		start := time.Now()
		d, err := cas.NewDisk(casDir, cas.DiskOptions{MaxBytes: maxBytes, Logger: quietLogger()})
		took := time.Since(start)
		if err == nil && d.Count() != n {
			err = fmt.Errorf("NewDisk indexed %d blobs, want %d", d.Count(), n)
		}
		return took, err
	}
	// Cold: each measurement starts with an empty page cache, so directory
	// blocks and inodes come from the disk, as after a reboot.
	var walkCold, openCold, boundedCold, walkWarm, openWarm time.Duration
	steps := []struct {
		name string
		cold bool
		out  *time.Duration
		f    func() (time.Duration, error)
	}{
		{"WalkDir, cold", true, &walkCold, walk},
		{"NewDisk, cold", true, &openCold, func() (time.Duration, error) { return open(0) }},
		{"NewDisk bounded, cold", true, &boundedCold, func() (time.Duration, error) { return open(1 << 50) }},
		{"WalkDir, warm", false, &walkWarm, walk},
		{"NewDisk, warm", false, &openWarm, func() (time.Duration, error) { return open(0) }},
	}
	for _, s := range steps {
		if s.cold {
			b.coldCache()
		}
		b.logger.Info("restart: measuring", "step", s.name)
		if *s.out, err = s.f(); err != nil {
			return nil, fmt.Errorf("%s: %w", s.name, err)
		}
	}

	b.logger.Info("restart: hearth serve, cold")
	b.coldCache()
	srv, err := b.startHearth(ctx, dataDir, filepath.Join(dir, "hearth.log"))
	if err != nil {
		return nil, err
	}
	defer srv.kill()
	startup := srv.ready.Sub(srv.started)
	line, ok := srv.log.find(`msg="CAS index loaded"`)
	if !ok {
		return nil, fmt.Errorf("hearth logged no \"CAS index loaded\" line")
	}
	serveLoad, err := time.ParseDuration(logValue(line, "took"))
	if err != nil {
		return nil, fmt.Errorf("CAS index loaded line %q: took: %w", line, err)
	}
	if got := logValue(line, "blobs"); got != strconv.Itoa(n) {
		return nil, fmt.Errorf("hearth indexed %s blobs, want %d: %s", got, n, line)
	}
	mem, err := readProcMemory(srv.PID())
	if err != nil {
		return nil, err
	}
	if err := srv.stop(); err != nil {
		return nil, err
	}

	name := fmt.Sprintf("Restart, %s blobs", formatCount(float64(n)))
	add := func(measure string, v time.Duration, baseName string, base time.Duration) {
		r.add(row{Scenario: name, Measure: measure, Hearth: formatDuration(v),
			Baseline: baseName + ": " + formatDuration(base), Ratio: ratio(v.Seconds(), base.Seconds())})
	}
	add("cas.NewDisk index rebuild, cold cache", openCold, "WalkDir, cold", walkCold)
	add("cas.NewDisk bounded (stats every blob), cold", boundedCold, "WalkDir, cold", walkCold)
	add("cas.NewDisk index rebuild, warm cache", openWarm, "WalkDir, warm", walkWarm)
	add("hearth serve: CAS index loaded, cold", serveLoad, "WalkDir, cold", walkCold)
	add("hearth serve: start → serving, cold", startup, "WalkDir, cold", walkCold)
	r.add(row{Scenario: name, Measure: "hearth serve RSS after startup", Hearth: formatBytes(mem.RSS),
		Baseline: fmt.Sprintf("%d bytes/blob", mem.RSS/int64(n))})
	r.note("%s; the bounded store (MaxBytes set) stats every blob for its mtime to seed the LRU order, the unbounded one (hearth serve's default) only lists directories", b.cacheNote())
	return r, nil
}

// createStore fills casDir with n small blobs through the cas package,
// unless a previous run left exactly that (marked by a file beside it).
func createStore(ctx context.Context, b *bench, r *result, casDir string, n int) error {
	marker := filepath.Join(filepath.Dir(casDir), fmt.Sprintf("created-%d-blobs", n))
	if _, err := os.Stat(marker); err == nil {
		r.note("setup: reused the store of %s blobs a previous run created in %s", formatCount(float64(n)), casDir)
		return nil
	}
	if err := os.RemoveAll(casDir); err != nil {
		return err
	}
	b.logger.Info("restart: creating blobs with cas.Put", "blobs", n, "writers", b.opts.restartWriters)
	disk, err := cas.NewDisk(casDir, cas.DiskOptions{Logger: quietLogger()})
	if err != nil {
		return err
	}
	start := time.Now()
	if _, err := storeSmallBlobs(ctx, disk, n, "restart", b.opts.restartWriters); err != nil {
		return err
	}
	took := time.Since(start)
	r.note("setup: created %s blobs with cas.Put on %d goroutines in %s (%s blobs/s; every blob fsynced)",
		formatCount(float64(n)), b.opts.restartWriters, took.Round(time.Second), formatCount(perSecond(float64(n), took)))
	return os.WriteFile(marker, nil, 0o644)
}

// countFiles counts the regular files below root without stat-ing them.
func countFiles(root string) (int, error) {
	n := 0
	err := filepath.WalkDir(root, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n, err
}
