//! Redis store. Keys carry the tenant as hash tag (`av:{tenant}:…`), so one
//! tenant's keys share a cluster slot and every multi-key write runs as one Lua
//! script, on standalone Redis and Redis Cluster alike.
//!
//! Layout per tenant: `av:{t}:s:<path>` hash {latest, active, record},
//! `av:{t}:v:<path>` hash {version → record}, `av:{t}:idx` zset of paths (lex order),
//! `av:{t}:claim:<name>` one-shot claims with a TTL, `av:{t}:grants` hash {id → grant},
//! `av:{t}:tok:<sha256>` hash {record, uses, approval, exp}, `av:{t}:appr` and
//! `av:{t}:apprst` hashes {approval id → record / status}, `av:{t}:audit`
//! stream of audit events (field `e`: the event's JSON).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::sync::OnceCell;

use chrono::{DateTime, Utc};

use super::{decode, encode, AuditFollower, Commit, Snapshot, Store, StoreError, TokenUse};
use crate::audit::{AuditEntry, AuditEvent, AuditId};
use crate::model::{
    ApprovalRecord, ApprovalStatus, Grant, SecretRecord, TokenRecord, VersionRecord,
};

/// Checks every commit's expected `latest` first and applies them only if all match.
/// KEYS: index, then (meta, versions) per commit. ARGV: count, then per commit:
/// expected, latest, active, record, path, n, (version, json) × n, m, pruned × m.
const COMMIT: &str = r"
local n = tonumber(ARGV[1])
local pos = 2
local plan = {}
for i = 1, n do
  local meta, vers = KEYS[2 * i], KEYS[2 * i + 1]
  local cur = tonumber(redis.call('HGET', meta, 'latest') or '0')
  if cur ~= tonumber(ARGV[pos]) then return 0 end
  local c = {meta = meta, vers = vers, latest = ARGV[pos + 1], active = ARGV[pos + 2],
             record = ARGV[pos + 3], path = ARGV[pos + 4], versions = {}, prune = {}}
  local nv = tonumber(ARGV[pos + 5])
  pos = pos + 6
  for _ = 1, nv do
    table.insert(c.versions, {ARGV[pos], ARGV[pos + 1]})
    pos = pos + 2
  end
  local np = tonumber(ARGV[pos])
  pos = pos + 1
  for _ = 1, np do
    table.insert(c.prune, ARGV[pos])
    pos = pos + 1
  end
  plan[i] = c
end
for _, c in ipairs(plan) do
  for _, v in ipairs(c.versions) do redis.call('HSET', c.vers, v[1], v[2]) end
  for _, p in ipairs(c.prune) do redis.call('HDEL', c.vers, p) end
  redis.call('HSET', c.meta, 'latest', c.latest, 'active', c.active, 'record', c.record)
  redis.call('ZADD', KEYS[1], 0, c.path)
end
return 1
";

const READ: &str = r"
local meta = redis.call('HMGET', KEYS[1], 'record', 'active')
if not meta[1] then return false end
local v = ARGV[1]
if v == '' then v = meta[2] end
return {meta[1], redis.call('HGET', KEYS[2], v)}
";

/// KEYS: meta, versions, index, grants. Also drops the grants of exactly this path.
const DELETE: &str = r"
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
local grants = redis.call('HGETALL', KEYS[4])
for i = 1, #grants, 2 do
  if cjson.decode(grants[i + 1]).path == ARGV[1] then redis.call('HDEL', KEYS[4], grants[i]) end
end
return existed
";

/// KEYS: token, approval statuses. ARGV: now (ms). Returns {code, record, uses left}
/// with code 0 unknown, 1 spent, 2 exhausted, 3 expired, 4 not approved (record = status).
const USE_TOKEN: &str = r"
local t = redis.call('HMGET', KEYS[1], 'record', 'uses', 'approval', 'exp')
if not t[1] then return {0} end
if tonumber(t[4]) <= tonumber(ARGV[1]) then return {3} end
if t[3] and t[3] ~= '' then
  local status = redis.call('HGET', KEYS[2], t[3])
  if status ~= 'approved' then return {4, status or 'pending'} end
end
if t[2] then
  if tonumber(t[2]) <= 0 then return {2} end
  return {1, t[1], tostring(redis.call('HINCRBY', KEYS[1], 'uses', -1))}
end
return {1, t[1], ''}
";

/// KEYS: approvals, approval statuses. ARGV: id, new status, record.
const DECIDE: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= 'pending' then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
";

/// How long one Redis call may take before the request answers `unavailable`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest one blocking `XREAD` waits, well inside its connection's timeout.
const MAX_FOLLOW_WAIT: Duration = Duration::from_secs(30);
const FOLLOW_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where to connect: one standalone server, or the seed nodes of a cluster.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    Standalone(String),
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// `redis://…` is a standalone server; several comma-separated URLs, or a
    /// `redis+cluster://` URL, name a cluster.
    pub fn parse(spec: &str) -> Self {
        let urls: Vec<String> = spec
            .split(',')
            .map(|u| u.trim().replacen("redis+cluster://", "redis://", 1))
            .filter(|u| !u.is_empty())
            .collect();
        if urls.len() > 1 || spec.trim_start().starts_with("redis+cluster://") {
            Self::Cluster(urls)
        } else {
            Self::Standalone(urls.into_iter().next().unwrap_or_default())
        }
    }
}

#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis store. Connects lazily, so a sidecar starts (and answers
/// `unavailable`) while Redis is still down, and reconnects on its own.
pub struct RedisStore {
    target: RedisTarget,
    conn: OnceCell<Conn>,
    commit: Script,
    read: Script,
    delete: Script,
    use_token: Script,
    decide: Script,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn key(tenant: &str, kind: &str, path: &str) -> String {
    format!("av:{{{tenant}}}:{kind}:{path}")
}

fn index_key(tenant: &str) -> String {
    format!("av:{{{tenant}}}:idx")
}

fn tenant_key(tenant: &str, name: &str) -> String {
    format!("av:{{{tenant}}}:{name}")
}

/// A connection of its own for blocking reads of the audit stream.
enum FollowConn {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

struct RedisFollower {
    conn: FollowConn,
    key: String,
}

#[async_trait]
impl AuditFollower for RedisFollower {
    async fn after(
        &mut self,
        after: AuditId,
        limit: usize,
        wait: Duration,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(limit.max(1));
        let wait_ms = wait.min(MAX_FOLLOW_WAIT).as_millis() as u64;
        if wait_ms > 0 {
            cmd.arg("BLOCK").arg(wait_ms);
        }
        cmd.arg("STREAMS").arg(&self.key).arg(after.to_string());
        let reply: Value = match &mut self.conn {
            FollowConn::Standalone(c) => cmd.query_async(c).await,
            FollowConn::Cluster(c) => cmd.query_async(c).await,
        }
        .map_err(unavailable)?;
        // RESP2: [[key, entries]]; RESP3: {key: entries}; nil when nothing came.
        let streams = match reply {
            Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                    _ => None,
                })
                .collect(),
            Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
            _ => Vec::new(),
        };
        let mut out = Vec::new();
        for entries in streams {
            out.extend(stream_entries(entries)?);
        }
        Ok(out)
    }
}

/// Decodes `[[id, [field, value, …]], …]` as returned by XRANGE and XREAD.
fn stream_entries(reply: Value) -> Result<Vec<AuditEntry>, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: "audit".into(),
        reason,
    };
    let Value::Array(items) = reply else {
        return Ok(Vec::new());
    };
    items
        .into_iter()
        .map(|item| {
            let Value::Array(mut pair) = item else {
                return Err(corrupt("stream entry is not [id, fields]".into()));
            };
            let (Some(Value::Array(fields)), Some(id)) = (pair.pop(), pair.pop()) else {
                return Err(corrupt("stream entry is not [id, fields]".into()));
            };
            let id: String = redis::from_redis_value(id).map_err(|e| corrupt(e.to_string()))?;
            let id: AuditId = id.parse().map_err(corrupt)?;
            let mut fields = fields.into_iter();
            while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                let name: String =
                    redis::from_redis_value(name).map_err(|e| corrupt(e.to_string()))?;
                if name == "e" {
                    let raw: Vec<u8> =
                        redis::from_redis_value(value).map_err(|e| corrupt(e.to_string()))?;
                    let event: AuditEvent = decode("audit", &raw)?;
                    return Ok(AuditEntry { id, event });
                }
            }
            Err(corrupt(format!("stream entry {id} has no event")))
        })
        .collect()
}

impl RedisStore {
    /// A fresh connection, not shared with the request path, for blocking reads.
    async fn follow_conn(&self) -> Result<FollowConn, StoreError> {
        match &self.target {
            RedisTarget::Standalone(url) => {
                let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(FOLLOW_RESPONSE_TIMEOUT));
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(unavailable)?;
                Ok(FollowConn::Standalone(conn))
            }
            RedisTarget::Cluster(urls) => {
                let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(FOLLOW_RESPONSE_TIMEOUT)
                    .build()
                    .map_err(unavailable)?;
                let conn = client.get_async_connection().await.map_err(unavailable)?;
                Ok(FollowConn::Cluster(conn))
            }
        }
    }

    pub fn new(target: RedisTarget) -> Self {
        Self {
            target,
            conn: OnceCell::new(),
            commit: Script::new(COMMIT),
            read: Script::new(READ),
            delete: Script::new(DELETE),
            use_token: Script::new(USE_TOKEN),
            decide: Script::new(DECIDE),
        }
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                match &self.target {
                    RedisTarget::Standalone(url) => {
                        let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(CONNECT_TIMEOUT))
                            .set_response_timeout(Some(RESPONSE_TIMEOUT))
                            .set_number_of_retries(1);
                        let manager = client
                            .get_connection_manager_with_config(config)
                            .await
                            .map_err(unavailable)?;
                        Ok::<_, StoreError>(Conn::Standalone(manager))
                    }
                    RedisTarget::Cluster(urls) => {
                        let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                            .connection_timeout(CONNECT_TIMEOUT)
                            .response_timeout(RESPONSE_TIMEOUT)
                            .build()
                            .map_err(unavailable)?;
                        let conn = client.get_async_connection().await.map_err(unavailable)?;
                        Ok(Conn::Cluster(conn))
                    }
                }
            })
            .await?;
        Ok(conn.clone())
    }
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn read(
        &self,
        tenant: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<Snapshot>, StoreError> {
        let mut conn = self.conn().await?;
        let found: Option<(Vec<u8>, Option<Vec<u8>>)> = self
            .read
            .key(key(tenant, "s", path))
            .key(key(tenant, "v", path))
            .arg(version.map(|v| v.to_string()).unwrap_or_default())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let Some((record, version)) = found else {
            return Ok(None);
        };
        let record: SecretRecord = decode(path, &record)?;
        let version = version.map(|v| decode(path, &v)).transpose()?;
        Ok(Some((record, version)))
    }

    async fn versions(&self, tenant: &str, path: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let raw: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(key(tenant, "v", path))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let mut versions = raw
            .iter()
            .map(|bytes| decode::<VersionRecord>(path, bytes))
            .collect::<Result<Vec<_>, _>>()?;
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }

    async fn commit_all(&self, tenant: &str, commits: &[Commit]) -> Result<(), StoreError> {
        if commits.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn().await?;
        let mut invocation = self.commit.prepare_invoke();
        invocation.key(index_key(tenant)).arg(commits.len());
        for commit in commits {
            let record = &commit.record;
            invocation
                .key(key(tenant, "s", &record.path))
                .key(key(tenant, "v", &record.path))
                .arg(commit.expected_latest)
                .arg(record.latest_version)
                .arg(record.active_version)
                .arg(encode(record))
                .arg(&record.path)
                .arg(commit.versions.len());
            for v in &commit.versions {
                invocation.arg(v.version).arg(encode(v));
            }
            invocation.arg(commit.prune.len());
            for old in &commit.prune {
                invocation.arg(*old);
            }
        }
        let applied: i64 = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if applied == 1 {
            Ok(())
        } else {
            Err(StoreError::Conflict)
        }
    }

    async fn claim(&self, tenant: &str, key_name: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let won: Option<String> = redis::cmd("SET")
            .arg(key(tenant, "claim", key_name))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(won.is_some())
    }

    async fn delete(&self, tenant: &str, path: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let existed: i64 = self
            .delete
            .key(key(tenant, "s", path))
            .key(key(tenant, "v", path))
            .key(index_key(tenant))
            .key(tenant_key(tenant, "grants"))
            .arg(path)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(existed == 1)
    }

    async fn put_grant(&self, tenant: &str, grant: &Grant) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("HSET")
            .arg(tenant_key(tenant, "grants"))
            .arg(&grant.grant_id)
            .arg(encode(grant))
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn grants(&self, tenant: &str) -> Result<Vec<Grant>, StoreError> {
        let mut conn = self.conn().await?;
        let raw: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(tenant_key(tenant, "grants"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        raw.iter().map(|g| decode("grants", g)).collect()
    }

    async fn delete_grant(&self, tenant: &str, grant_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let removed: i64 = redis::cmd("HDEL")
            .arg(tenant_key(tenant, "grants"))
            .arg(grant_id)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(removed == 1)
    }

    async fn create_token(
        &self,
        tenant: &str,
        token: &TokenRecord,
        approval: Option<&ApprovalRecord>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let key = tenant_key(tenant, &format!("tok:{}", token.hash));
        let exp = token.expires_at.timestamp_millis();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.hset_multiple(
            &key,
            &[
                ("record", encode(token)),
                (
                    "approval",
                    token.approval_id.clone().unwrap_or_default().into_bytes(),
                ),
                ("exp", exp.to_string().into_bytes()),
            ],
        );
        if let Some(uses) = token.max_uses {
            pipe.hset(&key, "uses", uses);
        }
        // Keep the record a day past expiry so a late use still answers "expired".
        pipe.cmd("PEXPIREAT").arg(&key).arg(exp + 24 * 3600 * 1000);
        if let Some(a) = approval {
            pipe.hset(tenant_key(tenant, "appr"), &a.approval_id, encode(a));
            pipe.hset(
                tenant_key(tenant, "apprst"),
                &a.approval_id,
                a.status.as_str(),
            );
        }
        pipe.query_async::<()>(&mut conn).await.map_err(unavailable)
    }

    async fn use_token(
        &self,
        tenant: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenUse, StoreError> {
        let mut conn = self.conn().await?;
        let reply: Vec<Value> = self
            .use_token
            .key(tenant_key(tenant, &format!("tok:{hash}")))
            .key(tenant_key(tenant, "apprst"))
            .arg(now.timestamp_millis())
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let text = |i: usize| match reply.get(i) {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        let code = match reply.first() {
            Some(Value::Int(code)) => *code,
            _ => 0,
        };
        Ok(match code {
            1 => TokenUse::Spent {
                record: Box::new(decode("token", text(1).as_bytes())?),
                uses_remaining: text(2).parse().ok(),
            },
            2 => TokenUse::Exhausted,
            3 => TokenUse::Expired,
            4 => TokenUse::NotApproved(
                ApprovalStatus::parse(&text(1)).unwrap_or(ApprovalStatus::Pending),
            ),
            _ => TokenUse::Unknown,
        })
    }

    async fn approvals(&self, tenant: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let raw: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(tenant_key(tenant, "appr"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        raw.iter().map(|a| decode("approvals", a)).collect()
    }

    async fn decide_approval(
        &self,
        tenant: &str,
        decided: &ApprovalRecord,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let applied: i64 = self
            .decide
            .key(tenant_key(tenant, "appr"))
            .key(tenant_key(tenant, "apprst"))
            .arg(&decided.approval_id)
            .arg(decided.status.as_str())
            .arg(encode(decided))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(applied == 1)
    }

    async fn list(
        &self,
        tenant: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, StoreError> {
        let mut conn = self.conn().await?;
        let min: Vec<u8> = match after {
            Some(after) if after >= prefix => [b"(", after.as_bytes()].concat(),
            _ if prefix.is_empty() => b"-".to_vec(),
            _ => [b"[", prefix.as_bytes()].concat(),
        };
        let max: Vec<u8> = if prefix.is_empty() {
            b"+".to_vec()
        } else {
            // Paths are ASCII, so every path with the prefix sorts below prefix + 0xFF.
            [b"(", prefix.as_bytes(), &[0xff]].concat()
        };
        let paths: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(index_key(tenant))
            .arg(min)
            .arg(max)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for path in &paths {
            pipe.hget(key(tenant, "s", path), "record");
        }
        let records: Vec<Option<Vec<u8>>> =
            pipe.query_async(&mut conn).await.map_err(unavailable)?;
        paths
            .iter()
            .zip(records)
            // A path deleted between the two calls is simply absent from the page.
            .filter_map(|(path, bytes)| bytes.map(|b| decode(path, &b)))
            .collect()
    }

    async fn append_audit(
        &self,
        tenant: &str,
        events: &[AuditEvent],
        max_len: usize,
    ) -> Result<Vec<AuditId>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let key = tenant_key(tenant, "audit");
        let mut pipe = redis::pipe();
        pipe.atomic();
        for event in events {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len.max(1))
                .arg("*")
                .arg("e")
                .arg(encode(event));
        }
        let ids: Vec<String> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        ids.iter()
            .map(|id| {
                id.parse().map_err(|reason| StoreError::Corrupt {
                    path: "audit".into(),
                    reason,
                })
            })
            .collect()
    }

    async fn audit_newest(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conn = self.conn().await?;
        let reply: Value = redis::cmd("XREVRANGE")
            .arg(tenant_key(tenant, "audit"))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        stream_entries(reply)
    }

    async fn audit_follower(&self, tenant: &str) -> Result<Box<dyn AuditFollower>, StoreError> {
        Ok(Box::new(RedisFollower {
            conn: self.follow_conn().await?,
            key: tenant_key(tenant, "audit"),
        }))
    }
}
