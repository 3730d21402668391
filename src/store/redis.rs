//! Redis store. Keys carry the tenant as hash tag (`av:{tenant}:…`), so one
//! tenant's keys share a cluster slot and every multi-key write runs as one Lua
//! script, on standalone Redis and Redis Cluster alike.
//!
//! Layout per tenant: `av:{t}:s:<path>` hash {latest, active, record, rev (the
//! record's revision), cur (a copy of the active version's record, so a read
//! is one plain HMGET), next (the highest version number reserved)},
//! `av:{t}:v:<path>` hash {version → record}, `av:{t}:idx` zset of paths (lex order),
//! `av:{t}:claim:<name>` one-shot claims with a TTL, `av:{t}:grants` hash {id → grant},
//! `av:{t}:idem:<key>` the first answer to a write with that `Idempotency-Key` (with a TTL),
//! `av:{t}:tok:<sha256>` hash {record, uses, approval, exp}, `av:{t}:appr` and
//! `av:{t}:apprst` hashes {approval id → record / status}, `av:{t}:audit`
//! stream of audit events (field `e`: the event's JSON).
//!
//! A sidecar can be confined by Redis itself to its tenant's keys: [`acl_setuser`]
//! builds the `ACL SETUSER` line from [`SIDECAR_COMMANDS`] and [`SIDECAR_CHANNELS`],
//! the one list of what this module sends, and [`RedisSecurity`] carries the
//! user's password and the TLS settings.
//!
//! Change notifications: every write of a secret, grant, token or approval
//! publishes what it changed (see [`Change`]) to the channel `av:{t}:changes`
//! inside the same script or transaction as the write, so no subscriber can
//! see the write without the announcement following it. Plain `PUBLISH`,
//! which Redis Cluster relays to every node, so a subscriber needs one
//! connection to any node and a lost connection is a visible end of the
//! stream (no client-side resubscription that could hide a gap).

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::{
    ClientTlsConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Script, TlsCertificates, Value,
};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use chrono::{DateTime, Utc};

use super::{
    decode, decode_with, encode, AuditFollower, Change, ChangeStream, Commit, IdempotencyRecord,
    Idempotent, Snapshot, Store, StoreError, TokenUse, VersionWrite, WriteOutcome,
};
use crate::crypto::Sealed;
use crate::model::audit::{AuditEntry, AuditEvent, AuditId};
use crate::model::{
    ApprovalRecord, ApprovalStatus, Grant, SecretRecord, TokenRecord, VersionRecord, VersionStamp,
};

/// Checks every commit's expected `latest` first (and that a new latest
/// version's number is free) and applies them only if all match, with the
/// write's idempotency record unless its key is taken.
/// KEYS: index, then (meta, versions) per commit, then the idempotency key.
/// ARGV: count, then per commit: expected, latest, active, record, its revision, path, n,
/// (version, json) × n, m, pruned × m; then the change channel, which hears
/// each committed path, the idempotent answer ('' for none) and its TTL in ms.
/// Returns {1} applied, {0} conflict, {2, answer} replayed.
const COMMIT: &str = r"
local n = tonumber(ARGV[1])
local channel, answer, ttl = ARGV[#ARGV - 2], ARGV[#ARGV - 1], ARGV[#ARGV]
local idem = KEYS[2 * n + 2]
if answer ~= '' then
  local prior = redis.call('GET', idem)
  if prior then return {2, prior} end
end
local pos = 2
local plan = {}
for i = 1, n do
  local meta, vers = KEYS[2 * i], KEYS[2 * i + 1]
  local cur = tonumber(redis.call('HGET', meta, 'latest') or '0')
  if cur ~= tonumber(ARGV[pos]) then return {0} end
  local c = {meta = meta, vers = vers, latest = ARGV[pos + 1], active = ARGV[pos + 2],
             record = ARGV[pos + 3], rev = ARGV[pos + 4], path = ARGV[pos + 5],
             versions = {}, prune = {}}
  if tonumber(c.latest) ~= cur and redis.call('HGET', vers, c.latest) then return {0} end
  local nv = tonumber(ARGV[pos + 6])
  pos = pos + 7
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
  redis.call('HSET', c.meta, 'latest', c.latest, 'active', c.active, 'record', c.record,
    'rev', c.rev)
  local cur = redis.call('HGET', c.vers, c.active)
  if cur then redis.call('HSET', c.meta, 'cur', cur) else redis.call('HDEL', c.meta, 'cur') end
  redis.call('ZADD', KEYS[1], 0, c.path)
end
if answer ~= '' then redis.call('SET', idem, answer, 'PX', ttl) end
for _, c in ipairs(plan) do redis.call('PUBLISH', channel, 's:' .. c.path) end
return {1}
";

/// KEYS: meta. Returns a version number above every one written or reserved.
const RESERVE: &str = r"
local latest = tonumber(redis.call('HGET', KEYS[1], 'latest') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
local v = math.max(latest, reserved) + 1
redis.call('HSET', KEYS[1], 'next', v)
return v
";

/// One new version under a reserved number, rebased onto the current record
/// exactly as `RecordPatch::apply` does, and its idempotency record.
/// KEYS: index, meta, versions, idempotency key, audit stream. ARGV:
/// version, version record, initial record, patch, guard, prune (JSON
/// array), change channel, path, idempotent answer ('' for none), its TTL in
/// ms, audit event ('' for none), the stream's MAXLEN, '1' if the number was
/// reserved ('0': take it only if it is the next free one); then the base
/// the writer read: '-' none, '' unusable (always rebase), else its revision;
/// the record the write leaves on that base, its new revision, latest and
/// active, and the versions it drops.
/// While the base is current, the write commits the writer's record as is:
/// no JSON is decoded or encoded here. Otherwise it is rebased, as above.
/// A writer whose base is usable sends initial record, patch, guard and
/// prune as '' (they serve only a rebase) and sends them only when told.
/// Returns {1} applied ({1, 1}: as the writer's record, on its base), {3} applied without its audit event, {0} conflict (guard changed, the number was taken
/// by another write after a delete reset the numbering, or a claimed number is not the next free one), {2, answer} replayed,
/// {4} nothing done: the base is not current, call again with the rebase's arguments.
const PUT_VERSION: &str = r"
if ARGV[9] ~= '' then
  local prior = redis.call('GET', KEYS[4])
  if prior then return {2, prior} end
end
local taken = redis.call('HGET', KEYS[3], ARGV[1])
if taken then
  if taken == ARGV[2] then return {1} end
  return {0}
end
local function opt(x) if x == cjson.null then return nil end return x end
local v = tonumber(ARGV[1])
-- `latest` is written with every record, so it is absent exactly when the record is.
local meta = redis.call('HMGET', KEYS[2], 'latest', 'next', 'rev')
local exists = meta[1] ~= false
if ARGV[13] == '0' and math.max(tonumber(meta[1] or '0'), tonumber(meta[2] or '0')) + 1 ~= v then
  return {0}
end
local current = false
if ARGV[14] == '-' then
  current = not exists
elseif ARGV[14] ~= '' then
  current = meta[3] == ARGV[14]
end
local raw, rec
if not current then
  if ARGV[5] == '' then return {4} end
  raw = redis.call('HGET', KEYS[2], 'record')
  if raw then rec = cjson.decode(raw) else rec = cjson.decode(ARGV[3]) end
  local g = cjson.decode(ARGV[5])
  if rec.owner ~= g.owner or opt(rec.scope) ~= opt(g.scope) or rec.tier ~= g.tier then
    return {0}
  end
  if g.active ~= nil and (raw and rec.active_version or 0) ~= g.active then return {0} end
end
-- The event first, and guarded: a stream that cannot take it (a broken
-- key) must not fail the write half-way; the caller then queues the event.
local audited = 1
if ARGV[11] ~= '' then
  local added = redis.pcall('XADD', KEYS[5], 'MAXLEN', '~', ARGV[12], '*', 'e', ARGV[11])
  if type(added) == 'table' and added.err then audited = 0 end
end
local record, latest, active = ARGV[15], ARGV[17], ARGV[18]
if current then
  for i = 19, #ARGV do redis.call('HDEL', KEYS[3], ARGV[i]) end
else
  if type(rec.retired_expiry) ~= 'table' then rec.retired_expiry = {} end
  local ret = rec.retired_expiry
  if raw then
    local p = cjson.decode(ARGV[4])
    if v < rec.latest_version then
      if opt(p.expires_at) then ret[tostring(v)] = p.expires_at end
    else
      if v ~= rec.active_version then
        if opt(rec.expires_at) then ret[tostring(rec.active_version)] = rec.expires_at end
        ret[tostring(v)] = nil
        rec.active_version = v
        rec.expires_at = p.expires_at
      end
      rec.latest_version = v
      rec.updated_at = p.updated_at
      for _, f in ipairs({'type', 'tier', 'description', 'tags', 'scope'}) do
        if p[f] ~= nil then rec[f] = p[f] end
      end
    end
  end
  for _, x in ipairs(cjson.decode(ARGV[6])) do
    if x ~= rec.active_version and x ~= v then
      redis.call('HDEL', KEYS[3], tostring(x))
      ret[tostring(x)] = nil
    end
  end
  rec.revision = ARGV[16]
  record = cjson.encode(rec)
  latest, active = tostring(rec.latest_version), tostring(rec.active_version)
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
if active == ARGV[1] then
  redis.call('HSET', KEYS[2], 'latest', latest, 'active', active, 'record', record,
    'rev', ARGV[16], 'cur', ARGV[2])
else
  redis.call('HSET', KEYS[2], 'latest', latest, 'active', active, 'record', record,
    'rev', ARGV[16])
end
if not exists then redis.call('ZADD', KEYS[1], 0, ARGV[8]) end
if ARGV[9] ~= '' then redis.call('SET', KEYS[4], ARGV[9], 'PX', ARGV[10]) end
redis.call('PUBLISH', ARGV[7], 's:' .. ARGV[8])
if audited == 0 then return {3} end
if current then return {1, 1} end
return {1}
";

/// A read of the active version for a record without its copy (written
/// before the copy existed, or with no active version).
/// KEYS: meta, versions. Returns {record, active version} or nil.
const READ_ACTIVE: &str = r"
local meta = redis.call('HMGET', KEYS[1], 'record', 'active')
if not meta[1] then return false end
return {meta[1], redis.call('HGET', KEYS[2], meta[2])}
";

/// KEYS: meta, versions, index, grants, idempotency key. ARGV: path, change
/// channel, idempotent answer ('' for none), its TTL in ms. Also drops the
/// grants of exactly this path. Returns {1, existed} or {2, answer} replayed;
/// the answer is kept only when there was something to delete.
const DELETE: &str = r"
if ARGV[3] ~= '' then
  local prior = redis.call('GET', KEYS[5])
  if prior then return {2, prior} end
end
local existed = 0
if redis.call('HGET', KEYS[1], 'record') then existed = 1 end
redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
local grants = redis.call('HGETALL', KEYS[4])
local dropped = 0
for i = 1, #grants, 2 do
  if cjson.decode(grants[i + 1]).path == ARGV[1] then
    redis.call('HDEL', KEYS[4], grants[i])
    dropped = dropped + 1
  end
end
if existed == 1 and ARGV[3] ~= '' then redis.call('SET', KEYS[5], ARGV[3], 'PX', ARGV[4]) end
redis.call('PUBLISH', ARGV[2], 's:' .. ARGV[1])
if dropped > 0 then redis.call('PUBLISH', ARGV[2], 'g') end
return {1, existed}
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

/// KEYS: approvals, approval statuses. ARGV: id, new status, record, change channel.
const DECIDE: &str = r"
if redis.call('HGET', KEYS[2], ARGV[1]) ~= 'pending' then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 't')
return 1
";

/// KEYS: versions, meta. ARGV: version, expected kek_id, expected wrapped_dek,
/// new kek_id, new wrapped_dek (both DEKs base64, as records store them),
/// change channel, path (announced, so caches drop the old sealed DEK).
/// Only the two DEK fields change; every number in a version record is small
/// enough for cjson to re-encode exactly.
const RESEAL: &str = r"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local rec = cjson.decode(cur)
if rec.sealed.kek_id ~= ARGV[2] or rec.sealed.wrapped_dek ~= ARGV[3] then return 0 end
rec.sealed.kek_id = ARGV[4]
rec.sealed.wrapped_dek = ARGV[5]
local resealed = cjson.encode(rec)
redis.call('HSET', KEYS[1], ARGV[1], resealed)
if redis.call('HGET', KEYS[2], 'active') == ARGV[1] then
  redis.call('HSET', KEYS[2], 'cur', resealed)
end
redis.call('PUBLISH', ARGV[6], 's:' .. ARGV[7])
return 1
";

/// Every command this module sends, directly, from its Lua scripts or from
/// the client library (connection set-up, cluster topology), as ACL names.
/// The one source of truth for `agentvault redis-acl`: code that sends a new
/// command adds it here, and the conformance suite, run as an ACL user built
/// from this list, fails if it is missing.
pub const SIDECAR_COMMANDS: &[&str] = &[
    // health (the client library's `CLIENT SETINFO` needs no grant: its
    // failure is ignored, and Redis before 7.2 has no such command)
    "ping",
    // scripts (EVALSHA, and SCRIPT LOAD when the server does not know one yet)
    "evalsha",
    "script|load",
    // secrets, versions, index, grants, tokens and approvals
    "get",
    "hget",
    "hmget",
    "hset",
    "hmset",
    "hdel",
    "hvals",
    "hkeys",
    "hgetall",
    "hincrby",
    "del",
    "zadd",
    "zrem",
    "zrangebylex",
    "set",
    "pexpireat",
    // MULTI/EXEC of atomic pipelines (tokens, audit batches)
    "multi",
    "exec",
    // audit stream
    "xadd",
    "xrevrange",
    "xrange",
    "xread",
    // change announcements (from the write scripts) and their subscriber
    "publish",
    "subscribe",
    "unsubscribe",
    // Redis Cluster topology
    "cluster|slots",
];

/// The pub/sub channels this module uses, with `{tenant}` for the tenant's
/// name; `redis-acl` grants exactly these.
pub const SIDECAR_CHANNELS: &[&str] = &["av:{tenant}:changes"];

/// The `ACL SETUSER` line that lets `user` run [`SIDECAR_COMMANDS`] on the
/// keys of `tenants` only (their `av:{tenant}:*` keys and
/// [`SIDECAR_CHANNELS`]), authenticated by the password whose SHA-256 is
/// `password_sha256` (hex), so the password itself never appears in it.
/// `reset` first drops whatever the user could do before.
pub fn acl_setuser(user: &str, tenants: &[&str], password_sha256: &str) -> String {
    let mut line = format!("ACL SETUSER {user} reset on #{password_sha256} resetchannels");
    for tenant in tenants {
        line.push_str(&format!(" ~{}", tenant_key(tenant, "*")));
        for channel in SIDECAR_CHANNELS {
            line.push_str(&format!(
                " &{}",
                channel.replace("{tenant}", &format!("{{{tenant}}}"))
            ));
        }
    }
    line.push_str(" -@all");
    for command in SIDECAR_COMMANDS {
        line.push_str(&format!(" +{command}"));
    }
    line
}

/// How a sidecar authenticates to Redis and checks Redis's certificate. The
/// ACL user's name and password from here (flags, files or the environment)
/// win over any in the URL, so neither need be written into a pod spec or a
/// URL shared by every tenant. The password is never printed.
#[derive(Clone, Default)]
pub struct RedisSecurity {
    /// The ACL user; `None` keeps the URL's (or Redis's `default` user).
    pub username: Option<String>,
    pub password: Option<RedisPassword>,
    /// TLS settings for `rediss://` URLs.
    pub tls: Option<RedisTls>,
}

/// A Redis ACL user's password: zeroized on drop, redacted in `Debug`.
#[derive(Clone)]
pub struct RedisPassword(Zeroizing<String>);

impl RedisPassword {
    pub fn new(password: String) -> Self {
        Self(Zeroizing::new(password))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RedisPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisPassword(<redacted>)")
    }
}

/// PEM files read at start-up: the CA that signed Redis's certificate (the
/// system roots when `None`) and an optional client certificate and key for
/// Redis's `tls-auth-clients`.
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca_pem: Option<Vec<u8>>,
    pub client_cert_pem: Option<Vec<u8>>,
    pub client_key_pem: Option<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for RedisSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = self.tls.as_ref();
        f.debug_struct("RedisSecurity")
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls", &tls.is_some())
            .field("ca", &tls.is_some_and(|t| t.ca_pem.is_some()))
            .field(
                "client_cert",
                &tls.is_some_and(|t| t.client_cert_pem.is_some()),
            )
            .finish()
    }
}

impl RedisTls {
    fn certificates(&self) -> TlsCertificates {
        let client_tls = match (&self.client_cert_pem, &self.client_key_pem) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.to_vec(),
            }),
            _ => None,
        };
        TlsCertificates {
            client_tls,
            root_cert: self.ca_pem.clone(),
        }
    }
}
/// KEYS: grants. ARGV: grant id, record, change channel.
const PUT_GRANT: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], 'g')
return 1
";

/// KEYS: grants. ARGV: grant id, change channel. Announces only a real removal.
const DELETE_GRANT: &str = r"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
if removed == 1 then redis.call('PUBLISH', ARGV[2], 'g') end
return removed
";

/// How long one Redis call may take before the request answers `unavailable`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first pause between reconnect attempts (doubling from there).
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(5);
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
    security: RedisSecurity,
    conn: OnceCell<Conn>,
    reseal: Script,
    commit: Script,
    reserve: Script,
    put_version: Script,
    read_active: Script,
    delete: Script,
    use_token: Script,
    decide: Script,
    put_grant: Script,
    delete_grant: Script,
}

/// `EVALSHA` of `script` on `keys`, sized for `args` more arguments of
/// `bytes` in all, to which the caller adds them. Built in one buffer: a
/// `ScriptInvocation` copies each argument into a `Vec` of its own and then
/// again into the command, an allocation per argument (24 for a PUT's write).
fn script_call(script: &Script, keys: &[String], args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(3 + keys.len() + args, bytes + keys.len() * 64 + 64);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys.len());
    for key in keys {
        cmd.arg(key);
    }
    cmd
}

/// Runs a [`script_call`]; a server that does not know the script yet
/// (`NOSCRIPT`, as after a restart or a failover) is sent it and asked again,
/// as `Script::invoke_async` does.
async fn invoke<T: redis::FromRedisValue>(
    conn: &mut Conn,
    script: &Script,
    call: &Cmd,
) -> redis::RedisResult<T> {
    match call.query_async(conn).await {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            call.query_async(conn).await
        }
        reply => reply,
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// `av:{tenant}:` followed by `parts`: every key of a tenant, in its
/// slot. Built by pushing, not `format!`: a write names six keys, and the
/// formatting machinery cost a thousand instructions each.
fn tenant_key_of(tenant: &str, parts: &[&str]) -> String {
    let len = parts.iter().map(|p| p.len()).sum::<usize>() + tenant.len() + 6;
    let mut key = String::with_capacity(len);
    key.push_str("av:{");
    key.push_str(tenant);
    key.push_str("}:");
    for part in parts {
        key.push_str(part);
    }
    key
}

fn key(tenant: &str, kind: &str, path: &str) -> String {
    tenant_key_of(tenant, &[kind, ":", path])
}

fn index_key(tenant: &str) -> String {
    tenant_key(tenant, "idx")
}

fn tenant_key(tenant: &str, name: &str) -> String {
    tenant_key_of(tenant, &[name])
}

/// Where the answer to a write with an `Idempotency-Key` is kept.
fn idempotency_key(tenant: &str, key_name: &str) -> String {
    tenant_key_of(tenant, &["idem:", key_name])
}

/// The key, answer and TTL (ms) a write script gets for its idempotency
/// record; with none, a key in the tenant's slot and an empty answer.
fn once_args(tenant: &str, once: Option<&IdempotencyRecord>) -> (String, Vec<u8>, u64) {
    match once {
        Some(i) => (
            idempotency_key(tenant, &i.key),
            i.answer.clone(),
            i.ttl.as_millis().max(1) as u64,
        ),
        None => (idempotency_key(tenant, ""), Vec::new(), 0),
    }
}

/// A record's new revision: random, so a secret deleted and written again
/// never repeats one a writer may still hold.
fn new_revision() -> String {
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::new_v4()
        .simple()
        .encode_lower(&mut buf)
        .to_owned()
}

/// The tenant's change channel; its hash tag is the tenant's, like its keys'.
fn changes_channel(tenant: &str) -> String {
    tenant_key(tenant, "changes")
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
    /// Every stored version of `path`, decoded as `T` (whole records, or
    /// their stamps), in no order.
    async fn all_versions<T: serde::de::DeserializeOwned>(
        &self,
        tenant: &str,
        path: &str,
    ) -> Result<Vec<T>, StoreError> {
        let mut conn = self.conn().await?;
        let raw: Vec<Vec<u8>> = redis::cmd("HVALS")
            .arg(key(tenant, "v", path))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        raw.iter().map(|bytes| decode::<T>(path, bytes)).collect()
    }

    /// A fresh connection, not shared with the request path, for blocking reads.
    async fn follow_conn(&self) -> Result<FollowConn, StoreError> {
        match &self.target {
            RedisTarget::Standalone(url) => {
                let client = self.standalone_client(url)?;
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
                let client = self
                    .cluster_builder(urls)?
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
        Self::with_security(target, RedisSecurity::default())
    }

    /// A store that authenticates and verifies Redis as `security` says.
    pub fn with_security(target: RedisTarget, security: RedisSecurity) -> Self {
        Self {
            target,
            security,
            conn: OnceCell::new(),
            reseal: Script::new(RESEAL),
            commit: Script::new(COMMIT),
            reserve: Script::new(RESERVE),
            put_version: Script::new(PUT_VERSION),
            read_active: Script::new(READ_ACTIVE),
            delete: Script::new(DELETE),
            use_token: Script::new(USE_TOKEN),
            decide: Script::new(DECIDE),
            put_grant: Script::new(PUT_GRANT),
            delete_grant: Script::new(DELETE_GRANT),
        }
    }

    fn standalone_client(&self, url: &str) -> Result<redis::Client, StoreError> {
        let mut info = url.into_connection_info().map_err(unavailable)?;
        let mut settings = info.redis_settings().clone();
        if let Some(username) = &self.security.username {
            settings = settings.set_username(username);
        }
        if let Some(password) = &self.security.password {
            settings = settings.set_password(password.expose());
        }
        info = info.set_redis_settings(settings);
        match &self.security.tls {
            Some(tls) => redis::Client::build_with_tls(info, tls.certificates()),
            None => redis::Client::open(info),
        }
        .map_err(unavailable)
    }

    fn cluster_builder(
        &self,
        urls: &[String],
    ) -> Result<redis::cluster::ClusterClientBuilder, StoreError> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(urls.to_vec());
        if let Some(username) = &self.security.username {
            builder = builder.username(username.clone());
        }
        if let Some(password) = &self.security.password {
            builder = builder.password(password.expose());
        }
        if let Some(tls) = &self.security.tls {
            builder = builder.certs(tls.certificates());
        }
        Ok(builder)
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                match &self.target {
                    RedisTarget::Standalone(url) => {
                        let client = self.standalone_client(url)?;
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(CONNECT_TIMEOUT))
                            .set_response_timeout(Some(RESPONSE_TIMEOUT))
                            .set_number_of_retries(1)
                            // redis-rs waits 100 ms at least between connect
                            // attempts: after an outage, that was most of the
                            // time before the first answer.
                            .set_min_delay(RECONNECT_MIN_DELAY);
                        let manager = client
                            .get_connection_manager_with_config(config)
                            .await
                            .map_err(unavailable)?;
                        Ok::<_, StoreError>(Conn::Standalone(manager))
                    }
                    RedisTarget::Cluster(urls) => {
                        let client = self
                            .cluster_builder(urls)?
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
        let (meta, versions) = (key(tenant, "s", path), key(tenant, "v", path));
        // No script: the record and the active version's copy beside it, or
        // the given version, in one round trip (only the record for 0, which
        // no version has). A record written before the copy existed, or
        // with no active version, is read by the script.
        let found: (Option<Vec<u8>>, Option<Vec<u8>>) = match version {
            None => match redis::cmd("HMGET")
                .arg(&meta)
                .arg("record")
                .arg("cur")
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?
            {
                (Some(record), Some(cur)) => (Some(record), Some(cur)),
                (None, _) => (None, None),
                (Some(_), None) => self
                    .read_active
                    .key(meta)
                    .key(versions)
                    .invoke_async::<Option<_>>(&mut conn)
                    .await
                    .map_err(unavailable)?
                    .unwrap_or_default(),
            },
            Some(0) => (
                redis::cmd("HGET")
                    .arg(meta)
                    .arg("record")
                    .query_async(&mut conn)
                    .await
                    .map_err(unavailable)?,
                None,
            ),
            Some(number) => redis::pipe()
                .hget(meta, "record")
                .hget(versions, number)
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?,
        };
        let (Some(record), version) = found else {
            return Ok(None);
        };
        let record = decode_with(path, &record, SecretRecord::from_json)?;
        let version = version
            .map(|v| decode_with(path, &v, VersionRecord::from_json))
            .transpose()?;
        Ok(Some((record, version)))
    }

    async fn versions(&self, tenant: &str, path: &str) -> Result<Vec<VersionRecord>, StoreError> {
        let mut versions: Vec<VersionRecord> = self.all_versions(tenant, path).await?;
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }

    async fn version_stamps(
        &self,
        tenant: &str,
        path: &str,
    ) -> Result<Vec<VersionStamp>, StoreError> {
        let mut stamps: Vec<VersionStamp> = self.all_versions(tenant, path).await?;
        stamps.sort_by_key(|v| v.version);
        Ok(stamps)
    }

    async fn version_numbers(&self, tenant: &str, path: &str) -> Result<Vec<u64>, StoreError> {
        let mut conn = self.conn().await?;
        let fields: Vec<String> = match redis::cmd("HKEYS")
            .arg(key(tenant, "v", path))
            .query_async(&mut conn)
            .await
        {
            Ok(fields) => fields,
            // An ACL user made before `hkeys` was in SIDECAR_COMMANDS: read
            // the stamps as that version did rather than fail every write.
            Err(e) if e.code() == Some("NOPERM") => {
                let stamps = self.version_stamps(tenant, path).await?;
                return Ok(stamps.iter().map(|v| v.version).collect());
            }
            Err(e) => return Err(unavailable(e)),
        };
        let mut numbers = fields
            .iter()
            .map(|f| {
                f.parse::<u64>().map_err(|_| StoreError::Corrupt {
                    path: path.to_owned(),
                    reason: format!("version field `{f}` is not a number"),
                })
            })
            .collect::<Result<Vec<u64>, StoreError>>()?;
        numbers.sort_unstable();
        Ok(numbers)
    }

    async fn stamps_of(
        &self,
        tenant: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<Vec<VersionStamp>, StoreError> {
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let raw: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(key(tenant, "v", path))
            .arg(versions)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        raw.iter()
            .flatten()
            .map(|bytes| decode::<VersionStamp>(path, bytes))
            .collect()
    }

    async fn commit_all_once(
        &self,
        tenant: &str,
        commits: &[Commit],
        once: Option<&IdempotencyRecord>,
    ) -> Result<Idempotent<()>, StoreError> {
        if commits.is_empty() && once.is_none() {
            return Ok(Idempotent::Applied(()));
        }
        let mut conn = self.conn().await?;
        let mut invocation = self.commit.prepare_invoke();
        invocation.key(index_key(tenant)).arg(commits.len());
        for commit in commits {
            let mut record = commit.record.clone();
            record.revision = new_revision();
            invocation
                .key(key(tenant, "s", &record.path))
                .key(key(tenant, "v", &record.path))
                .arg(commit.expected_latest)
                .arg(record.latest_version)
                .arg(record.active_version)
                .arg(record.to_json())
                .arg(&record.revision)
                .arg(&record.path)
                .arg(commit.versions.len());
            for v in &commit.versions {
                invocation.arg(v.version).arg(v.to_json());
            }
            invocation.arg(commit.prune.len());
            for old in &commit.prune {
                invocation.arg(*old);
            }
        }
        let (idem_key, answer, ttl_ms) = once_args(tenant, once);
        invocation
            .key(idem_key)
            .arg(changes_channel(tenant))
            .arg(answer)
            .arg(ttl_ms);
        let reply: Vec<Value> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [Value::Int(1)] => Ok(Idempotent::Applied(())),
            [Value::Int(2), Value::BulkString(prior)] => Ok(Idempotent::Replayed(prior.clone())),
            _ => Err(StoreError::Conflict),
        }
    }

    async fn reserve_version(&self, tenant: &str, path: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        self.reserve
            .key(key(tenant, "s", path))
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    async fn write_version(
        &self,
        tenant: &str,
        write: &VersionWrite,
    ) -> Result<WriteOutcome, StoreError> {
        let path = &write.initial.path;
        // The base, if the script may commit the write's outcome on it as is.
        let base = write.base.as_ref();
        let usable = match base {
            _ if !write.guard.admits(base, &write.initial) => None,
            None => Some("-"),
            Some(record) if record.revision.is_empty() => None,
            Some(record) => Some(record.revision.as_str()),
        };
        if write.base_only && usable.is_none() {
            return Ok(WriteOutcome::Stale);
        }
        let mut conn = self.conn().await?;
        let (idem_key, answer, ttl_ms) = once_args(tenant, write.idempotency.as_ref());
        let (event, max_len) = match &write.audit {
            Some(a) => (a.event.to_json(), a.max_len.max(1)),
            None => (Vec::new(), 1),
        };
        let revision = new_revision();
        let (outcome, dropped) = match usable {
            Some(_) => {
                let (mut record, dropped) = write.outcome(base.cloned());
                record.revision.clone_from(&revision);
                (Some(record), dropped)
            }
            None => (None, Vec::new()),
        };
        let outcome_json = outcome
            .as_ref()
            .map(SecretRecord::to_json)
            .unwrap_or_default();
        let version_json = write.version.to_json();
        let keys = [
            index_key(tenant),
            key(tenant, "s", path),
            key(tenant, "v", path),
            idem_key,
            tenant_key(tenant, "audit"),
        ];
        // With a usable base the first call leaves out what only a rebase
        // reads; the script asks for it ({4}) if the base has moved on.
        let mut rebase = usable.is_none();
        loop {
            let size = version_json.len() + outcome_json.len() + event.len() + 512;
            let mut invocation = script_call(&self.put_version, &keys, 24, size);
            invocation.arg(write.version.version).arg(&version_json);
            if rebase {
                invocation
                    .arg(write.initial.to_json())
                    .arg(encode(&write.patch))
                    .arg(encode(&write.guard))
                    .arg(encode(&write.prune));
            } else {
                invocation.arg("").arg("").arg("").arg("");
            }
            invocation
                .arg(changes_channel(tenant))
                .arg(path)
                .arg(&answer)
                .arg(ttl_ms)
                .arg(&event)
                .arg(max_len)
                .arg(if write.reserved { "1" } else { "0" })
                .arg(usable.unwrap_or_default())
                .arg(&outcome_json)
                .arg(&revision)
                .arg(outcome.as_ref().map_or(0, |r| r.latest_version))
                .arg(outcome.as_ref().map_or(0, |r| r.active_version))
                .arg(&dropped);
            let reply: Vec<Value> = invoke(&mut conn, &self.put_version, &invocation)
                .await
                .map_err(unavailable)?;
            return match reply.as_slice() {
                [Value::Int(1)] => Ok(WriteOutcome::Applied),
                [Value::Int(1), Value::Int(1)] => Ok(match outcome {
                    Some(record) => WriteOutcome::AppliedOnBase(Box::new(record)),
                    None => WriteOutcome::Applied,
                }),
                [Value::Int(3)] => Ok(WriteOutcome::AppliedUnaudited),
                [Value::Int(2), Value::BulkString(prior)] => {
                    Ok(WriteOutcome::Replayed(prior.clone()))
                }
                [Value::Int(4)] if write.base_only => Ok(WriteOutcome::Stale),
                [Value::Int(4)] if !rebase => {
                    rebase = true;
                    continue;
                }
                _ => Err(StoreError::Conflict),
            };
        }
    }

    async fn idempotent_answer(
        &self,
        tenant: &str,
        key_name: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn().await?;
        redis::cmd("GET")
            .arg(idempotency_key(tenant, key_name))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)
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

    async fn reseal(
        &self,
        tenant: &str,
        path: &str,
        version: u64,
        expected: &Sealed,
        rewrapped: &Sealed,
    ) -> Result<bool, StoreError> {
        // The DEKs as version records store them (base64), for the script to compare.
        let stored = |sealed: &Sealed| {
            let json = serde_json::to_value(sealed).unwrap_or_default();
            json["wrapped_dek"].as_str().unwrap_or_default().to_owned()
        };
        let mut conn = self.conn().await?;
        let applied: i64 = self
            .reseal
            .key(key(tenant, "v", path))
            .key(key(tenant, "s", path))
            .arg(version)
            .arg(&expected.kek_id)
            .arg(stored(expected))
            .arg(&rewrapped.kek_id)
            .arg(stored(rewrapped))
            .arg(changes_channel(tenant))
            .arg(path)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(applied == 1)
    }

    async fn delete_once(
        &self,
        tenant: &str,
        path: &str,
        once: Option<&IdempotencyRecord>,
    ) -> Result<Idempotent<bool>, StoreError> {
        let mut conn = self.conn().await?;
        let (idem_key, answer, ttl_ms) = once_args(tenant, once);
        let reply: Vec<Value> = self
            .delete
            .key(key(tenant, "s", path))
            .key(key(tenant, "v", path))
            .key(index_key(tenant))
            .key(tenant_key(tenant, "grants"))
            .key(idem_key)
            .arg(path)
            .arg(changes_channel(tenant))
            .arg(answer)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        match reply.as_slice() {
            [Value::Int(1), Value::Int(existed)] => Ok(Idempotent::Applied(*existed == 1)),
            [Value::Int(2), Value::BulkString(prior)] => Ok(Idempotent::Replayed(prior.clone())),
            other => Err(StoreError::Unavailable(format!(
                "unexpected reply to a delete: {other:?}"
            ))),
        }
    }

    async fn put_grant(&self, tenant: &str, grant: &Grant) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        self.put_grant
            .key(tenant_key(tenant, "grants"))
            .arg(&grant.grant_id)
            .arg(encode(grant))
            .arg(changes_channel(tenant))
            .invoke_async::<()>(&mut conn)
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
        let removed: i64 = self
            .delete_grant
            .key(tenant_key(tenant, "grants"))
            .arg(grant_id)
            .arg(changes_channel(tenant))
            .invoke_async(&mut conn)
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
        pipe.cmd("PUBLISH")
            .arg(changes_channel(tenant))
            .arg(Change::Tokens.encode())
            .ignore();
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
            .arg(changes_channel(tenant))
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
            .filter_map(|(path, bytes)| {
                bytes.map(|b| decode_with(path, &b, SecretRecord::from_json))
            })
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
        let mut pipe = redis::Pipeline::with_capacity(events.len());
        pipe.atomic();
        for event in events {
            let json = event.to_json();
            // Sized once: growing a command's buffer arg by arg cost more
            // than writing the event.
            let mut xadd = redis::Cmd::with_capacity(8, key.len() + json.len() + 32);
            xadd.arg("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len.max(1))
                .arg("*")
                .arg("e")
                .arg(json);
            pipe.add_command(xadd);
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

    /// `XRANGE` from the id right after `after` (inclusive ranges; the
    /// exclusive `(id` form needs Redis 6.2), on the shared connection.
    async fn audit_after(
        &self,
        tenant: &str,
        after: AuditId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let start = match after.seq.checked_add(1) {
            Some(seq) => AuditId { ms: after.ms, seq },
            None => AuditId {
                ms: after.ms.saturating_add(1),
                seq: 0,
            },
        };
        let mut conn = self.conn().await?;
        let reply: Value = redis::cmd("XRANGE")
            .arg(tenant_key(tenant, "audit"))
            .arg(start.to_string())
            .arg("+")
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

    async fn changes(&self, tenant: &str) -> Result<ChangeStream, StoreError> {
        self.subscribe_changes(tenant).await
    }
}

/// How often an idle change subscription proves its connection is alive; a
/// connection that dies silently ends the stream within this plus
/// [`RESPONSE_TIMEOUT`].
const CHANGES_KEEPALIVE: Duration = Duration::from_secs(5);

impl RedisStore {
    /// Subscribes to the tenant's change channel on the first node that
    /// answers (any node of a cluster hears every `PUBLISH`).
    async fn subscribe_changes(&self, tenant: &str) -> Result<ChangeStream, StoreError> {
        let urls = match &self.target {
            RedisTarget::Standalone(url) => std::slice::from_ref(url),
            RedisTarget::Cluster(urls) => urls.as_slice(),
        };
        let channel = changes_channel(tenant);
        let mut failure = StoreError::Unavailable("no Redis node to subscribe to".into());
        for url in urls {
            match subscribe(url, &channel).await {
                Ok(stream) => return Ok(stream),
                Err(e) => failure = e,
            }
        }
        Err(failure)
    }
}

/// A dedicated RESP2 pub/sub connection to `url`, subscribed to `channel`.
/// The stream ends when the connection closes or stops answering pings.
async fn subscribe(url: &str, channel: &str) -> Result<ChangeStream, StoreError> {
    use futures_util::StreamExt;

    let timed_out = |what: &str| StoreError::Unavailable(format!("{what} timed out"));
    let client = redis::Client::open(url).map_err(unavailable)?;
    let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
        .await
        .map_err(|_| timed_out("connecting for change notifications"))?
        .map_err(unavailable)?;
    let (mut sink, messages) = pubsub.split();
    tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(channel))
        .await
        .map_err(|_| timed_out("SUBSCRIBE"))?
        .map_err(unavailable)?;
    let (dead, died) = tokio::sync::oneshot::channel::<()>();
    let keepalive = tokio::spawn(async move {
        loop {
            tokio::time::sleep(CHANGES_KEEPALIVE).await;
            match tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<Value>()).await {
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        drop(dead);
    });
    let keepalive = AbortOnDrop(keepalive);
    let stream = messages
        .map(move |msg| {
            // The stream owns the keepalive task: dropping one stops the other.
            let _owned = &keepalive;
            Change::decode(msg.get_payload_bytes())
        })
        .take_until(died);
    Ok(ChangeStream::new(stream))
}

/// Aborts a background task when its owner goes away.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key layout is what every sidecar version sharing a store reads.
    #[test]
    fn keys_are_the_tenants_slot_then_kind_and_name() {
        assert_eq!(key("acme", "s", "a/b"), "av:{acme}:s:a/b");
        assert_eq!(index_key("acme"), "av:{acme}:idx");
        assert_eq!(tenant_key("acme", "audit"), "av:{acme}:audit");
        assert_eq!(idempotency_key("acme", "k1"), "av:{acme}:idem:k1");
        assert_eq!(changes_channel("acme"), "av:{acme}:changes");
        let revision = new_revision();
        assert_eq!(revision.len(), 32);
        assert!(revision
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn acl_line_confines_the_user_to_its_tenants_keys_and_the_sidecars_commands() {
        let line = acl_setuser("acme-sidecar", &["acme"], "ab12");
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(
            words[..7],
            [
                "ACL",
                "SETUSER",
                "acme-sidecar",
                "reset",
                "on",
                "#ab12",
                "resetchannels"
            ]
        );
        let keys: Vec<&&str> = words.iter().filter(|w| w.starts_with('~')).collect();
        assert_eq!(keys, [&"~av:{acme}:*"]);
        let channels: Vec<String> = words
            .iter()
            .filter_map(|w| w.strip_prefix('&'))
            .map(str::to_owned)
            .collect();
        let expected: Vec<String> = SIDECAR_CHANNELS
            .iter()
            .map(|c| c.replace("{tenant}", "{acme}"))
            .collect();
        assert_eq!(channels, expected);
        let all = words.iter().position(|w| *w == "-@all").unwrap();
        let granted: Vec<&str> = words[all + 1..]
            .iter()
            .map(|w| w.strip_prefix('+').unwrap())
            .collect();
        assert_eq!(granted, SIDECAR_COMMANDS);
    }
}
