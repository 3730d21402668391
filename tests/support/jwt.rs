//! JWT test keys and tokens: a signing key with every public form OPA takes
//! (PEM certificate, PEM public key, JWK), and compact JWS tokens.
//!
//! RSA keys are fixed test keys (`tests/fixtures/jwt/rsa_*.pem`, made with
//! `openssl genpkey`); every other key is generated per run.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rcgen::{CertificateParams, DnType, KeyPair, SerialNumber};
use ring::rand::SystemRandom;
use ring::signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use serde_json::{json, Value};
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo};
use x509_parser::public_key::PublicKey;

pub const SECRET: &str = "s3cret-for-tests";

pub fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and every public form OPA takes: PEM certificate, PEM
/// public key, JWK.
pub struct TestKey {
    signer: Signer,
    pub cert_pem: String,
    pub public_pem: String,
    pub jwk: Value,
}

enum Signer {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
    P521(p521::ecdsa::SigningKey),
}

fn self_signed(key: &KeyPair, cn: &str) -> String {
    let mut params = CertificateParams::new(vec![format!("{cn}.example.org")]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    // Serials beyond 64 bits come out approximate (see the README).
    params.serial_number = Some(SerialNumber::from(0x1234_5678_9abc_def0));
    params.self_signed(key).unwrap().pem()
}

impl TestKey {
    pub fn rsa(fixture_name: &str) -> Self {
        let pem = fixture(fixture_name);
        let key = KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        let der = key.serialize_der();
        let spki_der = rcgen::PublicKeyData::subject_public_key_info(&key);
        let (_, spki) = SubjectPublicKeyInfo::from_der(&spki_der).unwrap();
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            panic!("not an RSA key")
        };
        let trim = |b: &[u8]| {
            b.iter()
                .skip_while(|x| **x == 0)
                .copied()
                .collect::<Vec<_>>()
        };
        let jwk =
            json!({"kty": "RSA", "n": b64(&trim(rsa.modulus)), "e": b64(&trim(rsa.exponent))});
        Self {
            signer: Signer::Rsa(RsaKeyPair::from_pkcs8(&der).unwrap()),
            cert_pem: self_signed(&key, "rsa"),
            public_pem: key.public_key_pem(),
            jwk,
        }
    }

    pub fn ecdsa(
        alg: &'static rcgen::SignatureAlgorithm,
        ring_alg: &'static sig::EcdsaSigningAlgorithm,
        crv: &str,
    ) -> Self {
        let key = KeyPair::generate_for(alg).unwrap();
        let point = key.public_key_raw();
        let half = (point.len() - 1) / 2;
        let jwk = json!({"kty": "EC", "crv": crv, "x": b64(&point[1..=half]), "y": b64(&point[1 + half..])});
        let signer =
            EcdsaKeyPair::from_pkcs8(ring_alg, &key.serialize_der(), &SystemRandom::new()).unwrap();
        Self {
            signer: Signer::Ecdsa(signer),
            cert_pem: self_signed(&key, "ec"),
            public_pem: key.public_key_pem(),
            jwk,
        }
    }

    pub fn ed25519() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.public_key_raw())});
        let signer = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key.serialize_der()).unwrap();
        Self {
            signer: Signer::Ed25519(signer),
            cert_pem: self_signed(&key, "ed"),
            public_pem: key.public_key_pem(),
            jwk,
        }
    }

    /// P-521 (ES512): JWK only.
    pub fn p521() -> Self {
        let key = p521::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let point = p521::ecdsa::VerifyingKey::from(&key).to_encoded_point(false);
        let jwk = json!({"kty": "EC", "crv": "P-521",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())});
        Self {
            signer: Signer::P521(key),
            cert_pem: String::new(),
            public_pem: String::new(),
            jwk,
        }
    }

    pub fn sign(&self, alg: &str, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Rsa(key) => {
                let padding: &'static dyn sig::RsaEncoding = match alg {
                    "RS256" => &sig::RSA_PKCS1_SHA256,
                    "RS384" => &sig::RSA_PKCS1_SHA384,
                    "RS512" => &sig::RSA_PKCS1_SHA512,
                    "PS256" => &sig::RSA_PSS_SHA256,
                    "PS384" => &sig::RSA_PSS_SHA384,
                    _ => &sig::RSA_PSS_SHA512,
                };
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(padding, &rng, message, &mut out).unwrap();
                out
            }
            Signer::Ecdsa(key) => key.sign(&rng, message).unwrap().as_ref().to_vec(),
            Signer::Ed25519(key) => key.sign(message).as_ref().to_vec(),
            Signer::P521(key) => {
                use p521::ecdsa::signature::Signer as _;
                let signature: p521::ecdsa::Signature = key.sign(message);
                signature.to_bytes().to_vec()
            }
        }
    }

    pub fn jwk_with(&self, kid: &str, alg: Option<&str>) -> Value {
        let mut jwk = self.jwk.clone();
        jwk["kid"] = json!(kid);
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg);
        }
        jwk
    }
}

/// A compact JWS of `header` and `claims`, signed by `key` (or with `SECRET` for HS*).
pub fn token(alg: &str, header: Value, claims: Value, key: Option<&TestKey>) -> String {
    let mut header = header;
    if header.get("alg").is_none() {
        header["alg"] = json!(alg);
    }
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = match key {
        Some(key) => key.sign(alg, signed.as_bytes()),
        None => hmac_sign(alg, SECRET.as_bytes(), signed.as_bytes()),
    };
    format!("{signed}.{}", b64(&signature))
}

pub fn hmac_sign(alg: &str, secret: &[u8], message: &[u8]) -> Vec<u8> {
    let alg = match alg {
        "HS384" => ring::hmac::HMAC_SHA384,
        "HS512" => ring::hmac::HMAC_SHA512,
        _ => ring::hmac::HMAC_SHA256,
    };
    ring::hmac::sign(&ring::hmac::Key::new(alg, secret), message)
        .as_ref()
        .to_vec()
}
