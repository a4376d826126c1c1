package serverconfig

import (
	"net"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hearth-build/hearth/internal/config"
)

// ActionCache selects where action results live. Absent, they are on local
// disk under storage.data_dir (the single-machine default).
type ActionCache struct {
	// Redis, when set, keeps results in Redis, shared by every replica that
	// names the same server.
	Redis *RedisActionCache
}

// RedisActionCache is the action_cache.redis block.
type RedisActionCache struct {
	// URL is redis://host:port/db or rediss:// (TLS).
	URL string
	// TTL, if positive, is how long a result lives after its last write.
	TTL time.Duration
}

func decodeActionCache(d *config.Decoder, path string, v any) *ActionCache {
	o, ok := d.Object(path, v)
	if !ok {
		return nil
	}
	ac := &ActionCache{}
	if v, p, ok := o.Get("redis"); ok {
		ac.Redis = decodeRedisActionCache(d, p, v)
	}
	o.RejectUnknown()
	return ac
}

func decodeRedisActionCache(d *config.Decoder, path string, v any) *RedisActionCache {
	o, ok := d.Object(path, v)
	if !ok {
		return nil
	}
	r := &RedisActionCache{URL: redisURL(d, o, path)}
	if v, p, ok := o.Get("ttl"); ok {
		if t, ok := d.Duration(p, v); ok {
			if t < 0 {
				d.Errorf(p, "must be ≥ 0 (0 keeps results until Redis evicts them)")
			}
			r.TTL = t
		}
	}
	o.RejectUnknown()
	return r
}

// redisURL decodes the required url of a Redis block at path, checked by
// checkRedisURL.
func redisURL(d *config.Decoder, o *config.Object, path string) string {
	v, p, ok := o.Get("url")
	if !ok {
		d.Errorf(config.FieldPath(path, "url"), "is required (e.g. \"redis://127.0.0.1:6379/0\")")
		return ""
	}
	s, ok := d.String(p, v)
	if !ok {
		return ""
	}
	checkRedisURL(d, p, s)
	return s
}

// checkRedisURL rejects a URL go-redis cannot use, and plaintext to a host
// other than loopback: action results decide what a build outputs, so they
// must not cross a network unauthenticated and unencrypted (use rediss://).
func checkRedisURL(d *config.Decoder, path, s string) {
	opt, err := redis.ParseURL(s)
	if err != nil {
		d.Errorf(path, "%q is not a Redis URL (want redis://host:port/db or rediss://…): %v", s, err)
		return
	}
	host, _, _ := net.SplitHostPort(opt.Addr)
	if opt.TLSConfig == nil && host != "localhost" {
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			d.Errorf(path, "%q is plaintext to a non-loopback host; use rediss:// (TLS)", s)
		}
	}
}
