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
// (serialized ExecuteResponse once COMPLETED), adopter (the replica that
// adopted the current lease from its claimer, absent otherwise).

// Further fields: route (the routing key of a persistent worker action,
// "" for others) and queued (Redis time in ms when it was submitted), read
// by claim's warm-affinity deferral.

// nowMs is Redis's own clock in ms, so that replicas with skewed clocks
// agree on how long an operation has waited. Writing after TIME needs
// effects replication: the default since Redis 5 (the only mode in 7), and
// asked for explicitly for older servers.
const nowMs = `if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

// submitScript: KEYS none. ARGV: prefix, name, merge, req, shape, prio, meta, route.
// If an operation with the merge key exists and is not completed, returns
// its name (the caller joins it). Otherwise creates the operation, queues it
// and returns name. Atomic, so two replicas submitting the same action at
// once end with one operation.
var submitScript = redis.NewScript(nowMs + `
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
  'member', member, 'prio', ARGV[6], 'stage', '2', 'attempts', '0', 'meta', ARGV[7],
  'route', ARGV[8], 'queued', now)
if merge ~= '' then redis.call('SET', p .. 'merge:' .. merge, name) end
redis.call('ZADD', p .. 'q:' .. ARGV[5], ARGV[6], member)
redis.call('SADD', p .. 'shapes', ARGV[5])
redis.call('PUBLISH', p .. 'queued', ARGV[5])
return name
`)

// claimScript: ARGV: prefix, shape, token, deadline_ms, self, wait_ms,
// limit, warm keys... Leases to token, until deadline_ms, the first queued
// operation of the shape (lowest priority value, then arrival) that this
// replica should take, and returns {name, req, attempts}. Members whose
// operation is gone or completed (cancelled while queued) are dropped.
//
// Warm affinity across replicas: an operation with a routing key that is
// not among this replica's warm keys, queued less than wait_ms ago, while
// another replica advertises an idle warm worker for that key (see
// advertiseScript), is left for that replica; the next one is considered,
// at most limit deferred ones in all. When nothing is taken but something
// was deferred it returns {”, ”, ms}: try again in ms. Nil if the queue
// is empty. wait_ms 0 takes the first live operation, as a plain claim.
var claimScript = redis.NewScript(nowMs + `
local p = ARGV[1]
local q = p .. 'q:' .. ARGV[2]
local wait, limit = tonumber(ARGV[6]), tonumber(ARGV[7])
local mine = {}
for i = 8, #ARGV do mine[ARGV[i]] = true end
local deferred, retry = 0, -1
while deferred < limit do
  local m = redis.call('ZRANGE', q, deferred, deferred)[1]
  if not m then break end
  local name = string.sub(m, 18)
  local op = p .. 'op:' .. name
  local f = redis.call('HMGET', op, 'stage', 'route', 'queued')
  if f[1] ~= '2' then
    redis.call('ZREM', q, m)
  else
    local left = 0
    if wait > 0 and f[2] and f[2] ~= '' and not mine[f[2]] then
      left = (tonumber(f[3]) or 0) + wait - now
      if left > 0 then
        local w = p .. 'warm:' .. f[2]
        local others = redis.call('ZCOUNT', w, now, '+inf')
        local own = redis.call('ZSCORE', w, ARGV[5])
        if own and tonumber(own) >= now then others = others - 1 end
        if others <= 0 then left = 0 end
      end
    end
    if left > 0 then
      deferred = deferred + 1
      if retry < 0 or left < retry then retry = left end
    else
      redis.call('ZREM', q, m)
      local n = redis.call('HINCRBY', op, 'attempts', 1)
      redis.call('HSET', op, 'stage', '3', 'token', ARGV[3])
      redis.call('ZADD', p .. 'leases', ARGV[4], name)
      return {name, redis.call('HGET', op, 'req'), n}
    end
  end
end
if retry >= 0 then return {'', '', retry} end
return false
`)

// advertiseScript: ARGV: prefix, self, ttl_ms, n, n keys to advertise, keys
// to withdraw. warm:{key} is a sorted set of the replicas that have an idle
// warm worker for key on an executor with a free slot, scored by when the
// advertisement lapses (a dead replica's lapses by itself). Lapsed members
// are pruned, and the key expires once no replica refreshes it.
var advertiseScript = redis.NewScript(nowMs + `
local p, self, ttl, n = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
for i = 5, 4 + n do
  local w = p .. 'warm:' .. ARGV[i]
  redis.call('ZADD', w, now + ttl, self)
  redis.call('ZREMRANGEBYSCORE', w, '-inf', now)
  if redis.call('PTTL', w) < ttl then redis.call('PEXPIRE', w, ttl) end
end
for i = 5 + n, #ARGV do
  redis.call('ZREM', p .. 'warm:' .. ARGV[i], self)
end
return 1
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

// completeScript: ARGV: prefix, name, token, resp, ttl_ms[, adopter]. token
// "" means "whatever attempt" (a cancel, or a result from the action cache).
// With adopter, the lease must also be held by that adopter ("" for the
// claimer), as releaseScript demands: a replica giving up an attempt whose
// executor it lost must not fail an attempt another replica adopted. Returns
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
if ARGV[6] and (redis.call('HGET', op, 'adopter') or '') ~= ARGV[6] then return 0 end
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
      redis.call('HDEL', op, 'token', 'adopter')
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

// releaseScript: ARGV: prefix, name, token, adopter. Puts back a claimed
// operation the claimer could not start (its executor went away first) at
// its original place, if token still holds the lease and adopter is its
// adopter ("" for the claimer: refused once another replica adopted it);
// the attempt still counts. Returns 1 if it was put back.
var releaseScript = redis.NewScript(`
local p = ARGV[1]
local op = p .. 'op:' .. ARGV[2]
if redis.call('HGET', op, 'stage') ~= '3' or redis.call('HGET', op, 'token') ~= ARGV[3] then return 0 end
if (redis.call('HGET', op, 'adopter') or '') ~= ARGV[4] then return 0 end
redis.call('ZREM', p .. 'leases', ARGV[2])
redis.call('HSET', op, 'stage', '2')
redis.call('HDEL', op, 'token', 'adopter')
local f = redis.call('HMGET', op, 'shape', 'prio', 'member')
redis.call('ZADD', p .. 'q:' .. f[1], f[2], f[3])
redis.call('PUBLISH', p .. 'done:' .. ARGV[2], '2')
redis.call('PUBLISH', p .. 'queued', f[1])
return 1
`)

// adoptScript: ARGV: prefix, name, token, deadline_ms, self. The takeover
// of a running attempt by replica self, which did not claim it: if token
// still holds the lease (stage EXECUTING), extends it to deadline_ms, as
// renewScript does, records self as its adopter (so that the claimer, when
// it notices its executor gone, cannot release it: releaseScript) and
// returns {req, attempts}; 4 if the operation is completed; false if the
// lease was lost otherwise (re-queued, another attempt's, unknown). One
// script, so the renewal and the request read agree.
var adoptScript = redis.NewScript(`
local p = ARGV[1]
local op = p .. 'op:' .. ARGV[2]
local f = redis.call('HMGET', op, 'stage', 'token', 'req', 'attempts')
if f[1] == '4' then return 4 end
if f[1] ~= '3' or f[2] ~= ARGV[3] then return false end
redis.call('ZADD', p .. 'leases', ARGV[4], ARGV[2])
redis.call('HSET', op, 'adopter', ARGV[5])
return {f[3], tonumber(f[4])}
`)
