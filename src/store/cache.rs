//! The sealed-record cache: a [`Store`] decorator that keeps what `read` and
//! `grants` returned in this process's memory, so a warm read costs the shared
//! store nothing, and forgets it as soon as the store announces a change
//! ([`Store::changes`]).
//!
//! What it guarantees:
//! - It holds sealed records only (ciphertext, wrapped data key, metadata),
//!   exactly what the store returns; plaintext never enters it.
//! - Tokens, approvals, claims, listings, version histories and the audit
//!   stream always go to the store: a token's uses are spent atomically there.
//! - A read never answers from the cache once the announcement of a later
//!   change has arrived, and this sidecar's own writes are forgotten as soon as
//!   they return. While the tenant's subscription is down (and until it is
//!   back) the cache is empty and every read goes to the store, so a lost
//!   announcement can never serve a stale record.
//! - A read that raced with a change is not remembered: every entry is stored
//!   only if no change was announced since the read began.
//! - It is bounded by entries and by bytes; the least recently used entries
//!   make room (second-chance, so a hit costs no reordering).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    follow_changes, AuditFollower, Change, ChangeStream, Commit, IdempotencyRecord, Idempotent,
    Snapshot, Store, StoreError, TokenUse, VersionWrite, WriteOutcome,
};
use crate::crypto::Sealed;
use crate::model::audit::{AuditEntry, AuditEvent, AuditId};
use crate::model::{ApprovalRecord, Grant, SecretRecord, TokenRecord, VersionRecord, VersionStamp};

/// Default bounds: enough for every secret a pod's agents use, small enough
/// for an idle sidecar to stay within a few MiB.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
pub const DEFAULT_MAX_BYTES: usize = 16 << 20;
/// What an entry costs beyond its variable-length fields (keys, maps, vectors).
const ENTRY_OVERHEAD: usize = 256;

/// How much the cache may hold. Either bound at 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_entries: usize,
    pub max_bytes: usize,
}

impl CacheSettings {
    pub fn enabled(&self) -> bool {
        self.max_entries > 0 && self.max_bytes > 0
    }
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Hooks for counting what the cache does, so the store needs no metrics library.
pub trait CacheTelemetry: Send + Sync {
    /// A read answered from memory.
    fn hit(&self);
    /// A read that went to the store.
    fn miss(&self);
    /// A change (announced, or written by this sidecar) made cached data stale.
    fn invalidated(&self);
    /// Entries dropped to stay within the bounds.
    fn evicted(&self, entries: usize);
    /// The subscription was lost or fell behind: the tenant's entries were dropped.
    fn resynced(&self);
    /// What the cache holds now.
    fn size(&self, entries: usize, bytes: usize);
}

/// Counts nothing.
pub struct NoCacheTelemetry;

impl CacheTelemetry for NoCacheTelemetry {
    fn hit(&self) {}
    fn miss(&self) {}
    fn invalidated(&self) {}
    fn evicted(&self, _: usize) {}
    fn resynced(&self) {}
    fn size(&self, _: usize, _: usize) {}
}

/// A [`Store`] that answers `read` and `grants` from memory while the
/// tenant's change subscription is up. See the module docs for what it guarantees.
pub struct CachedStore {
    inner: Arc<dyn Store>,
    shared: Arc<Shared>,
}

/// (tenant, path, version asked for: `None` is "the active one").
type Key = (String, String, Option<u64>);

struct Shared {
    settings: CacheSettings,
    telemetry: Arc<dyn CacheTelemetry>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    tenants: HashMap<String, Tenant>,
    /// Reads by key, in key order so that one path's entries are one range.
    entries: BTreeMap<Key, Entry>,
    /// Keys in insertion order with the stamp they were inserted under; a
    /// key whose entry was replaced or removed since is skipped.
    order: VecDeque<(Key, u64)>,
    bytes: usize,
    next_stamp: u64,
}

struct Entry {
    found: Option<Arc<Snapshot>>,
    bytes: usize,
    stamp: u64,
    /// Read since the eviction hand last passed: gets a second chance.
    used: bool,
}

struct Tenant {
    /// The subscription is up: entries may be stored and served.
    live: bool,
    /// Bumped by every change, loss and resync: a read that began under an
    /// older epoch is not stored.
    epoch: u64,
    grants: Option<Vec<Grant>>,
    watcher: tokio::task::JoinHandle<()>,
}

/// What a lookup found: the answer, or the epoch to store the store's answer under.
enum Lookup<T> {
    Hit(T),
    /// `None`: the subscription is down, so the answer must not be stored.
    Miss(Option<u64>),
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // Every critical section leaves the state consistent, even one that panicked.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Roughly what a stored read occupies: its sealed bytes, its metadata and the key.
fn weigh(key: &Key, found: &Option<Arc<Snapshot>>) -> usize {
    let record = |r: &SecretRecord| {
        r.tenant.len()
            + r.path.len()
            + r.owner.len()
            + r.description.as_ref().map_or(0, String::len)
            + r.scope.as_ref().map_or(0, String::len)
            + r.tags.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + r.retired_expiry.len() * 24
            + r.revision.len()
    };
    let version = |v: &VersionRecord| {
        v.sealed.kek_id.len() + v.sealed.wrapped_dek.len() + v.sealed.ciphertext.len()
    };
    let data = found
        .as_ref()
        .map_or(0, |s| record(&s.0) + s.1.as_ref().map_or(0, version));
    ENTRY_OVERHEAD + key.0.len() + key.1.len() + data
}

impl State {
    fn path_range(tenant: &str, path: &str) -> std::ops::RangeInclusive<Key> {
        (tenant.to_owned(), path.to_owned(), None)
            ..=(tenant.to_owned(), path.to_owned(), Some(u64::MAX))
    }

    fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.bytes -= entry.bytes;
        }
    }

    fn forget_path(&mut self, tenant: &str, path: &str) {
        let doomed: Vec<Key> = self
            .entries
            .range(Self::path_range(tenant, path))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &doomed {
            self.remove(key);
        }
    }

    fn forget_tenant(&mut self, tenant: &str) {
        let start = (tenant.to_owned(), String::new(), None);
        let doomed: Vec<Key> = self
            .entries
            .range(start..)
            .take_while(|(k, _)| k.0 == tenant)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &doomed {
            self.remove(key);
        }
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.grants = None;
        }
    }

    /// Evicts until one more entry of `incoming` bytes fits; the number evicted.
    fn make_room(&mut self, settings: CacheSettings, incoming: usize) -> usize {
        let mut evicted = 0;
        while !self.entries.is_empty()
            && (self.entries.len() + 1 > settings.max_entries
                || self.bytes + incoming > settings.max_bytes)
        {
            let Some((key, stamp)) = self.order.pop_front() else {
                break;
            };
            match self.entries.get_mut(&key) {
                Some(entry) if entry.stamp == stamp && entry.used => {
                    entry.used = false;
                    self.order.push_back((key, stamp));
                }
                Some(entry) if entry.stamp == stamp => {
                    self.remove(&key);
                    evicted += 1;
                }
                // Replaced or removed since: a stale place in the queue.
                _ => {}
            }
        }
        // Stale places pile up when entries are invalidated rather than evicted.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(key, stamp)| entries.get(key).is_some_and(|e| e.stamp == *stamp));
        }
        evicted
    }
}

impl Shared {
    fn report_size(&self, state: &State) {
        self.telemetry.size(state.entries.len(), state.bytes);
    }

    /// Applies one change to a tenant's entries.
    fn apply(&self, tenant: &str, change: &Change) {
        let mut state = lock(&self.state);
        let Some(t) = state.tenants.get_mut(tenant) else {
            return;
        };
        match change {
            Change::Secret(path) => {
                t.epoch += 1;
                state.forget_path(tenant, path);
                self.telemetry.invalidated();
            }
            Change::Grants => {
                t.epoch += 1;
                t.grants = None;
                self.telemetry.invalidated();
            }
            // Nothing token-related is cached.
            Change::Tokens => {}
            Change::Resync => {
                t.epoch += 1;
                state.forget_tenant(tenant);
                self.telemetry.resynced();
            }
        }
        self.report_size(&state);
    }

    /// Marks the subscription up or down; either way nothing cached so far is trusted.
    fn set_live(&self, tenant: &str, live: bool) {
        let mut state = lock(&self.state);
        let Some(t) = state.tenants.get_mut(tenant) else {
            return;
        };
        t.live = live;
        t.epoch += 1;
        state.forget_tenant(tenant);
        if !live {
            self.telemetry.resynced();
        }
        self.report_size(&state);
    }

    /// The tenant's entry, with its subscription started on first use.
    fn tenant<'a>(
        self: &Arc<Self>,
        state: &'a mut State,
        inner: &Arc<dyn Store>,
        tenant: &str,
    ) -> &'a mut Tenant {
        state
            .tenants
            .entry(tenant.to_owned())
            .or_insert_with(|| Tenant {
                live: false,
                epoch: 0,
                grants: None,
                watcher: tokio::spawn(watch(self.clone(), inner.clone(), tenant.to_owned())),
            })
    }

    fn lookup_read(
        self: &Arc<Self>,
        inner: &Arc<dyn Store>,
        key: &Key,
    ) -> Lookup<Option<Arc<Snapshot>>> {
        let mut state = lock(&self.state);
        let t = self.tenant(&mut state, inner, &key.0);
        let (live, epoch) = (t.live, t.epoch);
        if live {
            if let Some(entry) = state.entries.get_mut(key) {
                entry.used = true;
                let found = entry.found.clone();
                drop(state);
                self.telemetry.hit();
                return Lookup::Hit(found);
            }
        }
        drop(state);
        self.telemetry.miss();
        Lookup::Miss(live.then_some(epoch))
    }

    fn store_read(&self, key: Key, found: &Option<Arc<Snapshot>>, epoch: u64) {
        let bytes = weigh(&key, found);
        if bytes > self.settings.max_bytes {
            return;
        }
        let mut state = lock(&self.state);
        let current = state
            .tenants
            .get(&key.0)
            .is_some_and(|t| t.live && t.epoch == epoch);
        if !current {
            return;
        }
        state.remove(&key);
        let evicted = state.make_room(self.settings, bytes);
        let stamp = state.next_stamp;
        state.next_stamp += 1;
        state.bytes += bytes;
        state.order.push_back((key.clone(), stamp));
        state.entries.insert(
            key,
            Entry {
                found: found.clone(),
                bytes,
                stamp,
                used: false,
            },
        );
        if evicted > 0 {
            self.telemetry.evicted(evicted);
        }
        self.report_size(&state);
    }

    fn lookup_grants(self: &Arc<Self>, inner: &Arc<dyn Store>, tenant: &str) -> Lookup<Vec<Grant>> {
        let mut state = lock(&self.state);
        let t = self.tenant(&mut state, inner, tenant);
        let (live, epoch) = (t.live, t.epoch);
        if let Some(grants) = t.grants.as_ref().filter(|_| live) {
            let grants = grants.clone();
            drop(state);
            self.telemetry.hit();
            return Lookup::Hit(grants);
        }
        drop(state);
        self.telemetry.miss();
        Lookup::Miss(live.then_some(epoch))
    }

    fn store_grants(&self, tenant: &str, grants: &[Grant], epoch: u64) {
        let mut state = lock(&self.state);
        if let Some(t) = state.tenants.get_mut(tenant) {
            if t.live && t.epoch == epoch {
                t.grants = Some(grants.to_vec());
            }
        }
    }
}

/// Follows one tenant's changes for as long as the cache lives. While the
/// subscription is down nothing is cached, so reads go to the store.
async fn watch(shared: Arc<Shared>, inner: Arc<dyn Store>, tenant: String) {
    follow_changes(&*inner, &tenant, "record cache", |mut changes| {
        let (shared, tenant) = (shared.clone(), tenant.clone());
        async move {
            shared.set_live(&tenant, true);
            while let Some(change) = changes.next().await {
                shared.apply(&tenant, &change);
            }
            shared.set_live(&tenant, false);
            ControlFlow::Continue(())
        }
    })
    .await;
}

impl CachedStore {
    pub fn new(
        inner: Arc<dyn Store>,
        settings: CacheSettings,
        telemetry: Arc<dyn CacheTelemetry>,
    ) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                settings,
                telemetry,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Starts following `tenant`'s changes now rather than on its first read,
    /// so the first reads can already be cached. Needs a Tokio runtime.
    pub fn watch(&self, tenant: &str) {
        let mut state = lock(&self.shared.state);
        self.shared.tenant(&mut state, &self.inner, tenant);
    }

    /// Whether `tenant`'s subscription is up (reads may be cached).
    pub fn is_live(&self, tenant: &str) -> bool {
        lock(&self.shared.state)
            .tenants
            .get(tenant)
            .is_some_and(|t| t.live)
    }

    /// Forgets what a write by this sidecar changed, at once, whether it
    /// succeeded or not (a write that timed out may still have landed).
    fn changed(&self, tenant: &str, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            self.shared.apply(tenant, &change);
        }
    }
}

impl Drop for CachedStore {
    fn drop(&mut self) {
        for t in lock(&self.shared.state).tenants.values() {
            t.watcher.abort();
        }
    }
}

#[async_trait]
impl Store for CachedStore {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }

    async fn read(
        &self,
        tenant: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<Snapshot>, StoreError> {
        let found = self.read_shared(tenant, path, version).await?;
        Ok(found.map(Arc::unwrap_or_clone))
    }

    async fn read_shared(
        &self,
        tenant: &str,
        path: &str,
        version: Option<u64>,
    ) -> Result<Option<Arc<Snapshot>>, StoreError> {
        let key = (tenant.to_owned(), path.to_owned(), version);
        let epoch = match self.shared.lookup_read(&self.inner, &key) {
            Lookup::Hit(found) => return Ok(found),
            Lookup::Miss(epoch) => epoch,
        };
        let found = self.inner.read_shared(tenant, path, version).await?;
        if let Some(epoch) = epoch {
            self.shared.store_read(key, &found, epoch);
        }
        Ok(found)
    }

    async fn versions(&self, tenant: &str, path: &str) -> Result<Vec<VersionRecord>, StoreError> {
        self.inner.versions(tenant, path).await
    }

    async fn version_stamps(
        &self,
        tenant: &str,
        path: &str,
    ) -> Result<Vec<VersionStamp>, StoreError> {
        self.inner.version_stamps(tenant, path).await
    }

    async fn version_numbers(&self, tenant: &str, path: &str) -> Result<Vec<u64>, StoreError> {
        self.inner.version_numbers(tenant, path).await
    }

    async fn stamps_of(
        &self,
        tenant: &str,
        path: &str,
        versions: &[u64],
    ) -> Result<Vec<VersionStamp>, StoreError> {
        self.inner.stamps_of(tenant, path, versions).await
    }

    async fn commit_all_once(
        &self,
        tenant: &str,
        commits: &[Commit],
        once: Option<&IdempotencyRecord>,
    ) -> Result<Idempotent<()>, StoreError> {
        let done = self.inner.commit_all_once(tenant, commits, once).await;
        self.changed(
            tenant,
            commits
                .iter()
                .map(|c| Change::Secret(c.record.path.clone())),
        );
        done
    }

    async fn reserve_version(&self, tenant: &str, path: &str) -> Result<u64, StoreError> {
        self.inner.reserve_version(tenant, path).await
    }

    async fn write_version(
        &self,
        tenant: &str,
        write: &VersionWrite,
    ) -> Result<WriteOutcome, StoreError> {
        let done = self.inner.write_version(tenant, write).await;
        self.changed(tenant, [Change::Secret(write.initial.path.clone())]);
        done
    }

    async fn idempotent_answer(
        &self,
        tenant: &str,
        key: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.idempotent_answer(tenant, key).await
    }

    async fn claim(&self, tenant: &str, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.inner.claim(tenant, key, ttl).await
    }

    async fn reseal(
        &self,
        tenant: &str,
        path: &str,
        version: u64,
        expected: &Sealed,
        rewrapped: &Sealed,
    ) -> Result<bool, StoreError> {
        let done = self
            .inner
            .reseal(tenant, path, version, expected, rewrapped)
            .await;
        self.changed(tenant, [Change::Secret(path.to_owned())]);
        done
    }

    async fn delete_once(
        &self,
        tenant: &str,
        path: &str,
        once: Option<&IdempotencyRecord>,
    ) -> Result<Idempotent<bool>, StoreError> {
        let done = self.inner.delete_once(tenant, path, once).await;
        self.changed(tenant, [Change::Secret(path.to_owned()), Change::Grants]);
        done
    }

    async fn put_grant(&self, tenant: &str, grant: &Grant) -> Result<(), StoreError> {
        let done = self.inner.put_grant(tenant, grant).await;
        self.changed(tenant, [Change::Grants]);
        done
    }

    async fn grants(&self, tenant: &str) -> Result<Vec<Grant>, StoreError> {
        let epoch = match self.shared.lookup_grants(&self.inner, tenant) {
            Lookup::Hit(grants) => return Ok(grants),
            Lookup::Miss(epoch) => epoch,
        };
        let grants = self.inner.grants(tenant).await?;
        if let Some(epoch) = epoch {
            self.shared.store_grants(tenant, &grants, epoch);
        }
        Ok(grants)
    }

    async fn delete_grant(&self, tenant: &str, grant_id: &str) -> Result<bool, StoreError> {
        let done = self.inner.delete_grant(tenant, grant_id).await;
        self.changed(tenant, [Change::Grants]);
        done
    }

    async fn create_token(
        &self,
        tenant: &str,
        token: &TokenRecord,
        approval: Option<&ApprovalRecord>,
    ) -> Result<(), StoreError> {
        self.inner.create_token(tenant, token, approval).await
    }

    async fn use_token(
        &self,
        tenant: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenUse, StoreError> {
        self.inner.use_token(tenant, hash, now).await
    }

    async fn approvals(&self, tenant: &str) -> Result<Vec<ApprovalRecord>, StoreError> {
        self.inner.approvals(tenant).await
    }

    async fn decide_approval(
        &self,
        tenant: &str,
        decided: &ApprovalRecord,
    ) -> Result<bool, StoreError> {
        self.inner.decide_approval(tenant, decided).await
    }

    async fn list(
        &self,
        tenant: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SecretRecord>, StoreError> {
        self.inner.list(tenant, prefix, after, limit).await
    }

    async fn append_audit(
        &self,
        tenant: &str,
        events: &[AuditEvent],
        max_len: usize,
    ) -> Result<Vec<AuditId>, StoreError> {
        self.inner.append_audit(tenant, events, max_len).await
    }

    async fn audit_newest(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit_newest(tenant, limit).await
    }

    async fn audit_after(
        &self,
        tenant: &str,
        after: AuditId,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit_after(tenant, after, limit).await
    }

    async fn audit_follower(&self, tenant: &str) -> Result<Box<dyn AuditFollower>, StoreError> {
        self.inner.audit_follower(tenant).await
    }

    /// The store's announcements, each applied to this cache before it is
    /// handed on: a subscriber that reads through the cache on an
    /// announcement never gets the record the announcement made stale
    /// (the cache's own subscription runs on another connection and may
    /// hear it later).
    async fn changes(&self, tenant: &str) -> Result<ChangeStream, StoreError> {
        use futures_util::StreamExt;
        let shared = self.shared.clone();
        let tenant_name = tenant.to_owned();
        let changes = self.inner.changes(tenant).await?;
        Ok(ChangeStream::new(changes.map(move |change| {
            shared.apply(&tenant_name, &change);
            change
        })))
    }
}
