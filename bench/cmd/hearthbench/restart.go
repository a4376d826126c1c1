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
	// Not b.scratch: a store left by an earlier run with the same -work is
	// reused, since creating it takes minutes (createStore checks it).
	dir := filepath.Join(b.work, "restart")
	dataDir := filepath.Join(dir, "data")
	casDir := filepath.Join(dataDir, "cas")
	r := &result{}
	if err := createStore(ctx, b, r, casDir, n); err != nil {
		return nil, err
	}

	var openCold, boundedCold, serveLoad, serveStart, openWarm comparison
	var rss int64
	for round := range b.opts.rounds {
		b.logger.Info("restart: round", "round", round+1)
		rd, err := restartRound(ctx, b, dataDir, n)
		if err != nil {
			return nil, err
		}
		openCold.add(rd.openCold, rd.walkCold)
		boundedCold.add(rd.boundedCold, rd.walkCold)
		serveLoad.add(rd.serveLoad, rd.walkCold)
		serveStart.add(rd.serveStart, rd.walkCold)
		openWarm.add(rd.openWarm, rd.walkWarm)
		rss = max(rss, rd.serveRSS)
	}

	name := fmt.Sprintf("Restart, %s blobs", formatCount(float64(n)))
	r.add(openCold.row(name, "cas.NewDisk index rebuild, cold cache", "WalkDir, cold", secondsFormat))
	r.add(boundedCold.row(name, "cas.NewDisk bounded (stats every blob), cold", "WalkDir, cold", secondsFormat))
	r.add(openWarm.row(name, "cas.NewDisk index rebuild, warm cache", "WalkDir, warm", secondsFormat))
	r.add(serveLoad.row(name, "hearth serve: CAS index loaded (its log's took=), cold", "WalkDir, cold", secondsFormat))
	r.add(serveStart.row(name, "hearth serve: process start → serving, cold", "WalkDir, cold", secondsFormat))
	r.add(row{Scenario: name, Measure: "hearth serve RSS after startup", Hearth: formatBytes(rss),
		Baseline: fmt.Sprintf("%d bytes/blob", rss/int64(n))})
	r.note("%s; the bounded store (MaxBytes set) stats every blob for its mtime to seed the LRU order, the unbounded one (hearth serve's default) only lists directories", b.cacheNote())
	return r, nil
}

// restartSample is one round's times in seconds.
type restartSample struct {
	walkCold, openCold, boundedCold, serveLoad, serveStart float64
	walkWarm, openWarm                                     float64
	serveRSS                                               int64
}

// restartRound times every way of opening the store of n blobs in
// dataDir/cas.
func restartRound(ctx context.Context, b *bench, dataDir string, n int) (rd restartSample, err error) {
	casDir := filepath.Join(dataDir, "cas")
	walk := func() (float64, error) {
		start := time.Now()
		files, err := countFiles(casDir)
		if err == nil && files != n {
			err = fmt.Errorf("WalkDir found %d files in %s, want %d", files, casDir, n)
		}
		return time.Since(start).Seconds(), err
	}
	open := func(maxBytes int64) func() (float64, error) {
		return func() (float64, error) {
			runtime.GC()
			start := time.Now()
			d, err := cas.NewDisk(casDir, cas.DiskOptions{MaxBytes: maxBytes, Logger: quietLogger()})
			took := time.Since(start)
			if err == nil && d.Count() != n {
				err = fmt.Errorf("NewDisk indexed %d blobs, want %d", d.Count(), n)
			}
			return took.Seconds(), err
		}
	}
	// Cold: the page cache is dropped first, so directory blocks and inodes
	// come from the disk, as after a reboot. Warm: right after a cold step.
	steps := []struct {
		name string
		cold bool
		out  *float64
		f    func() (float64, error)
	}{
		{"WalkDir, cold", true, &rd.walkCold, walk},
		{"NewDisk, cold", true, &rd.openCold, open(0)},
		{"NewDisk bounded, cold", true, &rd.boundedCold, open(1 << 50)},
		{"WalkDir, warm", false, &rd.walkWarm, walk},
		{"NewDisk, warm", false, &rd.openWarm, open(0)},
		{"hearth serve, cold", true, &rd.serveLoad, func() (float64, error) {
			var err error
			rd.serveLoad, rd.serveStart, rd.serveRSS, err = timeServeStartup(ctx, b, dataDir, n)
			return rd.serveLoad, err
		}},
	}
	for _, s := range steps {
		if s.cold {
			b.coldCache()
		}
		if *s.out, err = s.f(); err != nil {
			return rd, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	return rd, nil
}

// timeServeStartup starts hearth serve on dataDir and returns the index load
// time it logs, the time from process start to serving (both in seconds)
// and its RSS once serving.
func timeServeStartup(ctx context.Context, b *bench, dataDir string, n int) (load, start float64, rss int64, err error) {
	srv, err := b.startHearth(ctx, dataDir, filepath.Join(b.work, "restart", "hearth.log"))
	if err != nil {
		return 0, 0, 0, err
	}
	defer srv.kill()
	line, ok := srv.log.find(`msg="CAS index loaded"`)
	if !ok {
		return 0, 0, 0, fmt.Errorf("hearth logged no \"CAS index loaded\" line")
	}
	took, err := time.ParseDuration(logValue(line, "took"))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("CAS index loaded line %q: took: %w", line, err)
	}
	if got := logValue(line, "blobs"); got != strconv.Itoa(n) {
		return 0, 0, 0, fmt.Errorf("hearth indexed %s blobs, want %d: %s", got, n, line)
	}
	mem, err := readProcMemory(srv.PID())
	if err != nil {
		return 0, 0, 0, err
	}
	return took.Seconds(), srv.ready.Sub(srv.started).Seconds(), mem.RSS, srv.stop()
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
