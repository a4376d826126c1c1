package redissched

import "github.com/redis/go-redis/v9"

// Every script takes the key prefix as ARGV[1] and builds the per-operation
// keys from it. All keys share the hash tag in the prefix ("{hearth}"), so on
// a Redis Cluster they live in one slot and the scripts stay atomic.
//
// Operation hash fields: req (opaque request bytes), shape, merge (merge
// key), member (queue member, kept so a re-queue restores the original
// place), prio, stage (QUEUED=2, EXECUTING=3, COMPLETED=4 as in REAPI),
// attempts, token (current lease token, absent when not leased), resp
// (serialized ExecuteResponse once COMPLETED).

// submitScript: KEYS none. ARGV: prefix, name, merge, req, shape, prio, meta.
// If an operation with the merge key exists and is not completed, returns
// its name (the caller joins it). Otherwise creates the operation, queues it
// and returns name. Atomic, so two replicas submitting the same action at
// once end with one operation.
var submitScript = redis.NewScript(`
local p = ARGV[1]
local name, merge = ARGV[2], ARGV[3]
if merge ~= '' then
  local cur = redis.call('GET', p .. 'merge:' .. merge)
  if cur then
    local st = redis.call('HGET', p .. 'op:' .. cur, 'stage')
    if st and st ~= '4' then return cur end
  end
end
local seq = redis.call('INCR', p .. 'seq')
local member = string.format('%016x', seq) .. '|' .. name
redis.call('HSET', p .. 'op:' .. name, 'req', ARGV[4], 'shape', ARGV[5], 'merge', merge,
  'member', member, 'prio', ARGV[6], 'stage', '2', 'attempts', '0', 'meta', ARGV[7])
if merge ~= '' then redis.call('SET', p .. 'merge:' .. merge, name) end
redis.call('ZADD', p .. 'q:' .. ARGV[5], ARGV[6], member)
redis.call('SADD', p .. 'shapes', ARGV[5])
redis.call('PUBLISH', p .. 'queued', ARGV[5])
return name
`)

// claimScript: ARGV: prefix, shape, token, deadline_ms. Pops the first
// queued operation of the shape (lowest priority value, then arrival),
// leases it to token until deadline_ms and returns {name, req, attempts};
// nil if the queue is empty. Members whose operation is gone or completed
// (cancelled while queued) are dropped.
var claimScript = redis.NewScript(`
local p = ARGV[1]
while true do
  local m = redis.call('ZPOPMIN', p .. 'q:' .. ARGV[2])
  if #m == 0 then return false end
  local name = string.sub(m[1], 18)
  local op = p .. 'op:' .. name
  local st = redis.call('HGET', op, 'stage')
  if st == '2' then
    local n = redis.call('HINCRBY', op, 'attempts', 1)
    redis.call('HSET', op, 'stage', '3', 'token', ARGV[3])
    redis.call('ZADD', p .. 'leases', ARGV[4], name)
    return {name, redis.call('HGET', op, 'req'), n}
  end
end
`)

// renewScript: ARGV: prefix, name, token, deadline_ms. Extends the lease if
// token still holds it; returns 1, or 0 if the lease was lost (reaped and
// re-queued, or the operation completed or was cancelled) — the executor
// should then abandon the attempt.
var renewScript = redis.NewScript(`
local p = ARGV[1]
local op = p .. 'op:' .. ARGV[2]
if redis.call('HGET', op, 'token') ~= ARGV[3] then return 0 end
redis.call('ZADD', p .. 'leases', 'XX', ARGV[4], ARGV[2])
return 1
`)

// completeScript: ARGV: prefix, name, token, resp, ttl_ms. token "" means
// "whatever attempt" (a cancel, or a result from the action cache). Returns
// 1 if this call completed the operation; 0 if it was already completed or
// token no longer holds the lease (a late result of an abandoned attempt,
// which is ignored). On success: stores resp, drops the lease and the merge
// key, starts the TTL and publishes on the operation's channel.
var completeScript = redis.NewScript(`
local p = ARGV[1]
local name = ARGV[2]
local op = p .. 'op:' .. name
local st = redis.call('HGET', op, 'stage')
if (not st) or st == '4' then return 0 end
if ARGV[3] ~= '' and redis.call('HGET', op, 'token') ~= ARGV[3] then return 0 end
local merge = redis.call('HGET', op, 'merge')
if merge and merge ~= '' and redis.call('GET', p .. 'merge:' .. merge) == name then
  redis.call('DEL', p .. 'merge:' .. merge)
end
if st == '2' then
  redis.call('ZREM', p .. 'q:' .. redis.call('HGET', op, 'shape'), redis.call('HGET', op, 'member'))
end
redis.call('HSET', op, 'stage', '4', 'resp', ARGV[4])
redis.call('HDEL', op, 'token', 'req')
redis.call('ZREM', p .. 'leases', name)
redis.call('PEXPIRE', op, ARGV[5])
redis.call('PUBLISH', p .. 'done:' .. name, '4')
return 1
`)

// reapScript: ARGV: prefix, now_ms, limit, max_attempts, fail_resp, ttl_ms.
// For each lease whose deadline passed: an operation with attempts left is
// re-queued at its original place (stage QUEUED, token dropped, so the old
// attempt's renewals and result are refused); one out of attempts completes
// with fail_resp. Idempotent and safe to run at every replica at once.
// Returns {requeued, failed}.
var reapScript = redis.NewScript(`
local p = ARGV[1]
local expired = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local requeued, failed = 0, 0
for _, name in ipairs(expired) do
  redis.call('ZREM', p .. 'leases', name)
  local op = p .. 'op:' .. name
  if redis.call('HGET', op, 'stage') == '3' then
    if tonumber(redis.call('HGET', op, 'attempts')) >= tonumber(ARGV[4]) then
      local merge = redis.call('HGET', op, 'merge')
      if merge and merge ~= '' and redis.call('GET', p .. 'merge:' .. merge) == name then
        redis.call('DEL', p .. 'merge:' .. merge)
      end
      redis.call('HSET', op, 'stage', '4', 'resp', ARGV[5])
      redis.call('HDEL', op, 'token', 'req')
      redis.call('PEXPIRE', op, ARGV[6])
      redis.call('PUBLISH', p .. 'done:' .. name, '4')
      failed = failed + 1
    else
      redis.call('HSET', op, 'stage', '2')
      redis.call('HDEL', op, 'token')
      local f = redis.call('HMGET', op, 'shape', 'prio', 'member')
      redis.call('ZADD', p .. 'q:' .. f[1], f[2], f[3])
      redis.call('PUBLISH', p .. 'done:' .. name, '2')
      redis.call('PUBLISH', p .. 'queued', f[1])
      requeued = requeued + 1
    end
  end
end
return {requeued, failed}
`)

// releaseScript: ARGV: prefix, name, token. Puts back a claimed operation
// the claimer could not start (its executor went away first) at its original
// place, if token still holds the lease; the attempt still counts. Returns 1
// if it was put back.
var releaseScript = redis.NewScript(`
local p = ARGV[1]
local op = p .. 'op:' .. ARGV[2]
if redis.call('HGET', op, 'stage') ~= '3' or redis.call('HGET', op, 'token') ~= ARGV[3] then return 0 end
redis.call('ZREM', p .. 'leases', ARGV[2])
redis.call('HSET', op, 'stage', '2')
redis.call('HDEL', op, 'token')
local f = redis.call('HMGET', op, 'shape', 'prio', 'member')
redis.call('ZADD', p .. 'q:' .. f[1], f[2], f[3])
redis.call('PUBLISH', p .. 'done:' .. ARGV[2], '2')
redis.call('PUBLISH', p .. 'queued', f[1])
return 1
`)
