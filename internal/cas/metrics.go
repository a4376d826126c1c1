package cas

import (
	"context"
	"errors"
	"io"

	"github.com/hearth-build/hearth/internal/digest"
	"github.com/prometheus/client_golang/prometheus"
)

// NewMetrics wraps s to count its traffic in Prometheus metrics registered on
// reg (nil: counted but not exported):
//
//	hearth_cas_find_missing_digests_total   digests asked about
//	hearth_cas_find_missing_missing_total   of those, reported missing
//	hearth_cas_blobs_read_total             successful Opens
//	hearth_cas_bytes_read_total             bytes read from opened blobs
//	hearth_cas_read_misses_total            Opens of absent blobs
//	hearth_cas_blobs_written_total          successful Commits
//	hearth_cas_bytes_written_total          bytes accepted by writers, committed or not
//	hearth_cas_errors_total{op}             failures other than "not found", by
//	                                        op: find_missing, open, read, create, write, commit
//
// Wrapping two stores on one registry shares the counters (the second
// registration reuses the first's), rather than failing.
func NewMetrics(s Store, reg prometheus.Registerer) Store {
	counter := func(name, help string) prometheus.Counter {
		return register(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help}))
	}
	m := &metrics{
		inner:        s,
		digestsAsked: counter("hearth_cas_find_missing_digests_total", "Digests asked about in FindMissing calls."),
		digestsMiss:  counter("hearth_cas_find_missing_missing_total", "Digests that FindMissing reported missing."),
		blobsRead:    counter("hearth_cas_blobs_read_total", "Blobs opened for reading."),
		bytesRead:    counter("hearth_cas_bytes_read_total", "Bytes read from blobs."),
		readMisses:   counter("hearth_cas_read_misses_total", "Opens of blobs that are not in the store."),
		blobsWritten: counter("hearth_cas_blobs_written_total", "Blobs committed."),
		bytesWritten: counter("hearth_cas_bytes_written_total", "Bytes accepted by blob writers, committed or not."),
		errors: register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hearth_cas_errors_total",
			Help: "Failed CAS operations (not counting blobs not found), by operation.",
		}, []string{"op"})),
	}
	return m
}

// register registers c on reg, or returns the collector already registered
// under the same description.
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
		// Any other failure (a clash of names with different labels) is a
		// wiring bug; counting unexported beats failing the store.
	}
	return c
}

type metrics struct {
	inner                     Store
	digestsAsked, digestsMiss prometheus.Counter
	blobsRead, bytesRead      prometheus.Counter
	readMisses                prometheus.Counter
	blobsWritten              prometheus.Counter
	bytesWritten              prometheus.Counter
	errors                    *prometheus.CounterVec
}

func (m *metrics) fail(op string, err error) {
	if err != nil && !errors.Is(err, ErrNotFound) {
		m.errors.WithLabelValues(op).Inc()
	}
}

func (m *metrics) FindMissing(ctx context.Context, ds []digest.Digest) ([]digest.Digest, error) {
	missing, err := m.inner.FindMissing(ctx, ds)
	if err != nil {
		m.fail("find_missing", err)
		return nil, err
	}
	m.digestsAsked.Add(float64(len(ds)))
	m.digestsMiss.Add(float64(len(missing)))
	return missing, nil
}

func (m *metrics) Open(ctx context.Context, d digest.Digest, offset int64) (io.ReadCloser, error) {
	r, err := m.inner.Open(ctx, d, offset)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			m.readMisses.Inc()
		}
		m.fail("open", err)
		return nil, err
	}
	m.blobsRead.Inc()
	return &countingReader{r: r, m: m}, nil
}

func (m *metrics) Create(ctx context.Context, d digest.Digest) (Writer, error) {
	w, err := m.inner.Create(ctx, d)
	if err != nil {
		m.fail("create", err)
		return nil, err
	}
	return &countingWriter{w: w, m: m}, nil
}

type countingReader struct {
	r io.ReadCloser
	m *metrics
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.m.bytesRead.Add(float64(n))
	}
	if err != nil && err != io.EOF {
		c.m.fail("read", err)
	}
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }

type countingWriter struct {
	w         Writer
	m         *metrics
	failed    bool // count a failing writer once, not once per call
	committed bool // count a blob once even if Commit is called again
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if n > 0 {
		c.m.bytesWritten.Add(float64(n))
	}
	if err != nil && !c.failed {
		c.failed = true
		c.m.fail("write", err)
	}
	return n, err
}

func (c *countingWriter) Commit() error {
	if err := c.w.Commit(); err != nil {
		if !c.failed {
			c.failed = true
			c.m.fail("commit", err)
		}
		return err
	}
	if !c.committed {
		c.committed = true
		c.m.blobsWritten.Inc()
	}
	return nil
}

func (c *countingWriter) Close() error { return c.w.Close() }
