//! The audit vocabulary: what an event says ([`AuditEvent`]), what it is
//! about ([`EventKind`]) and where it sits in a tenant's stream ([`AuditId`]).
//! It lives below the auditor and the stores so that both can name it.
//!
//! An event holds identities, a path, a version number and reasons, and no
//! field that could carry a secret value or a token.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What happened. The names are the contract of the audit stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A secret (or its metadata or version list) was read.
    Accessed,
    /// A request was refused: by the policy, for its credentials, or because
    /// the audit sink was down under `fail_closed`.
    Denied,
    Written,
    Updated,
    RolledBack,
    Rotated,
    Deleted,
    Listed,
    Imported,
    GrantCreated,
    GrantRevoked,
    TokenIssued,
    Approval,
    /// The audit log itself was read or followed.
    AuditRead,
    /// Envoy asked whether to let an outbound request through (ext_authz
    /// `Check`). `path` holds the destination host only, never the request
    /// path or query, which may carry credentials; `injected` the secret
    /// paths put on the request, never their values.
    EnvoyCheck,
    /// A secret version was found (and replaced) in a text sent to
    /// `POST /v1/redact`. `reasons` name the encodings it was found in.
    Redacted,
}

impl EventKind {
    pub const ALL: [EventKind; 16] = [
        Self::Accessed,
        Self::Denied,
        Self::Written,
        Self::Updated,
        Self::RolledBack,
        Self::Rotated,
        Self::Deleted,
        Self::Listed,
        Self::Imported,
        Self::GrantCreated,
        Self::GrantRevoked,
        Self::TokenIssued,
        Self::Approval,
        Self::AuditRead,
        Self::EnvoyCheck,
        Self::Redacted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accessed => "vault.accessed",
            Self::Denied => "vault.denied",
            Self::Written => "vault.written",
            Self::Updated => "vault.updated",
            Self::RolledBack => "vault.rolled_back",
            Self::Rotated => "vault.rotated",
            Self::Deleted => "vault.deleted",
            Self::Listed => "vault.listed",
            Self::Imported => "vault.imported",
            Self::GrantCreated => "vault.grant_created",
            Self::GrantRevoked => "vault.grant_revoked",
            Self::TokenIssued => "vault.token_issued",
            Self::Approval => "vault.approval",
            Self::AuditRead => "vault.audit_read",
            Self::EnvoyCheck => "envoy.check",
            Self::Redacted => "vault.redacted",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown audit event `{s}`"))
    }
}

impl Serialize for EventKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for EventKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One audit event. Every field is an identifier, a path, a number, a
/// contract code or a policy reason; there is deliberately no field for a
/// value, a token or free text from a request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    #[serde(with = "super::timestamp")]
    pub ts: DateTime<Utc>,
    pub event: EventKind,
    /// The caller's effective SPIFFE ID (`…/<agent>[/<role>]`).
    pub spiffe_id: String,
    pub role: Option<String>,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    /// The policy action (`read`, `write`, …); `null` when refused before one was known.
    pub action: Option<String>,
    /// The secret path, prefix, namespace, grant pattern or token scope.
    pub path: Option<String>,
    pub version: Option<u64>,
    /// `ok`, or the contract error code the caller got.
    pub outcome: String,
    pub reasons: Vec<String>,
    pub request_id: Option<String>,
    /// For `envoy.check`: the secret paths injected into the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub injected: Vec<String>,
}

impl AuditEvent {
    /// The event as JSON, byte for byte what `serde_json::to_vec` writes
    /// (the stored form, read back with `Deserialize`), without
    /// `serde_json`'s per-byte string escaping: every access writes one.
    pub fn to_json(&self) -> Vec<u8> {
        use super::json::{opt_int, opt_string, string, strings, Object};
        // Room for a typical event (about 280 bytes), so it is written
        // without growing.
        let mut out = Vec::with_capacity(384);
        let mut o = Object::new(&mut out);
        super::timestamp::write_json(&self.ts, o.field("ts"));
        string(o.field("event"), self.event.as_str());
        string(o.field("spiffe_id"), &self.spiffe_id);
        opt_string(o.field("role"), self.role.as_deref());
        opt_int(o.field("uid"), self.uid);
        opt_int(o.field("pid"), self.pid);
        opt_string(o.field("action"), self.action.as_deref());
        opt_string(o.field("path"), self.path.as_deref());
        opt_int(o.field("version"), self.version);
        string(o.field("outcome"), &self.outcome);
        strings(o.field("reasons"), &self.reasons);
        opt_string(o.field("request_id"), self.request_id.as_deref());
        if !self.injected.is_empty() {
            strings(o.field("injected"), &self.injected);
        }
        o.end();
        out
    }

    pub fn action(mut self, action: &str) -> Self {
        self.action = Some(action.to_owned());
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = Some(path.to_owned());
        self
    }

    pub fn version(mut self, version: Option<u64>) -> Self {
        self.version = version;
        self
    }

    /// A refusal with the contract code the caller got and why.
    pub fn refused(mut self, outcome: &str, reasons: Vec<String>) -> Self {
        self.event = EventKind::Denied;
        self.outcome = outcome.to_owned();
        self.reasons = reasons;
        self
    }
}

/// A position in a tenant's audit stream, `<millis>-<seq>` as Redis stream
/// ids are. Ids only grow, so a follower resumes after the last one it saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AuditId {
    pub ms: u64,
    pub seq: u64,
}

impl AuditId {
    /// Before every event: following from here replays the whole stream.
    pub const START: AuditId = AuditId { ms: 0, seq: 0 };
}

impl fmt::Display for AuditId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for AuditId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not an audit event id (<millis>-<seq>)");
        let (ms, seq) = s.trim().split_once('-').ok_or_else(bad)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for AuditId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AuditId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A stored event with its id in the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: AuditId,
    #[serde(flatten)]
    pub event: AuditEvent,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{AuditEvent, EventKind};

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a-z0-9/._:-]{0,30}",
            "[\\x00-\\x7f]{0,12}"
        ]
    }

    prop_compose! {
        fn event()(
            secs in -62_167_219_200i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
            kind in 0..EventKind::ALL.len(),
            spiffe_id in text(),
            role in proptest::option::of(text()),
            uid in proptest::option::of(any::<u32>()),
            pid in proptest::option::of(any::<i32>()),
            action in proptest::option::of(text()),
            path in proptest::option::of(text()),
            version in proptest::option::of(any::<u64>()),
            outcome in text(),
            reasons in proptest::collection::vec(text(), 0..3),
            request_id in proptest::option::of(text()),
            injected in proptest::collection::vec(text(), 0..3),
        ) -> AuditEvent {
            AuditEvent {
                ts: chrono::DateTime::from_timestamp(secs, nanos).unwrap(),
                event: EventKind::ALL[kind],
                spiffe_id, role, uid, pid, action, path, version, outcome, reasons,
                request_id, injected,
            }
        }
    }

    proptest! {
        /// The stored form is what `serde_json` writes, and reads back whole.
        #[test]
        fn to_json_writes_what_serde_json_writes(event in event()) {
            crate::model::json::check_is_serde_jsons(&event.to_json(), &event)?;
        }
    }

    #[test]
    fn a_year_outside_four_digits_is_written_as_chrono_writes_it() {
        let event = AuditEvent {
            ts: chrono::DateTime::from_timestamp(-70_000_000_000, 5).unwrap(),
            event: EventKind::Accessed,
            spiffe_id: "spiffe://dev.local/a".into(),
            role: None,
            uid: Some(0),
            pid: None,
            action: Some("read".into()),
            path: Some("a/b".into()),
            version: Some(3),
            outcome: "ok".into(),
            reasons: vec![],
            request_id: None,
            injected: vec!["x".into()],
        };
        assert_eq!(event.to_json(), serde_json::to_vec(&event).unwrap());
    }
}
