//! Verification keys as OPA reads them (a PEM certificate, a PEM public key,
//! a JWK or a JWK set) and JWS signature checks per algorithm.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::digest::core_api::BlockSizeUser;
use hmac::digest::{Digest, KeyInit};
use hmac::{Mac, SimpleHmac};
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value as Json;
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo, X509Certificate};
use x509_parser::public_key::PublicKey;

/// base64url as OPA's `base64url.decode` reads it: padding optional.
pub(super) const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Standard base64 as Go's `base64.StdEncoding` reads it: padding required.
pub(super) const BASE64STD: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// The JWS algorithms OPA knows; a JWK naming another is skipped.
pub(super) const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Curve {
    P256,
    P384,
    P521,
}

#[derive(Debug, Clone)]
pub(super) enum Key {
    /// Big-endian modulus and exponent, without leading zeros.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed SEC1 point.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
    /// A symmetric key (a JWK of `kty: oct`).
    Secret(Vec<u8>),
    /// A key of a type no JWS algorithm here verifies with (DSA, X25519...).
    Unsupported,
}

/// A key with the `alg` and `kid` a JWK may name.
#[derive(Debug, Clone)]
pub(super) struct VerificationKey {
    pub(super) key: Key,
    pub(super) alg: Option<String>,
    pub(super) kid: Option<String>,
}

impl VerificationKey {
    fn bare(key: Key) -> Self {
        Self {
            key,
            alg: None,
            kid: None,
        }
    }
}

/// One PEM block: its type, its DER bytes and the text after it.
pub(super) struct PemBlock<'a> {
    pub(super) kind: String,
    pub(super) der: Vec<u8>,
    pub(super) rest: &'a str,
}

/// Decodes the first PEM block of `text`, as Go's `pem.Decode`: `None` when
/// there is none, and `rest` starts after the END line's line break.
pub(super) fn pem_decode(text: &str) -> Option<PemBlock<'_>> {
    const BEGIN: &str = "-----BEGIN ";
    let mut from = 0;
    loop {
        let at = from + text[from..].find(BEGIN)?;
        if at > 0 && !text[..at].ends_with('\n') {
            from = at + BEGIN.len();
            continue;
        }
        let after = &text[at + BEGIN.len()..];
        let (line, body) = after.split_once('\n').unwrap_or((after, ""));
        let Some(kind) = line.trim_end().strip_suffix("-----") else {
            from = at + BEGIN.len();
            continue;
        };
        let end = format!("-----END {kind}-----");
        let Some(end_at) = body.find(&end) else {
            from = at + BEGIN.len();
            continue;
        };
        let encoded: String = body[..end_at]
            .lines()
            .filter(|l| !l.contains(':'))
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        let Ok(der) = BASE64STD.decode(encoded) else {
            from = at + BEGIN.len();
            continue;
        };
        let rest = &body[end_at + end.len()..];
        let rest = rest.trim_start_matches([' ', '\t']);
        let rest = rest
            .strip_prefix("\r\n")
            .or_else(|| rest.strip_prefix('\n'))
            .unwrap_or(rest);
        return Some(PemBlock {
            kind: kind.to_owned(),
            der,
            rest,
        });
    }
}

/// The keys in `text`: a PEM certificate or public key (exactly one block),
/// else a JWK or JWK set. JWKs naming an algorithm OPA does not know are skipped.
pub(super) fn keys_from_cert_or_jwk(text: &str) -> Result<Vec<VerificationKey>, String> {
    if let Some(block) = pem_decode(text) {
        if !block.rest.is_empty() {
            return Err("extra data after a PEM certificate block".into());
        }
        return match block.kind.as_str() {
            "CERTIFICATE" => {
                let (_, cert) = X509Certificate::from_der(&block.der)
                    .map_err(|e| format!("failed to parse a PEM certificate: {e}"))?;
                Ok(vec![VerificationKey::bare(key_from_spki(
                    cert.public_key(),
                )?)])
            }
            "PUBLIC KEY" => {
                let (_, spki) = SubjectPublicKeyInfo::from_der(&block.der)
                    .map_err(|e| format!("failed to parse a PEM public key: {e}"))?;
                Ok(vec![VerificationKey::bare(key_from_spki(&spki)?)])
            }
            _ => Err("failed to extract a Key from the PEM certificate".into()),
        };
    }
    let json: Json =
        serde_json::from_str(text).map_err(|e| format!("failed to parse a JWK key (set): {e}"))?;
    let jwks = match json.get("keys") {
        Some(Json::Array(keys)) => keys.iter().collect::<Vec<_>>(),
        Some(_) => return Err("JWK set: keys must be an array".into()),
        None => vec![&json],
    };
    let mut keys = Vec::with_capacity(jwks.len());
    for jwk in jwks {
        let key = key_from_jwk(jwk)?;
        if key
            .alg
            .as_deref()
            .is_some_and(|alg| !ALGORITHMS.contains(&alg))
        {
            continue;
        }
        keys.push(key);
    }
    Ok(keys)
}

fn strip_zeros(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

const OID_ED25519: &str = "1.3.101.112";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_P521: &str = "1.3.132.0.35";

pub(super) fn key_from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<Key, String> {
    if spki.algorithm.algorithm.to_id_string() == OID_ED25519 {
        return Ok(Key::Ed25519(spki.subject_public_key.data.to_vec()));
    }
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => Ok(Key::Rsa {
            n: strip_zeros(rsa.modulus),
            e: strip_zeros(rsa.exponent),
        }),
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            let curve = match curve.as_deref() {
                Some(OID_P256) => Curve::P256,
                Some(OID_P384) => Curve::P384,
                Some(OID_P521) => Curve::P521,
                _ => return Err("unsupported elliptic curve".into()),
            };
            Ok(Key::Ec {
                curve,
                point: point.data().to_vec(),
            })
        }
        Ok(_) => Ok(Key::Unsupported),
        Err(e) => Err(format!("cannot parse the public key: {e}")),
    }
}

fn b64_field(jwk: &Json, name: &str) -> Result<Vec<u8>, String> {
    let text = jwk
        .get(name)
        .and_then(Json::as_str)
        .ok_or_else(|| format!("JWK: `{name}` is missing or not a string"))?;
    BASE64URL
        .decode(text)
        .map_err(|e| format!("JWK: `{name}`: {e}"))
}

fn key_from_jwk(jwk: &Json) -> Result<VerificationKey, String> {
    if !jwk.is_object() {
        return Err("JWK: not an object".into());
    }
    let text = |name: &str| -> Result<Option<String>, String> {
        match jwk.get(name) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("JWK: `{name}` must be a string")),
        }
    };
    let key = match text("kty")?.as_deref() {
        Some("RSA") => Key::Rsa {
            n: strip_zeros(&b64_field(jwk, "n")?),
            e: strip_zeros(&b64_field(jwk, "e")?),
        },
        Some("EC") => {
            let curve = match text("crv")?.as_deref() {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                Some("P-521") => Curve::P521,
                _ => return Err("JWK: unsupported EC curve".into()),
            };
            let mut point = vec![4];
            point.extend(b64_field(jwk, "x")?);
            point.extend(b64_field(jwk, "y")?);
            Key::Ec { curve, point }
        }
        Some("OKP") => match text("crv")?.as_deref() {
            Some("Ed25519") => Key::Ed25519(b64_field(jwk, "x")?),
            Some("X25519") => Key::Unsupported,
            _ => return Err("JWK: unsupported OKP curve".into()),
        },
        Some("oct") => Key::Secret(b64_field(jwk, "k")?),
        _ => return Err("JWK: missing or unsupported `kty`".into()),
    };
    Ok(VerificationKey {
        key,
        alg: text("alg")?,
        kid: text("kid")?,
    })
}

fn hmac_matches<D>(secret: &[u8], message: &[u8], signature: &[u8]) -> bool
where
    D: Digest + BlockSizeUser,
{
    <SimpleHmac<D> as KeyInit>::new_from_slice(secret)
        .map(|mac| mac.chain_update(message).verify_slice(signature).is_ok())
        .unwrap_or(false)
}

fn p521_matches(point: &[u8], message: &[u8], signature: &[u8]) -> bool {
    use p521::ecdsa::signature::Verifier;
    let Ok(key) = p521::ecdsa::VerifyingKey::from_sec1_bytes(point) else {
        return false;
    };
    let Ok(signature) = p521::ecdsa::Signature::from_slice(signature) else {
        return false;
    };
    key.verify(message, &signature).is_ok()
}

/// Whether `signature` is `alg`'s signature of `message` under `key`. A key of
/// the wrong type for `alg`, or an unknown `alg`, does not verify.
pub(super) fn verify(key: &Key, alg: &str, message: &[u8], signature: &[u8]) -> bool {
    let ring = |params: &'static dyn signature::VerificationAlgorithm, public: &[u8]| {
        UnparsedPublicKey::new(params, public)
            .verify(message, signature)
            .is_ok()
    };
    let rsa = |params: &'static signature::RsaParameters, n: &[u8], e: &[u8]| {
        RsaPublicKeyComponents { n, e }
            .verify(params, message, signature)
            .is_ok()
    };
    match (alg, key) {
        ("HS256", Key::Secret(k)) => hmac_matches::<sha2::Sha256>(k, message, signature),
        ("HS384", Key::Secret(k)) => hmac_matches::<sha2::Sha384>(k, message, signature),
        ("HS512", Key::Secret(k)) => hmac_matches::<sha2::Sha512>(k, message, signature),
        ("RS256", Key::Rsa { n, e }) => rsa(&signature::RSA_PKCS1_2048_8192_SHA256, n, e),
        ("RS384", Key::Rsa { n, e }) => rsa(&signature::RSA_PKCS1_2048_8192_SHA384, n, e),
        ("RS512", Key::Rsa { n, e }) => rsa(&signature::RSA_PKCS1_2048_8192_SHA512, n, e),
        ("PS256", Key::Rsa { n, e }) => rsa(&signature::RSA_PSS_2048_8192_SHA256, n, e),
        ("PS384", Key::Rsa { n, e }) => rsa(&signature::RSA_PSS_2048_8192_SHA384, n, e),
        ("PS512", Key::Rsa { n, e }) => rsa(&signature::RSA_PSS_2048_8192_SHA512, n, e),
        (
            "ES256",
            Key::Ec {
                curve: Curve::P256,
                point,
            },
        ) => ring(&signature::ECDSA_P256_SHA256_FIXED, point),
        (
            "ES384",
            Key::Ec {
                curve: Curve::P384,
                point,
            },
        ) => ring(&signature::ECDSA_P384_SHA384_FIXED, point),
        (
            "ES512",
            Key::Ec {
                curve: Curve::P521,
                point,
            },
        ) => p521_matches(point, message, signature),
        ("EdDSA", Key::Ed25519(public)) => ring(&signature::ED25519, public),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_decode_reports_the_rest() {
        let text = "junk\n-----BEGIN THING-----\nAAEC\n-----END THING-----\nmore";
        let block = pem_decode(text).unwrap();
        assert_eq!(
            (block.kind.as_str(), block.der.as_slice(), block.rest),
            ("THING", &[0u8, 1, 2][..], "more")
        );
        assert!(pem_decode("-----BEGIN X-----\nAAEC\n").is_none());
        assert!(pem_decode("{\"kty\": \"oct\"}").is_none());
    }

    #[test]
    fn jwks_skip_unknown_algorithms_and_reject_bad_keys() {
        let set = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "a"},
                               {"kty": "oct", "k": "c2VjcmV0", "alg": "none"}]}"#;
        let keys = keys_from_cert_or_jwk(set).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("a"));
        assert!(keys_from_cert_or_jwk(r#"{"kty": "RSA"}"#).is_err());
        assert!(keys_from_cert_or_jwk("not a key").is_err());
    }
}
