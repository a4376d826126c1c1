package serverconfig

import (
	"math"
	"net"
	"net/url"
	"time"

	"github.com/hearth-build/hearth/internal/config"
)

// Stores is the optional `stores` block: where the CAS lives when it is not
// only the local disk. Its shape follows NativeLink's store configuration
// (fast_slow, filesystem, s3) with Hearth's own names:
//
//	stores: {
//	  cas: {
//	    fast_slow: {
//	      fast: { filesystem: { max_bytes: "20GiB" } },
//	      slow: { s3: { endpoint: "https://s3.eu-west-1.amazonaws.com", bucket: "b",
//	                    region: "eu-west-1", prefix: "cas",
//	                    access_key_id: "${S3_KEY}", secret_access_key: "${S3_SECRET}" } },
//	    },
//	    index: { redis: { url: "redis://10.0.0.5:6379/0" } },
//	  },
//	}
type Stores struct {
	CAS *CASStore
}

// CASStore is stores.cas: a fast/slow pair, optionally with a presence index.
type CASStore struct {
	// FastMaxBytes bounds the local disk tier (under storage.data_dir/cas).
	FastMaxBytes int64
	S3           S3
	// Index is nil without stores.cas.index.
	Index *RedisIndex
}

// S3 is stores.cas.fast_slow.slow.s3.
type S3 struct {
	// Endpoint is host:port; Secure is its scheme (https).
	Endpoint                     string
	Secure                       bool
	Bucket, Region, Prefix       string
	AccessKeyID, SecretAccessKey string
	MaxConcurrentRequests        int
	Retries                      int
}

// RedisIndex is stores.cas.index.redis.
type RedisIndex struct {
	URL    string
	Prefix string
	TTL    time.Duration // 0: the index's default
}

// Defaults of the s3 block.
const (
	DefaultS3Region                = "us-east-1"
	DefaultS3MaxConcurrentRequests = 64
	DefaultS3Retries               = 3
)

func decodeStores(d *config.Decoder, path string, v any) *Stores {
	o, ok := d.Object(path, v)
	if !ok {
		return nil
	}
	s := &Stores{}
	if v, p, ok := o.Get("cas"); ok {
		s.CAS = decodeCASStore(d, p, v)
	} else {
		d.Errorf(path, "needs cas (the only store configurable so far)")
	}
	if o.Has("ac") || o.Has("action_cache") {
		d.Errorf(path, "the action cache is configured by the top-level action_cache block (action_cache.redis), not under stores")
	}
	o.RejectUnknown()
	return s
}

func decodeCASStore(d *config.Decoder, path string, v any) *CASStore {
	o, ok := d.Object(path, v)
	if !ok {
		return nil
	}
	c := &CASStore{}
	v, p, ok := o.Get("fast_slow")
	if !ok {
		d.Errorf(path, "needs fast_slow (a local filesystem tier in front of s3); without a stores block the CAS is the local disk alone")
	} else if fs, ok := d.Object(p, v); ok {
		fastPath, slowPath := config.FieldPath(p, "fast"), config.FieldPath(p, "slow")
		if v, p, ok := fs.Get("fast"); ok {
			c.FastMaxBytes = decodeFast(d, p, v)
		} else {
			d.Errorf(fastPath, "is required: { filesystem: { max_bytes: … } }")
		}
		if v, p, ok := fs.Get("slow"); ok {
			c.S3 = decodeSlow(d, p, v)
		} else {
			d.Errorf(slowPath, "is required: { s3: { endpoint: …, bucket: … } }")
		}
		fs.RejectUnknown()
	}
	if v, p, ok := o.Get("index"); ok {
		c.Index = decodeIndex(d, p, v)
	}
	o.RejectUnknown()
	return c
}

func decodeFast(d *config.Decoder, path string, v any) int64 {
	o, ok := d.Object(path, v)
	if !ok {
		return 0
	}
	defer o.RejectUnknown()
	v, p, ok := o.Get("filesystem")
	if !ok {
		d.Errorf(path, "needs filesystem (the local disk tier under storage.data_dir/cas)")
		return 0
	}
	f, ok := d.Object(p, v)
	if !ok {
		return 0
	}
	defer f.RejectUnknown()
	mp := config.FieldPath(p, "max_bytes")
	v, _, ok = f.Get("max_bytes")
	if !ok {
		d.Errorf(mp, "is required: the fast tier is a cache of the slow one and must be bounded")
		return 0
	}
	n, ok := d.Size(mp, v)
	if !ok {
		return 0
	}
	if n == 0 || n > math.MaxInt64 {
		d.Errorf(mp, "must be between 1 byte and 8 EiB")
		return 0
	}
	return int64(n)
}

func decodeSlow(d *config.Decoder, path string, v any) S3 {
	s := S3{Region: DefaultS3Region, MaxConcurrentRequests: DefaultS3MaxConcurrentRequests, Retries: DefaultS3Retries}
	so, p, ok := soleVariant(d, path, v, "s3", "needs s3 (the only slow store so far)")
	if !ok {
		return s
	}
	defer so.RejectUnknown()
	str := func(key string, dst *string, required bool) {
		v, fp, ok := so.Get(key)
		if !ok {
			if required {
				d.Errorf(config.FieldPath(p, key), "is required")
			}
			return
		}
		if x, ok := d.String(fp, v); ok {
			if x == "" && required {
				d.Errorf(fp, "is empty")
			}
			*dst = x
		}
	}
	var endpoint string
	str("endpoint", &endpoint, true)
	str("bucket", &s.Bucket, true)
	str("region", &s.Region, false)
	str("prefix", &s.Prefix, false)
	str("access_key_id", &s.AccessKeyID, true)
	str("secret_access_key", &s.SecretAccessKey, true)
	if endpoint != "" {
		s.Endpoint, s.Secure = checkEndpoint(d, config.FieldPath(p, "endpoint"), endpoint)
	}
	if v, fp, ok := so.Get("max_concurrent_requests"); ok {
		if n, ok := d.Integer(fp, v, 1, 4096); ok {
			s.MaxConcurrentRequests = int(n)
		}
	}
	if v, fp, ok := so.Get("retries"); ok {
		if n, ok := d.Integer(fp, v, 0, 100); ok {
			s.Retries = int(n)
		}
	}
	return s
}

// checkEndpoint parses an http(s) URL; plain http only to loopback, so
// credentials and blobs never cross a network in clear.
func checkEndpoint(d *config.Decoder, path, s string) (string, bool) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		d.Errorf(path, "%q is not an endpoint URL (want https://host[:port], e.g. \"https://s3.eu-west-1.amazonaws.com\")", s)
		return "", false
	}
	if u.Scheme == "http" {
		ip := net.ParseIP(u.Hostname())
		if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
			d.Errorf(path, "%q is plain http to a non-loopback host: use https (credentials and blobs would cross the network in clear)", s)
			return "", false
		}
	}
	return u.Host, u.Scheme == "https"
}

func decodeIndex(d *config.Decoder, path string, v any) *RedisIndex {
	ro, p, ok := soleVariant(d, path, v, "redis", "needs redis (the only presence index so far)")
	if !ok {
		return nil
	}
	defer ro.RejectUnknown()
	ix := &RedisIndex{}
	up := config.FieldPath(p, "url")
	if v, fp, ok := ro.Get("url"); !ok {
		d.Errorf(up, "is required (redis://host:port/db)")
	} else if s, ok := d.String(fp, v); ok {
		if u, err := url.Parse(s); err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
			d.Errorf(fp, "%q is not a redis:// or rediss:// URL", s)
		} else if u.Scheme == "redis" {
			if ip := net.ParseIP(u.Hostname()); u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
				d.Errorf(fp, "%q is plaintext redis to a non-loopback host: use rediss:// (TLS)", s)
			}
		}
		ix.URL = s
	}
	if v, fp, ok := ro.Get("prefix"); ok {
		ix.Prefix, _ = d.String(fp, v)
	}
	if v, fp, ok := ro.Get("ttl"); ok {
		if t, ok := d.Duration(fp, v); ok {
			if t <= 0 {
				d.Errorf(fp, "must be positive")
			}
			ix.TTL = t
		}
	}
	return ix
}

// soleVariant decodes an object that names one kind of store, {kind: {...}},
// where kind is the only one Hearth has so far: it returns the inner object
// and its path, for the caller to decode and then RejectUnknown. Anything
// beside kind is reported as unknown.
func soleVariant(d *config.Decoder, path string, v any, kind, missing string) (*config.Object, string, bool) {
	o, ok := d.Object(path, v)
	if !ok {
		return nil, "", false
	}
	defer o.RejectUnknown()
	v, p, ok := o.Get(kind)
	if !ok {
		d.Errorf(path, "%s", missing)
		return nil, "", false
	}
	inner, ok := d.Object(p, v)
	return inner, p, ok
}
