//! The Lua scripts of the shared ledger: each checks the epoch first, so that nothing is taken
//! or ended against a Redis that lost its data.

/// Takes ids for a batch. `KEYS`: epoch, the pending set, the batch's state, then the ids.
/// `ARGV`: the expected epoch, the batch (hex), its pending state, the ids' expiry (ms), the
/// key prefix, the state's expiry (ms). Returns, for each id not taken now, its index and 1
/// (accepted before, or taken by this batch) or 2 (held by a batch still pending).
pub(super) const CLAIM: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('EPOCH epoch changed') end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[6])
local out = {}
local taken = 0
for i = 4, #KEYS do
  if not redis.call('SET', KEYS[i], ARGV[2], 'NX', 'PX', ARGV[4]) then
    local holder = redis.call('GET', KEYS[i])
    local verdict = 2
    if holder == 'd' or holder == ARGV[2] then
      verdict = 1
    elseif holder then
      local state = redis.call('GET', ARGV[5] .. 'b:' .. holder)
      if state == 'c' then
        verdict = 1
      elseif state == 's' and redis.call('SISMEMBER', ARGV[5] .. 'l:' .. holder, KEYS[i]) == 1 then
        verdict = 1
      elseif state == 'a' or state == 's' then
        verdict = 0
      end
    else
      verdict = 0
    end
    if verdict == 0 then
      redis.call('SET', KEYS[i], ARGV[2], 'PX', ARGV[4])
      taken = taken + 1
    else
      out[#out + 1] = i - 4
      out[#out + 1] = verdict
    end
  else
    taken = taken + 1
  end
end
if taken > 0 then
  redis.call('SADD', KEYS[2], ARGV[2])
else
  redis.call('SET', KEYS[3], 'a', 'PX', ARGV[6])
end
return out
";

/// Ends a batch still pending (or whose state an emptied Redis lost): a batch already ended is
/// left as it is, and 0 returned. `KEYS`: epoch, the pending set, the batch's state, its set of
/// stored ids, then ids of the batch known stored. `ARGV`: the expected epoch, the batch (hex),
/// the state (`c`, `a` or `s`), the state's expiry (ms), the ids' expiry (ms). The ids given are
/// made accepted where no batch holds them (they were taken under an earlier epoch), and, for
/// `s`, listed.
pub(super) const END: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('EPOCH epoch changed') end
local state = redis.call('GET', KEYS[3])
if state and string.sub(state, 1, 2) ~= 'p:' then return 0 end
for i = 5, #KEYS do
  redis.call('SET', KEYS[i], 'd', 'NX', 'PX', ARGV[5])
  if ARGV[3] == 's' then redis.call('SADD', KEYS[4], KEYS[i]) end
end
if ARGV[3] == 's' then redis.call('PEXPIRE', KEYS[4], ARGV[4]) end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
";

/// Gives back ids a batch took but will not insert. `KEYS`: epoch, then the ids. `ARGV`: the
/// expected epoch, the batch (hex).
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('EPOCH epoch changed') end
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[2] then redis.call('DEL', KEYS[i]) end
end
return 1
";

/// Releases a lock if this holder still has it.
pub(super) const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";
