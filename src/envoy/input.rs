//! The policy input for one Check, shaped as the OPA-Envoy plugin shapes it
//! so that its users' policies run unchanged: `input.attributes` is the
//! `AttributeContext` with protobuf JSON field names (`socketAddress`,
//! `portValue`, `contextExtensions`, …), holding only the fields Envoy set,
//! enums and 64-bit integers as numbers, timestamps as `{seconds, nanos}`,
//! `Struct`s as plain objects and bytes as base64; `parsed_path`,
//! `parsed_query`, `version` and, when body parsing is on, `parsed_body` and
//! `truncated_body`. agentvault adds `input.agentvault.subject`.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use envoy_types::pb::envoy::config::core::v3::{
    address, envoy_internal_address, socket_address, Address, Metadata,
};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value as PbValue};
use serde_json::{json, Map, Value};

use crate::policy::{push_key_part as push, RuleInput};

/// Why a CheckRequest cannot become a policy input. The request is denied
/// with 400, as the OPA-Envoy plugin does.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    #[error("the CheckRequest carries no HTTP request (attributes.request.http)")]
    NoHttpRequest,
    #[error("the request path `{0}` has an invalid percent-escape")]
    Path(String),
    #[error("the query string: {0}")]
    Query(String),
    #[error("the request body is not valid JSON: {0}")]
    Body(String),
}

/// Who the Check is about: the pod's workload and the role Envoy names for the app.
#[derive(Debug, Clone)]
pub struct SubjectInput<'a> {
    pub spiffe_id: &'a str,
    pub tenant: &'a str,
    pub agent: &'a str,
    pub role: Option<&'a str>,
}

/// Which parts of the input to build: all, or the subtrees at these paths
/// (the parts a policy can read, as the policy engine found them). A
/// request is checked in full either way: what is malformed is refused
/// whether or not the policy would have read it.
#[derive(Debug, Clone, Copy)]
pub enum Want<'a> {
    All,
    Paths(&'a [Vec<String>]),
}

impl Want<'_> {
    /// Whether the subtree at `at` holds or lies under a wanted path.
    fn includes(&self, at: &[&str]) -> bool {
        match self {
            Self::All => true,
            Self::Paths(paths) => paths
                .iter()
                .any(|path| path.iter().zip(at).all(|(p, a)| p == a)),
        }
    }
}

/// The whole input document for `req`.
pub fn build(
    req: &CheckRequest,
    subject: &SubjectInput<'_>,
    parse_body: bool,
) -> Result<Value, InputError> {
    build_for(req, subject, parse_body, Want::All)
}

/// The input document for `req`, leaving out the costly subtrees (headers,
/// metadata, peers, the parsed query and body) that `want` does not include.
pub fn build_for(
    req: &CheckRequest,
    subject: &SubjectInput<'_>,
    parse_body: bool,
    want: Want<'_>,
) -> Result<Value, InputError> {
    let attributes = req.attributes.as_ref().ok_or(InputError::NoHttpRequest)?;
    let http = attributes
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .ok_or(InputError::NoHttpRequest)?;
    let (parsed_path, parsed_query) = parse_path_and_query(&http.path)?;
    let mut input = Map::with_capacity(7);
    input.insert("attributes".into(), attribute_context(attributes, want));
    input.insert(
        "version".into(),
        json!({"ext_authz": "v3", "encoding": "protojson"}),
    );
    input.insert("parsed_path".into(), parsed_path);
    if want.includes(&["parsed_query"]) {
        input.insert("parsed_query".into(), parsed_query);
    }
    if parse_body {
        let (body, truncated) = parse_body_of(http)?;
        if want.includes(&["parsed_body"]) {
            input.insert("parsed_body".into(), body);
        }
        input.insert("truncated_body".into(), Value::Bool(truncated));
    }
    if let Some(principal) = attributes.source.as_ref().map(|s| &s.principal) {
        if !principal.is_empty() {
            input.insert("source_principal".into(), Value::from(principal.as_str()));
        }
    }
    input.insert(
        "agentvault".into(),
        json!({ "subject": {
            "spiffe_id": subject.spiffe_id,
            "tenant": subject.tenant,
            "agent": subject.agent,
            "role": subject.role,
        }}),
    );
    Ok(Value::Object(input))
}

/// One Check as the input of the Envoy rule: built in the parts the policy
/// reads, and keyed by the request fields those parts come from.
#[derive(Debug, Clone)]
pub struct CheckInput<'a> {
    pub request: &'a CheckRequest,
    pub subject: SubjectInput<'a>,
    pub parse_body: bool,
}

impl RuleInput for CheckInput<'_> {
    type Error = InputError;

    /// The request's raw `path` always (it decides whether the input can be
    /// built, and `parsed_path` and `parsed_query`), then per read path the
    /// field it is built from. `None` when body parsing is on (the body and
    /// its headers decide whether it parses) and for paths this does not
    /// map (peers, metadata, TLS, the http object whole), which are then
    /// keyed by the built input instead. A path outside what is built at
    /// all adds nothing: it is absent from every input.
    fn key(&self, paths: &[Vec<String>]) -> Option<Vec<u8>> {
        if self.parse_body {
            return None;
        }
        let attributes = self.request.attributes.as_ref()?;
        let http = attributes.request.as_ref()?.http.as_ref()?;
        let mut key = Vec::with_capacity(128);
        push(&mut key, Some(http.path.as_bytes()));
        for path in paths {
            let at = |i: usize| path.get(i).map(String::as_str);
            match (at(0), at(1), at(2), at(3)) {
                (Some("agentvault"), Some("subject"), Some(field), _) => {
                    let s = &self.subject;
                    let value = match field {
                        "spiffe_id" => Some(s.spiffe_id),
                        "tenant" => Some(s.tenant),
                        "agent" => Some(s.agent),
                        "role" => s.role,
                        _ => None,
                    };
                    push(&mut key, value.map(str::as_bytes));
                }
                (Some("agentvault"), ..) => {
                    let s = &self.subject;
                    for field in [s.spiffe_id, s.tenant, s.agent] {
                        push(&mut key, Some(field.as_bytes()));
                    }
                    push(&mut key, s.role.map(str::as_bytes));
                }
                (Some("source_principal"), ..) => {
                    let principal = attributes.source.as_ref().map(|s| s.principal.as_bytes());
                    push(&mut key, principal);
                }
                (Some("attributes"), Some("contextExtensions"), name, _) => {
                    push_map(&mut key, &attributes.context_extensions, name);
                }
                (Some("attributes"), Some("request"), Some("http"), Some("headers")) => {
                    push_map(&mut key, &http.headers, at(4));
                }
                (Some("attributes"), Some("request"), Some("http"), Some(field)) => {
                    let value = match field {
                        "id" => http.id.as_bytes(),
                        "method" => http.method.as_bytes(),
                        // The raw path leads every key.
                        "path" => continue,
                        "host" => http.host.as_bytes(),
                        "scheme" => http.scheme.as_bytes(),
                        "query" => http.query.as_bytes(),
                        "fragment" => http.fragment.as_bytes(),
                        "protocol" => http.protocol.as_bytes(),
                        "body" => http.body.as_bytes(),
                        "rawBody" => &http.raw_body,
                        "size" => {
                            push(&mut key, Some(&http.size.to_le_bytes()));
                            continue;
                        }
                        _ => return None,
                    };
                    push(&mut key, Some(value));
                }
                (Some("attributes") | None, ..) => return None,
                // `version`, the parsed path, query and body (the raw path
                // is in the key; the body is never keyed), or not built at
                // all (another rule's input, such as the decision policy's
                // `input.action`): absent in every input.
                _ => {}
            }
        }
        Some(key)
    }

    fn build(&self, paths: Option<&[Vec<String>]>) -> Result<Value, InputError> {
        let want = paths.map_or(Want::All, Want::Paths);
        build_for(self.request, &self.subject, self.parse_body, want)
    }
}

/// One entry of a string map, or (no name) all of it in key order.
fn push_map(key: &mut Vec<u8>, map: &HashMap<String, String>, name: Option<&str>) {
    if let Some(name) = name {
        push(key, map.get(name).map(String::as_bytes));
        return;
    }
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_unstable();
    push(key, Some(&(entries.len() as u64).to_le_bytes()));
    for (name, value) in entries {
        push(key, Some(name.as_bytes()));
        push(key, Some(value.as_bytes()));
    }
}

/// Inserts `value` under `key` unless it is the proto3 default (not sent).
fn put_str(map: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        map.insert(key.into(), Value::from(value));
    }
}

fn put_map<'a>(
    map: &mut Map<String, Value>,
    key: &str,
    entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) {
    if entries.len() > 0 {
        let object = entries
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        map.insert(key.into(), Value::Object(object));
    }
}

fn attribute_context(a: &AttributeContext, want: Want<'_>) -> Value {
    let mut m = Map::new();
    if let Some(source) = a
        .source
        .as_ref()
        .filter(|_| want.includes(&["attributes", "source"]))
    {
        m.insert("source".into(), peer(source));
    }
    if let Some(destination) = a
        .destination
        .as_ref()
        .filter(|_| want.includes(&["attributes", "destination"]))
    {
        m.insert("destination".into(), peer(destination));
    }
    if let Some(request) = &a.request {
        m.insert("request".into(), request_of(request, want));
    }
    put_map(&mut m, "contextExtensions", a.context_extensions.iter());
    if let Some(metadata) = a
        .metadata_context
        .as_ref()
        .filter(|_| want.includes(&["attributes", "metadataContext"]))
    {
        m.insert("metadataContext".into(), metadata_of(metadata));
    }
    if let Some(metadata) = a
        .route_metadata_context
        .as_ref()
        .filter(|_| want.includes(&["attributes", "routeMetadataContext"]))
    {
        m.insert("routeMetadataContext".into(), metadata_of(metadata));
    }
    if let Some(tls) = &a.tls_session {
        let mut t = Map::new();
        put_str(&mut t, "sni", &tls.sni);
        m.insert("tlsSession".into(), Value::Object(t));
    }
    Value::Object(m)
}

fn peer(p: &Peer) -> Value {
    let mut m = Map::new();
    if let Some(address) = &p.address {
        m.insert("address".into(), address_of(address));
    }
    put_str(&mut m, "service", &p.service);
    put_map(&mut m, "labels", p.labels.iter());
    put_str(&mut m, "principal", &p.principal);
    put_str(&mut m, "certificate", &p.certificate);
    Value::Object(m)
}

fn address_of(a: &Address) -> Value {
    let mut m = Map::new();
    match &a.address {
        Some(address::Address::SocketAddress(s)) => {
            let mut sa = Map::new();
            if s.protocol != 0 {
                sa.insert("protocol".into(), Value::from(s.protocol));
            }
            put_str(&mut sa, "address", &s.address);
            match &s.port_specifier {
                Some(socket_address::PortSpecifier::PortValue(port)) => {
                    sa.insert("portValue".into(), Value::from(*port));
                }
                Some(socket_address::PortSpecifier::NamedPort(name)) => {
                    sa.insert("namedPort".into(), Value::from(name.as_str()));
                }
                None => {}
            }
            put_str(&mut sa, "resolverName", &s.resolver_name);
            if s.ipv4_compat {
                sa.insert("ipv4Compat".into(), Value::Bool(true));
            }
            put_str(
                &mut sa,
                "networkNamespaceFilepath",
                &s.network_namespace_filepath,
            );
            m.insert("socketAddress".into(), Value::Object(sa));
        }
        Some(address::Address::Pipe(p)) => {
            let mut pm = Map::new();
            put_str(&mut pm, "path", &p.path);
            if p.mode != 0 {
                pm.insert("mode".into(), Value::from(p.mode));
            }
            m.insert("pipe".into(), Value::Object(pm));
        }
        Some(address::Address::EnvoyInternalAddress(e)) => {
            let mut em = Map::new();
            if let Some(envoy_internal_address::AddressNameSpecifier::ServerListenerName(name)) =
                &e.address_name_specifier
            {
                em.insert("serverListenerName".into(), Value::from(name.as_str()));
            }
            put_str(&mut em, "endpointId", &e.endpoint_id);
            m.insert("envoyInternalAddress".into(), Value::Object(em));
        }
        None => {}
    }
    Value::Object(m)
}

fn request_of(r: &Request, want: Want<'_>) -> Value {
    let mut m = Map::new();
    if let Some(time) = &r.time {
        let mut t = Map::new();
        if time.seconds != 0 {
            t.insert("seconds".into(), Value::from(time.seconds));
        }
        if time.nanos != 0 {
            t.insert("nanos".into(), Value::from(time.nanos));
        }
        m.insert("time".into(), Value::Object(t));
    }
    if let Some(http) = &r.http {
        m.insert("http".into(), http_of(http, want));
    }
    Value::Object(m)
}

fn http_of(h: &HttpRequest, want: Want<'_>) -> Value {
    const AT: [&str; 3] = ["attributes", "request", "http"];
    let mut m = Map::new();
    put_str(&mut m, "id", &h.id);
    put_str(&mut m, "method", &h.method);
    if want.includes(&[AT[0], AT[1], AT[2], "headers"]) {
        put_map(&mut m, "headers", h.headers.iter());
    }
    if let Some(header_map) = h
        .header_map
        .as_ref()
        .filter(|_| want.includes(&[AT[0], AT[1], AT[2], "headerMap"]))
    {
        let headers: Vec<Value> = header_map
            .headers
            .iter()
            .map(|hv| {
                let mut e = Map::new();
                put_str(&mut e, "key", &hv.key);
                put_str(&mut e, "value", &hv.value);
                if !hv.raw_value.is_empty() {
                    e.insert("rawValue".into(), Value::from(B64.encode(&hv.raw_value)));
                }
                Value::Object(e)
            })
            .collect();
        let mut hm = Map::new();
        if !headers.is_empty() {
            hm.insert("headers".into(), Value::Array(headers));
        }
        m.insert("headerMap".into(), Value::Object(hm));
    }
    put_str(&mut m, "path", &h.path);
    put_str(&mut m, "host", &h.host);
    put_str(&mut m, "scheme", &h.scheme);
    put_str(&mut m, "query", &h.query);
    put_str(&mut m, "fragment", &h.fragment);
    if h.size != 0 {
        m.insert("size".into(), Value::from(h.size));
    }
    put_str(&mut m, "protocol", &h.protocol);
    if want.includes(&[AT[0], AT[1], AT[2], "body"]) {
        put_str(&mut m, "body", &h.body);
    }
    if !h.raw_body.is_empty() && want.includes(&[AT[0], AT[1], AT[2], "rawBody"]) {
        m.insert("rawBody".into(), Value::from(B64.encode(&h.raw_body)));
    }
    Value::Object(m)
}

fn metadata_of(md: &Metadata) -> Value {
    let mut m = Map::new();
    if !md.filter_metadata.is_empty() {
        let filters = md
            .filter_metadata
            .iter()
            .map(|(k, s)| (k.clone(), struct_to_json(s)))
            .collect();
        m.insert("filterMetadata".into(), Value::Object(filters));
    }
    if !md.typed_filter_metadata.is_empty() {
        let typed = md
            .typed_filter_metadata
            .iter()
            .map(|(k, any)| {
                let mut a = Map::new();
                put_str(&mut a, "typeUrl", &any.type_url);
                if !any.value.is_empty() {
                    a.insert("value".into(), Value::from(B64.encode(&any.value)));
                }
                (k.clone(), Value::Object(a))
            })
            .collect();
        m.insert("typedFilterMetadata".into(), Value::Object(typed));
    }
    Value::Object(m)
}

/// A protobuf `Struct` as the plain JSON object it stands for.
pub fn struct_to_json(s: &Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), pb_value_to_json(v)))
            .collect(),
    )
}

fn pb_value_to_json(v: &PbValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::from(s.as_str()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(pb_value_to_json).collect()),
    }
}

/// `parsed_path` (the decoded path split on `/`, without the leading ones)
/// and `parsed_query` (each parameter's values, decoded as a form).
fn parse_path_and_query(path: &str) -> Result<(Value, Value), InputError> {
    let (raw_path, raw_query) = path.split_once('?').unwrap_or((path, ""));
    let decoded = unescape(raw_path, false).ok_or_else(|| InputError::Path(raw_path.to_owned()))?;
    let segments: Vec<Value> = decoded
        .trim_start_matches('/')
        .split('/')
        .map(Value::from)
        .collect();
    let query = parse_form(raw_query).map_err(InputError::Query)?;
    Ok((Value::Array(segments), query))
}

/// Decodes `%XX` escapes (and `+` as a space in forms); `None` for a
/// malformed escape or bytes that are not UTF-8.
fn unescape(s: &str, form: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if form => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// An `application/x-www-form-urlencoded` string as `{name: [values]}`, with
/// the rules of Go's `url.ParseQuery` (which the plugin uses): `;` is refused.
fn parse_form(raw: &str) -> Result<Value, String> {
    let mut params: Map<String, Value> = Map::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        if pair.contains(';') {
            return Err("`;` is not a parameter separator".into());
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = || format!("`{pair}` has an invalid percent-escape");
        let key = unescape(key, true).ok_or_else(bad)?;
        let value = unescape(value, true).ok_or_else(bad)?;
        if let Value::Array(values) = params
            .entry(key)
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            values.push(Value::from(value));
        }
    }
    Ok(Value::Object(params))
}

/// `parsed_body` and `truncated_body`: JSON and form bodies are parsed, any
/// other content type gives `null`. A body shorter than its
/// `content-length` (or flagged by Envoy as partial) is truncated and not parsed.
fn parse_body_of(h: &HttpRequest) -> Result<(Value, bool), InputError> {
    if h.headers
        .get("x-envoy-auth-partial-body")
        .map(String::as_str)
        == Some("true")
    {
        return Ok((Value::Null, true));
    }
    let Some(content_type) = h.headers.get("content-type") else {
        return Ok((Value::Null, false));
    };
    let json = content_type.contains("application/json");
    let form = content_type.contains("application/x-www-form-urlencoded");
    if !json && !form {
        return Ok((Value::Null, false));
    }
    let body: &[u8] = if h.body.is_empty() {
        &h.raw_body
    } else {
        h.body.as_bytes()
    };
    if body.is_empty() {
        return Ok((Value::Null, false));
    }
    if let Some(length) = h.headers.get("content-length") {
        let length: i64 = length
            .trim()
            .parse()
            .map_err(|_| InputError::Body(format!("content-length `{length}` is not a number")))?;
        if length != -1 && length > body.len() as i64 {
            return Ok((Value::Null, true));
        }
    }
    if json {
        let parsed = serde_json::from_slice(body).map_err(|e| InputError::Body(e.to_string()))?;
        return Ok((parsed, false));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| InputError::Body("the form body is not UTF-8".into()))?;
    Ok((parse_form(text).map_err(InputError::Body)?, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::SocketAddress;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context;

    fn subject() -> SubjectInput<'static> {
        SubjectInput {
            spiffe_id: "spiffe://td/agent/acme/bot",
            tenant: "acme",
            agent: "bot",
            role: Some("researcher"),
        }
    }

    fn check(path: &str, headers: &[(&str, &str)], body: &str) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(attribute_context::Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: "10.0.0.1".into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(0)),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                }),
                request: Some(attribute_context::Request {
                    time: None,
                    http: Some(HttpRequest {
                        method: "POST".into(),
                        path: path.into(),
                        host: "api.example.com".into(),
                        size: 12,
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        body: body.into(),
                        ..Default::default()
                    }),
                }),
                context_extensions: [("agentvault_role".to_string(), "researcher".to_string())]
                    .into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn uses_protojson_names_and_omits_unset_fields() {
        let input = build(&check("/v1/x", &[], ""), &subject(), false).unwrap();
        let a = &input["attributes"];
        assert_eq!(
            a["source"]["address"]["socketAddress"],
            json!({"address": "10.0.0.1", "portValue": 0}),
            "a oneof member is sent even at its default"
        );
        assert_eq!(a["request"]["http"]["size"], json!(12), "int64 as a number");
        assert_eq!(a["contextExtensions"]["agentvault_role"], "researcher");
        assert!(a["request"]["http"].get("scheme").is_none());
        assert!(a.get("destination").is_none());
        assert!(input.get("parsed_body").is_none(), "body parsing is off");
        assert_eq!(
            input["version"],
            json!({"ext_authz": "v3", "encoding": "protojson"})
        );
        assert_eq!(input["agentvault"]["subject"]["role"], "researcher");
    }

    #[test]
    fn parses_paths_and_queries_like_the_plugin() {
        let (path, query) = parse_path_and_query("/a%20b/c?x=1&x=2&y=a+b&z").unwrap();
        assert_eq!(path, json!(["a b", "c"]));
        assert_eq!(query, json!({"x": ["1", "2"], "y": ["a b"], "z": [""]}));
        assert_eq!(parse_path_and_query("/").unwrap().0, json!([""]));
        assert_eq!(parse_path_and_query("/a+b").unwrap().0, json!(["a+b"]));
        assert!(matches!(
            parse_path_and_query("/%zz"),
            Err(InputError::Path(_))
        ));
        assert!(matches!(
            parse_path_and_query("/a?b=1;c=2"),
            Err(InputError::Query(_))
        ));
    }

    #[test]
    fn parses_json_and_form_bodies_and_spots_truncation() {
        let json_req = check(
            "/",
            &[("content-type", "application/json")],
            r#"{"a": [1]}"#,
        );
        let input = build(&json_req, &subject(), true).unwrap();
        assert_eq!(input["parsed_body"], json!({"a": [1]}));
        assert_eq!(input["truncated_body"], json!(false));

        let form = check(
            "/",
            &[("content-type", "application/x-www-form-urlencoded")],
            "a=1&b=x+y",
        );
        let input = build(&form, &subject(), true).unwrap();
        assert_eq!(input["parsed_body"], json!({"a": ["1"], "b": ["x y"]}));

        let cut = check(
            "/",
            &[
                ("content-type", "application/json"),
                ("content-length", "100"),
            ],
            r#"{"a":"#,
        );
        let input = build(&cut, &subject(), true).unwrap();
        assert_eq!(
            (&input["parsed_body"], &input["truncated_body"]),
            (&Value::Null, &json!(true))
        );

        let bad = check("/", &[("content-type", "application/json")], "{nope");
        assert!(matches!(
            build(&bad, &subject(), true),
            Err(InputError::Body(_))
        ));
        let text = check("/", &[("content-type", "text/plain")], "hello");
        assert_eq!(
            build(&text, &subject(), true).unwrap()["parsed_body"],
            Value::Null
        );
    }

    #[test]
    fn a_request_without_http_attributes_is_malformed() {
        let empty = CheckRequest { attributes: None };
        assert_eq!(
            build(&empty, &subject(), false),
            Err(InputError::NoHttpRequest)
        );
        let no_http = CheckRequest {
            attributes: Some(AttributeContext::default()),
        };
        assert_eq!(
            build(&no_http, &subject(), false),
            Err(InputError::NoHttpRequest)
        );
    }

    fn key(req: &CheckRequest, parse_body: bool, paths: &[&str]) -> Option<Vec<u8>> {
        let paths: Vec<Vec<String>> = paths
            .iter()
            .map(|p| p.split('.').map(str::to_owned).collect())
            .collect();
        let input = CheckInput {
            request: req,
            subject: subject(),
            parse_body,
        };
        input.key(&paths)
    }

    #[test]
    fn a_request_key_holds_the_fields_the_policy_reads_and_the_path() {
        let reads = [
            "attributes.request.http.headers.x-team",
            "agentvault.subject.role",
        ];
        let base = check("/v1/a", &[("x-team", "a"), ("x-request-id", "1")], "");
        let key_of =
            |path: &str, headers: &[(&str, &str)]| key(&check(path, headers, ""), false, &reads);
        let base_key = key(&base, false, &reads).expect("keyed");
        assert_eq!(
            key_of("/v1/a", &[("x-team", "a"), ("x-request-id", "2")]),
            Some(base_key.clone())
        );
        for other in [
            key_of("/v1/a", &[("x-team", "b"), ("x-request-id", "1")]),
            key_of("/v1/a", &[("x-request-id", "1")]),
            key_of("/v1/a", &[("x-team", ""), ("x-request-id", "1")]),
            key_of("/v1/b", &[("x-team", "a"), ("x-request-id", "1")]),
        ] {
            assert_ne!(other, Some(base_key.clone()));
        }
        let all_headers = ["attributes.request.http.headers"];
        assert_ne!(
            key(&base, false, &all_headers),
            key(
                &check("/v1/a", &[("x-team", "a"), ("x-request-id", "2")], ""),
                false,
                &all_headers
            )
        );
    }

    #[test]
    fn a_request_is_not_keyed_when_its_body_is_parsed_or_a_read_is_not_mapped() {
        let req = check("/", &[("content-type", "application/json")], "{}");
        assert!(key(&req, true, &["attributes.request.http.method"]).is_none());
        for unmapped in [
            "attributes.source.address",
            "attributes.request.http",
            "attributes.request.http.headerMap",
            "attributes.metadataContext",
            "attributes",
        ] {
            assert!(key(&req, false, &[unmapped]).is_none(), "{unmapped}");
        }
        assert!(key(&req, false, &["parsed_query.a", "version", "action"]).is_some());
    }
}
