// Package metrics owns Hearth's Prometheus instrumentation that spans
// packages: the registry of one process, the gRPC server and client
// interceptors, bounded label values, and the collectors that turn other
// packages' events and snapshots (the scheduler's observer, an executor's
// finished actions, the persistent worker pool's statistics) into series.
// Libraries never register on the global default registry: the wiring makes
// one registry per process and hands it down.
package metrics

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewRegistry returns a registry with the Go runtime and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// durationBuckets span a cache hit's milliseconds to a long compile's
// minutes.
var durationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900}

// register registers c on reg, or returns the collector already registered
// under the same description, so that two executors of one process share
// their series. A nil reg counts without exporting.
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		// Anything else is a clash of names in the wiring; counting
		// unexported beats failing the process.
	}
	return c
}

func seconds(d time.Duration) float64 { return d.Seconds() }

// DiskStore is what RegisterDisk reads of a disk CAS.
type DiskStore interface {
	SizeBytes() int64
	Count() int
	Evictions() (blobs, bytes int64)
}

// RegisterDisk exports a disk CAS's size and evictions, read at scrape:
// hearth_cas_disk_bytes, hearth_cas_disk_blobs, hearth_cas_evicted_blobs_total,
// hearth_cas_evicted_bytes_total.
func RegisterDisk(reg prometheus.Registerer, d DiskStore) {
	register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hearth_cas_disk_bytes", Help: "Bytes of blobs stored in the disk CAS."},
		func() float64 { return float64(d.SizeBytes()) }))
	register(reg, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "hearth_cas_disk_blobs", Help: "Blobs stored in the disk CAS."},
		func() float64 { return float64(d.Count()) }))
	register(reg, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hearth_cas_evicted_blobs_total", Help: "Blobs evicted from the disk CAS to stay under its bound."},
		func() float64 { b, _ := d.Evictions(); return float64(b) }))
	register(reg, prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "hearth_cas_evicted_bytes_total", Help: "Bytes evicted from the disk CAS to stay under its bound."},
		func() float64 { _, n := d.Evictions(); return float64(n) }))
}
