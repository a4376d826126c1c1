package metrics

import (
	"context"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/hearth-build/hearth/internal/scheduler"
)

// sharedScrapeTimeout bounds the Redis reads of one scrape.
const sharedScrapeTimeout = 2 * time.Second

// sharedCollector reads the shared scheduler state at each scrape.
type sharedCollector struct {
	replica   string
	status    func(context.Context) scheduler.Status
	platforms *Capper
	info      *prometheus.Desc
	depth     *prometheus.Desc
	leases    *prometheus.Desc
	up        *prometheus.Desc
}

// RegisterShared adds the series of a replica whose scheduler state is
// shared with others (scheduler.redis), read from that state at each scrape
// (O(shapes), no scan of operations):
//
//	hearth_scheduler_replica_info{replica}             1: which replica this is
//	hearth_scheduler_shared_queue_depth{platform}      actions waiting for an executor at any replica
//	hearth_scheduler_shared_leases                     actions assigned at any replica, not finished
//	hearth_scheduler_shared_up                         1 if the shared state answered this scrape
//
// The replica's own series (hearth_scheduler_executors_connected,
// hearth_scheduler_actions_running, ...) keep counting its own executors.
func RegisterShared(reg prometheus.Registerer, replica string, status func(context.Context) scheduler.Status) {
	register(reg, &sharedCollector{
		replica: replica, status: status, platforms: NewCapper(20, 120),
		info:   prometheus.NewDesc("hearth_scheduler_replica_info", "This replica of servers sharing scheduler state; always 1.", []string{"replica"}, nil),
		depth:  prometheus.NewDesc("hearth_scheduler_shared_queue_depth", "Actions waiting in the shared queues, for executors at any replica, by platform.", []string{"platform"}, nil),
		leases: prometheus.NewDesc("hearth_scheduler_shared_leases", "Actions assigned (leased) at any replica and not finished.", nil, nil),
		up:     prometheus.NewDesc("hearth_scheduler_shared_up", "1 if the shared scheduler state answered this scrape, else 0.", nil, nil),
	})
}

func (c *sharedCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.info
	ch <- c.depth
	ch <- c.leases
	ch <- c.up
}

func (c *sharedCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(c.info, prometheus.GaugeValue, 1, c.replica)
	ctx, cancel := context.WithTimeout(context.Background(), sharedScrapeTimeout)
	defer cancel()
	sh := c.status(ctx).Shared
	if sh == nil || sh.Error != "" {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.leases, prometheus.GaugeValue, float64(sh.Leased))
	// Shapes differing only in timeout or in persistent worker hints
	// share a platform label.
	depth := map[string]int{}
	for _, q := range sh.Queues {
		depth[c.platforms.Label(PlatformLabel(&repb.Platform{Properties: q.Properties}))] += q.Queued
	}
	for p, n := range depth {
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(n), p)
	}
}
