//! The Redis backend: one Redis shared by a fleet of servers.
//!
//! Layout: each bucket is one Redis hash, its keys the hash's fields, at
//! `wasmux:kv:` followed by the tenant's, the plugin's and the bucket's
//! names, each after its length and a colon (`wasmux:kv:5:alpha6:search7:default`):
//! no name can pass for another whatever it holds, and a bucket's
//! `list-keys` is the hash's `HSCAN` (its fields only). Each tenant's [`Usage`] is the hash
//! `wasmux:kv-usage:` + its name (the same way), fields `keys` and `bytes`.
//!
//! Writes are Lua scripts, which Redis runs atomically: a write, the
//! tenant's usage it changes and the limits it is checked against are
//! one step for every server sharing the Redis. `increment` is `HINCRBY`
//! inside its script, so a counter is the decimal ASCII Redis keeps, the
//! same bytes the other backends write (the module's doc). A single Redis
//! (not a cluster) is assumed: a script touches two keys.
//!
//! The connection (one, multiplexed) is made on first use and remade
//! after an I/O error, so the store recovers by itself when Redis comes
//! back; meanwhile every call fails as [`KvError::Unavailable`], or as
//! [`KvError::Timeout`] at its deadline. A connection on which Redis has
//! not answered for [`SILENCE`] while calls timed out (a host gone
//! without a reset, a lost route, a firewall's dropped state: nothing
//! errs, TCP would retransmit for many minutes) is remade too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script, Value};

use super::{BucketId, KvError, KvLimits, LIST_PAGE, Usage};

/// Adds `data` (`KEYS[1]`) pairs `ARGV[3..]` in order, accounting for each
/// in the usage hash (`KEYS[2]`) under the limits `ARGV[1]` (keys) and
/// `ARGV[2]` (bytes); stops at the first pair a limit refuses. Returns
/// `{0, 0}`, or `{1, keys}` (too many keys) / `{2, bytes}` (too many bytes).
const SET_SCRIPT: &str = r"
local data, usage = KEYS[1], KEYS[2]
local max_keys, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local keys = tonumber(redis.call('HGET', usage, 'keys') or 0)
local bytes = tonumber(redis.call('HGET', usage, 'bytes') or 0)
local status, detail = 0, 0
for i = 3, #ARGV, 2 do
  local k, v = ARGV[i], ARGV[i + 1]
  local new_keys, old = keys, 0
  if redis.call('HEXISTS', data, k) == 1 then
    old = #k + redis.call('HSTRLEN', data, k)
  else
    new_keys = keys + 1
  end
  local new_bytes = bytes - old + #k + #v
  if new_keys > keys and new_keys > max_keys then status, detail = 1, keys; break end
  if new_bytes > bytes and new_bytes > max_bytes then status, detail = 2, new_bytes; break end
  redis.call('HSET', data, k, v)
  keys, bytes = new_keys, new_bytes
end
redis.call('HSET', usage, 'keys', string.format('%d', keys), 'bytes', string.format('%d', bytes))
return {status, detail}
";

/// One page of `HSCAN` of `KEYS[1]` from cursor `ARGV[1]` (`COUNT`
/// `ARGV[2]`), its fields only: `{next cursor, fields}`. Redis 7.0's
/// `HSCAN` has no `NOVALUES`, and a page's values (up to a tenant's whole
/// `max-bytes`) would otherwise cross the network and sit in the server's
/// memory, for keys alone.
const LIST_SCRIPT: &str = r"
local page = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local fields = {}
for i = 1, #page[2], 2 do fields[#fields + 1] = page[2][i] end
return {page[1], fields}
";

/// Deletes the fields `ARGV` of `KEYS[1]`, accounting in `KEYS[2]`.
const DELETE_SCRIPT: &str = r"
local data, usage = KEYS[1], KEYS[2]
local keys, bytes = 0, 0
for i = 1, #ARGV do
  local k = ARGV[i]
  if redis.call('HEXISTS', data, k) == 1 then
    bytes = bytes + #k + redis.call('HSTRLEN', data, k)
    keys = keys + 1
    redis.call('HDEL', data, k)
  end
end
if keys > 0 then
  redis.call('HINCRBY', usage, 'keys', string.format('%d', -keys))
  redis.call('HINCRBY', usage, 'bytes', string.format('%d', -bytes))
end
return 0
";

/// `HINCRBY` of field `ARGV[3]` of `KEYS[1]` by `ARGV[4]`, undone when
/// the result is negative or breaks a limit (`ARGV[1]`, `ARGV[2]`), so a
/// refused increment changes nothing. Returns `{0, new value}`, `{1,
/// keys}`, `{2, bytes}` or `{3, old value}` (negative). A value that is not
/// an integer, or an overflow, fails in `HINCRBY` itself, before any write.
/// The new value is read back as text: a Lua number would lose digits past
/// 2^53. (Counts of keys and bytes are formatted with `%d`: Redis would
/// write a large Lua number in exponent notation.)
const INCREMENT_SCRIPT: &str = r"
local data, usage = KEYS[1], KEYS[2]
local max_keys, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2])
local k, delta = ARGV[3], ARGV[4]
local old = redis.call('HGET', data, k)
redis.call('HINCRBY', data, k, delta)
local text = redis.call('HGET', data, k)
local function undo()
  if old then redis.call('HSET', data, k, old) else redis.call('HDEL', data, k) end
end
if string.sub(text, 1, 1) == '-' then undo(); return {3, old} end
local keys = tonumber(redis.call('HGET', usage, 'keys') or 0)
local bytes = tonumber(redis.call('HGET', usage, 'bytes') or 0)
local new_keys, new_bytes = keys, bytes + #k + #text
if old then new_bytes = new_bytes - #k - #old else new_keys = keys + 1 end
if new_keys > keys and new_keys > max_keys then undo(); return {1, keys} end
if new_bytes > bytes and new_bytes > max_bytes then undo(); return {2, new_bytes} end
redis.call('HSET', usage, 'keys', string.format('%d', new_keys), 'bytes', string.format('%d', new_bytes))
return {0, text}
";

/// A call that times out when calls have gone unanswered on its
/// connection for this long (since the oldest of them was sent) has the
/// connection remade.
pub const SILENCE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(super) struct RedisStore {
    shared: Arc<Shared>,
}

/// The connection in use, and since when calls on it go unanswered.
struct Connection {
    manager: ConnectionManager,
    /// When the oldest call that timed out since Redis last answered on
    /// this connection was sent (none: Redis answered the last call).
    unanswered: Unanswered,
}

type Unanswered = Arc<std::sync::Mutex<Option<Instant>>>;

struct Shared {
    client: Client,
    /// Made on first use, inside the async runtime (it spawns a task), and
    /// remade when silent.
    connection: std::sync::Mutex<Option<Connection>>,
    set: Script,
    list: Script,
    delete: Script,
    increment: Script,
}

impl RedisStore {
    pub fn new(url: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(url.starts_with("redis://"), "the key-value store's URL must be redis://HOST:PORT (got {:?})", redacted(url));
        let client = Client::open(url).map_err(|e| anyhow::anyhow!("the key-value store's URL {:?} is not valid: {e}", redacted(url)))?;
        Ok(Self {
            shared: Arc::new(Shared {
                client,
                connection: std::sync::Mutex::new(None),
                set: Script::new(SET_SCRIPT),
                list: Script::new(LIST_SCRIPT),
                delete: Script::new(DELETE_SCRIPT),
                increment: Script::new(INCREMENT_SCRIPT),
            }),
        })
    }

    /// The connection and its [`Connection::unanswered`], made (lazily: it
    /// connects on the first command) on the first call.
    fn connection(&self) -> Result<(ConnectionManager, Unanswered), KvError> {
        let mut connection = self.shared.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(Connection { manager, unanswered }) = &*connection {
            return Ok((manager.clone(), Arc::clone(unanswered)));
        }
        let made = self.connect()?;
        let handles = (made.manager.clone(), Arc::clone(&made.unanswered));
        *connection = Some(made);
        Ok(handles)
    }

    fn connect(&self) -> Result<Connection, KvError> {
        // While Redis is away, each reconnection is tried twice, quickly:
        // the next call tries again, so a Redis that comes back is used
        // within one call's time.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(None);
        let manager = ConnectionManager::new_lazy_with_config(self.shared.client.clone(), config).map_err(unavailable)?;
        Ok(Connection { manager, unanswered: Arc::default() })
    }

    /// After a call sent at `sent` timed out on the connection whose
    /// [`Connection::unanswered`] is `unanswered`: remakes it if calls on
    /// it have gone unanswered for [`SILENCE`] (and it is still the one in
    /// use). An idle connection is not silent: the time counts from the
    /// oldest call that went unanswered, not from the last answer.
    fn timed_out(&self, unanswered: &Unanswered, sent: Instant) {
        let mut connection = self.shared.connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if !connection.as_ref().is_some_and(|current| Arc::ptr_eq(&current.unanswered, unanswered)) {
            return;
        }
        let since = {
            let mut since = unanswered.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let oldest = since.map_or(sent, |since| since.min(sent));
            *since = Some(oldest);
            oldest
        };
        if since.elapsed() < SILENCE {
            return;
        }
        tracing::warn!(silent_for = ?since.elapsed(), "the Redis of the key-value store has not answered for {:.1} s: making a new connection", since.elapsed().as_secs_f64());
        // A failure to make one (a URL that was valid) leaves the old one, tried again at the next timeout.
        if let Ok(made) = self.connect() {
            *connection = Some(made);
        }
    }

    /// Runs `command` with the deadline.
    async fn run<T, F>(&self, deadline: Instant, command: impl FnOnce(ConnectionManager) -> F) -> Result<T, KvError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let (connection, unanswered) = self.connection()?;
        let sent = Instant::now();
        match tokio::time::timeout_at(deadline.into(), command(connection)).await {
            Ok(result) => {
                if result.as_ref().map_or_else(answered, |_| true) {
                    *unanswered.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
                }
                result.map_err(unavailable)
            }
            Err(_) => {
                self.timed_out(&unanswered, sent);
                Err(KvError::Timeout)
            }
        }
    }

    pub async fn get(&self, bucket: &BucketId, key: &str, deadline: Instant) -> Result<Option<Vec<u8>>, KvError> {
        let hash = hash_key(bucket);
        self.run(deadline, |mut c| async move { redis::cmd("HGET").arg(&hash).arg(key).query_async(&mut c).await }).await
    }

    pub async fn exists(&self, bucket: &BucketId, key: &str, deadline: Instant) -> Result<bool, KvError> {
        let hash = hash_key(bucket);
        self.run(deadline, |mut c| async move { redis::cmd("HEXISTS").arg(&hash).arg(key).query_async(&mut c).await }).await
    }

    pub async fn get_many(&self, bucket: &BucketId, keys: &[String], deadline: Instant) -> Result<Vec<Option<Vec<u8>>>, KvError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let hash = hash_key(bucket);
        self.run(deadline, |mut c| async move { redis::cmd("HMGET").arg(&hash).arg(keys).query_async(&mut c).await }).await
    }

    /// The cursor is `HSCAN`'s (0 starts; 0 back means done). A page may
    /// hold a few more or fewer keys than [`LIST_PAGE`], and a key may
    /// show twice if the bucket changes meanwhile (as the interface allows).
    /// The page's values stay in Redis ([`LIST_SCRIPT`]).
    pub async fn list_keys(&self, bucket: &BucketId, cursor: Option<u64>, deadline: Instant) -> Result<(Vec<String>, Option<u64>), KvError> {
        let hash = hash_key(bucket);
        let (next, fields): (u64, Vec<Vec<u8>>) =
            self.run(deadline, |mut c| async move { self.shared.list.key(&hash).arg(cursor.unwrap_or(0)).arg(LIST_PAGE).invoke_async(&mut c).await }).await?;
        let keys = fields.into_iter().map(|k| String::from_utf8_lossy(&k).into_owned()).collect();
        Ok((keys, (next != 0).then_some(next)))
    }

    pub async fn set_many(&self, bucket: &BucketId, pairs: Vec<(String, Vec<u8>)>, limits: &KvLimits, deadline: Instant) -> Result<(), KvError> {
        if pairs.is_empty() {
            return Ok(());
        }
        let (hash, usage) = (hash_key(bucket), usage_key(&bucket.tenant));
        let (status, detail): (i64, i64) = self
            .run(deadline, |mut c| async move {
                let mut call = self.shared.set.key(&hash);
                call.key(&usage).arg(limits.max_keys).arg(limits.max_bytes);
                for (key, value) in &pairs {
                    call.arg(key).arg(value);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        limit_status(status, detail, limits)
    }

    pub async fn delete_many(&self, bucket: &BucketId, keys: Vec<String>, deadline: Instant) -> Result<(), KvError> {
        if keys.is_empty() {
            return Ok(());
        }
        let (hash, usage) = (hash_key(bucket), usage_key(&bucket.tenant));
        let _: i64 = self.run(deadline, |mut c| async move { self.shared.delete.key(&hash).key(&usage).arg(&keys).invoke_async(&mut c).await }).await?;
        Ok(())
    }

    pub async fn increment(&self, bucket: &BucketId, key: &str, delta: i64, limits: &KvLimits, deadline: Instant) -> Result<u64, KvError> {
        let (hash, usage) = (hash_key(bucket), usage_key(&bucket.tenant));
        let (status, detail): (i64, Value) = self
            .run(deadline, |mut c| async move {
                self.shared.increment.key(&hash).key(&usage).arg(limits.max_keys).arg(limits.max_bytes).arg(key).arg(delta).invoke_async(&mut c).await
            })
            .await
            .map_err(counter_error)?;
        let text = match detail {
            Value::BulkString(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Value::Int(n) => n.to_string(),
            _ => String::new(),
        };
        match status {
            0 => text.parse().map_err(|_| KvError::Unavailable(format!("Redis answered an increment with {text:?}"))),
            3 => Err(KvError::NotACounter(format!("the counter holds {text}, and a counter returned by increment cannot be negative"))),
            _ => limit_status(status, text.parse().unwrap_or(0), limits).map(|()| 0),
        }
    }

    pub async fn usage(&self, tenant: &str, deadline: Instant) -> Result<Usage, KvError> {
        let key = usage_key(tenant);
        let (keys, bytes): (Option<u64>, Option<u64>) =
            self.run(deadline, |mut c| async move { redis::cmd("HMGET").arg(&key).arg("keys").arg("bytes").query_async(&mut c).await }).await?;
        Ok(Usage { keys: keys.unwrap_or(0), bytes: bytes.unwrap_or(0) })
    }
}

/// A script's `{status, detail}` as a result.
fn limit_status(status: i64, detail: i64, limits: &KvLimits) -> Result<(), KvError> {
    match status {
        0 => Ok(()),
        1 => Err(KvError::Limit(format!("the tenant stores {detail} keys, its limit (kv max-keys)"))),
        2 => Err(KvError::Limit(format!(
            "the write would bring the tenant's stored bytes to {detail}, over its limit of {} (kv max-bytes)",
            limits.max_bytes
        ))),
        _ => Err(KvError::Unavailable(format!("Redis answered a write with status {status}"))),
    }
}

/// Redis refuses `HINCRBY` of a value that is not an integer, or past
/// `i64`: the plugin's mistake, not the store's.
fn counter_error(error: KvError) -> KvError {
    match error {
        KvError::Unavailable(message) if message.contains("not an integer") || message.contains("overflow") => {
            KvError::NotACounter("the value is not a counter (the decimal ASCII of an integer), or the counter would overflow".into())
        }
        other => other,
    }
}

/// Whether `error` is Redis's answer (an error reply), not the
/// connection's failure.
fn answered(error: &RedisError) -> bool {
    !(error.is_io_error() || error.is_timeout() || error.is_connection_dropped() || error.is_connection_refusal() || error.is_unrecoverable_error())
}

fn unavailable(error: RedisError) -> KvError {
    KvError::Unavailable(error.to_string())
}

/// `prefix` then each of `parts` after its length and a colon.
fn length_prefixed(prefix: &str, parts: &[&str]) -> String {
    let mut key = String::from(prefix);
    for part in parts {
        key.push_str(&part.len().to_string());
        key.push(':');
        key.push_str(part);
    }
    key
}

/// The Redis hash holding `bucket`.
fn hash_key(bucket: &BucketId) -> String {
    length_prefixed("wasmux:kv:", &[&bucket.tenant, &bucket.plugin, &bucket.bucket])
}

/// The Redis hash holding `tenant`'s usage.
fn usage_key(tenant: &str) -> String {
    length_prefixed("wasmux:kv-usage:", &[tenant])
}

/// `url` as it may be shown (logs, errors): its password, if it has one
/// (`redis://USER:PASSWORD@HOST:PORT`), is `***`.
pub fn redacted(url: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = url.split_once("://") else { return url.into() };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let Some((user, _password)) = authority.rsplit_once('@').and_then(|(userinfo, _)| userinfo.split_once(':')) else { return url.into() };
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    format!("{scheme}://{user}:***@{host}{tail}").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_never_shown() {
        assert_eq!(redacted("redis://:s3cret@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
        assert_eq!(redacted("redis://app:s3c:r@t@10.0.0.1:7000/2"), "redis://app:***@10.0.0.1:7000/2");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted("redis://app@127.0.0.1:6379"), "redis://app@127.0.0.1:6379");
        assert_eq!(redacted("127.0.0.1:6379"), "127.0.0.1:6379");
        let error = RedisStore::new("redis://:s3cret@[::1").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!error.contains("s3cret"), "{error}");
        let error = RedisStore::new("http://:s3cret@host").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("redis://HOST:PORT") && !error.contains("s3cret"), "{error}");
        let shown = crate::kv::StoreConfig::Redis { url: "redis://:s3cret@127.0.0.1:6379".into() }.to_string();
        assert_eq!(shown, "in the Redis at redis://:***@127.0.0.1:6379");
    }

    #[test]
    fn names_cannot_pass_for_others() {
        assert_eq!(hash_key(&BucketId::new("alpha", "search@fuzzy", "default")), "wasmux:kv:5:alpha6:search7:default");
        let a = hash_key(&BucketId::new("t", "a:1", "b"));
        let b = hash_key(&BucketId::new("t", "a", "1:b"));
        assert_ne!(a, b);
        // A tenant named like a tenant and a plugin is still one tenant.
        assert_ne!(hash_key(&BucketId::new("1:a1:b", "c", "d")), hash_key(&BucketId::new("1", "a", "b")));
        assert_ne!(usage_key("a"), usage_key("a1:b"));
    }
}
