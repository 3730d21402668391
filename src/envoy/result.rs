//! The policy's answer to a Check, read as the OPA-Envoy plugin reads it: a
//! boolean, or an object with `allowed` and optionally `headers`,
//! `request_headers_to_remove`, `response_headers_to_add`, `body`,
//! `http_status` and `dynamic_metadata`; plus agentvault's
//! `agentvault_inject`, a map from header name to
//! `{"secret": PATH, "prefix": "Bearer "}`.

use envoy_types::pb::envoy::r#type::v3::StatusCode;
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value as PbValue};
use serde_json::{Map, Value};

/// The status of a denial that names none: the plugin's (and Envoy's) default.
pub const DEFAULT_DENIED_STATUS: u16 = 403;

/// A decision of the wrong shape. Each message names the field and what it
/// should have been, never a value the policy computed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ResultError {
    #[error("the decision rule is undefined for this request")]
    Undefined,
    #[error("the decision must be a boolean or an object, not {0}")]
    NotBoolOrObject(&'static str),
    #[error("the decision object has no boolean `allowed`")]
    NoAllowed,
    #[error("`{field}` must be {expected}")]
    Field {
        field: &'static str,
        expected: &'static str,
    },
    #[error("`http_status` {0} is not an HTTP status Envoy knows")]
    Status(String),
    /// A malformed `agentvault_inject`: the request is denied whatever
    /// `envoy.on_error` says, since it was meant to carry a credential.
    #[error("`agentvault_inject`: {0}")]
    Inject(String),
}

/// One credential to put on the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// The header to set, lower-cased.
    pub header: String,
    /// The secret path to read.
    pub secret: String,
    /// Put before the secret's value, e.g. `Bearer `.
    pub prefix: String,
}

/// The decision, read and checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    /// Set on the upstream request when allowed, on the local reply when denied.
    pub headers: Vec<(String, String)>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<(String, String)>,
    /// The denial's body.
    pub body: String,
    /// The denial's status.
    pub http_status: u16,
    pub dynamic_metadata: Option<Struct>,
    /// Only when allowed.
    pub inject: Vec<Injection>,
}

impl Verdict {
    /// A denial with this status and body and nothing else.
    pub fn deny(http_status: u16, body: impl Into<String>) -> Self {
        Self {
            allowed: false,
            http_status,
            body: body.into(),
            ..Self::default()
        }
    }

    /// Lets the request through untouched.
    pub fn allow() -> Self {
        Self {
            allowed: true,
            http_status: 200,
            ..Self::default()
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Reads the decision rule's value.
pub fn read(value: &regorus::Value) -> Result<Verdict, ResultError> {
    if *value == regorus::Value::Undefined {
        return Err(ResultError::Undefined);
    }
    let json = serde_json::to_value(value).map_err(|_| ResultError::NotBoolOrObject("a set"))?;
    match json {
        Value::Bool(true) => Ok(Verdict::allow()),
        Value::Bool(false) => Ok(Verdict::deny(DEFAULT_DENIED_STATUS, "")),
        Value::Object(object) => read_object(&object),
        other => Err(ResultError::NotBoolOrObject(kind_of(&other))),
    }
}

fn read_object(o: &Map<String, Value>) -> Result<Verdict, ResultError> {
    let allowed = o
        .get("allowed")
        .and_then(Value::as_bool)
        .ok_or(ResultError::NoAllowed)?;
    let body = match o.get("body") {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(ResultError::Field {
                field: "body",
                expected: "a string",
            })
        }
    };
    let http_status = match o.get("http_status") {
        None => DEFAULT_DENIED_STATUS,
        Some(Value::Number(n)) => {
            let code = n
                .as_i64()
                .filter(|c| (100..=599).contains(c))
                .and_then(|c| i32::try_from(c).ok())
                .filter(|c| StatusCode::try_from(*c).is_ok_and(|s| s != StatusCode::Empty))
                .ok_or_else(|| ResultError::Status(n.to_string()))?;
            u16::try_from(code).map_err(|_| ResultError::Status(n.to_string()))?
        }
        Some(_) => {
            return Err(ResultError::Field {
                field: "http_status",
                expected: "a number",
            })
        }
    };
    let dynamic_metadata = match o.get("dynamic_metadata") {
        None => None,
        Some(Value::Object(m)) => Some(json_to_struct(m)),
        Some(_) => {
            return Err(ResultError::Field {
                field: "dynamic_metadata",
                expected: "an object",
            })
        }
    };
    let inject = if allowed {
        injections(o.get("agentvault_inject"))?
    } else {
        Vec::new()
    };
    Ok(Verdict {
        allowed,
        headers: headers("headers", o.get("headers"))?,
        request_headers_to_remove: strings("request_headers_to_remove", o)?,
        response_headers_to_add: headers(
            "response_headers_to_add",
            o.get("response_headers_to_add"),
        )?,
        body,
        http_status: if allowed { 200 } else { http_status },
        dynamic_metadata,
        inject,
    })
}

fn strings(field: &'static str, o: &Map<String, Value>) -> Result<Vec<String>, ResultError> {
    let bad = ResultError::Field {
        field,
        expected: "an array of strings",
    };
    match o.get(field) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned).ok_or_else(|| bad.clone()))
            .collect(),
        Some(_) => Err(bad),
    }
}

/// Headers as the plugin takes them: an object of `name: value` or
/// `name: [values]`, or an array of such objects.
fn headers(field: &'static str, v: Option<&Value>) -> Result<Vec<(String, String)>, ResultError> {
    let bad = || ResultError::Field {
        field,
        expected: "an object of strings or arrays of strings, or an array of such objects",
    };
    let mut out = Vec::new();
    let mut add = |object: &Map<String, Value>| -> Result<(), ResultError> {
        for (name, value) in object {
            match value {
                Value::String(s) => out.push((name.clone(), s.clone())),
                Value::Array(values) => {
                    for v in values {
                        out.push((name.clone(), v.as_str().ok_or_else(bad)?.to_owned()));
                    }
                }
                _ => return Err(bad()),
            }
        }
        Ok(())
    };
    match v {
        None => {}
        Some(Value::Object(o)) => add(o)?,
        Some(Value::Array(list)) => {
            for item in list {
                add(item.as_object().ok_or_else(bad)?)?;
            }
        }
        Some(_) => return Err(bad()),
    }
    Ok(out)
}

/// A header name Envoy accepts: an HTTP token, not a pseudo-header.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn injections(v: Option<&Value>) -> Result<Vec<Injection>, ResultError> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let object = v.as_object().ok_or_else(|| {
        ResultError::Inject("must be an object of header: {secret, prefix}".into())
    })?;
    object
        .iter()
        .map(|(header, spec)| {
            if !is_header_name(header) {
                return Err(ResultError::Inject(format!(
                    "`{header}` is not a header name"
                )));
            }
            let spec = spec.as_object().ok_or_else(|| {
                ResultError::Inject(format!("`{header}` must be an object {{secret, prefix}}"))
            })?;
            if let Some(unknown) = spec.keys().find(|k| *k != "secret" && *k != "prefix") {
                return Err(ResultError::Inject(format!(
                    "`{header}` has an unknown key `{unknown}`"
                )));
            }
            let secret = spec
                .get("secret")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| ResultError::Inject(format!("`{header}` needs a `secret` path")))?;
            let prefix = match spec.get("prefix") {
                None => "",
                Some(Value::String(p)) => p.as_str(),
                Some(_) => {
                    return Err(ResultError::Inject(format!(
                        "`{header}`: `prefix` must be a string"
                    )))
                }
            };
            Ok(Injection {
                header: header.to_ascii_lowercase(),
                secret: secret.to_owned(),
                prefix: prefix.to_owned(),
            })
        })
        .collect()
}

/// A JSON object as a protobuf `Struct`.
pub fn json_to_struct(m: &Map<String, Value>) -> Struct {
    Struct {
        fields: m.iter().map(|(k, v)| (k.clone(), json_to_pb(v))).collect(),
    }
}

fn json_to_pb(v: &Value) -> PbValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.iter().map(json_to_pb).collect(),
        }),
        Value::Object(m) => Kind::StructValue(json_to_struct(m)),
    };
    PbValue { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read_json(v: Value) -> Result<Verdict, ResultError> {
        read(&regorus::Value::from(v))
    }

    #[test]
    fn booleans() {
        assert_eq!(read_json(json!(true)).unwrap(), Verdict::allow());
        let denied = read_json(json!(false)).unwrap();
        assert!(!denied.allowed);
        assert_eq!(denied.http_status, 403);
        assert_eq!(
            read(&regorus::Value::Undefined),
            Err(ResultError::Undefined)
        );
    }

    #[test]
    fn objects_as_the_plugin_reads_them() {
        let v = read_json(json!({
            "allowed": false,
            "http_status": 401,
            "body": "no",
            "headers": [{"x-a": "1"}, {"x-b": ["2", "3"]}],
            "dynamic_metadata": {"k": [1, "s", null, {"n": true}]},
            "agentvault_inject": {"authorization": {"secret": "ignored/when-denied"}},
        }))
        .unwrap();
        assert!(!v.allowed);
        assert_eq!(v.http_status, 401);
        assert_eq!(v.body, "no");
        assert_eq!(
            v.headers,
            vec![
                ("x-a".into(), "1".into()),
                ("x-b".into(), "2".into()),
                ("x-b".into(), "3".into())
            ]
        );
        assert!(v.inject.is_empty());
        let md = v.dynamic_metadata.unwrap();
        assert_eq!(
            crate::envoy::input::struct_to_json(&md),
            json!({"k": [1.0, "s", null, {"n": true}]})
        );

        let ok = read_json(json!({
            "allowed": true,
            "request_headers_to_remove": ["cookie"],
            "response_headers_to_add": {"x-served-by": "agentvault"},
            "agentvault_inject": {"Authorization": {"secret": "envoy/openai", "prefix": "Bearer "}},
        }))
        .unwrap();
        assert_eq!(ok.http_status, 200);
        assert_eq!(ok.request_headers_to_remove, vec!["cookie".to_string()]);
        assert_eq!(
            ok.inject,
            vec![Injection {
                header: "authorization".into(),
                secret: "envoy/openai".into(),
                prefix: "Bearer ".into()
            }]
        );
    }

    #[test]
    fn malformed_decisions_name_the_field() {
        let cases = [
            (json!("yes"), ResultError::NotBoolOrObject("a string")),
            (json!({"allow": true}), ResultError::NoAllowed),
            (json!({"allowed": "true"}), ResultError::NoAllowed),
            (
                json!({"allowed": false, "body": 1}),
                ResultError::Field {
                    field: "body",
                    expected: "a string",
                },
            ),
            (
                json!({"allowed": false, "http_status": 999}),
                ResultError::Status("999".into()),
            ),
            (
                json!({"allowed": false, "http_status": 4.5}),
                ResultError::Status("4.5".into()),
            ),
        ];
        for (value, want) in cases {
            assert_eq!(read_json(value.clone()), Err(want), "{value}");
        }
        for bad in [
            json!({"allowed": true, "agentvault_inject": []}),
            json!({"allowed": true, "agentvault_inject": {"bad header": {"secret": "a"}}}),
            json!({"allowed": true, "agentvault_inject": {"x": {"prefix": "p"}}}),
            json!({"allowed": true, "agentvault_inject": {"x": {"secret": "a", "prefix": 1}}}),
            json!({"allowed": true, "agentvault_inject": {"x": {"secret": "a", "sekret": "b"}}}),
        ] {
            assert!(
                matches!(read_json(bad.clone()), Err(ResultError::Inject(_))),
                "{bad}"
            );
        }
        assert!(read_json(json!({"allowed": true, "headers": {"a": 1}})).is_err());
    }
}
