// Package redissched owns the Redis-backed scheduler state shared by several
// `hearth server` replicas: operations, the queue of each platform shape,
// in-flight merging, leases on assigned actions, the reaper that re-queues
// lapsed leases, and completion notification. Every state change is one Lua
// script, so replicas never interleave half-changes; matching and affinity
// stay in internal/scheduler, above this state. The design (key layout,
// script contracts, lease timing, what a client gets) is in the branch notes
// (notes/redis.md).
package redissched

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
)

// ErrNotFound is wrapped when an operation is unknown or has expired.
var ErrNotFound = errors.New("operation not found")

// Options configure a State.
type Options struct {
	// Prefix starts every key; it must contain a hash tag ("{...}") so a
	// Redis Cluster keeps all keys in one slot. Empty means "{hearth}:s:".
	Prefix string
	// Lease is how long an assignment lives without a renewal.
	Lease time.Duration
	// OperationTTL is how long a completed operation stays readable.
	OperationTTL time.Duration
	// MaxAttempts bounds how often a lease may lapse before the operation
	// fails with UNAVAILABLE.
	MaxAttempts int
}

// State is the shared scheduler state in one Redis.
type State struct {
	rdb  redis.UniversalClient
	opts Options
}

// New returns a State on rdb (owned by the caller).
func New(rdb redis.UniversalClient, opts Options) *State {
	if opts.Prefix == "" {
		opts.Prefix = "{hearth}:s:"
	}
	if opts.Lease <= 0 {
		opts.Lease = 30 * time.Second
	}
	if opts.OperationTTL <= 0 {
		opts.OperationTTL = 15 * time.Minute
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 3
	}
	return &State{rdb: rdb, opts: opts}
}

// Submit creates and queues an operation for req under shape, or joins the
// uncompleted operation with the same merge key (mergeKey "" never merges).
// It returns the operation's name and whether it joined an existing one.
func (s *State) Submit(ctx context.Context, mergeKey, shape string, priority int32, req []byte) (name string, joined bool, err error) {
	return s.SubmitMeta(ctx, mergeKey, shape, priority, req, nil)
}

// SubmitMeta is Submit that also stores meta, a small description of the
// operation that Get returns for as long as the operation lives (req is
// dropped at completion).
func (s *State) SubmitMeta(ctx context.Context, mergeKey, shape string, priority int32, req, meta []byte) (name string, joined bool, err error) {
	return s.SubmitOp(ctx, Submission{Merge: mergeKey, Shape: shape, Priority: priority, Request: req, Meta: meta})
}

// Submission is an operation to submit.
type Submission struct {
	Merge    string // merge key; "" never merges
	Shape    string
	Priority int32
	Request  []byte
	Meta     []byte
	// Route is the routing key of a persistent worker action ("" for
	// others), for ClaimWarm's affinity.
	Route string
}

// SubmitOp is SubmitMeta with every field of a submission.
func (s *State) SubmitOp(ctx context.Context, o Submission) (name string, joined bool, err error) {
	fresh := uuid.NewString()
	got, err := submitScript.Run(ctx, s.rdb, nil, s.opts.Prefix, fresh, o.Merge, o.Request, o.Shape, o.Priority, o.Meta, o.Route).Text()
	if err != nil {
		return "", false, fmt.Errorf("submitting to redis scheduler state: %w", err)
	}
	return got, got != fresh, nil
}

// Lease is an assignment of one operation to one attempt.
type Lease struct {
	Name     string
	Token    string
	Request  []byte
	Attempts int
	// Adopter is the replica that adopted the lease (Adopt), "" for the
	// claimer's.
	Adopter string
}

// Claim takes the first queued operation of shape and leases it; nil if
// the queue is empty.
func (s *State) Claim(ctx context.Context, shape string) (*Lease, error) {
	l, _, err := s.ClaimWarm(ctx, shape, "", nil, 0)
	return l, err
}

// maxDeferred bounds how many queued operations one claim leaves for warm
// workers at other replicas before it gives up looking further.
const maxDeferred = 16

// ClaimWarm is Claim for replica self, whose free executors of the shape
// have idle warm workers for the routing keys warm: an operation of another
// routing key, queued less than wait ago, for which another replica
// advertises an idle warm worker (AdvertiseWarm), is left for that replica
// (at most maxDeferred of them; the next ones are considered). With nothing
// taken, retry > 0 says when the deferred ones are this replica's to take.
func (s *State) ClaimWarm(ctx context.Context, shape, self string, warm []string, wait time.Duration) (l *Lease, retry time.Duration, err error) {
	token := uuid.NewString()
	deadline := time.Now().Add(s.opts.Lease).UnixMilli()
	args := make([]any, 0, 7+len(warm))
	args = append(args, s.opts.Prefix, shape, token, deadline, self, wait.Milliseconds(), maxDeferred)
	for _, k := range warm {
		args = append(args, k)
	}
	v, err := claimScript.Run(ctx, s.rdb, nil, args...).Slice()
	if errors.Is(err, redis.Nil) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("claiming from redis scheduler state: %w", err)
	}
	n, _ := v[2].(int64)
	req, _ := v[1].(string)
	name, _ := v[0].(string)
	if name == "" {
		return nil, time.Duration(max(n, 1)) * time.Millisecond, nil
	}
	return &Lease{Name: name, Token: token, Request: []byte(req), Attempts: int(n)}, 0, nil
}

// AdvertiseWarm tells the other replicas that replica self has idle warm
// workers, on executors with a free slot, for the routing keys in warm,
// until ttl from now, and no longer for those in gone.
func (s *State) AdvertiseWarm(ctx context.Context, self string, warm, gone []string, ttl time.Duration) error {
	args := make([]any, 0, 4+len(warm)+len(gone))
	args = append(args, s.opts.Prefix, self, ttl.Milliseconds(), len(warm))
	for _, k := range warm {
		args = append(args, k)
	}
	for _, k := range gone {
		args = append(args, k)
	}
	if err := advertiseScript.Run(ctx, s.rdb, nil, args...).Err(); err != nil {
		return fmt.Errorf("advertising warm workers in redis scheduler state: %w", err)
	}
	return nil
}

// Renew extends l; false means the lease is lost and the attempt must stop.
func (s *State) Renew(ctx context.Context, l *Lease) (bool, error) {
	deadline := time.Now().Add(s.opts.Lease).UnixMilli()
	n, err := renewScript.Run(ctx, s.rdb, nil, s.opts.Prefix, l.Name, l.Token, deadline).Int()
	if err != nil {
		return false, fmt.Errorf("renewing lease in redis scheduler state: %w", err)
	}
	return n == 1, nil
}

// Adopt takes over the lease that token holds on operation name, for
// replica self, not the claimer (whose executor now reports the attempt
// there, after the claimer went away): like Renew it extends the lease, and
// it returns the lease with the operation's request and attempt count. From
// then on only self may Release it.
// Nil if token lost the lease; then done tells whether the operation is
// completed (a result was taken already, perhaps this attempt's) rather
// than reaped and re-queued, released or unknown.
func (s *State) Adopt(ctx context.Context, name, token, self string) (l *Lease, done bool, err error) {
	if self == "" {
		return nil, false, errors.New("adopting a lease needs the adopter's name")
	}
	deadline := time.Now().Add(s.opts.Lease).UnixMilli()
	res, err := adoptScript.Run(ctx, s.rdb, nil, s.opts.Prefix, name, token, deadline, self).Result()
	if errors.Is(err, redis.Nil) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("adopting a lease in redis scheduler state: %w", err)
	}
	v, ok := res.([]any)
	if !ok || len(v) != 2 {
		return nil, res == int64(4), nil
	}
	req, _ := v[0].(string)
	n, _ := v[1].(int64)
	return &Lease{Name: name, Token: token, Request: []byte(req), Attempts: int(n), Adopter: self}, false, nil
}

// Complete records resp as the result of the attempt holding token ("" for
// any: a cancel). It returns false if the operation was already completed
// or token lost its lease (the result is then ignored).
func (s *State) Complete(ctx context.Context, name, token string, resp *repb.ExecuteResponse) (bool, error) {
	data, err := proto.Marshal(resp)
	if err != nil {
		return false, fmt.Errorf("encoding execute response: %w", err)
	}
	n, err := completeScript.Run(ctx, s.rdb, nil, s.opts.Prefix, name, token, data, s.opts.OperationTTL.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("completing in redis scheduler state: %w", err)
	}
	return n == 1, nil
}

// GiveUp completes the attempt of l with resp (a failure: its executor went
// away and no attempt is left) only if l still holds the lease as its
// claimer or adopter: once another replica adopted the attempt, the
// operation is that replica's to complete. It reports whether it completed.
func (s *State) GiveUp(ctx context.Context, l *Lease, resp *repb.ExecuteResponse) (bool, error) {
	data, err := proto.Marshal(resp)
	if err != nil {
		return false, fmt.Errorf("encoding execute response: %w", err)
	}
	n, err := completeScript.Run(ctx, s.rdb, nil, s.opts.Prefix, l.Name, l.Token, data, s.opts.OperationTTL.Milliseconds(), l.Adopter).Int()
	if err != nil {
		return false, fmt.Errorf("completing in redis scheduler state: %w", err)
	}
	return n == 1, nil
}

// Record stores an operation that is completed from the start (an action
// cache hit answered by one replica), so that every replica finds it by
// name: stage COMPLETED with resp and meta, expiring after OperationTTL like
// any completed operation. It is never queued, leased or merged into.
func (s *State) Record(ctx context.Context, name string, meta []byte, resp *repb.ExecuteResponse) error {
	data, err := proto.Marshal(resp)
	if err != nil {
		return fmt.Errorf("encoding execute response: %w", err)
	}
	key := s.opts.Prefix + "op:" + name
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, "stage", "4", "attempts", "0", "resp", data, "meta", meta)
		p.PExpire(ctx, key, s.opts.OperationTTL)
		return nil
	})
	if err != nil {
		return fmt.Errorf("recording a completed operation in redis scheduler state: %w", err)
	}
	return nil
}

// Reap re-queues (or, out of attempts, fails) operations whose lease lapsed
// by now. Any replica may run it at any time.
func (s *State) Reap(ctx context.Context, now time.Time) (requeued, failed int, err error) {
	fail, err := proto.Marshal(&repb.ExecuteResponse{Status: unavailable(s.opts.MaxAttempts)})
	if err != nil {
		return 0, 0, err
	}
	v, err := reapScript.Run(ctx, s.rdb, nil, s.opts.Prefix, now.UnixMilli(), 1000, s.opts.MaxAttempts, fail, s.opts.OperationTTL.Milliseconds()).Int64Slice()
	if err != nil {
		return 0, 0, fmt.Errorf("reaping leases in redis scheduler state: %w", err)
	}
	return int(v[0]), int(v[1]), nil
}

// Snapshot is an operation's state.
type Snapshot struct {
	Stage    repb.ExecutionStage_Value
	Attempts int
	Response *repb.ExecuteResponse // set once Stage is COMPLETED
	Meta     []byte                // as given to SubmitMeta
}

// Get reads an operation; ErrNotFound if unknown or expired.
func (s *State) Get(ctx context.Context, name string) (Snapshot, error) {
	v, err := s.rdb.HMGet(ctx, s.opts.Prefix+"op:"+name, "stage", "attempts", "resp", "meta").Result()
	if err != nil {
		return Snapshot{}, fmt.Errorf("reading operation from redis scheduler state: %w", err)
	}
	st, _ := v[0].(string)
	if st == "" {
		return Snapshot{}, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	stage, _ := strconv.Atoi(st)
	att, _ := v[1].(string)
	n, _ := strconv.Atoi(att)
	meta, _ := v[3].(string)
	snap := Snapshot{Stage: repb.ExecutionStage_Value(stage), Attempts: n, Meta: []byte(meta)}
	if snap.Stage == repb.ExecutionStage_COMPLETED {
		raw, _ := v[2].(string)
		snap.Response = &repb.ExecuteResponse{}
		if err := proto.Unmarshal([]byte(raw), snap.Response); err != nil {
			return Snapshot{}, fmt.Errorf("operation %s has a damaged response: %w", name, err)
		}
	}
	return snap, nil
}

// Wait returns the operation's state once it is completed, or ctx's error.
// It subscribes to the operation's channel first and then reads the state,
// so a completion between the two is not missed; and it re-reads every
// poll interval, so a message lost across a reconnect is not fatal.
func (s *State) Wait(ctx context.Context, name string, poll time.Duration) (Snapshot, error) {
	sub := s.rdb.Subscribe(ctx, s.opts.Prefix+"done:"+name)
	defer sub.Close()
	// Receive returns once the subscription is confirmed: only then is a
	// read guaranteed not to race a completion we would not hear of.
	if _, err := sub.Receive(ctx); err != nil {
		return Snapshot{}, fmt.Errorf("subscribing to operation %s: %w", name, err)
	}
	ch := sub.Channel()
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		snap, err := s.Get(ctx, name)
		if err != nil || snap.Stage == repb.ExecutionStage_COMPLETED {
			return snap, err
		}
		select {
		case <-ctx.Done():
			return Snapshot{}, ctx.Err()
		case <-ch:
		case <-t.C:
		}
	}
}

// Release puts a claimed operation back in its queue, in its original place,
// when the claimer cannot start it after all; false if l lost its lease, or
// another replica adopted it (then it runs there).
func (s *State) Release(ctx context.Context, l *Lease) (bool, error) {
	n, err := releaseScript.Run(ctx, s.rdb, nil, s.opts.Prefix, l.Name, l.Token, l.Adopter).Int()
	if err != nil {
		return false, fmt.Errorf("releasing lease in redis scheduler state: %w", err)
	}
	return n == 1, nil
}

// Shapes lists every shape an operation was ever submitted under.
func (s *State) Shapes(ctx context.Context) ([]string, error) {
	v, err := s.rdb.SMembers(ctx, s.opts.Prefix+"shapes").Result()
	if err != nil {
		return nil, fmt.Errorf("listing shapes in redis scheduler state: %w", err)
	}
	return v, nil
}

// Counts is the size of the shared state: what waits in each shape's queue
// and how many operations are leased (running at some replica).
type Counts struct {
	Queued map[string]int // by shape; every shape ever used, 0 when empty
	Leased int
}

// Counts reads the queue length of every shape and the number of leases:
// two round trips, O(shapes) work in Redis (ZCARD is O(1)), no scan of
// operations — cheap enough for every /metrics scrape.
func (s *State) Counts(ctx context.Context) (Counts, error) {
	shapes, err := s.Shapes(ctx)
	if err != nil {
		return Counts{}, err
	}
	lens := make([]*redis.IntCmd, len(shapes))
	var leased *redis.IntCmd
	_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, sh := range shapes {
			lens[i] = p.ZCard(ctx, s.opts.Prefix+"q:"+sh)
		}
		leased = p.ZCard(ctx, s.opts.Prefix+"leases")
		return nil
	})
	if err != nil {
		return Counts{}, fmt.Errorf("counting redis scheduler state: %w", err)
	}
	c := Counts{Queued: make(map[string]int, len(shapes)), Leased: int(leased.Val())}
	for i, sh := range shapes {
		c.Queued[sh] = int(lens[i].Val())
	}
	return c, nil
}

// Lease returns the lease duration in use.
func (s *State) LeaseDuration() time.Duration { return s.opts.Lease }

// Follow calls done(name) for every operation that completes or is re-queued
// and queued(shape) for every shape that gains a queued operation, at any
// replica, until ctx ends. One subscription per replica: go-redis
// re-subscribes after a reconnect; messages sent meanwhile are lost, which
// callers cover by polling.
func (s *State) Follow(ctx context.Context, done, queued func(string)) error {
	sub := s.rdb.PSubscribe(ctx, s.opts.Prefix+"done:*")
	defer sub.Close()
	if err := sub.Subscribe(ctx, s.opts.Prefix+"queued"); err != nil {
		return fmt.Errorf("subscribing to redis scheduler state: %w", err)
	}
	doneLen := len(s.opts.Prefix + "done:")
	ch := sub.Channel()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case m, ok := <-ch:
			if !ok {
				return errors.New("redis scheduler state subscription closed")
			}
			if m.Channel == s.opts.Prefix+"queued" {
				queued(m.Payload)
			} else if len(m.Channel) > doneLen {
				done(m.Channel[doneLen:])
			}
		}
	}
}
