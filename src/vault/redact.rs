//! The leak guard: finds the secret values a caller may read, and their common
//! encodings, in a text and replaces each with `[REDACTED:<path>]`.
//!
//! What it guarantees:
//! - Only values the caller may read right now count: each secret is decided
//!   by the same policy call as a read ([`Vault::decide_with`] on
//!   [`Action::Read`]), so redaction never confirms a value the caller could
//!   not have read. The versions matched are each readable secret's active
//!   version and the versions still in a rotation's grace period.
//! - One text is one pass of one multi-pattern automaton (Aho–Corasick,
//!   leftmost-longest), whatever the number of secrets. The automaton is built
//!   per set of decision inputs (the caller's identity and token, and the
//!   policy's revision) and cached; it is rebuilt when the tenant's secrets
//!   or grants change (the store's change announcements, and this sidecar's
//!   own writes at once), when the policy is reloaded, when the change
//!   subscription is down, when a matched version expires, and at the latest
//!   after [`MAX_AUTOMATON_AGE`] (which bounds how long a time-dependent rule
//!   takes to show).
//! - Values shorter than the configured minimum are never matched: a short
//!   value would match ordinary text and redact it (and confirm it) by chance.
//! - Findings name paths, versions, byte offsets and the encoding, never a
//!   value. The plaintext lives in the cached automaton only, in this
//!   process's memory, as it does in a read's answer.

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Serialize;
use zeroize::Zeroizing;

use super::access::Access;
use super::{Vault, VaultError, PAGE};
use crate::audit::EventKind;
use crate::identity::Caller;
use crate::model::SecretRecord;
use crate::policy::{Action, Resource, Subject};
use crate::store::{follow_changes, Change, Store};

/// Values shorter than this many bytes are not matched unless configured otherwise.
pub const DEFAULT_MIN_REDACT_BYTES: usize = 8;
/// A cached automaton is rebuilt at least this often, so that a policy reload
/// (which no change announcement reports) reaches redaction within this time.
pub const MAX_AUTOMATON_AGE: Duration = Duration::from_secs(30);
/// Automata kept, one per set of decision inputs (caller identity, process, token).
const MAX_CACHED_AUTOMATA: usize = 64;
/// Secrets whose versions are read and opened at once while building.
const BUILD_CONCURRENCY: usize = 16;

/// How a value appeared in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// The value itself.
    Raw,
    /// Inside a JSON string: `"` `\` and control characters escaped.
    Json,
    /// Inside a JSON string written ASCII-only (non-ASCII as `\uXXXX`, as
    /// Python's `json.dumps` does by default).
    JsonAscii,
    /// Percent-encoded as RFC 3986 (`%20` for a space, unreserved characters kept).
    Url,
    /// `application/x-www-form-urlencoded` (`+` for a space).
    UrlForm,
    Hex,
    HexUpper,
    /// Standard base64 with `=` padding.
    Base64,
    Base64Nopad,
    /// URL-safe base64 (`-` `_`) with padding.
    Base64url,
    Base64urlNopad,
    /// The value's bytes inside a longer standard-base64 string (at any of the
    /// three alignments), such as a password in `Basic` credentials. The one
    /// or two characters that mix the value with its neighbours stay visible.
    Base64Inner,
    Base64urlInner,
}

impl Form {
    /// Every form, in the order that wins when two produce the same bytes.
    pub const ALL: [Form; 13] = [
        Self::Raw,
        Self::Json,
        Self::JsonAscii,
        Self::Url,
        Self::UrlForm,
        Self::Hex,
        Self::HexUpper,
        Self::Base64,
        Self::Base64Nopad,
        Self::Base64url,
        Self::Base64urlNopad,
        Self::Base64Inner,
        Self::Base64urlInner,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Json => "json",
            Self::JsonAscii => "json_ascii",
            Self::Url => "url",
            Self::UrlForm => "url_form",
            Self::Hex => "hex",
            Self::HexUpper => "hex_upper",
            Self::Base64 => "base64",
            Self::Base64Nopad => "base64_nopad",
            Self::Base64url => "base64url",
            Self::Base64urlNopad => "base64url_nopad",
            Self::Base64Inner => "base64_inner",
            Self::Base64urlInner => "base64url_inner",
        }
    }
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One replaced occurrence. `start` and `end` are byte offsets into the
/// original text (UTF-8), end exclusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub path: String,
    pub version: u64,
    pub start: usize,
    pub end: usize,
    pub form: Form,
}

/// A redacted text and what was replaced in it.
#[derive(Debug, Clone, Serialize)]
pub struct Redaction {
    pub text: String,
    pub findings: Vec<Finding>,
    /// Whether this request built a new automaton (and how long that took);
    /// for metrics, not part of the answer.
    #[serde(skip)]
    pub built: Option<Duration>,
    /// Patterns (values × encodings) the automaton holds; for metrics.
    #[serde(skip)]
    pub patterns: usize,
}

/// A value to look for: which secret version it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    path: String,
    version: u64,
}

/// One compiled set of values and encodings. Building it costs one pass over
/// the values; scanning a text costs one pass over the text.
pub struct Scanner {
    matcher: Option<AhoCorasick>,
    /// Per pattern id: which source and in which form.
    hits: Vec<(usize, Form)>,
    sources: Vec<Source>,
}

impl fmt::Debug for Scanner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scanner")
            .field("patterns", &self.hits.len())
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the redaction automaton: {0}")]
pub struct BuildError(String);

impl Scanner {
    /// Compiles `values` (path, version, plaintext) and their encodings.
    /// Values shorter than `min_bytes` are left out.
    pub fn build<'a>(
        values: impl IntoIterator<Item = (&'a str, u64, &'a [u8])>,
        min_bytes: usize,
    ) -> Result<Self, BuildError> {
        let mut sources = Vec::new();
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut hits = Vec::new();
        for (path, version, value) in values {
            if value.len() < min_bytes.max(1) {
                continue;
            }
            let source = sources.len();
            sources.push(Source {
                path: path.to_owned(),
                version,
            });
            for (form, bytes) in encodings(value) {
                patterns.push(bytes);
                hits.push((source, form));
            }
        }
        // The same bytes may come from two forms (a value with nothing to
        // escape is its own JSON form) or two secrets: keep the first.
        let mut order: Vec<usize> = (0..patterns.len()).collect();
        order.sort_by(|a, b| patterns[*a].cmp(&patterns[*b]).then(a.cmp(b)));
        let mut keep = vec![true; patterns.len()];
        for pair in order.windows(2) {
            if patterns[pair[0]] == patterns[pair[1]] {
                keep[pair[1]] = false;
            }
        }
        let mut kept_hits = Vec::with_capacity(hits.len());
        let mut kept_patterns = Vec::with_capacity(patterns.len());
        for (i, pattern) in patterns.iter().enumerate() {
            if keep[i] {
                kept_hits.push(hits[i]);
                kept_patterns.push(pattern.as_slice());
            }
        }
        let matcher = if kept_patterns.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&kept_patterns)
                    .map_err(|e| BuildError(e.to_string()))?,
            )
        };
        Ok(Self {
            matcher,
            hits: kept_hits,
            sources,
        })
    }

    /// Patterns (values × distinct encodings) compiled in.
    pub fn patterns(&self) -> usize {
        self.hits.len()
    }

    /// Heap bytes of the compiled automaton (not counting the path list).
    pub fn memory_usage(&self) -> usize {
        self.matcher.as_ref().map_or(0, AhoCorasick::memory_usage)
    }

    /// Replaces every occurrence, leftmost-longest where occurrences overlap.
    pub fn redact(&self, text: &str) -> Redaction {
        let mut findings = Vec::new();
        let Some(matcher) = &self.matcher else {
            return Redaction {
                text: text.to_owned(),
                findings,
                built: None,
                patterns: 0,
            };
        };
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in matcher.find_iter(text) {
            let (source, form) = self.hits[m.pattern().as_usize()];
            let source = &self.sources[source];
            // Every pattern is valid UTF-8 (the raw value is a string and
            // the encodings are ASCII), so a match in a `str` starts and ends
            // on character boundaries; `get` keeps that an invariant, not a panic.
            let (Some(before), true) = (text.get(last..m.start()), text.is_char_boundary(m.end()))
            else {
                continue;
            };
            out.push_str(before);
            out.push_str("[REDACTED:");
            out.push_str(&source.path);
            out.push(']');
            last = m.end();
            findings.push(Finding {
                path: source.path.clone(),
                version: source.version,
                start: m.start(),
                end: m.end(),
                form,
            });
        }
        out.push_str(text.get(last..).unwrap_or_default());
        Redaction {
            text: out,
            findings,
            built: None,
            patterns: self.hits.len(),
        }
    }
}

/// The value and each of its encodings, in [`Form::ALL`]'s order. Equal
/// outputs are deduplicated by the caller.
fn encodings(value: &[u8]) -> Vec<(Form, Zeroizing<Vec<u8>>)> {
    let z = |s: String| Zeroizing::new(s.into_bytes());
    let mut out = vec![(Form::Raw, Zeroizing::new(value.to_vec()))];
    if let Ok(text) = std::str::from_utf8(value) {
        let json = Zeroizing::new(serde_json::to_string(text).unwrap_or_default());
        let inner = json
            .get(1..json.len().saturating_sub(1))
            .unwrap_or_default();
        out.push((Form::Json, z(inner.to_owned())));
        out.push((Form::JsonAscii, z(ascii_json(inner))));
    }
    out.push((Form::Url, z(percent_encode(value))));
    out.push((
        Form::UrlForm,
        z(form_urlencoded::byte_serialize(value).collect()),
    ));
    out.push((Form::Hex, z(hex(value, b"0123456789abcdef"))));
    out.push((Form::HexUpper, z(hex(value, b"0123456789ABCDEF"))));
    out.push((Form::Base64, z(STANDARD.encode(value))));
    out.push((Form::Base64Nopad, z(STANDARD_NO_PAD.encode(value))));
    out.push((Form::Base64url, z(URL_SAFE.encode(value))));
    out.push((Form::Base64urlNopad, z(URL_SAFE_NO_PAD.encode(value))));
    for (form, engine) in [
        (Form::Base64Inner, &STANDARD_NO_PAD),
        (Form::Base64urlInner, &URL_SAFE_NO_PAD),
    ] {
        for offset in 0..3 {
            if let Some(core) = base64_core(engine, value, offset) {
                out.push((form, core));
            }
        }
    }
    out
}

/// The base64 characters that depend on `value`'s bytes alone when it sits
/// `offset` bytes past a 3-byte boundary of a longer encoded string: the
/// characters mixing it with its neighbours are cut off at both ends.
fn base64_core(
    engine: &base64::engine::GeneralPurpose,
    value: &[u8],
    offset: usize,
) -> Option<Zeroizing<Vec<u8>>> {
    let mut shifted = Zeroizing::new(vec![0u8; offset]);
    shifted.extend_from_slice(value);
    let encoded = Zeroizing::new(engine.encode(shifted.as_slice()));
    let skip = (8 * offset).div_ceil(6);
    let end = 8 * shifted.len() / 6;
    let core = encoded.as_bytes().get(skip..end)?;
    // Too short to say anything about the value by itself.
    (core.len() >= 4).then(|| Zeroizing::new(core.to_vec()))
}

fn hex(value: &[u8], digits: &[u8; 16]) -> String {
    let mut out = String::with_capacity(value.len() * 2);
    for b in value {
        out.push(char::from(digits[usize::from(b >> 4)]));
        out.push(char::from(digits[usize::from(b & 0xf)]));
    }
    out
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
        }
    }
    out
}

/// A JSON string body (already escaped) with its non-ASCII characters as
/// `\uXXXX` escapes (UTF-16, lower-case hex).
fn ascii_json(escaped: &str) -> String {
    let mut out = String::with_capacity(escaped.len());
    for c in escaped.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The cached automata, and what tells whether they are still current.
pub(super) struct Redactor {
    /// Bumped by every change that can alter a readable set, by the loss or
    /// return of the change subscription, and by this sidecar's own writes.
    generation: AtomicU64,
    /// The change subscription is up: cached automata may be trusted.
    live: AtomicBool,
    cache: Mutex<HashMap<String, Cached>>,
    /// Orders uses of cached automata, for evicting the least recently used.
    ticks: AtomicU64,
    watcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Cached {
    generation: u64,
    /// Rebuild at this instant: the first expiry of a matched version, or the maximum age.
    until: DateTime<Utc>,
    used: u64,
    scanner: Arc<Scanner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Redactor {
    pub(super) fn new() -> Self {
        Self {
            generation: AtomicU64::new(0),
            live: AtomicBool::new(false),
            cache: Mutex::new(HashMap::new()),
            ticks: AtomicU64::new(0),
            watcher: Mutex::new(None),
        }
    }

    /// Something this sidecar wrote may change a readable set: no cached
    /// automaton is current any more (its own announcement may still be on
    /// the way).
    pub(super) fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Starts following the tenant's changes, once. Needs a Tokio runtime.
    fn watch(self: &Arc<Self>, store: &Arc<dyn Store>, tenant: &str) {
        let mut watcher = lock(&self.watcher);
        if watcher.is_none() {
            let this = Arc::downgrade(self);
            *watcher = Some(tokio::spawn(follow(this, store.clone(), tenant.to_owned())));
        }
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
        self.changed();
    }

    /// The current generation, or `None` while changes could go unnoticed.
    fn current(&self) -> Option<u64> {
        let generation = self.generation.load(Ordering::SeqCst);
        self.live.load(Ordering::SeqCst).then_some(generation)
    }

    fn lookup(&self, key: &str) -> Option<Arc<Scanner>> {
        let generation = self.current()?;
        let mut cache = lock(&self.cache);
        let entry = cache.get_mut(key)?;
        if entry.generation != generation || entry.until <= Utc::now() {
            return None;
        }
        entry.used = self.ticks.fetch_add(1, Ordering::Relaxed);
        Some(entry.scanner.clone())
    }

    fn remember(&self, key: String, generation: u64, until: DateTime<Utc>, scanner: Arc<Scanner>) {
        let mut cache = lock(&self.cache);
        cache.retain(|_, e| e.generation == generation);
        if cache.len() >= MAX_CACHED_AUTOMATA && !cache.contains_key(&key) {
            let oldest = cache
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            key,
            Cached {
                generation,
                until,
                used: self.ticks.fetch_add(1, Ordering::Relaxed),
                scanner,
            },
        );
    }
}

impl Drop for Redactor {
    fn drop(&mut self) {
        if let Some(watcher) = lock(&self.watcher).take() {
            watcher.abort();
        }
    }
}

/// Follows the tenant's change announcements for as long as the redactor
/// lives, subscribing again (with backoff) when the subscription is lost.
/// While the subscription is down, automata are built per request.
async fn follow(redactor: std::sync::Weak<Redactor>, store: Arc<dyn Store>, tenant: String) {
    follow_changes(&*store, &tenant, "redaction", |mut changes| {
        let redactor = redactor.clone();
        async move {
            let Some(r) = redactor.upgrade() else {
                return ControlFlow::Break(());
            };
            r.set_live(true);
            drop(r);
            while let Some(change) = changes.next().await {
                let Some(r) = redactor.upgrade() else {
                    return ControlFlow::Break(());
                };
                // Tokens and approvals do not change what an identity
                // may read: a token is checked on every request.
                if change != Change::Tokens {
                    r.changed();
                }
            }
            match redactor.upgrade() {
                Some(r) => {
                    r.set_live(false);
                    ControlFlow::Continue(())
                }
                None => ControlFlow::Break(()),
            }
        }
    })
    .await;
}

/// Everything the policy sees of a reader besides the resource: requests
/// that agree on it get the same readable set.
#[derive(Serialize)]
struct ReaderKey<'a> {
    subject: Subject,
    token: &'a Option<crate::policy::TokenClaims>,
    /// A reloaded policy may let the reader see more or less.
    policy_revision: u64,
}

impl Vault {
    /// Replaces every value `caller` may read, and its encodings, in `text`.
    /// Findings are audited (path and version, never a value).
    pub async fn redact(&self, caller: &Caller, text: &str) -> Result<Redaction, VaultError> {
        let access = self.access(caller).await?;
        self.redactor.watch(&self.store, &self.workload.tenant);
        let key = serde_json::to_string(&ReaderKey {
            subject: Subject::new(&self.workload, access.caller),
            token: &access.token,
            policy_revision: self.policy.revision(),
        })
        .map_err(|e| VaultError::Corrupt(format!("redaction key: {e}")))?;
        let (scanner, built) = match self.redactor.lookup(&key) {
            Some(scanner) => (scanner, None),
            None => {
                let started = Instant::now();
                let generation = self.redactor.current();
                let (scanner, until) = self.build_scanner(&access).await?;
                let scanner = Arc::new(scanner);
                if let Some(generation) = generation {
                    self.redactor
                        .remember(key, generation, until, scanner.clone());
                }
                (scanner, Some(started.elapsed()))
            }
        };
        let mut redaction = scanner.redact(text);
        redaction.built = built;
        self.audit_findings(caller, &redaction.findings).await;
        Ok(redaction)
    }

    /// One event per secret version found, naming the forms it was found in.
    async fn audit_findings(&self, caller: &Caller, findings: &[Finding]) {
        let mut found: Vec<(&str, u64, Vec<Form>)> = Vec::new();
        for f in findings {
            match found
                .iter_mut()
                .find(|(p, v, _)| *p == f.path && *v == f.version)
            {
                Some((_, _, forms)) if forms.contains(&f.form) => {}
                Some((_, _, forms)) => forms.push(f.form),
                None => found.push((&f.path, f.version, vec![f.form])),
            }
        }
        if found.is_empty() {
            return;
        }
        let events = found
            .into_iter()
            .map(|(path, version, forms)| {
                let mut event = self
                    .event(EventKind::Redacted, caller, Action::Read, path)
                    .version(Some(version));
                event.action = Some("redact".to_owned());
                event.reasons = forms.iter().map(|f| format!("form {f}")).collect();
                event
            })
            .collect();
        self.audit_all(events).await;
    }

    /// The automaton for what `access` may read now, and when it must be
    /// rebuilt at the latest.
    async fn build_scanner(
        &self,
        access: &Access<'_>,
    ) -> Result<(Scanner, DateTime<Utc>), VaultError> {
        let now = Utc::now();
        let readable = self.readable_records(access).await?;
        let mut opened = Vec::with_capacity(readable.len());
        for chunk in readable.chunks(BUILD_CONCURRENCY) {
            let reads = chunk.iter().map(|record| self.open_versions(record, now));
            opened.extend(futures_util::future::try_join_all(reads).await?);
        }
        let mut until =
            now + chrono::Duration::from_std(MAX_AUTOMATON_AGE).unwrap_or(chrono::Duration::zero());
        let mut values = Vec::new();
        for (record, versions) in readable.iter().zip(&opened) {
            for (version, plaintext, expiry) in versions {
                if let Some(at) = expiry {
                    until = until.min(*at);
                }
                values.push((record.path.as_str(), *version, plaintext.as_slice()));
            }
        }
        let scanner = Scanner::build(values, self.limits.redact_min_bytes).map_err(|e| {
            tracing::error!(error = %e, "redaction automaton failed to build");
            VaultError::Unavailable(e.to_string())
        })?;
        Ok((scanner, until))
    }

    /// Every record the caller may read, decided as a read of it would be.
    async fn readable_records(&self, access: &Access<'_>) -> Result<Vec<SecretRecord>, VaultError> {
        let mut records = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.records("", after.as_deref(), PAGE).await?;
            let full = page.len() == PAGE;
            after = page.last().map(|r| r.path.clone());
            records.extend(page);
            if !full {
                break;
            }
        }
        let grants = if records.iter().any(|r| r.owner != self.workload.spiffe_id) {
            self.store.grants(&self.workload.tenant).await?
        } else {
            Vec::new()
        };
        let mut readable = Vec::new();
        for record in records {
            if self
                .decide_with(access, Action::Read, Resource::of(&record), &grants)?
                .allow
            {
                readable.push(record);
            }
        }
        Ok(readable)
    }

    /// The record's active version and the versions in a rotation's grace
    /// period that have not expired, opened, with when each stops being readable.
    async fn open_versions(
        &self,
        record: &SecretRecord,
        now: DateTime<Utc>,
    ) -> Result<Vec<(u64, Zeroizing<Vec<u8>>, Option<DateTime<Utc>>)>, VaultError> {
        let versions = self
            .store
            .versions(&self.workload.tenant, &record.path)
            .await?;
        let mut opened = Vec::new();
        for version in versions {
            let in_grace = version.expires_at.is_some();
            if version.version != record.active_version && !in_grace {
                continue;
            }
            let expiry = record.expiry_of(&version.stamp());
            if expiry.is_some_and(|at| at <= now) {
                continue;
            }
            let plaintext = self
                .cipher
                .open(self.binding(&record.path, version.version), &version.sealed)
                .map_err(|source| {
                    tracing::error!(
                        tenant = %self.workload.tenant, path = %record.path, version = version.version,
                        error = %source, "stored secret failed to decrypt; possible tampering"
                    );
                    VaultError::Integrity {
                        path: record.path.clone(),
                        source,
                    }
                })?;
            opened.push((version.version, plaintext, expiry));
        }
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(values: &[(&str, &str)], text: &str) -> Redaction {
        let scanner = Scanner::build(
            values.iter().map(|(p, v)| (*p, 1, v.as_bytes())),
            DEFAULT_MIN_REDACT_BYTES,
        )
        .unwrap();
        scanner.redact(text)
    }

    #[test]
    fn every_encoding_is_found_and_named() {
        let value = "s3cr3t/v+lue ?&\"é>>?!";
        let cases = [
            (Form::Raw, value.to_owned()),
            (
                Form::Json,
                serde_json::to_string(value)
                    .unwrap()
                    .trim_matches('"')
                    .to_owned(),
            ),
            (Form::JsonAscii, "s3cr3t/v+lue ?&\\\"\\u00e9>>?!".to_owned()),
            (
                Form::Url,
                "s3cr3t%2Fv%2Blue%20%3F%26%22%C3%A9%3E%3E%3F%21".to_owned(),
            ),
            (
                Form::UrlForm,
                form_urlencoded::byte_serialize(value.as_bytes()).collect(),
            ),
            (Form::Hex, hex(value.as_bytes(), b"0123456789abcdef")),
            (Form::HexUpper, hex(value.as_bytes(), b"0123456789ABCDEF")),
            (Form::Base64, STANDARD.encode(value)),
            (Form::Base64Nopad, STANDARD_NO_PAD.encode(value)),
            (Form::Base64url, URL_SAFE.encode(value)),
            (Form::Base64urlNopad, URL_SAFE_NO_PAD.encode(value)),
        ];
        for (form, encoded) in cases {
            let text = format!("before {encoded} after");
            let r = scan(&[("db/pw", value)], &text);
            assert_eq!(r.text, "before [REDACTED:db/pw] after", "{form}");
            assert_eq!(r.findings.len(), 1, "{form}");
            let f = &r.findings[0];
            assert_eq!((f.form, f.start, f.end), (form, 7, 7 + encoded.len()));
        }
    }

    #[test]
    fn a_value_inside_a_longer_base64_string_is_found_at_every_alignment() {
        let value = "hunter2-correct-horse";
        for prefix in ["", "u:", "us:", "user:"] {
            let basic = STANDARD.encode(format!("{prefix}{value}@rest"));
            let r = scan(&[("pw", value)], &format!("Authorization: Basic {basic}"));
            assert_eq!(r.findings.len(), 1, "prefix {prefix:?}: {r:?}");
            assert!(!r.text.contains(&basic));
        }
    }

    #[test]
    fn overlaps_resolve_leftmost_longest() {
        let r = scan(
            &[("short", "abcdefgh"), ("long", "abcdefghijkl")],
            "xx abcdefghijkl abcdefgh",
        );
        assert_eq!(r.text, "xx [REDACTED:long] [REDACTED:short]");
        assert_eq!(
            r.findings
                .iter()
                .map(|f| (f.path.as_str(), f.start, f.end))
                .collect::<Vec<_>>(),
            [("long", 3, 15), ("short", 16, 24)]
        );
    }

    #[test]
    fn short_values_are_not_matched() {
        let r = scan(
            &[("pin", "1234567"), ("key", "12345678")],
            "1234567 12345678",
        );
        assert_eq!(r.text, "1234567 [REDACTED:key]");
        let scanner = Scanner::build([("pin", 1, &b"1234"[..])], 4).unwrap();
        assert_eq!(scanner.redact("pin 1234").findings.len(), 1);
    }

    #[test]
    fn offsets_are_bytes_and_unicode_survives() {
        let r = scan(&[("k", "pässwörd-1")], "ünïcode pässwörd-1 ✓");
        assert_eq!(r.text, "ünïcode [REDACTED:k] ✓");
        let f = &r.findings[0];
        assert_eq!(&"ünïcode pässwörd-1 ✓"[f.start..f.end], "pässwörd-1");
    }

    #[test]
    fn equal_encodings_are_compiled_once() {
        let scanner = Scanner::build([("a", 1, &b"abcdefgh12"[..])], 8).unwrap();
        // raw = json = json_ascii = url = url_form for an alphanumeric value.
        let distinct = encodings(b"abcdefgh12")
            .iter()
            .map(|(_, b)| b.to_vec())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert_eq!(scanner.patterns(), distinct);
        assert!(scanner.patterns() < encodings(b"abcdefgh12").len());
        assert_eq!(scanner.redact("abcdefgh12").findings[0].form, Form::Raw);
    }

    #[test]
    fn a_cached_automaton_is_current_only_while_nothing_changed() {
        let redactor = Redactor::new();
        let scanner = Arc::new(Scanner::build(std::iter::empty(), 8).unwrap());
        let later = Utc::now() + chrono::Duration::seconds(60);
        // While the subscription is down nothing is cached or served.
        assert_eq!(redactor.current(), None);
        assert!(redactor.lookup("k").is_none());
        redactor.set_live(true);
        let generation = redactor.current().unwrap();
        redactor.remember("k".into(), generation, later, scanner.clone());
        assert!(redactor.lookup("k").is_some());
        assert!(redactor.lookup("other caller").is_none());
        // Any change makes it stale.
        redactor.changed();
        assert!(redactor.lookup("k").is_none());
        // So does the subscription going down, and the first expiry it holds.
        let generation = redactor.current().unwrap();
        redactor.remember("k".into(), generation, later, scanner.clone());
        redactor.set_live(false);
        assert!(redactor.lookup("k").is_none());
        redactor.set_live(true);
        let generation = redactor.current().unwrap();
        let past = Utc::now() - chrono::Duration::seconds(1);
        redactor.remember("k".into(), generation, past, scanner.clone());
        assert!(redactor.lookup("k").is_none());
        // Bounded: the least recently used goes first.
        for i in 0..MAX_CACHED_AUTOMATA + 5 {
            redactor.remember(format!("k{i}"), generation, later, scanner.clone());
        }
        assert_eq!(lock(&redactor.cache).len(), MAX_CACHED_AUTOMATA);
        assert!(redactor.lookup("k0").is_none());
        assert!(redactor
            .lookup(&format!("k{}", MAX_CACHED_AUTOMATA + 4))
            .is_some());
    }

    #[test]
    fn nothing_to_find_returns_the_text() {
        let scanner = Scanner::build(std::iter::empty(), 8).unwrap();
        let r = scanner.redact("plain");
        assert_eq!((r.text.as_str(), r.findings.len()), ("plain", 0));
    }

    #[test]
    fn findings_and_debug_never_show_a_value() {
        let scanner = Scanner::build([("a", 3, &b"sk-live-abcdef"[..])], 8).unwrap();
        let r = scanner.redact("key=sk-live-abcdef");
        assert!(!format!("{scanner:?}").contains("sk-live"));
        assert!(!serde_json::to_string(&r).unwrap().contains("sk-live"));
        assert!(!format!("{r:?}").contains("sk-live"));
    }
}
