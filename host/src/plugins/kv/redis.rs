//! The Redis backend of the plugin KV store (`[kv] backend = "redis"`): one store shared by
//! every gateway of a fleet, with the meaning of the in-process one.
//!
//! Layout, per plugin namespace `ns` under `key_prefix` (the namespace is written with its
//! length, `<prefix><len>:<ns>`, so no plugin name and key can spell another's key):
//! - `…:v:<key>`: the value, a Redis string with Redis's own expiry (`PX`), so a read is
//!   one `GET` and a TTL means the same on every node (Redis's clock, not a node's);
//! - `…:expiry`: a ZSET of the namespace's keys scored by expiry in ms (`+inf` for none);
//! - `…:size`: a HASH of what each key counts against the quota ([`super::cost`]);
//! - `…:bytes`: the namespace's total of those, kept by `INCRBY`.
//!
//! Every write is one Lua script, so it is atomic across the fleet: increments are
//! `INCRBY` (never a read-modify-write across round trips), and the quota check sees the
//! namespace's total in Redis. A write that would go over the quota first drops at most
//! [`SWEEP`] expired keys, oldest first (O(log n) each); a live key is never evicted. Reads
//! and writes are bounded in time ([`KvConfig::command_timeout_ms`], inside the plugin
//! call's own limit), and what Redis sends back is checked like any input: a reply of the
//! wrong shape or an over-long value is an error, never trusted.
//!
//! A Redis that is down or slow makes the operation fail with [`KvError::Backend`] (the
//! plugin's failure policy applies); connections are re-made by the redis crate's
//! `ConnectionManager` on the next use. The loss and the return of Redis are each logged
//! once, and every failed operation is counted in `tidegate_kv_backend_errors_total`.
//!
//! The same connections keep the fleet-wide limits (`<prefix>limit:<name>`, a ZSET of
//! holders scored by when their place lapses): see [`RedisKv::lease`] and
//! `queue::fleet`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use super::{ENTRY_OVERHEAD, KvError, MAX_VALUE_LEN, Quota, Usage, check_key, check_value, cost};
use crate::config::KvConfig;
use crate::metrics::Metrics;

/// The most expired keys one write drops to make room.
pub const SWEEP: u32 = 64;

/// Shared by the write scripts: Redis's clock, and dropping expired keys other than the
/// one being written (whose accounting the write replaces).
const PRELUDE: &str = r#"
local V, Z, H, B = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function sweep(member, vprefix, limit)
  local old = redis.call('ZRANGEBYSCORE', Z, '-inf', now, 'LIMIT', 0, limit)
  for _, k in ipairs(old) do
    if k ~= member then
      local c = tonumber(redis.call('HGET', H, k) or '0') or 0
      redis.call('HDEL', H, k)
      redis.call('ZREM', Z, k)
      redis.call('DECRBY', B, c)
      redis.call('DEL', vprefix .. k)
    end
  end
end
local function state(member)
  local present = redis.call('HGET', H, member)
  local old = tonumber(present or '0') or 0
  return present, old, redis.call('ZCARD', Z), tonumber(redis.call('GET', B) or '0') or 0
end
local function fits(present, old, keys, bytes, new, maxk, maxb)
  if not present then keys = keys + 1 end
  return keys <= maxk and bytes - old + new <= maxb
end
"#;

/// `set`: ARGV = member, value, ttl ms (0: none), max keys, max bytes, cost, value-key
/// prefix, sweep bound. Returns {0, keys, bytes} or {1, keys, bytes} at the quota.
const SET: &str = r#"
local member, value, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local maxk, maxb, new = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local present, old, keys, bytes = state(member)
if not fits(present, old, keys, bytes, new, maxk, maxb) then
  sweep(member, ARGV[7], tonumber(ARGV[8]))
  present, old, keys, bytes = state(member)
  if not fits(present, old, keys, bytes, new, maxk, maxb) then
    return {1, keys, bytes}
  end
end
if ttl > 0 then
  redis.call('SET', V, value, 'PX', ttl)
  redis.call('ZADD', Z, now + ttl, member)
else
  redis.call('SET', V, value)
  redis.call('ZADD', Z, '+inf', member)
end
redis.call('HSET', H, member, new)
local total = redis.call('INCRBY', B, new - old)
return {0, redis.call('ZCARD', Z), total}
"#;

/// `incr`: ARGV = member, delta, ttl ms (0: none), max keys, max bytes, key length,
/// per-entry overhead, value-key prefix, sweep bound. Returns {0, keys, bytes, value} or
/// {1, keys, bytes} at the quota (the counter unchanged).
const INCR: &str = r#"
local member, delta, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local maxk, maxb = tonumber(ARGV[4]), tonumber(ARGV[5])
local klen, overhead = tonumber(ARGV[6]), tonumber(ARGV[7])
local cur = redis.call('GET', V)
local r = redis.pcall('INCRBY', V, delta)
if type(r) == 'table' and r.err then
  -- As in memory: a sum past the range saturates, a value that is no integer counts as 0.
  local value = delta
  if string.find(r.err, 'overflow') then
    if string.sub(delta, 1, 1) == '-' then value = '-9223372036854775808'
    else value = '9223372036854775807' end
  end
  redis.call('SET', V, value, 'KEEPTTL')
end
local created = not cur
local left = redis.call('PTTL', V)
local with_ttl = (created and ttl > 0) or ((not created) and left > 0)
local value = redis.call('GET', V)
local new = #value + klen + overhead
if with_ttl then new = new + klen end
local present, old, keys, bytes = state(member)
if not fits(present, old, keys, bytes, new, maxk, maxb) then
  sweep(member, ARGV[8], tonumber(ARGV[9]))
  present, old, keys, bytes = state(member)
  if not fits(present, old, keys, bytes, new, maxk, maxb) then
    if created then redis.call('DEL', V) else redis.call('SET', V, cur, 'KEEPTTL') end
    return {1, keys, bytes}
  end
end
if created and ttl > 0 then
  redis.call('PEXPIRE', V, ttl)
  redis.call('ZADD', Z, now + ttl, member)
elseif left > 0 then
  redis.call('ZADD', Z, now + left, member)
else
  redis.call('ZADD', Z, '+inf', member)
end
redis.call('HSET', H, member, new)
local total = redis.call('INCRBY', B, new - old)
return {0, redis.call('ZCARD', Z), total, value}
"#;

/// `delete`: ARGV = member. Returns {keys, bytes}.
const DELETE: &str = r#"
local member = ARGV[1]
redis.call('DEL', V)
local c = redis.call('HGET', H, member)
if c then
  redis.call('HDEL', H, member)
  redis.call('ZREM', Z, member)
  redis.call('DECRBY', B, tonumber(c) or 0)
end
return {redis.call('ZCARD', Z), tonumber(redis.call('GET', B) or '0') or 0}
"#;

/// `lease`: KEYS = the limit's ZSET; ARGV = limit, ttl ms, member. Drops expired holders,
/// then takes a place if one is free. Returns 1 (taken) or 0 (full).
const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
end
return 0
"#;

/// `renew`: KEYS = the limit's ZSET; ARGV = ttl ms, member. Returns 1 if still held.
const RENEW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[1]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return held
"#;

/// The Redis store: a small pool of reconnecting connections.
pub struct RedisKv {
    pool: Vec<ConnectionManager>,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    set: Script,
    incr: Script,
    delete: Script,
    lease: Script,
    renew: Script,
    /// Whether the last operation reached Redis: the loss and the return are logged once.
    up: AtomicBool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("pool", &self.pool.len())
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The keys of one namespace entry.
struct Keys {
    value: String,
    expiry: String,
    size: String,
    bytes: String,
    value_prefix: String,
}

impl Keys {
    /// `script` with the namespace's four keys (value, expiry ZSET, size HASH, bytes) as
    /// its KEYS, in the order the scripts read them.
    fn invocation<'a>(&self, script: &'a redis::Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&self.value)
            .key(&self.expiry)
            .key(&self.size)
            .key(&self.bytes);
        invocation
    }
}

impl RedisKv {
    /// A store over `config.url`; connections are made on first use.
    pub fn new(config: &KvConfig, metrics: Arc<Metrics>) -> Result<RedisKv, KvError> {
        let url = config
            .url
            .as_ref()
            .ok_or_else(|| KvError::Backend("no [kv] url".into()))?;
        let timeout = Duration::from_millis(config.command_timeout_ms);
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
            .set_response_timeout(Some(timeout))
            // No retries inside one operation: an operation fails within its time and the
            // next one tries a fresh connection, so a plugin never waits on a backoff.
            .set_number_of_retries(0);
        let mut pool = Vec::with_capacity(config.pool_size);
        for _ in 0..config.pool_size.max(1) {
            let client = redis::Client::open(url.as_str())
                .map_err(|e| KvError::Backend(format!("[kv] url: {e}")))?;
            pool.push(
                ConnectionManager::new_lazy_with_config(client, manager.clone())
                    .map_err(|e| KvError::Backend(e.to_string()))?,
            );
        }
        Ok(RedisKv {
            pool,
            next: AtomicUsize::new(0),
            prefix: config.key_prefix.clone(),
            timeout,
            set: Script::new(&format!("{PRELUDE}{SET}")),
            incr: Script::new(&format!("{PRELUDE}{INCR}")),
            delete: Script::new(&format!("{PRELUDE}{DELETE}")),
            lease: Script::new(LEASE),
            renew: Script::new(RENEW),
            up: AtomicBool::new(true),
            metrics,
        })
    }

    fn keys(&self, ns: &str, key: &str) -> Keys {
        let base = format!("{}{}:{ns}", self.prefix, ns.len());
        Keys {
            value: format!("{base}:v:{key}"),
            expiry: format!("{base}:expiry"),
            size: format!("{base}:size"),
            bytes: format!("{base}:bytes"),
            value_prefix: format!("{base}:v:"),
        }
    }

    /// Runs a prepared script under [`RedisKv::run`].
    async fn invoke(&self, invocation: &redis::ScriptInvocation<'_>) -> Result<Value, KvError> {
        self.run(|| {
            let mut conn = self.connection();
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await
    }

    fn connection(&self) -> ConnectionManager {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.pool.len().max(1);
        self.pool[i].clone()
    }

    /// Runs one round trip under the command timeout, noting whether Redis answered.
    ///
    /// A connection found broken (Redis restarted, or a reconnection attempt that failed
    /// while it was away) is re-made at once and the operation tried once more within the
    /// same timeout, so the first operation after Redis returns does not fail for
    /// nothing. The scripts are idempotent only up to that: a write whose connection broke
    /// before the request was sent is the only kind retried (an I/O error, never a reply).
    async fn run<T, F>(&self, op: impl Fn() -> F) -> Result<T, KvError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        let attempts = async {
            match op().await {
                Err(e) if e.is_io_error() || e.is_connection_refusal() => op().await,
                other => other,
            }
        };
        let result = match tokio::time::timeout(self.timeout, attempts).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("redis: {e}")),
            Err(_) => Err(format!(
                "redis: no answer within command_timeout_ms ({} ms)",
                self.timeout.as_millis()
            )),
        };
        match &result {
            Ok(_) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("kv backend redis reachable again");
                }
            }
            Err(why) => {
                self.metrics.kv_backend_errors.inc();
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %why, "kv backend redis unreachable; plugins using the KV store get their failure policy until it is back");
                }
            }
        }
        result.map_err(KvError::Backend)
    }

    /// `PING`, for `/readyz`.
    pub async fn ping(&self) -> Result<(), KvError> {
        let reply: Value = self
            .run(|| {
                let mut conn = self.connection();
                async move { redis::cmd("PING").query_async(&mut conn).await }
            })
            .await?;
        match reply {
            Value::SimpleString(s) if s == "PONG" => Ok(()),
            Value::Okay => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Reads a live key.
    pub async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        check_key(key)?;
        let keys = self.keys(ns, key);
        let reply: Value = self
            .run(|| {
                let mut conn = self.connection();
                let key = keys.value.clone();
                async move { redis::cmd("GET").arg(key).query_async(&mut conn).await }
            })
            .await?;
        match reply {
            Value::Nil => Ok(None),
            Value::BulkString(bytes) if bytes.len() <= MAX_VALUE_LEN => Ok(Some(bytes)),
            Value::BulkString(bytes) => Err(KvError::Backend(format!(
                "redis returned a value of {} bytes, over the {MAX_VALUE_LEN}-byte limit",
                bytes.len()
            ))),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes a key within the namespace's quota.
    pub async fn set(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: Quota,
    ) -> Result<Usage, KvError> {
        check_key(key)?;
        check_value(value)?;
        let keys = self.keys(ns, key);
        let mut invocation = keys.invocation(&self.set);
        invocation
            .arg(key)
            .arg(value)
            .arg(ttl_ms(ttl))
            .arg(quota.max_keys)
            .arg(quota.max_bytes)
            .arg(cost(key, value.len(), ttl.is_some()))
            .arg(&keys.value_prefix)
            .arg(SWEEP);
        let reply = self.invoke(&invocation).await?;
        let (usage, _) = written(&reply, quota)?;
        Ok(usage)
    }

    /// Adds `delta` to a counter, atomically across the fleet.
    pub async fn incr(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        quota: Quota,
    ) -> Result<(i64, Usage), KvError> {
        check_key(key)?;
        let keys = self.keys(ns, key);
        let mut invocation = keys.invocation(&self.incr);
        invocation
            .arg(key)
            .arg(delta)
            .arg(ttl_ms(ttl))
            .arg(quota.max_keys)
            .arg(quota.max_bytes)
            .arg(key.len())
            .arg(ENTRY_OVERHEAD)
            .arg(&keys.value_prefix)
            .arg(SWEEP);
        let reply = self.invoke(&invocation).await?;
        let (usage, value) = written(&reply, quota)?;
        let value = value
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
            .ok_or_else(|| unexpected(&reply))?;
        Ok((value, usage))
    }

    /// Deletes a key.
    pub async fn delete(&self, ns: &str, key: &str) -> Result<(), KvError> {
        check_key(key)?;
        let keys = self.keys(ns, key);
        let mut invocation = keys.invocation(&self.delete);
        invocation.arg(key);
        let reply = self.invoke(&invocation).await?;
        match &reply {
            Value::Array(items) if items.len() == 2 && items.iter().all(|i| count(i).is_some()) => {
                Ok(())
            }
            other => Err(unexpected(other)),
        }
    }

    /// Live keys starting with `prefix`, at most `limit`, with their values and remaining
    /// lifetimes (for the operator): the namespace's size hash scanned with `HSCAN`, a
    /// bounded number of rounds.
    pub async fn list(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>, Option<Duration>)>, KvError> {
        /// HSCAN rounds at most, so a huge namespace cannot keep the call going.
        const MAX_ROUNDS: usize = 1000;
        let keys = self.keys(ns, "");
        let pattern: String = prefix
            .chars()
            .flat_map(|c| {
                let escape = matches!(c, '*' | '?' | '[' | ']' | '\\');
                escape.then_some('\\').into_iter().chain(std::iter::once(c))
            })
            .chain(std::iter::once('*'))
            .collect();
        let mut names: Vec<String> = Vec::new();
        let mut cursor = 0u64;
        for _ in 0..MAX_ROUNDS {
            let reply: Value = self
                .run(|| {
                    let mut conn = self.connection();
                    let (hash, pattern) = (keys.size.clone(), pattern.clone());
                    async move {
                        redis::cmd("HSCAN")
                            .arg(hash)
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(pattern)
                            .arg("COUNT")
                            .arg(500)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
            let Value::Array(parts) = &reply else {
                return Err(unexpected(&reply));
            };
            let (Some(Value::BulkString(next)), Some(Value::Array(fields))) =
                (parts.first(), parts.get(1))
            else {
                return Err(unexpected(&reply));
            };
            for pair in fields.chunks(2) {
                if let Some(Value::BulkString(name)) = pair.first()
                    && let Ok(name) = String::from_utf8(name.clone())
                {
                    names.push(name);
                }
            }
            cursor = std::str::from_utf8(next)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| unexpected(&reply))?;
            if cursor == 0 || names.len() >= limit.saturating_mul(4).max(limit + 64) {
                break;
            }
        }
        names.sort();
        names.dedup();
        let mut found = Vec::new();
        for name in names {
            if found.len() >= limit {
                break;
            }
            let value_key = format!("{}{name}", keys.value_prefix);
            let reply: Value = self
                .run(|| {
                    let mut conn = self.connection();
                    let key = value_key.clone();
                    async move {
                        redis::pipe()
                            .cmd("GET")
                            .arg(&key)
                            .cmd("PTTL")
                            .arg(&key)
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
            if let Value::Array(items) = &reply
                && let (Some(Value::BulkString(value)), Some(Value::Int(ttl))) =
                    (items.first(), items.get(1))
                && value.len() <= MAX_VALUE_LEN
            {
                let left = u64::try_from(*ttl).ok().map(Duration::from_millis);
                found.push((name, value.clone(), left));
            }
        }
        Ok(found)
    }

    fn limit_key(&self, name: &str) -> String {
        format!("{}limit:{name}", self.prefix)
    }

    /// Takes one of `limit` places of the fleet-wide limit `name` for `ttl` (renewed by
    /// [`RedisKv::renew`]); `false` when all are held (by any node).
    pub async fn lease(
        &self,
        name: &str,
        limit: u32,
        ttl: Duration,
        member: &str,
    ) -> Result<bool, KvError> {
        let mut invocation = self.lease.prepare_invoke();
        invocation
            .key(self.limit_key(name))
            .arg(limit)
            .arg(ttl_ms(Some(ttl)))
            .arg(member);
        let reply = self.invoke(&invocation).await?;
        match reply {
            Value::Int(1) => Ok(true),
            Value::Int(0) => Ok(false),
            other => Err(unexpected(&other)),
        }
    }

    /// Keeps a place for another `ttl`; `false` if it was lost (it expired meanwhile).
    pub async fn renew(&self, name: &str, ttl: Duration, member: &str) -> Result<bool, KvError> {
        let mut invocation = self.renew.prepare_invoke();
        invocation
            .key(self.limit_key(name))
            .arg(ttl_ms(Some(ttl)))
            .arg(member);
        let reply = self.invoke(&invocation).await?;
        match reply {
            Value::Int(n) => Ok(n == 1),
            other => Err(unexpected(&other)),
        }
    }

    /// Gives a place back.
    pub async fn release(&self, name: &str, member: &str) -> Result<(), KvError> {
        let key = self.limit_key(name);
        let reply: Value = self
            .run(|| {
                let mut conn = self.connection();
                let (key, member) = (key.clone(), member.to_owned());
                async move {
                    redis::cmd("ZREM")
                        .arg(key)
                        .arg(member)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        match reply {
            Value::Int(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

/// A TTL as the scripts take it: whole ms, at least 1 (0 means none).
fn ttl_ms(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |t| {
        u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

/// A non-negative integer in a script's reply.
fn count(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Reads a write script's reply: {0, keys, bytes[, value]} or {1, keys, bytes}.
fn written(reply: &Value, quota: Quota) -> Result<(Usage, Option<&[u8]>), KvError> {
    let Value::Array(items) = reply else {
        return Err(unexpected(reply));
    };
    let (Some(status), Some(keys), Some(bytes)) = (
        items.first().and_then(count),
        items.get(1).and_then(count),
        items.get(2).and_then(count),
    ) else {
        return Err(unexpected(reply));
    };
    match status {
        0 => {
            let value = match items.get(3) {
                Some(Value::BulkString(v)) if v.len() <= 32 => Some(v.as_slice()),
                Some(_) => return Err(unexpected(reply)),
                None => None,
            };
            Ok((Usage { keys, bytes }, value))
        }
        1 => Err(KvError::Quota {
            keys,
            bytes,
            max_keys: quota.max_keys,
            max_bytes: quota.max_bytes,
        }),
        _ => Err(unexpected(reply)),
    }
}

/// A reply of a shape the scripts never send: named, but not echoed whole.
fn unexpected(reply: &Value) -> KvError {
    let shape = match reply {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) | Value::Okay => "a status",
        _ => "another type",
    };
    KvError::Backend(format!("redis sent an unexpected reply ({shape})"))
}
