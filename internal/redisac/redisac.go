// Package redisac owns the Redis-backed action cache: ActionResults stored as
// serialized protos in one Redis shared by several `hearth server` replicas,
// with an optional TTL. It implements actioncache.Store; the completeness check
// (a result whose blobs are gone is a miss) is kept by wrapping it with
// actioncache.NewCompletenessChecking, exactly as the disk store is.
package redisac

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/hearth-build/hearth/internal/actioncache"
	"github.com/hearth-build/hearth/internal/digest"
)

// maxStoredResultBytes bounds what Get accepts from Redis, as the disk store
// bounds its files: results arrive in gRPC messages of a few MiB at most.
const maxStoredResultBytes = 64 << 20

// Options configure a Store.
type Options struct {
	// TTL, if positive, is how long a result lives after its last Put.
	// Zero keeps results until Redis evicts them (maxmemory-policy).
	TTL time.Duration
	// Prefix starts every key, so one Redis can hold several caches.
	// Empty means "hearth:ac:".
	Prefix string
}

// Store is an action cache on Redis. Each result is one string value:
//
//	{prefix}{digest function}:{instance key}:{hash}-{size}
//
// where the instance key is the first 32 hex characters of the SHA-256 of the
// instance name, so any instance name maps to a fixed-shape key and instance
// names and digest functions stay separate namespaces. A SET replaces the
// value atomically, so a reader sees the old result or the new one.
type Store struct {
	rdb    redis.UniversalClient
	ttl    time.Duration
	prefix string
}

// New returns a Store on rdb. The caller owns rdb (and closes it).
func New(rdb redis.UniversalClient, opts Options) (*Store, error) {
	if opts.TTL < 0 {
		return nil, fmt.Errorf("action cache ttl %v is negative", opts.TTL)
	}
	p := opts.Prefix
	if p == "" {
		p = "hearth:ac:"
	}
	return &Store{rdb: rdb, ttl: opts.TTL, prefix: p}, nil
}

var _ actioncache.Store = (*Store)(nil)

// Key returns the Redis key of action's result under instance. The digest is
// validated again so a Digest built without digest.New cannot shape the key.
func (s *Store) Key(instance string, action digest.Digest) (string, error) {
	action, err := digest.New(action.Function, action.Hash, action.Size)
	if err != nil {
		return "", fmt.Errorf("action digest: %w", err)
	}
	sum := sha256.Sum256([]byte(instance))
	return s.prefix + digest.Lower(action.Function) + ":" + hex.EncodeToString(sum[:16]) + ":" +
		action.Hash + "-" + strconv.FormatInt(action.Size, 10), nil
}

// Get returns the stored result. A missing or undecodable entry is
// actioncache.ErrNotFound; Redis being unreachable is an error (the service
// edge turns it into UNAVAILABLE), never a silent miss.
func (s *Store) Get(ctx context.Context, instance string, action digest.Digest) (*repb.ActionResult, error) {
	key, err := s.Key(instance, action)
	if err != nil {
		return nil, err
	}
	data, err := s.rdb.Get(ctx, key).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: no result for action %s in instance %q", actioncache.ErrNotFound, action, instance)
	}
	if err != nil {
		return nil, fmt.Errorf("reading action result from redis: %w", err)
	}
	result := &repb.ActionResult{}
	if len(data) > maxStoredResultBytes {
		err = fmt.Errorf("value is larger than %d bytes", maxStoredResultBytes)
	} else {
		err = proto.Unmarshal(data, result)
	}
	if err != nil {
		slog.Warn("redis action cache entry is damaged; treating it as a miss", "key", key, "err", err)
		return nil, fmt.Errorf("%w: stored result for action %s is damaged: %v", actioncache.ErrNotFound, action, err)
	}
	return result, nil
}

// Put stores result, replacing any earlier result of the action, and (with a
// TTL) restarts its lifetime. It returns once Redis acknowledged the write;
// how durable that is follows the Redis server's persistence (AOF fsync).
func (s *Store) Put(ctx context.Context, instance string, action digest.Digest, result *repb.ActionResult) error {
	key, err := s.Key(instance, action)
	if err != nil {
		return err
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(result)
	if err != nil {
		return fmt.Errorf("encoding action result: %w", err)
	}
	if err := s.rdb.Set(ctx, key, data, s.ttl).Err(); err != nil {
		return fmt.Errorf("writing action result to redis: %w", err)
	}
	return nil
}
