//! `io.jwt.*`: decoding and verifying JSON Web Tokens (JWS compact form) as
//! OPA does. Where OPA raises an error (a malformed token, an unparsable key,
//! an unknown constraint) these return `None`, which the policy sees as
//! undefined; where OPA answers false (a bad signature, a failed claim check)
//! so do these.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Map, Value as Json};

use super::keys::{self, VerificationKey, BASE64URL};

/// The three base64url parts of a compact JWS.
struct Token<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

impl<'a> Token<'a> {
    fn split(text: &'a str) -> Option<Self> {
        let mut parts = text.split('.');
        let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            header,
            payload,
            signature,
        })
    }

    fn signed_part(&self) -> Vec<u8> {
        format!("{}.{}", self.header, self.payload).into_bytes()
    }

    fn signature(&self) -> Option<Vec<u8>> {
        BASE64URL.decode(self.signature).ok()
    }

    /// The header as a JSON object; a JWE (with `enc`) is not supported.
    fn header(&self) -> Option<Map<String, Json>> {
        let header = json_object(&decode_text(self.header)?)?;
        (!header.contains_key("enc")).then_some(header)
    }

    fn payload_text(&self) -> Option<String> {
        decode_text(self.payload)
    }
}

fn decode_text(part: &str) -> Option<String> {
    let bytes = BASE64URL.decode(part).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

fn json_object(text: &str) -> Option<Map<String, Json>> {
    match serde_json::from_str(text) {
        Ok(Json::Object(object)) => Some(object),
        _ => None,
    }
}

/// The header fields OPA interprets; any of them of the wrong type is an error.
#[derive(Default)]
struct Header {
    alg: String,
    kid: String,
    cty: String,
    crit: Vec<String>,
    unknown: Vec<String>,
}

impl Header {
    fn parse(header: &Map<String, Json>) -> Option<Self> {
        let mut out = Self::default();
        for (name, value) in header {
            match name.as_str() {
                "alg" => out.alg = value.as_str()?.to_owned(),
                "kid" => out.kid = value.as_str()?.to_owned(),
                "cty" => out.cty = value.as_str()?.to_owned(),
                "typ" => {
                    value.as_str()?;
                }
                "crit" => {
                    out.crit = value
                        .as_array()?
                        .iter()
                        .map_while(|v| v.as_str().map(str::to_owned))
                        .collect();
                    if out.crit.is_empty() {
                        return None;
                    }
                }
                other => out.unknown.push(other.to_owned()),
            }
        }
        Some(out)
    }

    /// RFC 7515: `alg` is required, and a `crit` parameter must be understood.
    fn valid(&self) -> bool {
        !self.alg.is_empty() && !self.unknown.iter().any(|u| self.crit.contains(u))
    }
}

/// `io.jwt.decode(jwt)`: `[header, payload, signature as hex]`, unverified.
/// A token whose `cty` is `JWT` is decoded down to the innermost token.
pub(super) fn decode(args: &[Json]) -> Option<Json> {
    let token = Token::split(args.first()?.as_str()?)?;
    let header = token.header()?;
    let payload = token.payload_text()?;
    if let Some(cty) = header.get("cty") {
        if cty.as_str()? == "JWT" {
            let inner = payload.trim_matches(|c| c == '"' || c == '\'');
            return decode(&[Json::String(inner.to_owned())]);
        }
    }
    let payload = json_object(&payload)?;
    let signature = hex(&token.signature()?);
    Some(json!([header, payload, signature]))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `io.jwt.verify_hs256/384/512(jwt, secret)`.
pub(super) fn verify_hmac(alg: &'static str, args: &[Json]) -> Option<Json> {
    let token = Token::split(args.first()?.as_str()?)?;
    let secret = args.get(1)?.as_str()?;
    let signature = token.signature()?;
    let key = keys::Key::Secret(secret.as_bytes().to_vec());
    Some(Json::Bool(keys::verify(
        &key,
        alg,
        &token.signed_part(),
        &signature,
    )))
}

/// `io.jwt.verify_rs*/ps*/es*/eddsa(jwt, certificate)`: the key is a PEM
/// certificate or public key, or a JWK (set). With a JWK set, the key whose
/// `kid` the token names is the only one tried; otherwise every key whose
/// `alg` (if any) is the token's.
pub(super) fn verify_signature(alg: &'static str, args: &[Json]) -> Option<Json> {
    let token = Token::split(args.first()?.as_str()?)?;
    let keys = keys::keys_from_cert_or_jwk(args.get(1)?.as_str()?).ok()?;
    let signature = token.signature()?;
    let header = Header::parse(&token.header()?)?;
    let message = token.signed_part();
    let check = |key: &VerificationKey| keys::verify(&key.key, alg, &message, &signature);
    if !header.kid.is_empty() {
        if let Some(key) = keys.iter().find(|k| k.kid.as_deref() == Some(&header.kid)) {
            return Some(Json::Bool(check(key)));
        }
    }
    let verified = keys
        .iter()
        .filter(|k| k.alg.as_deref().is_none_or(|a| a == header.alg))
        .any(check);
    Some(Json::Bool(verified))
}

/// The constraints of `io.jwt.decode_verify`.
struct Constraints {
    secret: String,
    keys: Option<Vec<VerificationKey>>,
    alg: String,
    iss: String,
    aud: String,
    /// Nanoseconds since the epoch.
    time: f64,
}

impl Constraints {
    fn parse(object: &Map<String, Json>) -> Option<Self> {
        let mut out = Self {
            secret: String::new(),
            keys: None,
            alg: String::new(),
            iss: String::new(),
            aud: String::new(),
            time: -1.0,
        };
        for (name, value) in object {
            match name.as_str() {
                "cert" => out.keys = Some(keys::keys_from_cert_or_jwk(value.as_str()?).ok()?),
                "secret" => out.secret = value.as_str()?.to_owned(),
                "alg" => out.alg = value.as_str()?.to_owned(),
                "iss" => out.iss = value.as_str()?.to_owned(),
                "aud" => out.aud = value.as_str()?.to_owned(),
                "time" => out.time = non_negative(value)?,
                _ => return None,
            }
        }
        if out.time < 0.0 {
            out.time = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_nanos() as f64;
        }
        // Exactly one of `cert` and `secret` (an empty secret counts as none).
        let key_constraints = usize::from(out.keys.is_some()) + usize::from(!out.secret.is_empty());
        (key_constraints == 1).then_some(out)
    }

    fn verify(&self, header: &Header, message: &[u8], signature: &[u8]) -> bool {
        let Some(keys) = &self.keys else {
            let secret = keys::Key::Secret(self.secret.as_bytes().to_vec());
            return keys::verify(&secret, &header.alg, message, signature);
        };
        let check = |key: &VerificationKey| keys::verify(&key.key, &header.alg, message, signature);
        if !header.kid.is_empty() {
            if let Some(key) = keys.iter().find(|k| k.kid.as_deref() == Some(&header.kid)) {
                return check(key);
            }
        }
        keys.iter()
            .filter(|k| k.alg.as_deref().is_none_or(|a| a == header.alg))
            .any(check)
    }

    fn valid_audience(&self, aud: &Json) -> bool {
        match aud {
            Json::String(aud) => *aud == self.aud,
            Json::Array(auds) => auds.iter().any(|a| a.as_str() == Some(&self.aud)),
            _ => false,
        }
    }
}

fn non_negative(value: &Json) -> Option<f64> {
    value.as_f64().filter(|t| *t >= 0.0)
}

/// `io.jwt.decode_verify(jwt, constraints)`: `[true, header, payload]` when
/// the signature verifies and the token meets every constraint
/// (`alg`, `iss`, `aud`, `exp` and `nbf` against `time` in nanoseconds, by
/// default now), else `[false, {}, {}]`. A token with an `aud` claim needs
/// a matching `aud` constraint.
pub(super) fn decode_verify(args: &[Json]) -> Option<Json> {
    let mut text = args.first()?.as_str()?.to_owned();
    let constraints = Constraints::parse(args.get(1)?.as_object()?)?;
    let unverified = Some(json!([false, {}, {}]));
    let (header, payload) = loop {
        let token = Token::split(&text)?;
        let header_object = token.header()?;
        let header = Header::parse(&header_object)?;
        if !header.valid() || (!constraints.alg.is_empty() && constraints.alg != header.alg) {
            return unverified;
        }
        let signature = token.signature()?;
        if !constraints.verify(&header, &token.signed_part(), &signature) {
            return unverified;
        }
        let payload = token.payload_text()?;
        if header.cty.eq_ignore_ascii_case("JWT") {
            text = payload;
            continue;
        }
        break (header_object, payload);
    };
    let payload = json_object(&payload)?;
    if !constraints.iss.is_empty() {
        match payload.get("iss") {
            Some(Json::String(iss)) if *iss == constraints.iss => {}
            Some(Json::String(_)) | None => return unverified,
            Some(_) => return None,
        }
    }
    match payload.get("aud") {
        Some(aud) if !constraints.valid_audience(aud) => return unverified,
        None if !constraints.aud.is_empty() => return unverified,
        _ => {}
    }
    let now = constraints.time / 1e9;
    if let Some(exp) = payload.get("exp") {
        if now >= exp.as_f64()? {
            return unverified;
        }
    }
    if let Some(nbf) = payload.get("nbf") {
        if now < nbf.as_f64()? {
            return unverified;
        }
    }
    Some(json!([true, header, payload]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(text: &str) -> String {
        BASE64URL.encode(text)
    }

    #[test]
    fn decode_splits_and_hexes_the_signature() {
        let token = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"HS256"}"#),
            b64(r#"{"sub":"x"}"#),
            BASE64URL.encode([0xab, 0x01])
        );
        assert_eq!(
            decode(&[Json::String(token)]),
            Some(json!([{"alg": "HS256"}, {"sub": "x"}, "ab01"]))
        );
        assert_eq!(decode(&[json!("a.b")]), None);
        assert_eq!(decode(&[json!(1)]), None);
    }

    #[test]
    fn decode_verify_needs_exactly_one_key_constraint() {
        let token = json!("a.b.c");
        assert_eq!(decode_verify(&[token.clone(), json!({})]), None);
        assert_eq!(
            decode_verify(&[
                token.clone(),
                json!({"secret": "s", "cert": "{\"keys\": []}"})
            ]),
            None
        );
        assert_eq!(
            decode_verify(&[token, json!({"secret": "s", "bogus": 1})]),
            None
        );
    }
}
