//! Envelope encryption. Every secret version gets its own random 256-bit data
//! key (DEK); the value is sealed with AES-256-GCM under the DEK and the DEK is
//! sealed under the tenant's key-encryption key (KEK). Both seals authenticate
//! the tenant, path and version, so a record copied to another key fails to open.
//!
//! Tenant KEKs are derived with HKDF-SHA256 from master keys that carry ids, so
//! the keyring can rotate while old versions stay readable. A tenant keyring
//! holds only one tenant's KEKs (derived, under the same ids, or rotated in
//! fresh), so a sidecar that holds it can open nothing of any other tenant.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, Zeroizing};

const NONCE_LEN: usize = 12;
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("keyring {path}: {source}")]
    KeyringIo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("keyring {path}: {reason}")]
    KeyringFormat { path: String, reason: String },
    #[error("record was sealed with key `{0}`, which the keyring does not hold")]
    UnknownKey(String),
    /// A tenant keyring was offered to a sidecar or command of another tenant.
    #[error("the keyring holds the keys of tenant `{keyring}`, not of tenant `{tenant}`")]
    WrongTenant { keyring: String, tenant: String },
    #[error("the keyring holds the keys of tenant `{0}`; deriving a tenant keyring needs a master keyring")]
    NotMaster(String),
    /// Authentication failed: the record was tampered with, moved to another
    /// tenant, path or version, or sealed under another key.
    #[error("record failed its integrity check")]
    Integrity,
}

/// A value sealed for storage: the wrapped DEK and the ciphertext, each
/// `nonce || ciphertext || tag`. Holds no plaintext, so it may be logged or stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub kek_id: String,
    #[serde(with = "b64")]
    pub wrapped_dek: Vec<u8>,
    #[serde(with = "b64")]
    pub ciphertext: Vec<u8>,
}

/// What a seal is bound to. Encoded with length prefixes so that no two
/// different triples share an encoding.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub tenant: &'a str,
    pub path: &'a str,
    pub version: u64,
}

impl Binding<'_> {
    fn aad(&self) -> Vec<u8> {
        let mut aad = Vec::with_capacity(32 + self.tenant.len() + self.path.len());
        aad.extend_from_slice(b"agentvault/v1");
        for part in [self.tenant.as_bytes(), self.path.as_bytes()] {
            aad.extend_from_slice(&(part.len() as u32).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad.extend_from_slice(&self.version.to_be_bytes());
        aad
    }
}

/// What a keyring's keys are: master keys from which every tenant's KEK is
/// derived, or the KEKs of exactly one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    Master,
    Tenant(String),
}

#[derive(Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FileKind {
    /// Files written before tenant keyrings existed carry no kind: they are master keyrings.
    #[default]
    Master,
    Tenant,
}

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    #[serde(default)]
    kind: FileKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    active: String,
    keys: Vec<KeyEntry>,
}

#[derive(Serialize, Deserialize)]
struct KeyEntry {
    id: String,
    key: String,
    created_at: DateTime<Utc>,
}

struct KeyMaterial {
    key: Zeroizing<[u8; KEY_LEN]>,
    created_at: DateTime<Utc>,
}

/// Keys by id, one of them active for new seals: master keys, or one tenant's
/// KEKs (see [`KeyScope`]). Key bytes are zeroized on drop and never printed.
pub struct Keyring {
    scope: KeyScope,
    active: String,
    keys: HashMap<String, KeyMaterial>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("Keyring")
            .field("scope", &self.scope)
            .field("active", &self.active)
            .field("key_ids", &ids)
            .finish()
    }
}

fn random_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    OsRng.fill_bytes(key.as_mut());
    key
}

fn fresh_key_id() -> String {
    let mut suffix = [0u8; 4];
    OsRng.fill_bytes(&mut suffix);
    let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    format!("k{}-{hex}", Utc::now().format("%Y%m%d"))
}

/// The KEK of `tenant` under one master key. Tenant keyrings hold exactly
/// these bytes under the master key's id, so either keyring opens the same records.
fn derive_kek(master: &[u8; KEY_LEN], tenant: &str) -> Zeroizing<[u8; KEY_LEN]> {
    let hk = Hkdf::<Sha256>::new(Some(b"agentvault kek v1"), master);
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
    hk.expand(tenant.as_bytes(), kek.as_mut())
        .expect("32-byte HKDF output");
    kek
}

impl Keyring {
    /// A master keyring with one fresh random key.
    pub fn generate() -> Self {
        let id = fresh_key_id();
        Self {
            scope: KeyScope::Master,
            active: id.clone(),
            keys: HashMap::from([(
                id,
                KeyMaterial {
                    key: random_key(),
                    created_at: Utc::now(),
                },
            )]),
        }
    }

    pub fn active_id(&self) -> &str {
        &self.active
    }

    pub fn scope(&self) -> &KeyScope {
        &self.scope
    }

    /// Every key id, sorted.
    pub fn key_ids(&self) -> Vec<&str> {
        let mut ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        ids.sort_unstable();
        ids
    }

    /// The keyring of one tenant: its KEK under every master key, with the
    /// master keys' ids and the same active id, so records sealed under the
    /// master keyring stay readable. Only a master keyring can derive one.
    pub fn derive_tenant(&self, tenant: &str) -> Result<Self, CryptoError> {
        if let KeyScope::Tenant(own) = &self.scope {
            return Err(CryptoError::NotMaster(own.clone()));
        }
        let keys = self
            .keys
            .iter()
            .map(|(id, master)| {
                (
                    id.clone(),
                    KeyMaterial {
                        key: derive_kek(&master.key, tenant),
                        created_at: master.created_at,
                    },
                )
            })
            .collect();
        Ok(Self {
            scope: KeyScope::Tenant(tenant.to_owned()),
            active: self.active.clone(),
            keys,
        })
    }

    /// Adds a fresh random key and makes it active; returns its id. In a
    /// tenant keyring the new key is that tenant's KEK and is not derivable
    /// from any master key: from then on only this keyring opens what it seals.
    pub fn rotate(&mut self) -> &str {
        let mut id = fresh_key_id();
        while self.keys.contains_key(&id) {
            id = fresh_key_id();
        }
        self.keys.insert(
            id.clone(),
            KeyMaterial {
                key: random_key(),
                created_at: Utc::now(),
            },
        );
        self.active = id;
        &self.active
    }

    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let display = path.display().to_string();
        let text =
            Zeroizing::new(
                fs::read_to_string(path).map_err(|source| CryptoError::KeyringIo {
                    path: display.clone(),
                    source,
                })?,
            );
        let format = |reason: String| CryptoError::KeyringFormat {
            path: display.clone(),
            reason,
        };
        let mut file: KeyringFile =
            serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
        let scope = match (&file.kind, file.tenant.take()) {
            (FileKind::Master, None) => KeyScope::Master,
            (FileKind::Master, Some(_)) => {
                return Err(format("a master keyring names no tenant".into()))
            }
            (FileKind::Tenant, Some(tenant)) if !tenant.is_empty() => KeyScope::Tenant(tenant),
            (FileKind::Tenant, _) => {
                return Err(format("a tenant keyring must name its tenant".into()))
            }
        };
        let mut keys = HashMap::new();
        for entry in &mut file.keys {
            let bytes = Zeroizing::new(
                B64.decode(entry.key.as_bytes())
                    .map_err(|_| format(format!("key `{}` is not base64", entry.id)))?,
            );
            entry.key.zeroize();
            let key: [u8; KEY_LEN] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| format(format!("key `{}` is not 32 bytes", entry.id)))?;
            let material = KeyMaterial {
                key: Zeroizing::new(key),
                created_at: entry.created_at,
            };
            if keys.insert(entry.id.clone(), material).is_some() {
                return Err(format(format!("key id `{}` appears twice", entry.id)));
            }
        }
        if !keys.contains_key(&file.active) {
            return Err(format(format!(
                "active key `{}` is not in `keys`",
                file.active
            )));
        }
        Ok(Self {
            scope,
            active: file.active,
            keys,
        })
    }

    fn encode(&self) -> Result<Zeroizing<String>, serde_json::Error> {
        let mut entries: Vec<KeyEntry> = self
            .keys
            .iter()
            .map(|(id, material)| KeyEntry {
                id: id.clone(),
                key: B64.encode(material.key.as_ref()),
                created_at: material.created_at,
            })
            .collect();
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        let (kind, tenant) = match &self.scope {
            KeyScope::Master => (FileKind::Master, None),
            KeyScope::Tenant(t) => (FileKind::Tenant, Some(t.clone())),
        };
        let file = KeyringFile {
            kind,
            tenant,
            active: self.active.clone(),
            keys: entries,
        };
        let text = serde_json::to_string_pretty(&file).map(Zeroizing::new);
        for mut entry in file.keys {
            entry.key.zeroize();
        }
        text
    }

    /// Writes the keyring to a new file with mode 0600; fails if the file exists.
    pub fn save_new(&self, path: &Path) -> Result<(), CryptoError> {
        let io = |source| CryptoError::KeyringIo {
            path: path.display().to_string(),
            source,
        };
        let text = self.encode().map_err(|e| io(std::io::Error::other(e)))?;
        crate::fsmode::parent_dirs(path).map_err(io)?;
        let mut out = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        out.write_all(text.as_bytes()).map_err(io)?;
        out.sync_all().map_err(io)
    }

    /// Replaces the keyring file at `path` atomically (a new 0600 file renamed
    /// over it), so a reader sees the old keyring or the new one, never half.
    pub fn save_replace(&self, path: &Path) -> Result<(), CryptoError> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp);
        self.save_new(&tmp)?;
        fs::rename(&tmp, path).map_err(|source| {
            let _ = fs::remove_file(&tmp);
            CryptoError::KeyringIo {
                path: path.display().to_string(),
                source,
            }
        })
    }

    /// Loads the keyring at `path`, or makes and saves a fresh one there if none exists.
    pub fn load_or_create(path: &Path) -> Result<Self, CryptoError> {
        if path.exists() {
            return Self::load(path);
        }
        let ring = Self::generate();
        ring.save_new(path)?;
        Ok(ring)
    }

    /// The KEKs of `tenant`, built once so that sealing costs no key
    /// derivation. A tenant keyring serves only its own tenant.
    pub fn tenant_cipher(&self, tenant: &str) -> Result<TenantCipher, CryptoError> {
        let kek = |bytes: &[u8; KEY_LEN]| Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes));
        let keks = match &self.scope {
            KeyScope::Master => self
                .keys
                .iter()
                .map(|(id, master)| (id.clone(), kek(&derive_kek(&master.key, tenant))))
                .collect(),
            KeyScope::Tenant(own) if own == tenant => self
                .keys
                .iter()
                .map(|(id, material)| (id.clone(), kek(&material.key)))
                .collect(),
            KeyScope::Tenant(own) => {
                return Err(CryptoError::WrongTenant {
                    keyring: own.clone(),
                    tenant: tenant.to_owned(),
                })
            }
        };
        Ok(TenantCipher {
            active: self.active.clone(),
            keks,
        })
    }
}

/// Seals and opens secret values for one tenant.
#[derive(Clone)]
pub struct TenantCipher {
    active: String,
    keks: HashMap<String, Aes256Gcm>,
}

impl TenantCipher {
    /// The key id new seals use.
    pub fn active_id(&self) -> &str {
        &self.active
    }

    /// Re-seals the DEK of `sealed` under the active KEK, leaving its
    /// ciphertext untouched (the value is never decrypted); `None` when it is
    /// sealed under the active KEK already. Fails closed like [`Self::open`].
    pub fn rewrap(
        &self,
        binding: Binding<'_>,
        sealed: &Sealed,
    ) -> Result<Option<Sealed>, CryptoError> {
        if sealed.kek_id == self.active {
            return Ok(None);
        }
        let old = self
            .keks
            .get(&sealed.kek_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.kek_id.clone()))?;
        let active = self
            .keks
            .get(&self.active)
            .ok_or_else(|| CryptoError::UnknownKey(self.active.clone()))?;
        let aad = binding.aad();
        let dek = open_with(old, &aad, &sealed.wrapped_dek)?;
        if dek.len() != KEY_LEN {
            return Err(CryptoError::Integrity);
        }
        Ok(Some(Sealed {
            kek_id: self.active.clone(),
            wrapped_dek: seal_with(active, &aad, &dek)?,
            ciphertext: sealed.ciphertext.clone(),
        }))
    }

    pub fn seal(&self, binding: Binding<'_>, plaintext: &[u8]) -> Result<Sealed, CryptoError> {
        let kek = self
            .keks
            .get(&self.active)
            .ok_or_else(|| CryptoError::UnknownKey(self.active.clone()))?;
        let aad = binding.aad();
        let mut dek = Zeroizing::new([0u8; KEY_LEN]);
        OsRng.fill_bytes(dek.as_mut());
        let data_cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(dek.as_ref()));
        Ok(Sealed {
            kek_id: self.active.clone(),
            wrapped_dek: seal_with(kek, &aad, dek.as_ref())?,
            ciphertext: seal_with(&data_cipher, &aad, plaintext)?,
        })
    }

    pub fn open(
        &self,
        binding: Binding<'_>,
        sealed: &Sealed,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let kek = self
            .keks
            .get(&sealed.kek_id)
            .ok_or_else(|| CryptoError::UnknownKey(sealed.kek_id.clone()))?;
        let aad = binding.aad();
        let dek = open_with(kek, &aad, &sealed.wrapped_dek)?;
        if dek.len() != KEY_LEN {
            return Err(CryptoError::Integrity);
        }
        let data_cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&dek));
        open_with(&data_cipher, &aad, &sealed.ciphertext)
    }
}

fn seal_with(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Integrity)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

fn open_with(
    cipher: &Aes256Gcm,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN {
        return Err(CryptoError::Integrity);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Integrity)
}

/// `bytes` in base64 as a JSON string, as `Sealed`'s `Serialize` writes it:
/// the alphabet needs no escaping, so it is encoded straight into `out`.
pub(crate) fn write_b64_json(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len() + 1;
    let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
    out.push(b'"');
    out.resize(start + len, 0);
    let written = B64.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// Bytes from base64 text, as `Sealed`'s `Deserialize` reads them.
pub(crate) fn read_b64(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

mod b64 {
    use std::fmt;

    use super::{Engine, B64};
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(bytes))
    }

    /// Decoded from the text as the deserializer holds it, borrowed or (for
    /// JSON with escapes, `\/` as Lua's cjson writes) in its scratch buffer:
    /// no string is allocated for it.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Base64;
        impl Visitor<'_> for Base64 {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base64 string")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<u8>, E> {
                B64.decode(text).map_err(E::custom)
            }
        }
        d.deserialize_str(Base64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(path: &str, version: u64) -> Binding<'_> {
        Binding {
            tenant: "acme",
            path,
            version,
        }
    }

    /// Lua's cjson escapes `/`; such text reads as the plain form does.
    #[test]
    fn sealed_reads_base64_with_escaped_slashes() {
        let sealed = Sealed {
            kek_id: "k1".into(),
            wrapped_dek: vec![0xff; 30],
            ciphertext: vec![0xfb, 0xef, 0xbe, 7],
        };
        let plain = serde_json::to_string(&sealed).unwrap();
        assert!(plain.contains('/'));
        let escaped = plain.replace('/', "\\/");
        for text in [plain, escaped] {
            assert_eq!(
                serde_json::from_str::<Sealed>(&text).unwrap(),
                sealed,
                "{text}"
            );
        }
        let bad = r#"{"kek_id":"k1","wrapped_dek":"!!","ciphertext":""}"#;
        assert!(serde_json::from_str::<Sealed>(bad).is_err());
    }

    #[test]
    fn round_trips_and_uses_fresh_keys_and_nonces() {
        let cipher = Keyring::generate().tenant_cipher("acme").unwrap();
        let a = cipher.seal(binding("p", 1), b"hunter2").unwrap();
        let b = cipher.seal(binding("p", 1), b"hunter2").unwrap();
        assert_ne!(a.ciphertext, b.ciphertext);
        assert_ne!(a.wrapped_dek, b.wrapped_dek);
        assert!(!a.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            cipher.open(binding("p", 1), &a).unwrap().as_slice(),
            b"hunter2"
        );
    }

    #[test]
    fn binding_mismatch_fails_closed() {
        let ring = Keyring::generate();
        let cipher = ring.tenant_cipher("acme").unwrap();
        let sealed = cipher.seal(binding("p", 1), b"v").unwrap();
        assert!(matches!(
            cipher.open(binding("q", 1), &sealed),
            Err(CryptoError::Integrity)
        ));
        assert!(matches!(
            cipher.open(binding("p", 2), &sealed),
            Err(CryptoError::Integrity)
        ));
        let other = Binding {
            tenant: "other",
            path: "p",
            version: 1,
        };
        assert!(matches!(
            cipher.open(other, &sealed),
            Err(CryptoError::Integrity)
        ));
        // Another tenant's KEK cannot unwrap the DEK even with the right binding.
        let theirs = ring.tenant_cipher("other").unwrap();
        assert!(matches!(
            theirs.open(binding("p", 1), &sealed),
            Err(CryptoError::Integrity)
        ));
    }

    #[test]
    fn tampering_fails_closed() {
        let cipher = Keyring::generate().tenant_cipher("acme").unwrap();
        let sealed = cipher.seal(binding("p", 1), b"value").unwrap();
        let mut flipped = sealed.clone();
        let last = flipped.ciphertext.len() - 1;
        flipped.ciphertext[last] ^= 1;
        assert!(cipher.open(binding("p", 1), &flipped).is_err());
        let mut short = sealed;
        short.wrapped_dek.truncate(5);
        assert!(cipher.open(binding("p", 1), &short).is_err());
    }

    #[test]
    fn keyring_file_round_trips_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/keyring.json");
        let ring = Keyring::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = Keyring::load_or_create(&path).unwrap();
        assert_eq!(again.active_id(), ring.active_id());
        let t = Binding {
            tenant: "t",
            path: "p",
            version: 1,
        };
        let sealed = ring.tenant_cipher("t").unwrap().seal(t, b"x").unwrap();
        assert_eq!(
            again
                .tenant_cipher("t")
                .unwrap()
                .open(t, &sealed)
                .unwrap()
                .as_slice(),
            b"x"
        );
        assert!(ring.save_new(&path).is_err(), "never overwrites a keyring");
    }

    #[test]
    fn rejects_malformed_keyrings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        for body in [
            "not json",
            r#"{"active":"a","keys":[]}"#,
            r#"{"active":"a","keys":[{"id":"a","key":"c2hvcnQ=","created_at":"2026-01-01T00:00:00Z"}]}"#,
        ] {
            fs::write(&path, body).unwrap();
            assert!(
                matches!(Keyring::load(&path), Err(CryptoError::KeyringFormat { .. })),
                "{body}"
            );
        }
    }

    #[test]
    fn unknown_key_id_is_reported() {
        let cipher = Keyring::generate().tenant_cipher("acme").unwrap();
        let mut sealed = cipher.seal(binding("p", 1), b"v").unwrap();
        sealed.kek_id = "gone".into();
        assert!(matches!(
            cipher.open(binding("p", 1), &sealed),
            Err(CryptoError::UnknownKey(_))
        ));
    }

    #[test]
    fn tenant_keyring_opens_what_the_master_sealed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let master = Keyring::generate();
        let path = dir.path().join("acme.json");
        master
            .derive_tenant("acme")
            .unwrap()
            .save_new(&path)
            .unwrap();
        let acme = Keyring::load(&path).unwrap();
        assert_eq!(acme.scope(), &KeyScope::Tenant("acme".into()));
        assert_eq!(acme.key_ids(), master.key_ids());
        assert_eq!(acme.active_id(), master.active_id());
        let sealed = master
            .tenant_cipher("acme")
            .unwrap()
            .seal(binding("p", 1), b"v")
            .unwrap();
        let cipher = acme.tenant_cipher("acme").unwrap();
        assert_eq!(
            cipher.open(binding("p", 1), &sealed).unwrap().as_slice(),
            b"v"
        );
        assert!(matches!(
            acme.tenant_cipher("globex"),
            Err(CryptoError::WrongTenant { .. })
        ));
        assert!(matches!(
            acme.derive_tenant("globex"),
            Err(CryptoError::NotMaster(_))
        ));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""kind": "tenant""#) && text.contains(r#""tenant": "acme""#));
    }

    #[test]
    fn keyrings_without_a_kind_are_master_keyrings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.json");
        fs::write(
            &path,
            r#"{"active":"a","keys":[{"id":"a","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created_at":"2026-01-01T00:00:00Z"}]}"#,
        )
        .unwrap();
        let ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.scope(), &KeyScope::Master);
        for body in [
            r#"{"kind":"tenant","active":"a","keys":[{"id":"a","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created_at":"2026-01-01T00:00:00Z"}]}"#,
            r#"{"kind":"master","tenant":"x","active":"a","keys":[{"id":"a","key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","created_at":"2026-01-01T00:00:00Z"}]}"#,
            r#"{"kind":"other","active":"a","keys":[]}"#,
        ] {
            fs::write(&path, body).unwrap();
            assert!(
                matches!(Keyring::load(&path), Err(CryptoError::KeyringFormat { .. })),
                "{body}"
            );
        }
    }

    #[test]
    fn rotation_keeps_old_ids_and_rewrap_moves_deks_to_the_active_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acme.json");
        let mut ring = Keyring::generate().derive_tenant("acme").unwrap();
        ring.save_new(&path).unwrap();
        let old = ring.tenant_cipher("acme").unwrap();
        let sealed = old.seal(binding("p", 3), b"value").unwrap();
        let first = ring.active_id().to_owned();
        let second = ring.rotate().to_owned();
        assert_ne!(first, second);
        ring.save_replace(&path).unwrap();
        let ring = Keyring::load(&path).unwrap();
        assert_eq!(ring.active_id(), second);
        assert_eq!(ring.key_ids().len(), 2);
        let cipher = ring.tenant_cipher("acme").unwrap();
        assert_eq!(
            cipher.open(binding("p", 3), &sealed).unwrap().as_slice(),
            b"value"
        );
        let moved = cipher.rewrap(binding("p", 3), &sealed).unwrap().unwrap();
        assert_eq!(moved.kek_id, second);
        assert_eq!(moved.ciphertext, sealed.ciphertext, "ciphertext untouched");
        assert_ne!(moved.wrapped_dek, sealed.wrapped_dek);
        assert_eq!(
            cipher.open(binding("p", 3), &moved).unwrap().as_slice(),
            b"value"
        );
        assert!(cipher.rewrap(binding("p", 3), &moved).unwrap().is_none());
        assert!(matches!(
            cipher.rewrap(binding("p", 4), &sealed),
            Err(CryptoError::Integrity)
        ));
        assert!(matches!(
            old.open(binding("p", 3), &moved),
            Err(CryptoError::UnknownKey(_))
        ));
    }
}
