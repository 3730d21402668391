//! The vocabulary shared by the vault, its stores and its front ends: secret
//! paths, types, tiers and the records a store keeps (ciphertext and metadata only).

pub mod audit;
pub(crate) mod json;
pub mod timestamp;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::Sealed;

/// Longest secret path the contract accepts, in bytes.
pub const MAX_PATH_LEN: usize = 512;

/// A validated secret path: 1–512 bytes of `[A-Za-z0-9._-]` segments joined by
/// `/`, with no empty, `.` or `..` segment. Holding one proves it is valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SecretPath(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path has an empty segment (leading, trailing or double `/`)")]
    EmptySegment,
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    #[error("path may only hold the characters A-Z a-z 0-9 . _ - and /")]
    BadChar,
}

/// True for the characters a path segment may hold.
pub fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl SecretPath {
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.is_empty() {
            return Err(PathError::Empty);
        }
        if s.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        for segment in s.split('/') {
            if segment.is_empty() {
                return Err(PathError::EmptySegment);
            }
            if segment == "." || segment == ".." {
                return Err(PathError::DotSegment);
            }
            if !segment.chars().all(is_path_char) {
                return Err(PathError::BadChar);
            }
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of credential a secret holds; informs policy and tooling, never crypto.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretType {
    ApiKey,
    OauthToken,
    DbCredential,
    SshKey,
    PaymentCredential,
    #[default]
    Custom,
}

impl SecretType {
    pub const ALL: [Self; 6] = [
        Self::ApiKey,
        Self::OauthToken,
        Self::DbCredential,
        Self::SshKey,
        Self::PaymentCredential,
        Self::Custom,
    ];

    /// The name `serde` gives the type.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::OauthToken => "oauth_token",
            Self::DbCredential => "db_credential",
            Self::SshKey => "ssh_key",
            Self::PaymentCredential => "payment_credential",
            Self::Custom => "custom",
        }
    }

    /// The type `serde` names `name`.
    pub(crate) fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// Access tier: how much ceremony a token covering the secret needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Standard,
    #[default]
    Sensitive,
    Critical,
}

impl Tier {
    pub const ALL: [Self; 3] = [Self::Standard, Self::Sensitive, Self::Critical];

    /// The name `serde` gives the tier.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Sensitive => "sensitive",
            Self::Critical => "critical",
        }
    }

    /// The tier `serde` names `name`.
    pub(crate) fn named(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

/// A secret's metadata as stored: everything but the versions' ciphertexts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRecord {
    /// The tenant whose keys the record was written under. Stored so that a
    /// record copied into another tenant's keys is caught before the policy
    /// decides on it.
    pub tenant: String,
    pub path: String,
    /// The version a plain read returns.
    pub active_version: u64,
    /// The highest version number ever written; the next write takes the one after.
    pub latest_version: u64,
    #[serde(rename = "type")]
    pub secret_type: SecretType,
    pub tier: Tier,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// The role that owns the secret, when it was written role-scoped.
    pub scope: Option<String>,
    /// The agent-level SPIFFE ID of the workload that first wrote the secret.
    pub owner: String,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    #[serde(with = "timestamp")]
    pub updated_at: DateTime<Utc>,
    /// When the active version stops being readable.
    #[serde(
        default,
        serialize_with = "timestamp::serialize_opt",
        deserialize_with = "timestamp::deserialize_opt"
    )]
    pub expires_at: Option<DateTime<Utc>>,
    /// For versions no longer active: the secret's `expires_at` as it stood
    /// when they stopped being active, which still bounds reads by number.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retired_expiry: BTreeMap<u64, DateTime<Utc>>,
    /// Changes on every write of the record, where the store keeps one (the
    /// Redis store does; empty otherwise). A writer hands back the record it
    /// read, and the store commits the writer's result as is while the
    /// revision is unchanged, instead of re-deriving it from the current record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
}

impl SecretRecord {
    /// The stored form, byte for byte what `serde_json::to_vec` writes,
    /// without its per-byte string escaping (see [`json`]): every write
    /// encodes the record twice.
    pub fn to_json(&self) -> Vec<u8> {
        use json::{int, opt_string, string, Object};
        let mut out = Vec::with_capacity(512);
        let mut o = Object::new(&mut out);
        string(o.field("tenant"), &self.tenant);
        string(o.field("path"), &self.path);
        int(o.field("active_version"), self.active_version);
        int(o.field("latest_version"), self.latest_version);
        string(o.field("type"), self.secret_type.as_str());
        string(o.field("tier"), self.tier.as_str());
        opt_string(o.field("description"), self.description.as_deref());
        json::string_map(o.field("tags"), &self.tags);
        opt_string(o.field("scope"), self.scope.as_deref());
        string(o.field("owner"), &self.owner);
        timestamp::write_json(&self.created_at, o.field("created_at"));
        timestamp::write_json(&self.updated_at, o.field("updated_at"));
        timestamp::write_json_opt(self.expires_at.as_ref(), o.field("expires_at"));
        if !self.retired_expiry.is_empty() {
            let mut retired = Object::new(o.field("retired_expiry"));
            for (version, at) in &self.retired_expiry {
                let key = retired.field(itoa::Buffer::new().format(*version));
                timestamp::write_json(at, key);
            }
            retired.end();
        }
        if !self.revision.is_empty() {
            string(o.field("revision"), &self.revision);
        }
        o.end();
        out
    }

    /// Reads the stored form. Text in exactly the form [`Self::to_json`]
    /// writes is read by [`json::Canonical`]; any other (such as Lua's
    /// cjson writes when Redis rebases a record) by `serde_json`, which reads
    /// the writers' form alike (a property test holds the two equal).
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        json::or_serde(text, Self::read_canonical)
    }

    fn read_canonical(text: &str) -> Option<Self> {
        json::Canonical::object(text, |c| {
            Some(Self {
                tenant: c.field("tenant")?.string()?,
                path: c.field("path")?.string()?,
                active_version: c.field("active_version")?.u64()?,
                latest_version: c.field("latest_version")?.u64()?,
                secret_type: SecretType::named(c.field("type")?.str()?)?,
                tier: Tier::named(c.field("tier")?.str()?)?,
                description: c.field("description")?.opt_string()?,
                tags: {
                    let mut tags = BTreeMap::new();
                    c.field("tags")?.entries(|key, c| {
                        tags.insert(key.to_owned(), c.string()?);
                        Some(())
                    })?;
                    tags
                },
                scope: c.field("scope")?.opt_string()?,
                owner: c.field("owner")?.string()?,
                created_at: c.field("created_at")?.timestamp()?,
                updated_at: c.field("updated_at")?.timestamp()?,
                expires_at: c.field("expires_at")?.opt_timestamp()?,
                retired_expiry: {
                    let mut retired = BTreeMap::new();
                    if c.has("retired_expiry") {
                        c.entries(|version, c| {
                            let mut number = json::Canonical::new(version);
                            let version = number.u64()?;
                            number.end()?;
                            retired.insert(version, c.timestamp()?);
                            Some(())
                        })?;
                    }
                    retired
                },
                revision: match c.has("revision") {
                    true => c.string()?,
                    false => String::new(),
                },
            })
        })
    }

    /// When `version` stops being readable, if ever: the secret's expiry for
    /// the active version, the expiry it retired with otherwise, and in both
    /// cases no later than a rotation's grace period.
    pub fn expiry_of(&self, version: &VersionStamp) -> Option<DateTime<Utc>> {
        let expiry = if version.version == self.active_version {
            self.expires_at
        } else {
            self.retired_expiry.get(&version.version).copied()
        };
        [expiry, version.expires_at].into_iter().flatten().min()
    }

    /// Makes `version` the active one with `expires_at`, retiring the current
    /// one with the secret's current expiry. Activating the active version changes nothing.
    pub fn activate(&mut self, version: u64, expires_at: Option<DateTime<Utc>>) {
        if version == self.active_version {
            return;
        }
        if let Some(at) = self.expires_at {
            self.retired_expiry.insert(self.active_version, at);
        }
        self.retired_expiry.remove(&version);
        self.active_version = version;
        self.expires_at = expires_at;
    }
}

/// One immutable version of a secret: its sealed value and when it stops being readable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub version: u64,
    #[serde(with = "timestamp")]
    pub created_at: DateTime<Utc>,
    pub sealed: Sealed,
    /// Set when a rotation gave this version a grace period.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "timestamp::serialize_opt",
        deserialize_with = "timestamp::deserialize_opt"
    )]
    pub expires_at: Option<DateTime<Utc>>,
}

impl VersionRecord {
    /// The stored form, byte for byte what `serde_json::to_vec` writes,
    /// without its per-byte string escaping: every write encodes one.
    pub fn to_json(&self) -> Vec<u8> {
        use json::{int, string, Object};
        let sealed = &self.sealed;
        let mut out =
            Vec::with_capacity(160 + 4 * (sealed.wrapped_dek.len() + sealed.ciphertext.len()) / 3);
        let mut o = Object::new(&mut out);
        int(o.field("version"), self.version);
        timestamp::write_json(&self.created_at, o.field("created_at"));
        let mut s = Object::new(o.field("sealed"));
        string(s.field("kek_id"), &sealed.kek_id);
        crate::crypto::write_b64_json(&sealed.wrapped_dek, s.field("wrapped_dek"));
        crate::crypto::write_b64_json(&sealed.ciphertext, s.field("ciphertext"));
        s.end();
        if let Some(at) = &self.expires_at {
            timestamp::write_json(at, o.field("expires_at"));
        }
        o.end();
        out
    }

    /// Reads the stored form, as [`SecretRecord::from_json`] does.
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        json::or_serde(text, Self::read_canonical)
    }

    fn read_canonical(text: &str) -> Option<Self> {
        json::Canonical::object(text, |c| {
            Some(Self {
                version: c.field("version")?.u64()?,
                created_at: c.field("created_at")?.timestamp()?,
                sealed: {
                    c.field("sealed")?.open()?;
                    let sealed = Sealed {
                        kek_id: c.field("kek_id")?.string()?,
                        wrapped_dek: crate::crypto::read_b64(c.field("wrapped_dek")?.str()?)?,
                        ciphertext: crate::crypto::read_b64(c.field("ciphertext")?.str()?)?,
                    };
                    c.close()?;
                    sealed
                },
                expires_at: match c.has("expires_at") {
                    true => Some(c.timestamp()?),
                    false => None,
                },
            })
        })
    }

    pub fn stamp(&self) -> VersionStamp {
        VersionStamp {
            version: self.version,
            created_at: self.created_at,
            expires_at: self.expires_at,
        }
    }
}

/// A version without its sealed value: what history listings and retention
/// need. Read from a stored [`VersionRecord`], whose `sealed` field is
/// skipped unparsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct VersionStamp {
    pub version: u64,
    #[serde(deserialize_with = "timestamp::deserialize")]
    pub created_at: DateTime<Utc>,
    #[serde(default, deserialize_with = "timestamp::deserialize_opt")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// Lets another agent of the tenant read a secret or every secret under a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    /// The agent-level SPIFFE ID of the grantee.
    pub agent_id: String,
    /// An exact path, or `prefix/*`.
    pub path: String,
    pub created_at: DateTime<Utc>,
    /// The agent-level SPIFFE ID of the granting agent.
    pub created_by: String,
    /// The granting caller's role: a grant reaches only that role's scoped secrets.
    #[serde(default)]
    pub role: Option<String>,
}

/// Where a token request that needs a human stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    NotRequired,
    Pending,
    Approved,
    Denied,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotRequired => "not_required",
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::NotRequired,
            Self::Pending,
            Self::Approved,
            Self::Denied,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }
}

/// A bearer token as stored: only the SHA-256 of the token itself is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Hex SHA-256 of the token string.
    pub hash: String,
    pub scope: String,
    pub expires_at: DateTime<Utc>,
    pub max_uses: Option<u64>,
    /// The approval the token waits for, when its scope covers a guarded tier.
    pub approval_id: Option<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
    /// The effective SPIFFE ID of the caller that minted it.
    pub created_by: String,
    /// The agent-level SPIFFE ID and role of the minting caller, whose
    /// authority the token carries.
    pub agent_id: String,
    pub role: Option<String>,
    /// The highest tier the token reaches: what it was approved for, or what
    /// needed no approval when it was minted.
    pub tier: Tier,
}

/// A token request waiting for (or decided by) an approver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub approval_id: String,
    pub token_hash: String,
    pub scope: String,
    /// The highest tier the scope covered when it was requested.
    pub tier: Tier,
    pub requested_by: String,
    pub created_at: DateTime<Utc>,
    pub status: ApprovalStatus,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Does not compile once an enum has a variant more: then `ALL`, which
    /// the CLI's `--type` and `--tier` choices are made of, needs it too.
    fn _all_lists_every_variant(tier: Tier, secret_type: SecretType) {
        match tier {
            Tier::Standard | Tier::Sensitive | Tier::Critical => {}
        }
        match secret_type {
            SecretType::ApiKey
            | SecretType::OauthToken
            | SecretType::DbCredential
            | SecretType::SshKey
            | SecretType::PaymentCredential
            | SecretType::Custom => {}
        }
    }

    #[test]
    fn enum_names_are_serdes() {
        for t in SecretType::ALL {
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        for tier in Tier::ALL {
            assert_eq!(serde_json::to_value(tier).unwrap(), tier.as_str());
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), "[a-z0-9/._-]{0,24}"]
    }

    fn stamp() -> impl Strategy<Value = DateTime<Utc>> {
        // Years 0000 to 9999, and a few outside them, which chrono writes.
        prop_oneof![
            (-62_167_219_200i64..253_402_300_799, 0u32..1_000_000_000),
            (-70_000_000_000i64..-62_167_219_201, 0u32..2),
        ]
        .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).unwrap())
    }

    prop_compose! {
        fn record()(
            tenant in text(), path in text(),
            active_version in any::<u64>(), latest_version in any::<u64>(),
            secret_type in 0..SecretType::ALL.len(), tier in 0..Tier::ALL.len(),
            description in proptest::option::of(text()),
            tags in proptest::collection::btree_map(text(), text(), 0..3),
            scope in proptest::option::of(text()), owner in text(),
            created_at in stamp(), updated_at in stamp(),
            expires_at in proptest::option::of(stamp()),
            retired_expiry in proptest::collection::btree_map(any::<u64>(), stamp(), 0..3),
            revision in prop_oneof![Just(String::new()), text()],
        ) -> SecretRecord {
            SecretRecord {
                tenant, path, active_version, latest_version,
                secret_type: SecretType::ALL[secret_type], tier: Tier::ALL[tier],
                description, tags, scope, owner, created_at, updated_at, expires_at,
                retired_expiry, revision,
            }
        }
    }

    prop_compose! {
        fn version()(
            version in any::<u64>(), created_at in stamp(), kek_id in text(),
            wrapped_dek in proptest::collection::vec(any::<u8>(), 0..80),
            ciphertext in proptest::collection::vec(any::<u8>(), 0..200),
            expires_at in proptest::option::of(stamp()),
        ) -> VersionRecord {
            VersionRecord {
                version, created_at, expires_at,
                sealed: crate::crypto::Sealed { kek_id, wrapped_dek, ciphertext },
            }
        }
    }

    proptest! {
        /// The stored forms are what `serde_json` writes, and read back whole.
        #[test]
        fn a_records_json_is_serde_jsons(record in record()) {
            json::check_is_serde_jsons(&record.to_json(), &record)?;
        }

        #[test]
        fn a_versions_json_is_serde_jsons(version in version()) {
            json::check_is_serde_jsons(&version.to_json(), &version)?;
        }

        /// The stored forms read back whole, by the canonical reader
        /// wherever nothing in them is escaped or out of its form.
        #[test]
        fn a_records_json_reads_back(record in record()) {
            let text = String::from_utf8(record.to_json()).unwrap();
            prop_assert_eq!(&SecretRecord::from_json(&text).unwrap(), &record);
            if let Some(read) = SecretRecord::read_canonical(&text) {
                prop_assert_eq!(&read, &record);
            } else {
                prop_assert!(!ordinary(&text), "{text}");
            }
        }

        #[test]
        fn a_versions_json_reads_back(version in version()) {
            let text = String::from_utf8(version.to_json()).unwrap();
            prop_assert_eq!(&VersionRecord::from_json(&text).unwrap(), &version);
            if let Some(read) = VersionRecord::read_canonical(&text) {
                prop_assert_eq!(&read, &version);
            } else {
                prop_assert!(!ordinary(&text), "{text}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Whatever text the canonical reader accepts, `serde_json` reads as
        /// the same value: a stored form with one byte deleted, replaced or
        /// inserted where the form has its structure (around quotes,
        /// separators and digits) is either read alike or left to `serde_json`.
        #[test]
        fn the_canonical_reader_never_reads_a_text_otherwise_than_serde(
            record in record(), version in version(),
            at in any::<prop::sample::Index>(), edit in 0..3u8,
            byte in prop::sample::select(b"\",:{}[]0189-+.eEnul\\ Z/Tabc\t\x7f".to_vec()),
        ) {
            for text in [record.to_json(), version.to_json()] {
                let mut text = text;
                let structure: Vec<usize> = (0..=text.len())
                    .filter(|i| {
                        let near = |j: usize| text.get(j).is_some_and(|b| b"\":,{}0123456789".contains(b));
                        near(*i) || (*i > 0 && near(i - 1))
                    })
                    .collect();
                let i = structure[at.index(structure.len())];
                match edit {
                    0 if i < text.len() => { text.remove(i); }
                    1 if i < text.len() => text[i] = byte,
                    _ => text.insert(i, byte),
                }
                let Ok(text) = String::from_utf8(text) else { continue };
                if let Some(read) = SecretRecord::read_canonical(&text) {
                    prop_assert_eq!(serde_json::from_str::<SecretRecord>(&text).ok(), Some(read), "{}", text);
                }
                if let Some(read) = VersionRecord::read_canonical(&text) {
                    prop_assert_eq!(serde_json::from_str::<VersionRecord>(&text).ok(), Some(read), "{}", text);
                }
            }
        }
    }

    /// Text the canonical reader must read: no escape, and every timestamp
    /// within years 0000 to 9999 (a string starting with a sign only makes
    /// this say no more often).
    fn ordinary(text: &str) -> bool {
        !text.contains('\\') && !text.contains("\"+") && !text.contains("\"-")
    }

    #[test]
    fn records_as_cjson_writes_them_are_read_by_serde() {
        let record = SecretRecord {
            tenant: "acme".into(),
            path: "a/b".into(),
            active_version: 2,
            latest_version: 3,
            secret_type: SecretType::ApiKey,
            tier: Tier::Critical,
            description: None,
            tags: BTreeMap::from([("team".into(), "x/y".into())]),
            scope: Some("ops".into()),
            owner: "spiffe://acme/a".into(),
            created_at: DateTime::from_timestamp(1_764_633_600, 0).unwrap(),
            updated_at: DateTime::from_timestamp(1_764_633_601, 5_000).unwrap(),
            expires_at: None,
            retired_expiry: BTreeMap::from([(
                1,
                DateTime::from_timestamp(1_764_633_602, 0).unwrap(),
            )]),
            revision: "r1".into(),
        };
        let canonical = String::from_utf8(record.to_json()).unwrap();
        assert_eq!(
            SecretRecord::read_canonical(&canonical),
            Some(record.clone())
        );
        // cjson: `/` escaped, keys in another order, `null`s left out.
        let cjson = canonical
            .replace('/', "\\/")
            .replace(r#""description":null,"#, "")
            .replacen(r#"{"tenant":"acme","#, "{", 1)
            .replacen('}', r#"},"tenant":"acme""#, 1);
        assert_eq!(SecretRecord::read_canonical(&cjson), None, "{cjson}");
        assert_eq!(SecretRecord::from_json(&cjson).unwrap(), record);
    }

    #[test]
    fn a_stamp_reads_a_stored_version_without_its_sealed_value() {
        let at = DateTime::from_timestamp(1_764_633_600, 0).unwrap();
        for expires_at in [None, Some(at)] {
            let record = VersionRecord {
                version: 7,
                created_at: at,
                sealed: crate::crypto::Sealed {
                    kek_id: "k1".into(),
                    wrapped_dek: vec![1; 60],
                    ciphertext: vec![2; 100],
                },
                expires_at,
            };
            let stored = serde_json::to_vec(&record).unwrap();
            let stamp: VersionStamp = serde_json::from_slice(&stored).unwrap();
            assert_eq!(stamp, record.stamp());
        }
    }

    #[test]
    fn accepts_valid_paths() {
        for p in ["a", "prod/openai/api-key", "x.y_z-1/2", &"a".repeat(512)] {
            assert!(SecretPath::parse(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn rejects_invalid_paths() {
        let cases: &[(&str, PathError)] = &[
            ("", PathError::Empty),
            ("/a", PathError::EmptySegment),
            ("a/", PathError::EmptySegment),
            ("a//b", PathError::EmptySegment),
            ("a/./b", PathError::DotSegment),
            ("../a", PathError::DotSegment),
            ("a b", PathError::BadChar),
            ("a%2Fb", PathError::BadChar),
            ("é", PathError::BadChar),
        ];
        for (p, want) in cases {
            assert_eq!(SecretPath::parse(p), Err(*want), "{p:?}");
        }
        assert_eq!(SecretPath::parse(&"a".repeat(513)), Err(PathError::TooLong));
    }

    #[test]
    fn enums_use_contract_names() {
        assert_eq!(
            serde_json::to_string(&SecretType::DbCredential).unwrap(),
            "\"db_credential\""
        );
        assert_eq!(
            serde_json::to_string(&Tier::default()).unwrap(),
            "\"sensitive\""
        );
        assert_eq!(SecretType::default(), SecretType::Custom);
    }

    proptest::proptest! {
        /// Whatever a caller sends as a path is accepted or refused, never a panic.
        #[test]
        fn any_text_is_accepted_or_refused(s in "(?s).{0,600}") {
            let _ = SecretPath::parse(&s);
        }

        /// An accepted path is the text as sent, and obeys every rule.
        #[test]
        fn accepted_paths_obey_the_rules(s in "[a-zA-Z0-9._/-]{0,40}|[a-z./]{0,12}") {
            if let Ok(path) = SecretPath::parse(&s) {
                proptest::prop_assert_eq!(path.as_str(), s.as_str());
                proptest::prop_assert!(s.len() <= MAX_PATH_LEN);
                for segment in s.split('/') {
                    proptest::prop_assert!(!segment.is_empty() && segment != "." && segment != "..");
                    proptest::prop_assert!(segment.chars().all(is_path_char));
                }
            }
        }

        #[test]
        fn well_formed_paths_are_accepted(
            segments in proptest::collection::vec("[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,15}", 1..8)
        ) {
            let s = segments.join("/");
            proptest::prop_assert!(SecretPath::parse(&s).is_ok(), "{}", s);
        }
    }
}
