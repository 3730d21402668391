//! What the socket's routes share: the error a route answers with, strict JSON
//! bodies within a size limit, query strings, and responses. Both route
//! tables (`api`, `compat`) build on it, and it knows neither.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::vault::VaultError;

/// A whole body, or the open-ended body of an SSE stream.
pub type ResponseBody = BoxBody<Bytes, Infallible>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failed request: a domain error, or a method the route does not serve.
pub enum ApiError {
    Vault(VaultError),
    MethodNotAllowed(&'static str),
    /// The caller is over its rate; it may try again after this long.
    RateLimited(Duration),
    /// A local caller no role matched, refused under `unmapped_callers: refuse`.
    Unmapped(String),
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        Self::Vault(e)
    }
}

pub type Answer = Result<Response<ResponseBody>, ApiError>;

/// Reads request bodies as JSON, refusing any over `max_body_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct BodyReader {
    pub max_body_bytes: usize,
}

impl BodyReader {
    /// Reads the body within the size limit and decodes it, naming the
    /// offending field on failure without echoing any value.
    pub async fn json<T: DeserializeOwned, B>(&self, req: Request<B>) -> Result<T, ApiError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let too_large = || VaultError::TooLarge {
            what: "body".into(),
            limit: self.max_body_bytes,
        };
        let declared = req
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.max_body_bytes) {
            return Err(too_large().into());
        }
        let bytes = Limited::new(req.into_body(), self.max_body_bytes)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    too_large()
                } else {
                    VaultError::invalid("body", "could not read the request body")
                }
            })?
            .to_bytes();
        Ok(decode_json(&bytes)?)
    }
}

/// Decodes JSON strictly (unknown fields and trailing data are errors). The
/// message names the field; serde's own text is cut where it would quote input.
///
/// Every request body of the contract is a JSON object. serde's derived
/// structs also accept an array (fields by position, the missing ones
/// defaulted), so `["v"]` would be a `PUT` and `[]` an empty `PATCH`; the
/// fuzzer found that, and such a body is refused here before serde sees it.
fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, VaultError> {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(VaultError::invalid("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = match e.path().to_string() {
            unknown if unknown == "." || unknown.contains('?') => "body".to_owned(),
            path => path,
        };
        VaultError::invalid(&field, sanitize_serde_message(&e.inner().to_string()))
    })?;
    de.end()
        .map_err(|e| VaultError::invalid("body", sanitize_serde_message(&e.to_string())))?;
    Ok(value)
}

fn sanitize_serde_message(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    // These carry what the caller sent (a value, a variant): say only what
    // was expected. Unknown field names stay, to point at the typo.
    if message.starts_with("invalid type")
        || message.starts_with("invalid value")
        || message.starts_with("invalid length")
        || message.starts_with("unknown variant")
    {
        match message.split_once(", expected ") {
            Some((_, expected)) => format!("expected {expected}"),
            None => "invalid value".to_owned(),
        }
    } else {
        message.to_owned()
    }
}

pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, VaultError> {
        self.get(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| VaultError::invalid(name, "must be a non-negative integer"))
            })
            .transpose()
    }
}

pub fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub fn json_response<T: Serialize + ?Sized>(
    status: StatusCode,
    body: &T,
) -> Response<ResponseBody> {
    json_bytes_response(
        status,
        serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
    )
}

/// A response of JSON already written.
pub fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub fn empty_response(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::PutRequest;

    #[test]
    fn json_errors_name_the_field_and_hide_values() {
        let err = decode_json::<PutRequest>(br#"{"value": 1234567}"#).unwrap_err();
        assert!(
            matches!(&err, VaultError::Invalid { field, .. } if field == "value"),
            "{err}"
        );
        assert!(!err.to_string().contains("1234567"), "{err}");

        let err = decode_json::<PutRequest>(br#"{"value": "x", "cas": "sk-secret"}"#).unwrap_err();
        assert!(
            matches!(&err, VaultError::Invalid { field, .. } if field == "cas"),
            "{err}"
        );
        assert!(!err.to_string().contains("sk-secret"), "{err}");

        let err = decode_json::<PutRequest>(br#"{"value": "x", "tier": "gold"}"#).unwrap_err();
        assert!(
            matches!(&err, VaultError::Invalid { field, .. } if field == "tier"),
            "{err}"
        );

        let err = decode_json::<PutRequest>(br#"{"value": "x", "valeu": 1}"#).unwrap_err();
        assert!(err.to_string().contains("valeu"), "{err}");

        for not_an_object in [
            &br#"["x"]"#[..],
            b" [null, null]",
            b"",
            b"  ",
            b"\"x\"",
            b"null",
        ] {
            let err = decode_json::<PutRequest>(not_an_object).unwrap_err();
            assert!(
                matches!(&err, VaultError::Invalid { field, .. } if field == "body"),
                "{err}"
            );
        }
        assert!(decode_json::<PutRequest>(b" \n{\"value\": \"x\"}").is_ok());

        let err = decode_json::<PutRequest>(br#"{"value": "x"} trailing"#).unwrap_err();
        assert!(
            matches!(&err, VaultError::Invalid { field, .. } if field == "body"),
            "{err}"
        );
    }

    proptest::proptest! {
        /// Whatever the bytes, a body is decoded or refused as `invalid`
        /// (a 400), never a panic or another error.
        #[test]
        fn any_body_is_decoded_or_refused(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Err(err) = decode_json::<PutRequest>(&bytes) {
                proptest::prop_assert!(matches!(err, VaultError::Invalid { .. }), "{err}");
            }
        }

        /// A value sent with a wrong field, or in a field of the wrong
        /// type, never comes back in the error.
        #[test]
        fn a_refused_bodys_value_is_never_echoed(
            value in "[A-Za-z0-9_-]{12,40}",
            field in "(tier|type|tags|scope|cas|expires_at|description|valeu)",
        ) {
            for body in [
                serde_json::json!({ "value": &value, field.as_str(): 1234567 }),
                serde_json::json!({ "value": 1234567, field.as_str(): &value }),
                serde_json::json!({ "value": [&value] }),
            ] {
                if let Err(err) = decode_json::<PutRequest>(body.to_string().as_bytes()) {
                    proptest::prop_assert!(!err.to_string().contains(&value), "{err}");
                }
            }
        }

        /// Every instant chrono represents travels as RFC 3339 and back.
        #[test]
        fn expires_at_round_trips_every_rfc3339_instant(
            secs in -62_135_596_800i64..253_402_300_799,
            nanos in 0u32..1_000_000_000,
        ) {
            let at = chrono::DateTime::from_timestamp(secs, nanos)
                .ok_or_else(|| proptest::test_runner::TestCaseError::reject("unrepresentable"))?;
            let body = serde_json::json!({ "value": "v", "expires_at": at.to_rfc3339() });
            let req: PutRequest = decode_json(body.to_string().as_bytes())
                .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(req.expires_at, Some(at));
        }
    }
}
