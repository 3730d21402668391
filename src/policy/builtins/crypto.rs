//! `crypto.md5/sha1/sha256` and `crypto.hmac.*`: lowercase hex digests of a
//! string's UTF-8 bytes, as OPA computes them.

use hmac::digest::core_api::BlockSizeUser;
use hmac::digest::{Digest, KeyInit};
use hmac::{Mac, SimpleHmac};
use serde_json::Value as Json;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `crypto.<hash>(x)`.
pub(super) fn digest<D: Digest>(args: &[Json]) -> Option<Json> {
    let text = args.first()?.as_str()?;
    Some(Json::String(hex(&D::digest(text.as_bytes()))))
}

/// `crypto.hmac.<hash>(x, key)`.
pub(super) fn hmac<D>(args: &[Json]) -> Option<Json>
where
    D: Digest + BlockSizeUser,
{
    let message = args.first()?.as_str()?;
    let key = args.get(1)?.as_str()?;
    let mac = <SimpleHmac<D> as KeyInit>::new_from_slice(key.as_bytes()).ok()?;
    Some(Json::String(hex(&mac
        .chain_update(message.as_bytes())
        .finalize()
        .into_bytes())))
}

/// `crypto.hmac.equal(mac1, mac2)`: compares in constant time.
pub(super) fn hmac_equal(args: &[Json]) -> Option<Json> {
    let a = args.first()?.as_str()?.as_bytes();
    let b = args.get(1)?.as_str()?.as_bytes();
    let same = a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    Some(Json::Bool(same))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn known_digests() {
        assert_eq!(
            digest::<sha2::Sha256>(&[json!("abc")]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            digest::<md5::Md5>(&[json!("")]).unwrap(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(digest::<sha1::Sha1>(&[json!(1)]), None);
        assert_eq!(hmac_equal(&[json!("ab"), json!("ab")]), Some(json!(true)));
        assert_eq!(hmac_equal(&[json!("ab"), json!("abc")]), Some(json!(false)));
    }
}
