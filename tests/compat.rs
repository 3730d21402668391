//! `/v1/vault/*`, the grant-based REST shape of the design documents, as an
//! orchestrator written for it uses it: over the socket of real sidecars
//! sharing one Redis (issue 18, item 3).

mod support;

use hyper::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use support::{assert_error, assert_hidden, get, get_when, send, Shared};

/// `sec_` and the first 32 hex digits of SHA-256(tenant "\n" path), worked
/// out here independently of the sidecar.
fn expected_id(tenant: &str, path: &str) -> String {
    let digest = Sha256::digest(format!("{tenant}\n{path}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("sec_{hex}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_created_listed_and_deleted_by_id_without_values() {
    let shared = Shared::new();
    let sidecar = shared.sidecar("acme", "orchestrator", &[]);
    let a = sidecar.client();

    let created = send(
        &a,
        Method::POST,
        "/v1/vault/secrets",
        json!({"path": "openai/api-key", "value": "sk-compat-1", "type": "api_key", "tier": "standard",
               "description": "OpenAI", "tags": {"team": "r"}}),
    )
    .await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let body = created.json();
    let id = expected_id("acme", "openai/api-key");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["path"], "openai/api-key");
    assert_eq!(body["version"], 1);
    assert_eq!(body["type"], "api_key");
    assert_eq!(body["tags"]["team"], "r");
    assert!(body.get("value").is_none(), "{body}");
    assert!(!String::from_utf8_lossy(&created.body).contains("sk-compat-1"));

    // `name` is accepted for `path`; creating an existing path is a conflict.
    let again = send(
        &a,
        Method::POST,
        "/v1/vault/secrets",
        json!({"name": "openai/api-key", "value": "other"}),
    )
    .await;
    assert_error(&again, 409, "conflict");

    send(
        &a,
        Method::POST,
        "/v1/vault/secrets",
        json!({"name": "db/password", "value": "pw"}),
    )
    .await;
    let listed = get(&a, "/v1/vault/secrets").await;
    assert_eq!(listed.status, 200);
    let items = listed.json()["items"].as_array().cloned().unwrap();
    let ids: Vec<&str> = items.iter().filter_map(|i| i["id"].as_str()).collect();
    assert_eq!(
        ids,
        [expected_id("acme", "db/password"), id.clone()],
        "sorted by path"
    );
    assert!(items.iter().all(|i| i.get("value").is_none()));
    assert!(!String::from_utf8_lossy(&listed.body).contains("sk-compat-1"));

    let one = get(&a, &format!("/v1/vault/secrets/{id}")).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["path"], "openai/api-key");
    assert!(one.json().get("value").is_none());

    // The same secret, through the contract's own route.
    assert_eq!(
        get(&a, "/v1/secrets/openai/api-key").await.json()["value"],
        "sk-compat-1"
    );

    let gone = send(
        &a,
        Method::DELETE,
        &format!("/v1/vault/secrets/{id}"),
        json!(null),
    )
    .await;
    assert_eq!(gone.status, 204);
    assert_error(
        &get(&a, "/v1/secrets/openai/api-key").await,
        404,
        "not_found",
    );
    assert_error(
        &get(&a, &format!("/v1/vault/secrets/{id}")).await,
        404,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_name_secrets_by_id_and_go_with_them() {
    let shared = Shared::new();
    let owner_sidecar = shared.sidecar("acme", "orchestrator", &[]);
    let owner = owner_sidecar.client();
    let worker_sidecar = shared.sidecar("acme", "worker", &[]);
    let worker = worker_sidecar.client();
    let created = send(
        &owner,
        Method::POST,
        "/v1/vault/secrets",
        json!({"path": "tools/search-key", "value": "sk-granted"}),
    )
    .await
    .json();
    let secret_id = created["id"].as_str().unwrap().to_owned();

    assert_hidden(
        &get(&worker, "/v1/secrets/tools/search-key").await,
        "tools/search-key",
    );
    let grant = send(
        &owner,
        Method::POST,
        "/v1/vault/grants",
        json!({"agent_id": "worker", "secret_id": secret_id}),
    )
    .await;
    assert_eq!(grant.status, 201, "{:?}", grant.json());
    let grant = grant.json();
    let grant_id = grant["id"].as_str().unwrap().to_owned();
    assert!(grant_id.starts_with("grt_"), "{grant}");
    assert_eq!(grant["secret_id"], secret_id.as_str());
    assert_eq!(grant["agent_id"], "spiffe://dev.local/agent/acme/worker");
    // The worker's sidecar hears of the grant asynchronously.
    let granted = get_when(&worker, "/v1/secrets/tools/search-key", |r| r.status == 200).await;
    assert_eq!(granted.json()["value"], "sk-granted");
    let listed = get(&owner, "/v1/vault/grants").await.json();
    assert_eq!(listed["items"][0]["id"], grant_id.as_str());
    assert_eq!(listed["items"][0]["secret_id"], secret_id.as_str());

    // Revoking by its grt_ id works; so does deleting the secret, which takes its grants.
    let revoked = send(
        &owner,
        Method::DELETE,
        &format!("/v1/vault/grants/{grant_id}"),
        json!(null),
    )
    .await;
    assert_eq!(revoked.status, 204);
    assert_hidden(
        &get_when(&worker, "/v1/secrets/tools/search-key", |r| r.status != 200).await,
        "tools/search-key",
    );
    let regrant = send(
        &owner,
        Method::POST,
        "/v1/vault/grants",
        json!({"agent_id": "worker", "secret_id": secret_id}),
    )
    .await;
    assert_eq!(regrant.status, 201);
    let deleted = send(
        &owner,
        Method::DELETE,
        &format!("/v1/vault/secrets/{secret_id}"),
        json!(null),
    )
    .await;
    assert_eq!(deleted.status, 204);
    let grants = get(&owner, "/v1/vault/grants").await.json();
    assert_eq!(
        grants["items"],
        json!([]),
        "the secret's grants went with it"
    );
    let listed = get_when(&worker, "/v1/vault/grants", |r| {
        r.json()["items"] == json!([])
    })
    .await;
    assert_eq!(listed.json()["items"], json!([]));

    // The worker cannot name (or delete) a secret it cannot list.
    let theirs = send(
        &owner,
        Method::POST,
        "/v1/vault/secrets",
        json!({"path": "private/key", "value": "p"}),
    )
    .await
    .json();
    let private = theirs["id"].as_str().unwrap();
    let refused = send(
        &worker,
        Method::DELETE,
        &format!("/v1/vault/secrets/{private}"),
        json!(null),
    )
    .await;
    assert_error(&refused, 404, "not_found");
    assert_eq!(
        get(&owner, "/v1/secrets/private/key").await.json()["value"],
        "p"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_errors_follow_the_contract_and_calls_are_audited() {
    let shared = Shared::new();
    let sidecar = shared.sidecar("acme", "orchestrator", &[]);
    let a = sidecar.client();
    assert_error(
        &get(&a, "/v1/vault/secrets/sec_0000").await,
        404,
        "not_found",
    );
    assert_error(
        &get(&a, "/v1/vault/secrets/whatever").await,
        404,
        "not_found",
    );
    assert_error(&get(&a, "/v1/vault/nothing").await, 404, "not_found");
    let bad = send(
        &a,
        Method::POST,
        "/v1/vault/secrets",
        json!({"path": "a//b", "value": "v"}),
    )
    .await;
    assert_error(&bad, 400, "invalid_request");
    let unknown = send(
        &a,
        Method::POST,
        "/v1/vault/secrets",
        json!({"path": "a/b", "value": "v", "colour": "red"}),
    )
    .await;
    assert_error(&unknown, 400, "invalid_request");
    let no_secret = send(
        &a,
        Method::POST,
        "/v1/vault/grants",
        json!({"agent_id": "worker", "secret_id": "sec_ffff"}),
    )
    .await;
    assert_error(&no_secret, 404, "not_found");
    let wrong = send(&a, Method::PUT, "/v1/vault/secrets", json!({})).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.headers["allow"], "GET, POST");
    assert_error(
        &send(&a, Method::DELETE, "/v1/vault/grants/grt_nope", json!(null)).await,
        404,
        "not_found",
    );

    let created = send(
        &a,
        Method::POST,
        "/v1/vault/secrets",
        json!({"path": "audited/key", "value": "sk-audit-me"}),
    )
    .await;
    let request_id = created.headers["x-request-id"].to_str().unwrap().to_owned();
    let log = get(&a, "/v1/audit?limit=50").await;
    let events: Vec<Value> = log.json()["items"].as_array().cloned().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "vault.written" && e["request_id"] == request_id.as_str()),
        "{events:#?}"
    );
    assert!(!String::from_utf8_lossy(&log.body).contains("sk-audit-me"));
}
