//! The OpenAPI document (`src/socket/openapi.json`, served at
//! `GET /v1/openapi.json`) against the server it describes: what the router
//! serves and what the document lists are the same routes and methods, the
//! document's examples are valid both for its schemas and for the server, and
//! real answers of a real sidecar match the documented statuses, headers and
//! bodies. `scripts/fuzz-api` then lets schemathesis loose on the same pair.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use agentvault::client::{Client, Reply};
use agentvault::socket::api::OPENAPI_DOCUMENT;
use hyper::Method;
use serde_json::{json, Value};
use support::{get, put, raw, Backend, TestEnv};

const METHODS: [&str; 7] = ["get", "head", "put", "post", "patch", "delete", "options"];

fn document() -> Value {
    serde_json::from_str(OPENAPI_DOCUMENT).expect("src/socket/openapi.json is JSON")
}

/// Follows a local `$ref` (`#/components/...`) once, if `value` is one.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("unresolved $ref {reference}"))
        }
        None => value,
    }
}

/// A JSON Schema 2020-12 validator (OpenAPI 3.1's dialect) for `schema`, with
/// the document's components in reach of its `$ref`s.
fn validator(doc: &Value, schema: &Value) -> jsonschema::Validator {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}\n{schema:#}"))
}

fn schema_errors(doc: &Value, schema: &Value, instance: &Value) -> Vec<String> {
    validator(doc, schema)
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The documented methods of each path template.
fn documented_routes(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let paths = doc["paths"].as_object().expect("paths");
    paths
        .iter()
        .map(|(template, item)| {
            let methods = item
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .map(|k| k.to_uppercase())
                .collect();
            (template.clone(), methods)
        })
        .collect()
}

/// The path template's parameters filled with values that name nothing.
fn sample_uri(template: &str) -> String {
    template
        .replace("{path}", "openapi-probe/nothing")
        .replace("{id}", "g_openapi_probe")
        .replace("{sec_id}", "sec_00000000000000000000000000000000")
        .replace("{grt_id}", "grt_openapi_probe")
}

/// An operation's documented answer for `status`, after `$ref`s.
fn documented_response<'a>(doc: &'a Value, op: &'a Value, status: u16) -> Option<&'a Value> {
    op["responses"]
        .get(status.to_string())
        .map(|r| resolve(doc, r))
}

/// Every way `reply` departs from what the document says `method template` answers.
fn conformance(doc: &Value, method: &str, template: &str, reply: &Reply) -> Vec<String> {
    let what = format!("{} {template} -> {}", method.to_uppercase(), reply.status);
    let Some(op) = doc["paths"][template].get(method) else {
        return vec![format!("{what}: operation not documented")];
    };
    let Some(response) = documented_response(doc, op, reply.status) else {
        return vec![format!(
            "{what}: status not documented ({:?})",
            reply.json()
        )];
    };
    let mut problems = Vec::new();
    if let Some(headers) = response["headers"].as_object() {
        for (name, header) in headers {
            let header = resolve(doc, header);
            if header["required"] == true && !reply.headers.contains_key(name.as_str()) {
                problems.push(format!("{what}: required header {name} missing"));
            }
        }
    }
    let content_type = reply
        .headers
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    match response["content"].as_object() {
        None => {
            if !reply.body.is_empty() {
                problems.push(format!("{what}: documented without a body, got one"));
            }
        }
        Some(content) => {
            let Some(media) = content_type.and_then(|ct| content.get(ct)) else {
                problems.push(format!(
                    "{what}: content-type {content_type:?} not among {:?}",
                    content.keys().collect::<Vec<_>>()
                ));
                return problems;
            };
            if content_type == Some("application/json") {
                let body: Value = match serde_json::from_slice(&reply.body) {
                    Ok(body) => body,
                    Err(e) => {
                        problems.push(format!("{what}: body is not JSON: {e}"));
                        return problems;
                    }
                };
                for error in schema_errors(doc, &media["schema"], &body) {
                    problems.push(format!("{what}: {error}\n  body: {body}"));
                }
            }
        }
    }
    problems
}

/// True when the router answered "there is no such route" rather than
/// running the operation (whatever the operation then said).
fn no_such_route(reply: &Reply) -> bool {
    reply.status == 405
        || (reply.status == 404
            && reply.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("no route for")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_serves_the_document_in_the_repository() {
    let env = TestEnv::start(Backend::Embedded);
    let reply = get(&env.client(), "/v1/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..])
    );
    assert!(reply.headers.contains_key("x-request-id"));
    assert_eq!(&reply.body[..], OPENAPI_DOCUMENT.as_bytes());

    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["info"]["version"],
        env!("CARGO_PKG_VERSION"),
        "info.version follows Cargo.toml"
    );
    let reply = raw(&env.client(), Method::POST, "/v1/openapi.json", b"{}").await;
    assert_eq!(reply.status, 405);
    assert_eq!(
        reply.headers.get("allow").map(|v| v.as_bytes()),
        Some(&b"GET"[..])
    );

    // Public like health: a caller refused everything else still reads it.
    let strict = TestEnv::start_with(Backend::Embedded, &["--unmapped-callers", "refuse"]);
    let reply = get(&strict.client(), "/v1/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], OPENAPI_DOCUMENT.as_bytes());
    let reply = get(&strict.client(), "/v1/secrets").await;
    assert_eq!(reply.status, 403, "{:?}", reply.json());
}

/// `(resource, what follows it)` of an arm of `Api::route`: `None`,
/// `Some("literal")`, `Some(name)` or a sub-router's `rest`.
type ApiArm = (String, String);
/// `(resource, takes an id, method)` of an arm of `compat::route`.
type CompatArm = (String, bool, String);

/// The route arms of the router's source: `Some(("resource", None | Some(x) | x))`
/// in `api.rs`, `("resource", None | Some(_), Method::M)` in `compat.rs`. Read
/// from the code so that a new arm shows up here without anyone listing it.
fn routes_in_code() -> (Vec<ApiArm>, Vec<CompatArm>) {
    let api = include_str!("../src/socket/api.rs");
    let route_fn = api
        .split("async fn route<")
        .nth(1)
        .and_then(|rest| rest.split("async fn secret<").next())
        .expect("Api::route in src/socket/api.rs");
    let mut arms = Vec::new();
    for piece in route_fn.split("Some((\"").skip(1) {
        let (resource, rest) = piece.split_once('"').expect("a quoted resource");
        let rest = rest.trim_start_matches(',').trim_start();
        let tail = rest.split(")) =>").next().unwrap_or(rest).trim().to_owned();
        arms.push((resource.to_owned(), tail));
    }
    let compat = include_str!("../src/socket/compat.rs");
    let mut compat_arms = Vec::new();
    for piece in compat.split("(\"").skip(1) {
        let arm = piece.split("=>").next().unwrap_or_default();
        let Some((resource, rest)) = arm.split_once("\", ") else {
            continue;
        };
        if !resource.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        let Some((id, rest)) = rest.split_once(", Method::") else {
            continue;
        };
        let method: String = rest.chars().take_while(char::is_ascii_uppercase).collect();
        compat_arms.push((resource.to_owned(), id != "None", method));
    }
    (arms, compat_arms)
}

#[test]
fn every_route_of_the_router_is_documented() {
    let doc = document();
    let routes = documented_routes(&doc);
    let (arms, compat_arms) = routes_in_code();
    assert!(arms.len() >= 15, "route arms found: {arms:?}");
    assert!(compat_arms.len() >= 6, "compat arms found: {compat_arms:?}");
    let mut missing = Vec::new();
    for (resource, tail) in &arms {
        let exact = format!("/v1/{resource}");
        let found = match tail.as_str() {
            "None" => routes.contains_key(&exact),
            // `Some("literal")`: a fixed sub-path.
            t if t.starts_with("Some(\"") => {
                let literal = t.trim_start_matches("Some(\"").trim_end_matches("\")");
                routes.contains_key(&format!("{exact}/{literal}"))
            }
            // `Some(name)` or `rest`: a parameter, or a sub-router (compat).
            _ => routes.keys().any(|p| {
                p.starts_with(&format!("{exact}/{{")) || p.starts_with(&format!("{exact}/"))
            }),
        };
        if !found {
            missing.push(format!("/v1/{resource} ({tail})"));
        }
    }
    for (resource, with_id, method) in &compat_arms {
        let served = routes.iter().any(|(p, methods)| {
            let Some(rest) = p.strip_prefix(&format!("/v1/vault/{resource}")) else {
                return false;
            };
            rest.starts_with("/{") == *with_id
                && (rest.is_empty() || *with_id)
                && methods.contains(method)
        });
        if !served {
            missing.push(format!(
                "{method} /v1/vault/{resource}{}",
                if *with_id { "/{id}" } else { "" }
            ));
        }
    }
    assert!(missing.is_empty(), "served but not documented: {missing:?}");

    // And the other way: each documented path starts with a resource the router knows.
    let resources: BTreeSet<&str> = arms.iter().map(|(r, _)| r.as_str()).collect();
    for template in routes.keys() {
        let resource = template
            .strip_prefix("/v1/")
            .and_then(|r| r.split('/').next())
            .unwrap_or("");
        assert!(
            resources.contains(resource),
            "{template}: no route arm for `{resource}`"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documented_operations_are_served_and_others_are_not() {
    let doc = document();
    let env = TestEnv::start(Backend::Embedded);
    let c = env.client();
    let mut problems = Vec::new();
    for (template, methods) in documented_routes(&doc) {
        let uri = sample_uri(&template);
        for method in METHODS.map(str::to_uppercase) {
            let documented = methods.contains(&method);
            let http_method = Method::from_bytes(method.as_bytes()).expect("method");
            let op = &doc["paths"][&template][method.to_lowercase()];
            if documented
                && op["responses"]["200"]["content"]
                    .get("text/event-stream")
                    .is_some()
            {
                // A stream does not end: its status and type are all there is to check.
                let stream = c.stream(&uri, &[]).await.expect("stream");
                if stream.status != 200
                    || stream.headers.get("content-type").map(|v| v.as_bytes())
                        != Some(&b"text/event-stream"[..])
                {
                    problems.push(format!("GET {template}: stream answered {}", stream.status));
                }
                continue;
            }
            let body = op["requestBody"]["content"]["application/json"]["example"].to_string();
            let body = op.get("requestBody").map(|_| body.into_bytes());
            let reply = c.request(http_method, &uri, body).await.expect("request");
            if documented {
                if no_such_route(&reply) {
                    problems.push(format!(
                        "{method} {uri}: documented, not served: {:?}",
                        reply.json()
                    ));
                } else {
                    problems.extend(conformance(&doc, &method.to_lowercase(), &template, &reply));
                }
            } else {
                let allow: BTreeSet<String> = reply
                    .headers
                    .get("allow")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect();
                if reply.status != 405 || allow != methods {
                    problems.push(format!(
                        "{method} {uri}: undocumented, answered {} with Allow {allow:?} (documented {methods:?})",
                        reply.status
                    ));
                }
            }
        }
    }
    let reply = get(&c, "/v1/no-such-resource").await;
    assert!(no_such_route(&reply), "{:?}", reply.json());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn examples_and_schemas_are_valid_json_schema() {
    let doc = document();
    let meta = jsonschema::draft202012::meta::validator();
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        assert!(
            meta.is_valid(schema),
            "components.schemas.{name} is not JSON Schema 2020-12"
        );
    }
    let mut examples = 0;
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            // Every operation's answers compile (their `$ref`s resolve).
            for response in op["responses"].as_object().expect("responses").values() {
                for media in resolve(&doc, response)["content"]
                    .as_object()
                    .into_iter()
                    .flatten()
                {
                    validator(&doc, &media.1["schema"]);
                }
            }
            let Some(request) = op.get("requestBody") else {
                continue;
            };
            let media = &request["content"]["application/json"];
            let example = media
                .get("example")
                .unwrap_or_else(|| panic!("{method} {template}: no example"));
            let errors = schema_errors(&doc, &media["schema"], example);
            assert!(errors.is_empty(), "{method} {template} example: {errors:?}");
            examples += 1;
        }
    }
    assert!(examples >= 11, "{examples} request examples");

    // The document is as strict as the server: unknown fields and non-objects are refused.
    let put = &doc["paths"]["/v1/secrets/{path}"]["put"]["requestBody"]["content"]
        ["application/json"]["schema"];
    for invalid in [
        json!({"value": "x", "valeu": 1}),
        json!(["x"]),
        json!({"value": 1}),
        json!({}),
    ] {
        assert!(
            !schema_errors(&doc, put, &invalid).is_empty(),
            "{invalid} should be invalid"
        );
    }
}

/// Sends one request and checks the answer against the document; returns it.
struct Checker<'a> {
    doc: &'a Value,
    client: &'a Client,
    problems: Vec<String>,
    seen: BTreeSet<(String, String, u16)>,
}

impl Checker<'_> {
    async fn call(
        &mut self,
        method: Method,
        template: &str,
        uri: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let body = body.map(|b| b.to_string().into_bytes());
        let reply = self
            .client
            .request_with(method.clone(), uri, body, headers)
            .await
            .expect("request");
        self.check(&method, template, &reply);
        reply
    }

    fn check(&mut self, method: &Method, template: &str, reply: &Reply) {
        let method = method.as_str().to_lowercase();
        self.problems
            .extend(conformance(self.doc, &method, template, reply));
        self.seen
            .insert((method, template.to_owned(), reply.status));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_match_the_documented_schemas() {
    let doc = document();
    let mut env = TestEnv::start_with(Backend::Redis, &["--max-body-bytes", "65536"]);
    let client = env.client();
    let mut c = Checker {
        doc: &doc,
        client: &client,
        problems: Vec::new(),
        seen: BTreeSet::new(),
    };
    let expires = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    let secret = "/v1/secrets/{path}";

    c.call(Method::GET, "/v1/health", "/v1/health", None, &[])
        .await;
    c.call(
        Method::GET,
        "/v1/openapi.json",
        "/v1/openapi.json",
        None,
        &[],
    )
    .await;

    // Writes, reads and their errors.
    let body = json!({"value": "sk-live-0123456789", "type": "api_key", "tier": "standard",
                      "description": "d", "tags": {"team": "a"}, "expires_at": expires});
    let key = [("idempotency-key", "openapi-1")];
    let w = c
        .call(
            Method::PUT,
            secret,
            "/v1/secrets/app/key",
            Some(body.clone()),
            &key,
        )
        .await;
    assert_eq!(w.status, 200, "{:?}", w.json());
    c.call(
        Method::PUT,
        secret,
        "/v1/secrets/app/key",
        Some(json!({"value": "other"})),
        &key,
    )
    .await; // 422
    c.call(
        Method::PUT,
        secret,
        "/v1/secrets/app/key",
        Some(json!({"value": "v", "cas": 7})),
        &[],
    )
    .await; // 409
    c.call(
        Method::PUT,
        secret,
        "/v1/secrets/app/key",
        Some(json!({"value": "v", "nope": 1})),
        &[],
    )
    .await; // 400
    c.call(
        Method::PUT,
        secret,
        "/v1/secrets/app/key",
        Some(json!({"value": "x".repeat(70_000)})),
        &[],
    )
    .await; // 413
    c.call(
        Method::PUT,
        secret,
        "/v1/secrets/app/key",
        Some(json!({"value": "v2-0123456789"})),
        &[],
    )
    .await;
    c.call(Method::GET, secret, "/v1/secrets/app/key", None, &[])
        .await;
    c.call(
        Method::GET,
        secret,
        "/v1/secrets/app/key?version=1",
        None,
        &[],
    )
    .await;
    c.call(
        Method::GET,
        secret,
        "/v1/secrets/app/key?version=0",
        None,
        &[],
    )
    .await; // 400
    c.call(Method::GET, secret, "/v1/secrets/app/missing", None, &[])
        .await; // 404
    c.call(Method::HEAD, secret, "/v1/secrets/app/key", None, &[])
        .await;
    c.call(Method::HEAD, secret, "/v1/secrets/app/missing", None, &[])
        .await;
    c.call(
        Method::PATCH,
        secret,
        "/v1/secrets/app/key",
        Some(json!({"description": "e", "expires_at": null})),
        &[],
    )
    .await;
    c.call(
        Method::PATCH,
        secret,
        "/v1/secrets/app/key",
        Some(json!([null])),
        &[],
    )
    .await; // 400
    let short = (chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339();
    put(
        &client,
        "app/short",
        json!({"value": "soon-gone-0123", "expires_at": short}),
    )
    .await;
    c.call(
        Method::GET,
        "/v1/secrets",
        "/v1/secrets?prefix=app/&limit=1",
        None,
        &[],
    )
    .await;
    c.call(
        Method::GET,
        "/v1/secrets",
        "/v1/secrets?limit=500",
        None,
        &[],
    )
    .await; // 400
    c.call(
        Method::GET,
        "/v1/versions/{path}",
        "/v1/versions/app/key",
        None,
        &[],
    )
    .await;
    c.call(
        Method::POST,
        "/v1/rotate/{path}",
        "/v1/rotate/app/key",
        Some(json!({"value": "v3-0123456789", "grace_period_seconds": 60})),
        &[],
    )
    .await;
    c.call(
        Method::GET,
        "/v1/versions/{path}",
        "/v1/versions/app/key",
        None,
        &[],
    )
    .await;
    c.call(
        Method::POST,
        "/v1/rollback/{path}",
        "/v1/rollback/app/key",
        Some(json!({"version": 1})),
        &[],
    )
    .await;
    c.call(
        Method::POST,
        "/v1/rollback/{path}",
        "/v1/rollback/app/key",
        Some(json!({"version": 99})),
        &[],
    )
    .await;
    c.call(
        Method::POST,
        "/v1/batch",
        "/v1/batch",
        Some(json!({"paths": ["app/key", "app/missing", "../x"]})),
        &[],
    )
    .await;
    c.call(
        Method::POST,
        "/v1/import",
        "/v1/import",
        Some(json!({"dotenv": "A=1\nB=2\nA=3\n", "namespace": "imp", "dry_run": true})),
        &[],
    )
    .await;
    c.call(
        Method::POST,
        "/v1/import",
        "/v1/import",
        Some(json!({"dotenv": "A=1\nB=2\n", "namespace": "imp", "tier_prefix": {"B": "critical"}})),
        &[],
    )
    .await;
    c.call(
        Method::POST,
        "/v1/import",
        "/v1/import",
        Some(json!({"dotenv": "not a line", "namespace": "imp"})),
        &[],
    )
    .await; // 400
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.call(Method::GET, secret, "/v1/secrets/app/short", None, &[])
        .await; // 410

    // Access: tokens (201 and 202), grants, approvals, and the token's use.
    let t = c
        .call(
            Method::POST,
            "/v1/tokens",
            "/v1/tokens",
            Some(json!({"scope": "secrets:read:app/*", "ttl_seconds": 60, "max_uses": 2})),
            &[],
        )
        .await;
    assert_eq!(t.status, 201, "{:?}", t.json());
    put(
        &client,
        "vip/key",
        json!({"value": "crit-0123456789", "tier": "critical"}),
    )
    .await;
    let p = c
        .call(
            Method::POST,
            "/v1/tokens",
            "/v1/tokens",
            Some(json!({"scope": "secrets:read:vip/key", "ttl_seconds": 60})),
            &[],
        )
        .await;
    assert_eq!(p.status, 202, "{:?}", p.json());
    let approval = p.json()["approval_id"]
        .as_str()
        .expect("approval_id")
        .to_owned();
    c.call(Method::GET, "/v1/approvals", "/v1/approvals", None, &[])
        .await;
    c.call(
        Method::POST,
        "/v1/approvals/{id}/approve",
        &format!("/v1/approvals/{approval}/approve"),
        None,
        &[],
    )
    .await; // 403: own
    c.call(
        Method::POST,
        "/v1/approvals/{id}/deny",
        "/v1/approvals/ap_nothing/deny",
        None,
        &[],
    )
    .await;
    let token = t.json()["token"].as_str().expect("token").to_owned();
    let with_token = [("authorization", format!("Bearer {token}"))];
    let with_token: Vec<(&str, &str)> = with_token.iter().map(|(k, v)| (*k, v.as_str())).collect();
    c.call(
        Method::GET,
        secret,
        "/v1/secrets/app/key",
        None,
        &with_token,
    )
    .await;
    c.call(
        Method::GET,
        secret,
        "/v1/secrets/app/key",
        None,
        &[("authorization", "Bearer avt_unknown")],
    )
    .await; // 401
    c.call(
        Method::GET,
        "/v1/health",
        "/v1/health",
        None,
        &[("authorization", "Basic eA==")],
    )
    .await; // 401
    let g = c
        .call(
            Method::POST,
            "/v1/grants",
            "/v1/grants",
            Some(json!({"agent_id": "reporting-bot", "path": "app/*"})),
            &[],
        )
        .await;
    assert_eq!(g.status, 201, "{:?}", g.json());
    c.call(Method::GET, "/v1/grants", "/v1/grants", None, &[])
        .await;
    let grant = g.json()["grant_id"].as_str().expect("grant_id").to_owned();
    c.call(
        Method::DELETE,
        "/v1/grants/{id}",
        &format!("/v1/grants/{grant}"),
        None,
        &[],
    )
    .await;
    c.call(
        Method::DELETE,
        "/v1/grants/{id}",
        &format!("/v1/grants/{grant}"),
        None,
        &[],
    )
    .await; // 404

    // Leak guard and audit.
    c.call(
        Method::POST,
        "/v1/redact",
        "/v1/redact",
        Some(json!({"text": "key=sk-live-0123456789 and c2stbGl2ZS0wMTIzNDU2Nzg5"})),
        &[],
    )
    .await;
    c.call(Method::GET, "/v1/audit", "/v1/audit?limit=200", None, &[])
        .await;
    c.call(Method::GET, "/v1/audit", "/v1/audit?limit=0", None, &[])
        .await; // 400

    // The /v1/vault/* routes.
    let created = c
        .call(
            Method::POST,
            "/v1/vault/secrets",
            "/v1/vault/secrets",
            Some(json!({"name": "tools/search-key", "value": "sk-123", "tier": "standard"})),
            &[],
        )
        .await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    c.call(
        Method::POST,
        "/v1/vault/secrets",
        "/v1/vault/secrets",
        Some(json!({"path": "tools/search-key", "value": "sk-123"})),
        &[],
    )
    .await; // 409
    let id = created.json()["id"].as_str().expect("id").to_owned();
    c.call(
        Method::GET,
        "/v1/vault/secrets",
        "/v1/vault/secrets?limit=2",
        None,
        &[],
    )
    .await;
    c.call(
        Method::GET,
        "/v1/vault/secrets/{sec_id}",
        &format!("/v1/vault/secrets/{id}"),
        None,
        &[],
    )
    .await;
    let cg = c
        .call(
            Method::POST,
            "/v1/vault/grants",
            "/v1/vault/grants",
            Some(json!({"agent_id": "reporting-bot", "secret_id": id})),
            &[],
        )
        .await;
    assert_eq!(cg.status, 201, "{:?}", cg.json());
    c.call(
        Method::GET,
        "/v1/vault/grants",
        "/v1/vault/grants",
        None,
        &[],
    )
    .await;
    let grt = cg.json()["id"].as_str().expect("grant id").to_owned();
    c.call(
        Method::DELETE,
        "/v1/vault/grants/{grt_id}",
        &format!("/v1/vault/grants/{grt}"),
        None,
        &[],
    )
    .await;
    c.call(
        Method::DELETE,
        "/v1/vault/secrets/{sec_id}",
        &format!("/v1/vault/secrets/{id}"),
        None,
        &[],
    )
    .await;
    c.call(
        Method::GET,
        "/v1/vault/secrets/{sec_id}",
        &format!("/v1/vault/secrets/{id}"),
        None,
        &[],
    )
    .await; // 404

    c.call(Method::DELETE, secret, "/v1/secrets/app/key", None, &[])
        .await;
    c.call(Method::DELETE, secret, "/v1/secrets/app/key", None, &[])
        .await; // 404

    // 503: storage down; reads and writes answer the documented error.
    env.redis.as_mut().expect("redis").stop();
    c.call(
        Method::PUT,
        secret,
        "/v1/secrets/app/down",
        Some(json!({"value": "v"})),
        &[],
    )
    .await;
    c.call(Method::GET, "/v1/secrets", "/v1/secrets", None, &[])
        .await;

    assert!(c.problems.is_empty(), "{}", c.problems.join("\n"));
    // The scenario reached what it meant to: each of these answers was checked.
    for (method, template, status) in [
        ("put", secret, 200),
        ("put", secret, 400),
        ("put", secret, 409),
        ("put", secret, 413),
        ("put", secret, 422),
        ("get", secret, 200),
        ("get", secret, 404),
        ("get", secret, 410),
        ("get", secret, 401),
        ("head", secret, 404),
        ("patch", secret, 200),
        ("delete", secret, 204),
        ("post", "/v1/tokens", 202),
        ("post", "/v1/approvals/{id}/approve", 403),
        ("post", "/v1/approvals/{id}/deny", 403),
        ("post", "/v1/rollback/{path}", 200),
        ("post", "/v1/rotate/{path}", 200),
        ("post", "/v1/import", 200),
        ("post", "/v1/batch", 200),
        ("get", "/v1/audit", 200),
        ("post", "/v1/redact", 200),
        ("post", "/v1/vault/secrets", 409),
        ("delete", "/v1/vault/grants/{grt_id}", 204),
        ("put", secret, 503),
    ] {
        assert!(
            c.seen
                .contains(&(method.to_owned(), template.to_owned(), status)),
            "{method} {template} never answered {status}; seen: {:?}",
            c.seen
        );
    }
    // And a body that is not a JSON object is refused, as the document says.
    let reply = raw(&client, Method::POST, "/v1/batch", b"[[\"app/key\"]]").await;
    assert_eq!(reply.status, 400, "{:?}", reply.json());
}
