//! `io.jwt.encode_sign` and `io.jwt.encode_sign_raw`: compact JWS tokens
//! signed with the first key of a private JWK (set), as OPA makes them, so
//! that policy tests which mint their own tokens run unchanged.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, RsaKeyPair};
use serde_json::Value as Json;

use super::keys::{ALGORITHMS, BASE64URL};

/// JSON as Go's `json.Marshal` writes it: compact, keys sorted, and `<`, `>`,
/// `&`, U+2028 and U+2029 escaped.
fn go_json(value: &Json) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// `io.jwt.encode_sign(headers, payload, key)`: the objects as JSON.
pub(super) fn encode_sign(args: &[Json]) -> Option<Json> {
    let (headers, payload, key) = (args.first()?, args.get(1)?, args.get(2)?);
    sign(&go_json(headers), &go_json(payload), &go_json(key))
}

/// `io.jwt.encode_sign_raw(headers, payload, key)`: the JSON texts as given.
pub(super) fn encode_sign_raw(args: &[Json]) -> Option<Json> {
    let (headers, payload, key) = (
        args.first()?.as_str()?,
        args.get(1)?.as_str()?,
        args.get(2)?.as_str()?,
    );
    sign(headers, payload, key)
}

fn sign(headers: &str, payload: &str, jwk: &str) -> Option<Json> {
    let jwk: Json = serde_json::from_str(jwk).ok()?;
    let key = match jwk.get("keys") {
        Some(keys) => keys.as_array()?.first()?.clone(),
        None => jwk,
    };
    let header: Json = serde_json::from_str(headers).ok()?;
    let alg = header.get("alg")?.as_str()?;
    if !ALGORITHMS.contains(&alg) {
        return None;
    }
    let json_payload = match header.get("typ") {
        Some(Json::String(typ)) => typ == "JWT",
        _ => true,
    };
    if json_payload && serde_json::from_str::<Json>(payload).is_err() {
        return None;
    }
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(headers),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = signature_of(&key, alg, signed.as_bytes())?;
    Some(Json::String(format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    )))
}

fn field(key: &Json, name: &str) -> Option<Vec<u8>> {
    BASE64URL.decode(key.get(name)?.as_str()?).ok()
}

fn signature_of(key: &Json, alg: &str, message: &[u8]) -> Option<Vec<u8>> {
    let rng = SystemRandom::new();
    let kty = key.get("kty")?.as_str()?;
    match (kty, alg) {
        ("oct", "HS256" | "HS384" | "HS512") => {
            let algorithm = match alg {
                "HS256" => ring::hmac::HMAC_SHA256,
                "HS384" => ring::hmac::HMAC_SHA384,
                _ => ring::hmac::HMAC_SHA512,
            };
            let secret = ring::hmac::Key::new(algorithm, &field(key, "k")?);
            Some(ring::hmac::sign(&secret, message).as_ref().to_vec())
        }
        ("RSA", _) => {
            let padding: &'static dyn signature::RsaEncoding = match alg {
                "RS256" => &signature::RSA_PKCS1_SHA256,
                "RS384" => &signature::RSA_PKCS1_SHA384,
                "RS512" => &signature::RSA_PKCS1_SHA512,
                "PS256" => &signature::RSA_PSS_SHA256,
                "PS384" => &signature::RSA_PSS_SHA384,
                "PS512" => &signature::RSA_PSS_SHA512,
                _ => return None,
            };
            let components = ring::rsa::KeyPairComponents {
                public_key: ring::rsa::PublicKeyComponents {
                    n: field(key, "n")?,
                    e: field(key, "e")?,
                },
                d: field(key, "d")?,
                p: field(key, "p")?,
                q: field(key, "q")?,
                dP: field(key, "dp")?,
                dQ: field(key, "dq")?,
                qInv: field(key, "qi")?,
            };
            let pair = RsaKeyPair::from_components(&components).ok()?;
            let mut out = vec![0; pair.public().modulus_len()];
            pair.sign(padding, &rng, message, &mut out).ok()?;
            Some(out)
        }
        ("EC", "ES256" | "ES384") => {
            let (algorithm, curve) = match alg {
                "ES256" => (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256"),
                _ => (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384"),
            };
            if key.get("crv")?.as_str()? != curve {
                return None;
            }
            let mut point = vec![4];
            point.extend(field(key, "x")?);
            point.extend(field(key, "y")?);
            let pair = EcdsaKeyPair::from_private_key_and_public_key(
                algorithm,
                &field(key, "d")?,
                &point,
                &rng,
            )
            .ok()?;
            Some(pair.sign(&rng, message).ok()?.as_ref().to_vec())
        }
        ("EC", "ES512") => {
            use p521::ecdsa::signature::Signer as _;
            if key.get("crv")?.as_str()? != "P-521" {
                return None;
            }
            let signer = p521::ecdsa::SigningKey::from_slice(&field(key, "d")?).ok()?;
            let signature: p521::ecdsa::Signature = signer.try_sign(message).ok()?;
            Some(signature.to_bytes().to_vec())
        }
        ("OKP", "EdDSA") => {
            let pair =
                Ed25519KeyPair::from_seed_and_public_key(&field(key, "d")?, &field(key, "x")?)
                    .ok()?;
            Some(pair.sign(message).as_ref().to_vec())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_json_escapes_like_go() {
        assert_eq!(
            go_json(&json!({"b": "<&>", "a": 1})),
            r#"{"a":1,"b":"\u003c\u0026\u003e"}"#
        );
    }

    #[test]
    fn hs256_tokens_verify_and_bad_keys_are_errors() {
        let key = json!({"kty": "oct", "k": BASE64URL.encode("secret")});
        let token = encode_sign(&[
            json!({"alg": "HS256", "typ": "JWT"}),
            json!({"sub": "x"}),
            key,
        ])
        .unwrap();
        let verified = super::super::jwt::verify_hmac("HS256", &[token, json!("secret")]);
        assert_eq!(verified, Some(json!(true)));
        assert_eq!(
            encode_sign(&[
                json!({"alg": "RS256"}),
                json!({}),
                json!({"kty": "oct", "k": "c2VjcmV0"})
            ]),
            None
        );
        assert_eq!(
            encode_sign(&[
                json!({"alg": "none"}),
                json!({}),
                json!({"kty": "oct", "k": "c2VjcmV0"})
            ]),
            None
        );
        assert_eq!(
            encode_sign_raw(&[
                json!("{\"alg\":\"HS256\"}"),
                json!("not json"),
                json!("{\"kty\":\"oct\",\"k\":\"eA\"}")
            ]),
            None
        );
    }
}
