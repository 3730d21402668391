//! Hardening (issue 17, security): no existence oracle, the audit view
//! scoped by the policy, unmapped local callers refused, explicit file modes,
//! and strict parsing of what callers send. Against real Redis and real
//! sidecar processes; callers of other uids really run under those uids.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use agentvault::client::{Client, Reply};
use hyper::Method;
use serde_json::{json, Value};
use support::peers::{as_uid, assert_root, shared_dir};
use support::{assert_error, get, put, put_value, send, wait_for, Shared, Sidecar, BIN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WRITER: u32 = 1002;
const AUDITOR: u32 = 1003;

/// A reply's error body with the path in its message replaced, so that the
/// answers for two paths can be compared word for word.
fn shape(reply: &Reply, path: &str) -> (u16, Value) {
    let mut body = reply.json();
    if let Some(message) = body["error"]["message"].as_str() {
        body["error"]["message"] = json!(message.replace(path, "PATH"));
    }
    (reply.status, body)
}

/// Every event of `client`'s audit view.
async fn audit_view(client: &Client) -> Vec<Value> {
    let reply = get(client, "/v1/audit?limit=1000").await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    reply.json()["items"].as_array().expect("items").clone()
}

fn paths_in(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect()
}

// ---- 1. no existence oracle ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_may_not_read_a_path_gets_what_a_missing_path_gets() {
    let shared = Shared::new();
    let owner = shared.sidecar("acme", "owner", &[]);
    let prober = shared.sidecar("acme", "prober", &[]);
    let (owner, prober_client) = (owner.client(), prober.client());
    put_value(&owner, "team/db", "s3cr3t-value").await;

    let (taken, free) = ("team/db", "team/nothing-here");
    for (method, route) in [
        (Method::GET, "secrets"),
        (Method::GET, "versions"),
        (Method::DELETE, "secrets"),
    ] {
        let on_taken = prober_client
            .request(method.clone(), &format!("/v1/{route}/{taken}"), None)
            .await
            .expect("request");
        let on_free = prober_client
            .request(method.clone(), &format!("/v1/{route}/{free}"), None)
            .await
            .expect("request");
        assert_error(&on_taken, 404, "not_found");
        assert_eq!(
            shape(&on_taken, taken),
            shape(&on_free, free),
            "{method} /v1/{route}: a secret the caller may not read answers as a missing path"
        );
    }
    for (route, body) in [
        ("rotate", json!({"value": "x"})),
        ("rollback", json!({"version": 1})),
    ] {
        let on_taken = send(
            &prober_client,
            Method::POST,
            &format!("/v1/{route}/{taken}"),
            body.clone(),
        )
        .await;
        let on_free = send(
            &prober_client,
            Method::POST,
            &format!("/v1/{route}/{free}"),
            body,
        )
        .await;
        assert_error(&on_taken, 404, "not_found");
        assert_eq!(shape(&on_taken, taken), shape(&on_free, free), "{route}");
    }
    let patch = json!({"description": "mine now"});
    let on_taken = send(
        &prober_client,
        Method::PATCH,
        &format!("/v1/secrets/{taken}"),
        patch.clone(),
    )
    .await;
    let on_free = send(
        &prober_client,
        Method::PATCH,
        &format!("/v1/secrets/{free}"),
        patch,
    )
    .await;
    assert_eq!(shape(&on_taken, taken), shape(&on_free, free), "PATCH");

    let head = |path: String| {
        let client = prober_client.clone();
        async move {
            client
                .request(Method::HEAD, &path, None)
                .await
                .expect("HEAD")
        }
    };
    assert_eq!(head(format!("/v1/secrets/{taken}")).await.status, 404);
    assert_eq!(head(format!("/v1/secrets/{free}")).await.status, 404);

    let batch = send(
        &prober_client,
        Method::POST,
        "/v1/batch",
        json!({"paths": [taken, free]}),
    )
    .await;
    assert_eq!(batch.status, 200);
    let errors = &batch.json()["errors"];
    assert_eq!(errors[taken]["code"], "not_found", "{errors}");
    assert_eq!(
        errors[taken]["message"]
            .as_str()
            .map(|m| m.replace(taken, "PATH")),
        errors[free]["message"]
            .as_str()
            .map(|m| m.replace(free, "PATH")),
    );

    // A grant or a token naming the path answers as for a free path, and reaches nothing.
    for path in [taken, free] {
        let grant = send(
            &prober_client,
            Method::POST,
            "/v1/grants",
            json!({"agent_id": "third", "path": path}),
        )
        .await;
        assert_eq!(grant.status, 201, "grant of {path}: {:?}", grant.json());
        let token = send(
            &prober_client,
            Method::POST,
            "/v1/tokens",
            json!({"scope": format!("secrets:read:{path}"), "ttl_seconds": 60}),
        )
        .await;
        assert_eq!(token.status, 201, "token for {path}: {:?}", token.json());
        let bearer = token.json()["token"].as_str().expect("token").to_owned();
        let read = get(
            &prober.client().with_token(bearer),
            &format!("/v1/secrets/{path}"),
        )
        .await;
        assert_error(&read, 404, "not_found");
    }

    // The owner's secret is untouched: nothing above deleted, rotated or changed it.
    let still = get(&owner, &format!("/v1/secrets/{taken}")).await;
    assert_eq!(still.json()["value"], "s3cr3t-value");
    assert_eq!(still.json()["version"], 1);
    assert_eq!(still.json()["description"], Value::Null);

    // A write over it is the one refusal, and says no more than that.
    let write = put(&prober_client, taken, json!({"value": "overwrite"})).await;
    assert_error(&write, 403, "policy_denied");
    assert_eq!(
        write.json()["error"]["reasons"],
        json!(["this path is not the caller's to write"])
    );
    let text = String::from_utf8_lossy(&write.body);
    assert!(
        !text.contains("owner") && !text.contains("s3cr3t"),
        "{text}"
    );

    // The audit keeps the denials with their real reasons, and never the value.
    let events = audit_view(&prober_client).await;
    let denials: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "vault.denied" && e["path"] == taken)
        .collect();
    let actions: Vec<&str> = denials
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["read", "delete", "write", "rotate"] {
        assert!(
            actions.contains(&action),
            "a denied {action} is audited: {actions:?}"
        );
    }
    assert!(denials.iter().all(|e| e["outcome"] == "policy_denied"));
    assert!(
        denials.iter().any(|e| e["reasons"]
            .to_string()
            .contains("not the owner of this secret")),
        "{denials:?}"
    );
    assert!(!serde_json::to_string(&events).unwrap().contains("s3cr3t"));
}

/// Within one agent, a role's scoped secret is hidden from another role the
/// same way; a reader that may see the secret still gets its real refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_scoped_secret_is_hidden_from_other_roles_but_a_grantee_learns_why() {
    assert_root();
    let dir = shared_dir();
    let sidecar = Sidecar::dev(dir.path(), &["--role", &format!("writer=uid:{WRITER}")]);
    let socket = sidecar.socket.clone();
    let written = as_uid(
        WRITER,
        &socket,
        Method::PUT,
        "/v1/secrets/ops/key",
        Some(json!({"value": "v", "scope": "writer"})),
    )
    .await;
    assert_eq!(written.status, 200, "{:?}", written.json());
    // The agent-level caller (this process, no role) provisions but may not read it.
    let client = sidecar.client();
    let hidden = get(&client, "/v1/secrets/ops/key").await;
    let missing = get(&client, "/v1/secrets/ops/none").await;
    assert_eq!(shape(&hidden, "ops/key"), shape(&missing, "ops/none"));
    // …and a provisioning delete still works, as before.
    let deleted = client
        .request(Method::DELETE, "/v1/secrets/ops/key", None)
        .await
        .unwrap();
    assert_eq!(deleted.status, 204);

    // A secret the caller may read but not delete (a grant gives read only): 403 with reasons.
    let shared = Shared::new();
    let owner_sidecar = shared.sidecar("acme", "owner", &[]);
    let owner = owner_sidecar.client();
    let grantee = shared.sidecar("acme", "grantee", &[]);
    put_value(&owner, "shared/key", "v").await;
    let grant = send(
        &owner,
        Method::POST,
        "/v1/grants",
        json!({"agent_id": "grantee", "path": "shared/key"}),
    )
    .await;
    assert_eq!(grant.status, 201);
    let grantee = grantee.client();
    assert_eq!(get(&grantee, "/v1/secrets/shared/key").await.status, 200);
    let delete = grantee
        .request(Method::DELETE, "/v1/secrets/shared/key", None)
        .await
        .unwrap();
    support::assert_denied(&delete, "not the owner");
}

// ---- 2. audit scoped by the policy ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_view_shows_a_caller_its_own_events_and_what_it_may_read() {
    assert_root();
    let shared = Shared::new();
    let other_sidecar = shared.sidecar("acme", "other", &[]);
    let other = other_sidecar.client();
    let me = shared.sidecar("acme", "me", &["--role", &format!("auditor=uid:{AUDITOR}")]);
    let client = me.client();

    // The stream opened now sees only what this caller may see.
    let mut stream = client
        .stream("/v1/audit/stream", &[])
        .await
        .expect("stream");
    assert_eq!(stream.status, 200);

    put_value(&other, "other/hidden", "v").await;
    put_value(&other, "other/shared", "v").await;
    put_value(&client, "mine/a", "v").await;

    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while !seen.iter().any(|p: &String| p == "mine/a") {
            let event = stream
                .next_event()
                .await
                .expect("event")
                .expect("open stream");
            let data: Value = serde_json::from_str(&event.data).expect("json");
            seen.extend(data["path"].as_str().map(str::to_owned));
        }
    })
    .await
    .expect("the caller's own write reaches its stream");
    assert!(!seen.iter().any(|p| p.starts_with("other/")), "{seen:?}");

    let view = paths_in(&audit_view(&client).await);
    assert!(view.contains(&"mine/a".to_owned()), "{view:?}");
    assert!(!view.iter().any(|p| p.starts_with("other/")), "{view:?}");

    // A grant opens the secret, and with it the events about it.
    let grant = send(
        &other,
        Method::POST,
        "/v1/grants",
        json!({"agent_id": "me", "path": "other/shared"}),
    )
    .await;
    assert_eq!(grant.status, 201);
    let view = paths_in(&audit_view(&client).await);
    assert!(view.contains(&"other/shared".to_owned()), "{view:?}");
    assert!(!view.contains(&"other/hidden".to_owned()), "{view:?}");

    // The operator's auditor role sees the whole tenant.
    let reply = as_uid(
        AUDITOR,
        &me.socket,
        Method::GET,
        "/v1/audit?limit=1000",
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let all = paths_in(reply.json()["items"].as_array().expect("items"));
    for path in ["other/hidden", "other/shared", "mine/a"] {
        assert!(
            all.contains(&path.to_owned()),
            "the auditor sees {path}: {all:?}"
        );
    }
}

// ---- 3. unmapped callers ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmapped_caller_is_refused_unless_its_token_allows() {
    assert_root();
    let dir = shared_dir();
    let sidecar = Sidecar::dev(
        dir.path(),
        &[
            "--role",
            &format!("writer=uid:{WRITER}"),
            "--role",
            &format!("auditor=uid:{AUDITOR}"),
            "--unmapped-callers",
            "refuse",
        ],
    );
    // This process runs as root, which no rule maps.
    let client = sidecar.client();
    let refused = get(&client, "/v1/secrets/team/a").await;
    assert_error(&refused, 403, "policy_denied");
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("uid 0"), "{message}");
    assert_eq!(get(&client, "/v1/health").await.status, 200);

    // The writer role works, and can hand the unmapped caller a token.
    for path in ["team/a", "team/b"] {
        let put = as_uid(
            WRITER,
            &sidecar.socket,
            Method::PUT,
            &format!("/v1/secrets/{path}"),
            Some(json!({"value": "v"})),
        )
        .await;
        assert_eq!(put.status, 200, "{:?}", put.json());
    }
    let token = as_uid(
        WRITER,
        &sidecar.socket,
        Method::POST,
        "/v1/tokens",
        Some(json!({"scope": "secrets:read:team/a", "ttl_seconds": 60})),
    )
    .await;
    assert_eq!(token.status, 201, "{:?}", token.json());
    let bearer = client
        .clone()
        .with_token(token.json()["token"].as_str().expect("token"));
    // The token carries its own authority: its scope, nothing of the agent's.
    assert_eq!(get(&bearer, "/v1/secrets/team/a").await.status, 200);
    assert_eq!(get(&bearer, "/v1/secrets/team/b").await.status, 404);
    let write = put(&bearer, "team/c", json!({"value": "v"})).await;
    assert_error(&write, 403, "policy_denied");

    // The refusal is audited, naming the uid, for the operator's auditor to see.
    let reply = as_uid(
        AUDITOR,
        &sidecar.socket,
        Method::GET,
        "/v1/audit?limit=1000",
        None,
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let items = reply.json()["items"].as_array().expect("items").clone();
    assert!(
        items.iter().any(|e| e["event"] == "vault.denied"
            && e["uid"] == 0
            && e["reasons"]
                .to_string()
                .contains("uid 0 is mapped to no role")),
        "{items:?}"
    );
}

// ---- 4. file modes ------------------------------------------------------------------

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn files_the_sidecar_writes_get_their_modes_under_a_permissive_umask() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let socket = dir.path().join("av.sock");
    let log = std::fs::File::create(dir.path().join("log")).expect("log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {BIN} dev --socket {} --data-dir {} --metrics-addr off --socket-mode 0600",
            socket.display(),
            data.display()
        ))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    wait_for("the socket", Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    assert_eq!(mode(&data), 0o700, "data dir");
    assert_eq!(mode(&data.join("store.redb")), 0o600, "embedded store");
    assert_eq!(mode(&data.join("keyring.json")), 0o600, "dev keyring");
    assert_eq!(mode(&socket), 0o600, "socket");
    let _ = child.kill();
    let _ = child.wait();

    let keyring = dir.path().join("new/dir/keyring.json");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {BIN} keygen {}",
            keyring.display()
        ))
        .output()
        .expect("keygen");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&keyring), 0o600, "keygen's keyring");
    assert_eq!(
        mode(keyring.parent().expect("dir")),
        0o700,
        "keygen's new dir"
    );
}

// ---- 5. the small ones ----------------------------------------------------------------

/// Sends raw bytes over the socket and reads until the server closes the
/// connection (or `timeout`): what came back, and whether it closed.
async fn raw_exchange(socket: &Path, request: &[u8]) -> (String, bool) {
    let mut stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await {
            Ok(Ok(0)) => break true,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_headers_are_parsed_strictly() {
    let shared = Shared::new();
    let sidecar = shared.sidecar("acme", "bot", &[]);
    let client = sidecar.client();
    put_value(&client, "a/b", "v").await;
    let token = send(
        &client,
        Method::POST,
        "/v1/tokens",
        json!({"scope": "secrets:read:a/b", "ttl_seconds": 60}),
    )
    .await;
    let token = token.json()["token"].as_str().expect("token").to_owned();

    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let request = format!(
            "GET /v1/secrets/a/b HTTP/1.1\r\nHost: x\r\nAuthorization: {scheme} {token}\r\nConnection: close\r\n\r\n"
        );
        let (response, _) = raw_exchange(&sidecar.socket, request.as_bytes()).await;
        assert_eq!(status_of(&response), 200, "{scheme}: {response}");
    }
    let twice = format!(
        "GET /v1/secrets/a/b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAuthorization: Bearer avt_other\r\nConnection: close\r\n\r\n"
    );
    let (response, _) = raw_exchange(&sidecar.socket, twice.as_bytes()).await;
    assert_eq!(status_of(&response), 400, "{response}");
    assert!(response.contains("invalid_request") && response.contains("Authorization"));
    for bad in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token avt_x"] {
        let request = format!("GET /v1/secrets/a/b HTTP/1.1\r\nHost: x\r\nAuthorization: {bad}\r\nConnection: close\r\n\r\n");
        let (response, _) = raw_exchange(&sidecar.socket, request.as_bytes()).await;
        assert_eq!(status_of(&response), 401, "{bad}: {response}");
    }
}

/// Content-Length with Transfer-Encoding (request smuggling, RFC 9112 §6.1):
/// refused with the contract's 400 and the connection closed, whichever
/// header comes first, and after earlier requests pipelined on the same
/// connection have had their answers; bytes smuggled after it are never read
/// as a request. A body that merely contains such header text is no head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_refused_and_closes_the_connection() {
    let shared = Shared::new();
    let sidecar = shared.sidecar("acme", "bot", &[]);
    let client = sidecar.client();
    let body = r#"{"value":"a"}"#;
    let smuggled = "PUT /v1/secrets/smuggled/x HTTP/1.1\r\nHost: x\r\nContent-Length: 13\r\n\r\n{\"value\":\"s\"}";
    let chunked_body = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let cl_first = format!(
        "PUT /v1/secrets/front/x HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}{smuggled}",
        body.len()
    );
    let te_first = format!(
        "PUT /v1/secrets/front/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{chunked_body}{smuggled}",
        body.len()
    );
    for (what, request) in [("CL then TE", &cl_first), ("TE then CL", &te_first)] {
        let (response, closed) = raw_exchange(&sidecar.socket, request.as_bytes()).await;
        assert!(closed, "{what}: the connection is closed after the answer");
        assert_eq!(status_of(&response), 400, "{what}: {response}");
        assert_eq!(
            response.matches("HTTP/1.1 ").count(),
            1,
            "{what}: {response}"
        );
        let json = &response[response.find("\r\n\r\n").expect("a head") + 4..];
        let json: Value = serde_json::from_str(json).expect("a JSON error");
        assert_eq!(json["error"]["code"], "invalid_request", "{what}");
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{what}"
        );
    }

    // Pipelined on one keep-alive connection: the request before it is
    // served and answered first, then the 400, then the close.
    let pipelined = format!("GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n{cl_first}");
    let (response, closed) = raw_exchange(&sidecar.socket, pipelined.as_bytes()).await;
    assert!(closed, "pipelined: closed");
    let statuses: Vec<u16> = response
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| status_of(&response[at..]))
        .collect();
    assert_eq!(statuses, vec![200, 400], "{response}");
    for path in ["smuggled/x", "front/x"] {
        let reply = get(&client, &format!("/v1/secrets/{path}")).await;
        assert_eq!(reply.status, 404, "{path}: nothing was written");
    }

    // The header text inside a JSON body (sized, then chunked) is a value,
    // not a request: both are written and the connection stays usable.
    let value =
        "POST /v1/x HTTP/1.1\\r\\nContent-Length: 4\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n";
    let text = json!({ "value": value }).to_string();
    let sized = format!(
        "PUT /v1/secrets/text/a HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    );
    let raw_value = "x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
    let raw_text = json!({ "value": raw_value }).to_string();
    let chunked = format!(
        "PUT /v1/secrets/text/b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{raw_text}\r\n0\r\n\r\n",
        raw_text.len()
    );
    let last = "GET /v1/secrets/text/b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let (response, closed) = raw_exchange(
        &sidecar.socket,
        format!("{sized}{chunked}{last}").as_bytes(),
    )
    .await;
    assert!(closed, "closed as the last request asked");
    let statuses: Vec<u16> = response
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| status_of(&response[at..]))
        .collect();
    assert_eq!(statuses, vec![200, 200, 200], "{response}");
    assert_eq!(
        get(&client, "/v1/secrets/text/a").await.json()["value"],
        value
    );
    assert_eq!(
        get(&client, "/v1/secrets/text/b").await.json()["value"],
        raw_value
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_echo_only_a_short_prefix_and_timestamps_stay_in_range() {
    let shared = Shared::new();
    let sidecar = shared.sidecar("acme", "bot", &[]);
    let client = sidecar.client();
    let long = "x".repeat(4000);
    for uri in [
        format!("/v1/{long}"),
        format!("/v1/approvals/{long}/approve"),
        format!("/v1/secrets/{long}"),
    ] {
        let method = if uri.contains("approvals") {
            Method::POST
        } else {
            Method::GET
        };
        let reply = client
            .request(method, &uri, Some(b"{}".to_vec()))
            .await
            .expect("request");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(reply.status >= 400, "{uri}");
        assert!(message.len() < 300, "{} bytes: {message}", message.len());
    }
    let stream = client
        .stream(
            "/v1/audit/stream",
            &[("last-event-id", &format!("{}-0", "9".repeat(3000)))],
        )
        .await
        .expect("stream");
    let reply = stream.into_reply().await.expect("reply");
    assert_error(&reply, 400, "invalid_request");
    assert!(reply.body.len() < 400, "{}", reply.body.len());
    let future_id = format!(
        "{}-0",
        (chrono::Utc::now().timestamp_millis() + 10 * 24 * 3600 * 1000)
    );
    let reply = client
        .stream("/v1/audit/stream", &[("last-event-id", &future_id)])
        .await
        .unwrap();
    assert_error(&reply.into_reply().await.unwrap(), 400, "invalid_request");

    for bad in [
        "1969-07-20T20:17:00Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "2500-01-01T00:00:00Z",
    ] {
        let reply = put(&client, "t/x", json!({"value": "v", "expires_at": bad})).await;
        assert_error(&reply, 400, "invalid_request");
        assert!(reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expires_at"));
        put_value(&client, "t/y", "v").await;
        let patch = send(
            &client,
            Method::PATCH,
            "/v1/secrets/t/y",
            json!({"expires_at": bad}),
        )
        .await;
        assert_error(&patch, 400, "invalid_request");
    }
    let soon = (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339();
    assert_eq!(
        put(&client, "t/x", json!({"value": "v", "expires_at": soon}))
            .await
            .status,
        200
    );
    assert_eq!(get(&client, "/v1/secrets/t/z").await.status, 404);
}
