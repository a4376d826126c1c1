// Package casindex owns the CAS presence index in Redis: which blobs the slow
// (S3) tier is known to hold, so FindMissingBlobs does not cost one S3
// request per digest (Buildbarn's reason for dropping its S3 backend;
// Buildfarm keeps its CAS index in Redis the same way).
//
// One string key per blob, {prefix}:{function}:{hash}-{size}, with a TTL.
// An entry is written only after the bucket acknowledged the blob (a PUT
// that succeeded, or a HEAD that found it), and dropped when a read finds
// the object gone. The TTL bounds how long an entry can outlive an object
// deleted behind Hearth's back (a bucket lifecycle rule): see the
// disagreement rule in the tiered package.
package casindex

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/hearth-build/hearth/internal/cas"
	"github.com/hearth-build/hearth/internal/digest"
)

// Index is a presence index on one Redis database.
type Index struct {
	c      *redis.Client
	prefix string
	ttl    time.Duration
	fresh  time.Duration
	name   string
}

// batch is how many keys one MGET or pipeline carries.
const batch = 1000

// DefaultTTL is how long an entry lives when Options.TTL is 0.
const DefaultTTL = 7 * 24 * time.Hour

// Options configures New.
type Options struct {
	// URL is a redis:// URL (database in the path).
	URL string
	// Prefix namespaces the keys ("hearth:cas" when empty).
	Prefix string
	// TTL of an entry; 0 means DefaultTTL.
	TTL time.Duration
	// FreshWindow: Remove keeps an entry written less than this long ago
	// (see DefaultFreshWindow); 0 means DefaultFreshWindow, negative none.
	FreshWindow time.Duration
}

// New connects to Redis and PINGs it once, so a wrong URL fails at start.
func New(ctx context.Context, o Options) (*Index, error) {
	opt, err := redis.ParseURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("cas presence index: redis url: %w", err)
	}
	if o.Prefix == "" {
		o.Prefix = "hearth:cas"
	}
	if o.TTL <= 0 {
		o.TTL = DefaultTTL
	}
	if o.FreshWindow == 0 {
		o.FreshWindow = DefaultFreshWindow
	}
	ix := &Index{c: redis.NewClient(opt), prefix: o.Prefix, ttl: o.TTL, fresh: o.FreshWindow, name: "cas presence index (redis " + opt.Addr + ")"}
	if err := ix.c.Ping(ctx).Err(); err != nil {
		ix.c.Close()
		return nil, fmt.Errorf("%w: %s: %v", cas.ErrUnavailable, ix.name, err)
	}
	return ix, nil
}

// Close closes the connection pool.
func (ix *Index) Close() error { return ix.c.Close() }

// Name names the index in errors.
func (ix *Index) Name() string { return ix.name }

func (ix *Index) key(d digest.Digest) string {
	return fmt.Sprintf("%s:%s:%s-%d", ix.prefix, digest.Lower(d.Function), d.Hash, d.Size)
}

// Has reports, per digest, whether the index holds it.
func (ix *Index) Has(ctx context.Context, ds []digest.Digest) ([]bool, error) {
	out := make([]bool, len(ds))
	keys := make([]string, 0, min(len(ds), batch))
	for start := 0; start < len(ds); start += batch {
		end := min(start+batch, len(ds))
		keys = keys[:0]
		for _, d := range ds[start:end] {
			keys = append(keys, ix.key(d))
		}
		vals, err := ix.c.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, fmt.Errorf("%w: %s: MGET: %v", cas.ErrUnavailable, ix.name, err)
		}
		for i, v := range vals {
			out[start+i] = v != nil
		}
	}
	return out, nil
}

// Add records that the bucket holds ds (call only after it acknowledged them).
func (ix *Index) Add(ctx context.Context, ds ...digest.Digest) error {
	for start := 0; start < len(ds); start += batch {
		end := min(start+batch, len(ds))
		_, err := ix.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, d := range ds[start:end] {
				p.Set(ctx, ix.key(d), "1", ix.ttl)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("%w: %s: SET: %v", cas.ErrUnavailable, ix.name, err)
		}
	}
	return nil
}

// DefaultFreshWindow: an entry written this recently is kept by Remove. A read
// that found the object gone may have raced the blob's upload (its GET
// before the PUT, its Remove after the upload's Add); an object deleted
// behind Hearth's back within a minute of being written is not a case worth
// losing a fresh upload's entry for.
const DefaultFreshWindow = time.Minute

// removeStale deletes KEYS[1] unless its remaining TTL (ms) is above
// ARGV[1], i.e. unless it was written within the fresh window.
var removeStale = redis.NewScript(`
local left = redis.call('PTTL', KEYS[1])
if left >= 0 and left > tonumber(ARGV[1]) then return 0 end
return redis.call('DEL', KEYS[1])`)

// Remove drops d (a read found it gone from the bucket), unless its entry
// is fresher than the index's fresh window (see DefaultFreshWindow).
func (ix *Index) Remove(ctx context.Context, d digest.Digest) error {
	keepAbove := (ix.ttl - max(ix.fresh, 0)).Milliseconds()
	if err := removeStale.Run(ctx, ix.c, []string{ix.key(d)}, keepAbove).Err(); err != nil && err != redis.Nil {
		return fmt.Errorf("%w: %s: DEL: %v", cas.ErrUnavailable, ix.name, err)
	}
	return nil
}
