package serverconfig

import (
	"strings"
	"time"
	"unicode"

	"github.com/hearth-build/hearth/internal/config"
)

// Scheduler is the scheduler block. Absent, operations and queues live in
// the server's memory (one replica).
type Scheduler struct {
	// Redis, when set, keeps operations and queues in Redis, shared by
	// every replica naming the same server, so that several `hearth server`
	// processes schedule as one.
	Redis *RedisScheduler
}

// RedisScheduler is the scheduler.redis block.
type RedisScheduler struct {
	// URL is redis://host:port/db (loopback only) or rediss:// (TLS).
	URL string
	// Lease is how long an action a replica assigned stays its own without
	// a renewal (0: 30 s); a replica renews every third of it, and a dead
	// replica's actions run again elsewhere after it lapses.
	Lease time.Duration
	// Poll is how often each replica reaps lapsed leases and re-reads the
	// operations it follows, covering lost notifications (0: 1 s).
	Poll time.Duration
	// Replica names this replica on its status page, /metrics and logs
	// ("": host name and gRPC port, e.g. "build-1:8980").
	Replica string
}

// maxReplicaName bounds scheduler.redis.replica (a label value).
const maxReplicaName = 128

func decodeScheduler(d *config.Decoder, path string, v any) *Scheduler {
	o, ok := d.Object(path, v)
	if !ok {
		return nil
	}
	s := &Scheduler{}
	if v, p, ok := o.Get("redis"); ok {
		s.Redis = decodeRedisScheduler(d, p, v)
	}
	o.RejectUnknown()
	return s
}

func decodeRedisScheduler(d *config.Decoder, path string, v any) *RedisScheduler {
	o, ok := d.Object(path, v)
	if !ok {
		return nil
	}
	r := &RedisScheduler{URL: redisURL(d, o, path)}
	if v, p, ok := o.Get("lease"); ok {
		if t, ok := d.Duration(p, v); ok {
			if t < time.Second {
				d.Errorf(p, "must be at least 1s (replicas renew every third of it), got %s", t)
			}
			r.Lease = t
		}
	}
	if v, p, ok := o.Get("poll"); ok {
		if t, ok := d.Duration(p, v); ok {
			if t < 10*time.Millisecond || t > time.Minute {
				d.Errorf(p, "must be between 10ms and 1m, got %s", t)
			}
			r.Poll = t
		}
	}
	if v, p, ok := o.Get("replica"); ok {
		if name, ok := d.String(p, v); ok {
			switch {
			case name == "":
				d.Errorf(p, "is empty (omit it for host name:port)")
			case len(name) > maxReplicaName:
				d.Errorf(p, "is %d bytes, longer than %d", len(name), maxReplicaName)
			case strings.IndexFunc(name, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0:
				d.Errorf(p, "%q holds a space or control character", name)
			}
			r.Replica = name
		}
	}
	if r.Lease != 0 && r.Poll != 0 && r.Poll > r.Lease/3 {
		d.Errorf(config.FieldPath(path, "poll"), "%s is longer than a third of lease %s: leases would lapse between renewals", r.Poll, r.Lease)
	}
	o.RejectUnknown()
	return r
}
