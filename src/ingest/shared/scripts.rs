//! The Lua scripts of the shared ledger: each checks the epoch first, so that nothing is taken
//! or ended against a Redis that lost its data.
//!
//! Ids live in hashes, one per generation of Redis's own clock (`g:{n}`, `n` = its time in ms
//! divided by the generation's span, half the dedup window): field the id's 16-byte hash, value
//! the batch that took it (hex) or `d` (accepted, loaded or marked stored). An id is looked up
//! in the three newest generations, the newest holder winning, and written into the newest: it
//! is remembered at least a window (two spans) and at most a window and a half. A batch's ids
//! are read with one `HMGET` per generation and written with one `HSET`, whatever their count:
//! the per-id work is Redis's own, not one script call per id. The generation that falls out of
//! use is unlinked (freed off Redis's main thread) when the next one is first written; each
//! also expires four spans after its last write, as a backstop (at the latest two and a half
//! windows after it began, when nothing was written to free it earlier).

/// Lua shared by the scripts: `generations(prefix, span)` gives the three live generations'
/// keys (newest first) and the one that fell out of use, never older than the newest used so
/// far (`gmax:{span}`: a clock stepped back does not hide the generations written before), and
/// the newest's number; `holders(gens, first)` looks up `ARGV[first..]` and gives, per id
/// (from 1), its holder and the generation (index in `gens`) that holds it;
/// `put(gens, old, span, pairs)` writes field/value `pairs` into the newest;
/// `accept_free(prefix, span, first)` records `ARGV[first..]` as accepted (`d`) where no batch
/// holds them.
macro_rules! lua_generations {
    () => {
        r"
local function generations(prefix, span)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local g = math.floor(now / span)
  local newest = tonumber(redis.call('GET', prefix .. 'gmax:' .. span) or '0')
  if newest > g then
    g = newest
  elseif newest < g then
    redis.call('SET', prefix .. 'gmax:' .. span, g)
  end
  return {prefix .. 'g:' .. g, prefix .. 'g:' .. (g - 1), prefix .. 'g:' .. (g - 2)}, prefix .. 'g:' .. (g - 3), g
end
local function holders(gens, first)
  local held, where = {}, {}
  for k = 1, #gens do
    if redis.call('EXISTS', gens[k]) == 1 then
      for s = first, #ARGV, 4000 do
        local got = redis.call('HMGET', gens[k], unpack(ARGV, s, math.min(s + 3999, #ARGV)))
        for j = 1, #got do
          local i = s - first + j
          if got[j] and not held[i] then
            held[i] = got[j]
            where[i] = k
          end
        end
      end
    end
  end
  return held, where
end
local function put(gens, old, span, pairs)
  if #pairs == 0 then return end
  if redis.call('EXISTS', gens[1]) == 0 then redis.call('UNLINK', old) end
  for s = 1, #pairs, 4000 do
    redis.call('HSET', gens[1], unpack(pairs, s, math.min(s + 3999, #pairs)))
  end
  redis.call('PEXPIRE', gens[1], 4 * span)
end
local function accept_free(prefix, span, first)
  local gens, old = generations(prefix, span)
  local held = holders(gens, first)
  local accepted = {}
  for i = first, #ARGV do
    if not held[i - first + 1] then
      accepted[#accepted + 1] = ARGV[i]
      accepted[#accepted + 1] = 'd'
    end
  end
  put(gens, old, span, accepted)
end
"
    };
}

/// Takes ids for a batch. `KEYS`: epoch, the pending set, the batch's state. `ARGV`: the
/// expected epoch, the batch (hex), its pending state, the generations' span (ms), the key
/// prefix, the state's expiry (ms), then the ids. Returns, for each id not taken now, its index
/// and 1 (accepted before, or taken by this batch) or 2 (held by a batch still pending).
pub(super) const CLAIM: &str = concat!(
    lua_generations!(),
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('EPOCH epoch changed') end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[6])
local span = tonumber(ARGV[4])
local gens, old = generations(ARGV[5], span)
local held = holders(gens, 7)
local states = {}
local out, taken = {}, {}
for i = 7, #ARGV do
  local holder = held[i - 6]
  local verdict = 0
  if holder then
    verdict = 2
    if holder == 'd' or holder == ARGV[2] then
      verdict = 1
    else
      local state = states[holder]
      if state == nil then
        state = redis.call('GET', ARGV[5] .. 'b:' .. holder) or false
        states[holder] = state
      end
      if state == 'c' then
        verdict = 1
      elseif state == 's' and redis.call('SISMEMBER', ARGV[5] .. 'l:' .. holder, ARGV[i]) == 1 then
        verdict = 1
      elseif state == 'a' or state == 's' then
        verdict = 0
      end
    end
  end
  if verdict == 0 then
    taken[#taken + 1] = ARGV[i]
    taken[#taken + 1] = ARGV[2]
  else
    out[#out + 1] = i - 7
    out[#out + 1] = verdict
  end
end
put(gens, old, span, taken)
if #taken > 0 then
  redis.call('SADD', KEYS[2], ARGV[2])
else
  redis.call('SET', KEYS[3], 'a', 'PX', ARGV[6])
end
return out
"
);

/// Ends a batch still pending (or whose state an emptied Redis lost): a batch already ended is
/// left as it is, and 0 returned. `KEYS`: epoch, the pending set, the batch's state, its set of
/// stored ids. `ARGV`: the expected epoch, the batch (hex), the state (`c`, `a` or `s`), the
/// state's expiry (ms), the generations' span (ms), the key prefix, then ids of the batch known
/// stored. Those are made accepted where no batch holds them (they were taken under an earlier
/// epoch), and, for `s`, listed.
pub(super) const END: &str = concat!(
    lua_generations!(),
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('EPOCH epoch changed') end
local state = redis.call('GET', KEYS[3])
if state and string.sub(state, 1, 2) ~= 'p:' then return 0 end
if #ARGV >= 7 then
  accept_free(ARGV[6], tonumber(ARGV[5]), 7)
  if ARGV[3] == 's' then
    for s = 7, #ARGV, 4000 do
      redis.call('SADD', KEYS[4], unpack(ARGV, s, math.min(s + 3999, #ARGV)))
    end
  end
end
if ARGV[3] == 's' then redis.call('PEXPIRE', KEYS[4], ARGV[4]) end
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
redis.call('SREM', KEYS[2], ARGV[2])
return 1
"
);

/// Gives back ids a batch took but will not insert. `KEYS`: epoch. `ARGV`: the expected epoch,
/// the batch (hex), the generations' span (ms), the key prefix, then the ids.
pub(super) const RELEASE: &str = concat!(
    lua_generations!(),
    r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('EPOCH epoch changed') end
local gens = generations(ARGV[4], tonumber(ARGV[3]))
local held, where = holders(gens, 5)
for i = 5, #ARGV do
  if held[i - 4] == ARGV[2] then redis.call('HDEL', gens[where[i - 4]], ARGV[i]) end
end
return 1
"
);

/// Records ids loaded from ClickHouse as accepted, whoever held them (they are stored); Redis
/// is being loaded, no epoch yet. `ARGV`: the generations' span (ms), the key prefix, the
/// generation of the ids' ingestion (clamped to the live ones), then the ids.
pub(super) const LOAD: &str = concat!(
    lua_generations!(),
    r"
local span = tonumber(ARGV[1])
local gens, _, newest = generations(ARGV[2], span)
local target = gens[1 + math.max(0, math.min(2, newest - tonumber(ARGV[3])))]
for s = 4, #ARGV, 2000 do
  local pairs = {}
  for i = s, math.min(s + 1999, #ARGV) do
    pairs[#pairs + 1] = ARGV[i]
    pairs[#pairs + 1] = 'd'
  end
  redis.call('HSET', target, unpack(pairs))
end
redis.call('PEXPIRE', target, 4 * span)
return #ARGV - 3
"
);

/// Releases a lock if this holder still has it.
pub(super) const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";
