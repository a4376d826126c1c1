package actioncache

import (
	"context"
	"errors"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hearth-build/hearth/internal/digest"
)

// NewMetrics wraps s to count its traffic on reg (nil: counted, not
// exported):
//
//	hearth_ac_hits_total     Gets that found a usable result
//	hearth_ac_misses_total   Gets that found none
//	hearth_ac_updates_total  results stored
//	hearth_ac_errors_total{op}  other failures, op: get, put
func NewMetrics(s Store, reg prometheus.Registerer) Store {
	m := &metered{
		inner:   s,
		hits:    prometheus.NewCounter(prometheus.CounterOpts{Name: "hearth_ac_hits_total", Help: "Action cache lookups that found a usable result."}),
		misses:  prometheus.NewCounter(prometheus.CounterOpts{Name: "hearth_ac_misses_total", Help: "Action cache lookups that found none."}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{Name: "hearth_ac_updates_total", Help: "Action results stored."}),
		errors:  prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hearth_ac_errors_total", Help: "Failed action cache operations (not counting misses), by operation."}, []string{"op"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.hits, m.misses, m.updates, m.errors} {
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if !errors.As(err, &are) {
					continue
				}
				// A second wrapper on one registry shares the first's series.
				switch c {
				case m.hits:
					m.hits = are.ExistingCollector.(prometheus.Counter)
				case m.misses:
					m.misses = are.ExistingCollector.(prometheus.Counter)
				case m.updates:
					m.updates = are.ExistingCollector.(prometheus.Counter)
				default:
					m.errors = are.ExistingCollector.(*prometheus.CounterVec)
				}
			}
		}
	}
	m.errors.WithLabelValues("get")
	m.errors.WithLabelValues("put")
	return m
}

type metered struct {
	inner                 Store
	hits, misses, updates prometheus.Counter
	errors                *prometheus.CounterVec
}

func (m *metered) Get(ctx context.Context, instance string, action digest.Digest) (*repb.ActionResult, error) {
	r, err := m.inner.Get(ctx, instance, action)
	switch {
	case err == nil:
		m.hits.Inc()
	case errors.Is(err, ErrNotFound):
		m.misses.Inc()
	default:
		m.errors.WithLabelValues("get").Inc()
	}
	return r, err
}

func (m *metered) Put(ctx context.Context, instance string, action digest.Digest, result *repb.ActionResult) error {
	err := m.inner.Put(ctx, instance, action, result)
	if err != nil {
		m.errors.WithLabelValues("put").Inc()
	} else {
		m.updates.Inc()
	}
	return err
}
