//! Access between agents and tenants on one Redis: grants, scoped bearer
//! tokens (ttl, max_uses, atomic across sidecars), approvals of tokens for
//! critical secrets (the approver is a real process of another uid), and
//! tenant isolation down to the Redis keys. Every sidecar here is a real
//! `agentvault dev` process; several share one redis-server and one keyring.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use agentvault::client::{Client, Reply};
use hyper::Method;
use serde_json::{json, Value};
use support::peers::{as_uid, assert_root, cli_as};
use support::{
    assert_denial_audited, assert_denied, assert_error, assert_hidden, get, put, put_value, send,
    RedisServer, Shared, Sidecar,
};

const TD: &str = "dev.local";
const RESEARCHER: u32 = 1001;
const APPROVER: u32 = 1003;

// ---- harness -----------------------------------------------------------------

fn agent_id(tenant: &str, agent: &str) -> String {
    format!("spiffe://{TD}/agent/{tenant}/{agent}")
}

fn assert_invalid(reply: &Reply, field: &str) {
    assert_error(reply, 400, "invalid_request");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.starts_with(&format!("{field}:")),
        "the message should name `{field}`: {message:?}"
    );
}

/// A sidecar of `agent` on the shared Redis, without the record cache. These
/// tests are about who may read what right after a grant, revocation or
/// delete on another sidecar; a cached sidecar sees such a change once its
/// announcement arrives, which `tests/cache.rs` covers.
fn sidecar(shared: &Shared, tenant: &str, agent: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec!["--cache-max-entries", "0"];
    args.extend_from_slice(extra);
    shared.sidecar(tenant, agent, &args)
}

async fn read(c: &Client, path: &str) -> Reply {
    get(c, &format!("/v1/secrets/{path}")).await
}

async fn grant(c: &Client, agent: &str, path: &str) -> Reply {
    send(
        c,
        Method::POST,
        "/v1/grants",
        json!({"agent_id": agent, "path": path}),
    )
    .await
}

async fn grant_ids(c: &Client) -> Vec<String> {
    let reply = get(c, "/v1/grants").await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    reply
        .json()
        .as_array()
        .expect("a list of grants")
        .iter()
        .map(|g| g["grant_id"].as_str().expect("grant_id").to_owned())
        .collect()
}

async fn delete(c: &Client, uri: &str) -> Reply {
    c.request(Method::DELETE, uri, None).await.expect("request")
}

async fn mint(c: &Client, body: Value) -> Reply {
    send(c, Method::POST, "/v1/tokens", body).await
}

/// Mints a token that needs no approval and returns it.
async fn mint_ok(c: &Client, scope: &str, ttl: u64, max_uses: Option<u64>) -> String {
    let mut body = json!({"scope": scope, "ttl_seconds": ttl});
    if let Some(n) = max_uses {
        body["max_uses"] = json!(n);
    }
    let reply = mint(c, body).await;
    assert_eq!(reply.status, 201, "{:?}", reply.json());
    reply.json()["token"].as_str().expect("token").to_owned()
}

fn list_paths(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    reply.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["path"].as_str().expect("path").to_owned())
        .collect()
}

// ---- requests from processes of other uids -----------------------------------

// ---- grants ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exact_grant_opens_one_secret_and_goes_with_it() {
    let shared = Shared::new();
    let a = sidecar(&shared, "acme", "a", &[]);
    let b = sidecar(&shared, "acme", "b", &[]);
    let (ca, cb) = (a.client(), b.client());
    put_value(&ca, "shared/x", "x-secret-1").await;
    put_value(&ca, "shared/y", "y-secret-1").await;
    for path in ["shared/x", "shared/y"] {
        assert_hidden(&read(&cb, path).await, path);
        assert_denial_audited(&cb, path, "no grant covers this path").await;
    }

    let created = grant(&ca, "b", "shared/x").await;
    assert_eq!(created.status, 201, "{:?}", created.json());
    let g = created.json();
    let id = g["grant_id"].as_str().expect("grant_id").to_owned();
    assert!(!id.is_empty());
    assert_eq!(g["agent_id"], agent_id("acme", "b"));
    assert_eq!(g["path"], "shared/x");
    assert!(
        chrono::DateTime::parse_from_rfc3339(g["created_at"].as_str().unwrap_or_default()).is_ok(),
        "{g:?}"
    );

    let x = read(&cb, "shared/x").await;
    assert_eq!(x.status, 200, "{:?}", x.json());
    assert_eq!(x.json()["value"], "x-secret-1");
    assert_hidden(&read(&cb, "shared/y").await, "shared/y");
    // A grant is for reading only.
    let write = put(&cb, "shared/x", json!({"value": "b-was-here"})).await;
    assert_denied(&write, "not the owner");

    assert_eq!(grant_ids(&ca).await, vec![id.clone()], "made");
    assert_eq!(grant_ids(&cb).await, vec![id.clone()], "received");

    // Deleting the secret takes its exact grant along.
    assert_eq!(delete(&ca, "/v1/secrets/shared/x").await.status, 204);
    assert!(
        !grant_ids(&ca).await.contains(&id),
        "grant outlived its secret"
    );
    assert!(
        !grant_ids(&cb).await.contains(&id),
        "grant outlived its secret"
    );
    put_value(&ca, "shared/x", "x-secret-2").await;
    let again = read(&cb, "shared/x").await;
    assert_hidden(&again, "shared/x");
    assert!(!String::from_utf8_lossy(&again.body).contains("x-secret-2"));

    // Only agents of this tenant can be granted anything.
    let foreign = grant(&ca, &agent_id("other", "b"), "shared/y").await;
    assert_invalid(&foreign, "agent_id");
    assert!(grant_ids(&ca).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_grant_covers_the_prefix_until_revoked() {
    let shared = Shared::new();
    let a = sidecar(&shared, "acme", "a", &[]);
    let b = sidecar(&shared, "acme", "b", &[]);
    let (ca, cb) = (a.client(), b.client());
    put_value(&ca, "shared/x", "x-secret-1").await;
    put_value(&ca, "shared/y", "y-secret-1").await;
    put_value(&ca, "private/z", "z-secret-1").await;

    let exact = grant(&ca, "b", "shared/x").await;
    assert_eq!(exact.status, 201, "{:?}", exact.json());
    let exact_id = exact.json()["grant_id"].as_str().unwrap().to_owned();
    assert_hidden(&read(&cb, "shared/y").await, "shared/y");

    let prefix = grant(&ca, &agent_id("acme", "b"), "shared/*").await;
    assert_eq!(
        prefix.status,
        201,
        "a grant on a prefix of the agent's secrets: {:?}",
        prefix.json()
    );
    assert_eq!(prefix.json()["path"], "shared/*");
    assert_eq!(prefix.json()["agent_id"], agent_id("acme", "b"));
    let prefix_id = prefix.json()["grant_id"].as_str().unwrap().to_owned();
    let y = read(&cb, "shared/y").await;
    assert_eq!(y.status, 200, "{:?}", y.json());
    assert_eq!(y.json()["value"], "y-secret-1");
    assert_hidden(&read(&cb, "private/z").await, "private/z");

    let both: BTreeSet<String> = [exact_id.clone(), prefix_id.clone()].into();
    assert_eq!(
        grant_ids(&ca).await.into_iter().collect::<BTreeSet<_>>(),
        both
    );
    assert_eq!(
        grant_ids(&cb).await.into_iter().collect::<BTreeSet<_>>(),
        both
    );

    // b cannot revoke a's grant; a can.
    assert_error(
        &delete(&cb, &format!("/v1/grants/{prefix_id}")).await,
        404,
        "not_found",
    );
    let revoked = delete(&ca, &format!("/v1/grants/{prefix_id}")).await;
    assert_eq!(revoked.status, 204, "{:?}", revoked.json());
    assert!(revoked.body.is_empty());
    assert_hidden(&read(&cb, "shared/y").await, "shared/y");
    assert_denial_audited(&cb, "shared/y", "no grant covers this path").await;
    assert_eq!(
        read(&cb, "shared/x").await.status,
        200,
        "the exact grant stays"
    );
    assert_eq!(grant_ids(&cb).await, vec![exact_id]);
    assert_error(
        &delete(&ca, &format!("/v1/grants/{prefix_id}")).await,
        404,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_never_opens_another_agents_secrets() {
    let shared = Shared::new();
    let a = sidecar(&shared, "acme", "a", &[]);
    let b = sidecar(&shared, "acme", "b", &[]);
    let c = sidecar(&shared, "acme", "c", &[]);
    let (ca, cb, cc) = (a.client(), b.client(), c.client());
    put_value(&ca, "shared/x", "a-secret-1").await;
    put_value(&cb, "shared/b1", "b-secret-1").await;

    // b may not grant what a owns: a secret b may not read counts as nothing
    // there, so the grant answers as for a free path and reaches nothing.
    let exact = grant(&cb, "c", "shared/x").await;
    assert_eq!(exact.status, 201, "{:?}", exact.json());

    // b's grant on the whole prefix opens b's secrets to c, never a's.
    let prefix = grant(&cb, "c", "shared/*").await;
    let theirs = read(&cc, "shared/x").await;
    assert_hidden(&theirs, "shared/x");
    assert_denial_audited(&cc, "shared/x", "no grant covers this path").await;
    assert!(!String::from_utf8_lossy(&theirs.body).contains("a-secret-1"));
    assert_eq!(prefix.status, 201, "{:?}", prefix.json());
    let own = read(&cc, "shared/b1").await;
    assert_eq!(own.status, 200, "{:?}", own.json());
    assert_eq!(own.json()["value"], "b-secret-1");
    assert_hidden(&read(&cc, "shared/x").await, "shared/x");
}

// ---- tokens ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reads_for_any_local_process_until_its_uses_run_out() {
    let shared = Shared::new();
    let a = sidecar(&shared, "acme", "a", &[]);
    let b = sidecar(&shared, "acme", "b", &[]);
    let (ca, cb) = (a.client(), b.client());
    let written = put(
        &ca,
        "shared/x",
        json!({"value": "x-secret-1", "tier": "standard"}),
    )
    .await;
    assert_eq!(written.status, 200);
    put_value(&ca, "shared/y", "y-secret-1").await;
    assert_hidden(&read(&cb, "shared/x").await, "shared/x");

    let before = chrono::Utc::now();
    let reply = mint(
        &ca,
        json!({"scope": "secrets:read:shared/x", "ttl_seconds": 60, "max_uses": 2}),
    )
    .await;
    assert_eq!(reply.status, 201, "{:?}", reply.json());
    let issued = reply.json();
    let token = issued["token"].as_str().expect("token").to_owned();
    assert!(token.starts_with("avt_") && token.len() > 20, "{token}");
    assert_eq!(issued["scope"], "secrets:read:shared/x");
    assert_eq!(issued["max_uses"], 2);
    assert_eq!(issued["uses_remaining"], 2);
    assert_eq!(issued["approval_status"], "not_required");
    let expires = chrono::DateTime::parse_from_rfc3339(issued["expires_at"].as_str().unwrap())
        .expect("expires_at")
        .with_timezone(&chrono::Utc);
    let lifetime = expires - before;
    assert!(
        lifetime > chrono::Duration::seconds(58) && lifetime <= chrono::Duration::seconds(62),
        "{lifetime}"
    );

    let bearer = b.client().with_token(&token);
    for n in 1..=2 {
        let x = read(&bearer, "shared/x").await;
        assert_eq!(x.status, 200, "use {n}: {:?}", x.json());
        assert_eq!(x.json()["value"], "x-secret-1");
    }
    assert_error(&read(&bearer, "shared/x").await, 401, "unauthenticated");

    // The token string never reaches a log.
    for sidecar in [&a, &b] {
        let logs = sidecar.logs();
        assert!(!logs.is_empty());
        assert!(!logs.contains(&token), "token in the log:\n{logs}");
    }
}

/// A prefix token carries its minter's authority as it stood: secrets written
/// later under the prefix by another agent, or above the tier the token was
/// issued for, stay out of its reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_token_reaches_only_its_minters_secrets_up_to_its_tier() {
    let shared = Shared::new();
    let a = sidecar(&shared, "acme", "a", &[]);
    let b = sidecar(&shared, "acme", "b", &[]);
    let (ca, cb) = (a.client(), b.client());
    let token = mint_ok(&ca, "secrets:read:team/*", 60, None).await;

    put(
        &ca,
        "team/std",
        json!({"value": "std-1", "tier": "standard"}),
    )
    .await;
    put(
        &ca,
        "team/sens",
        json!({"value": "sens-1", "tier": "sensitive"}),
    )
    .await;
    put(
        &ca,
        "team/crit",
        json!({"value": "crit-1", "tier": "critical"}),
    )
    .await;
    put(&cb, "team/theirs", json!({"value": "theirs-1"})).await;

    let bearer = b.client().with_token(&token);
    for (path, value) in [("team/std", "std-1"), ("team/sens", "sens-1")] {
        let reply = read(&bearer, path).await;
        assert_eq!(reply.status, 200, "{path}: {:?}", reply.json());
        assert_eq!(reply.json()["value"], value);
    }
    let crit = read(&bearer, "team/crit").await;
    assert_hidden(&crit, "team/crit");
    assert_denial_audited(&b.client(), "team/crit", "does not reach this one").await;
    assert!(!String::from_utf8_lossy(&crit.body).contains("crit-1"));

    // b's own secret stays b's: the token speaks for a, and a has no grant.
    let stranger = sidecar(&shared, "acme", "c", &[]);
    let theirs = read(&stranger.client().with_token(&token), "team/theirs").await;
    assert_hidden(&theirs, "team/theirs");
    assert_denial_audited(&stranger.client(), "team/theirs", "does not reach this one").await;
    assert!(!String::from_utf8_lossy(&theirs.body).contains("theirs-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_unknown_tokens_are_unauthenticated() {
    let shared = Shared::new();
    let a = sidecar(&shared, "acme", "a", &[]);
    let b = sidecar(&shared, "acme", "b", &[]);
    let ca = a.client();
    put(
        &ca,
        "shared/x",
        json!({"value": "x-secret-1", "tier": "standard"}),
    )
    .await;

    let token = mint_ok(&ca, "secrets:read:shared/x", 1, None).await;
    let bearer = b.client().with_token(&token);
    assert_eq!(read(&bearer, "shared/x").await.status, 200, "fresh");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let expired = read(&bearer, "shared/x").await;
    assert_error(&expired, 401, "unauthenticated");
    assert!(!String::from_utf8_lossy(&expired.body).contains("x-secret-1"));

    let unknown = b
        .client()
        .with_token("avt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_error(&read(&unknown, "shared/x").await, 401, "unauthenticated");
    // Even where the caller could read without it: a bad token is never ignored.
    let unknown_on_a = a
        .client()
        .with_token("avt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    assert_error(
        &read(&unknown_on_a, "shared/x").await,
        401,
        "unauthenticated",
    );
    for sidecar in [&a, &b] {
        assert!(!sidecar.logs().contains(&token));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_and_list_tokens_do_what_their_scope_says_and_no_more() {
    let shared = Shared::new();
    let a = sidecar(&shared, "acme", "a", &[]);
    let b = sidecar(&shared, "acme", "b", &[]);
    let ca = a.client();
    put_value(&ca, "shared/x", "x-secret-1").await;
    put_value(&ca, "shared/y", "y-secret-1").await;
    put_value(&ca, "zzz/other", "o-secret-1").await;

    let write = mint_ok(&ca, "secrets:write:shared/y", 60, None).await;
    let writer = b.client().with_token(&write);
    let written = put(&writer, "shared/y", json!({"value": "y-secret-2"})).await;
    assert_eq!(written.status, 200, "{:?}", written.json());
    assert_eq!(written.json()["version"], 2);
    assert_eq!(read(&ca, "shared/y").await.json()["value"], "y-secret-2");
    let denied = read(&writer, "shared/y").await;
    assert_hidden(&denied, "shared/y");
    assert_denial_audited(
        &b.client(),
        "shared/y",
        "token scope allows write, not read",
    )
    .await;
    assert!(!String::from_utf8_lossy(&denied.body).contains("y-secret-2"));
    // A write over a secret the caller may not read is refused, saying no more.
    assert_denied(
        &put(&writer, "shared/x", json!({"value": "nope"})).await,
        "this path is not the caller's to write",
    );
    assert_denial_audited(
        &b.client(),
        "shared/x",
        "token scope does not cover this path",
    )
    .await;
    assert_eq!(read(&ca, "shared/x").await.json()["version"], 1);

    let list = mint_ok(&ca, "secrets:list:shared/*", 60, Some(2)).await;
    let lister = b.client().with_token(&list);
    let listed = get(&lister, "/v1/secrets?prefix=shared/").await;
    assert_eq!(list_paths(&listed), vec!["shared/x", "shared/y"]);
    assert_hidden(&read(&lister, "shared/x").await, "shared/x");
    // Its uses are counted like any token's.
    assert_error(
        &get(&lister, "/v1/secrets?prefix=shared/").await,
        401,
        "unauthenticated",
    );

    for scope in ["secrets:read:", "secrets:admin:x", "foo"] {
        let reply = mint(&ca, json!({"scope": scope, "ttl_seconds": 60})).await;
        assert_invalid(&reply, "scope");
    }
    for sidecar in [&a, &b] {
        let logs = sidecar.logs();
        assert!(!logs.contains(&write) && !logs.contains(&list), "{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_uses_hold_under_concurrent_use_across_sidecars() {
    let shared = Shared::new();
    let a = sidecar(&shared, "acme", "a", &[]);
    let b = sidecar(&shared, "acme", "b", &[]);
    put(
        &a.client(),
        "shared/x",
        json!({"value": "x-secret-1", "tier": "standard"}),
    )
    .await;
    let token = mint_ok(&a.client(), "secrets:read:shared/x", 60, Some(10)).await;
    let clients = [a.client().with_token(&token), b.client().with_token(&token)];
    let requests = (0..30).map(|n| {
        let c = clients[n % 2].clone();
        tokio::spawn(async move { read(&c, "shared/x").await })
    });
    let replies = futures_util::future::join_all(requests).await;
    let mut ok = 0;
    let mut unauthenticated = 0;
    for reply in replies {
        let reply = reply.expect("request task");
        match reply.status {
            200 => {
                assert_eq!(reply.json()["value"], "x-secret-1");
                ok += 1;
            }
            401 => {
                assert_error(&reply, 401, "unauthenticated");
                unauthenticated += 1;
            }
            other => panic!("unexpected {other}: {:?}", reply.json()),
        }
    }
    assert_eq!((ok, unauthenticated), (10, 20));
}

// ---- approvals ---------------------------------------------------------------

fn approval_ids(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    reply
        .json()
        .as_array()
        .expect("a list of approvals")
        .iter()
        .map(|a| a["approval_id"].as_str().expect("approval_id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_a_critical_secret_waits_for_an_approver() {
    assert_root();
    let shared = Shared::new();
    let roles = [
        "--role",
        "approver=uid:1003",
        "--role",
        "researcher=uid:1001",
    ];
    let a = sidecar(&shared, "acme", "a", &roles);
    let b = sidecar(&shared, "acme", "b", &[]);
    let (ca, sock) = (a.client(), a.socket.clone());
    let written = put(
        &ca,
        "vault/root",
        json!({"value": "crit-secret-1", "tier": "critical"}),
    )
    .await;
    assert_eq!(written.status, 200);

    let reply = mint(
        &ca,
        json!({"scope": "secrets:read:vault/root", "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(reply.status, 202, "{:?}", reply.json());
    let pending = reply.json();
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["approval_status"], "pending");
    let id = pending["approval_id"]
        .as_str()
        .expect("approval_id")
        .to_owned();
    let token = pending["token"].as_str().expect("token").to_owned();
    let bearer = b.client().with_token(&token);
    let waiting = read(&bearer, "vault/root").await;
    assert_denied(&waiting, "waiting for approval");
    assert!(!String::from_utf8_lossy(&waiting.body).contains("crit-secret-1"));

    // The requester sees its request; a role that is neither requester nor approver does not.
    let listed = get(&ca, "/v1/approvals").await;
    assert!(approval_ids(&listed).contains(&id), "{:?}", listed.json());
    let entry = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["approval_id"] == id.as_str())
        .cloned()
        .unwrap();
    assert_eq!(entry["status"], "pending");
    assert_eq!(entry["requested_by"], agent_id("acme", "a"));
    assert_eq!(entry["scope"], "secrets:read:vault/root");
    assert_eq!(entry["tier"], "critical");
    let researcher = as_uid(RESEARCHER, &sock, Method::GET, "/v1/approvals", None).await;
    assert!(!approval_ids(&researcher).contains(&id));

    let approve = format!("/v1/approvals/{id}/approve");
    // Not by the requester, not by a role without the right.
    assert_error(
        &send(&ca, Method::POST, &approve, json!({})).await,
        403,
        "policy_denied",
    );
    let by_researcher = as_uid(RESEARCHER, &sock, Method::POST, &approve, Some(json!({}))).await;
    assert_denied(&by_researcher, "may not approve");
    assert_denied(&read(&bearer, "vault/root").await, "waiting for approval");

    // The approver (another local process, uid 1003) says yes.
    let approved = as_uid(APPROVER, &sock, Method::POST, &approve, Some(json!({}))).await;
    assert_eq!(approved.status, 200, "{:?}", approved.json());
    assert_eq!(approved.json()["status"], "approved");
    assert_eq!(
        approved.json()["decided_by"],
        format!("{}/approver", agent_id("acme", "a"))
    );
    let opened = read(&bearer, "vault/root").await;
    assert_eq!(opened.status, 200, "{:?}", opened.json());
    assert_eq!(opened.json()["value"], "crit-secret-1");
    let again = as_uid(APPROVER, &sock, Method::POST, &approve, Some(json!({}))).await;
    assert_error(&again, 409, "conflict");
    let missing = as_uid(
        APPROVER,
        &sock,
        Method::POST,
        "/v1/approvals/ap_nosuchapproval/approve",
        Some(json!({})),
    )
    .await;
    assert_error(&missing, 404, "not_found");

    // Nobody decides their own request, not even an approver.
    let own = as_uid(
        APPROVER,
        &sock,
        Method::POST,
        "/v1/tokens",
        Some(json!({"scope": "secrets:read:vault/root", "ttl_seconds": 60})),
    )
    .await;
    assert_eq!(own.status, 202, "{:?}", own.json());
    let own_id = own.json()["approval_id"].as_str().unwrap().to_owned();
    let own_decision = as_uid(
        APPROVER,
        &sock,
        Method::POST,
        &format!("/v1/approvals/{own_id}/approve"),
        Some(json!({})),
    )
    .await;
    assert_denied(&own_decision, "nobody may decide their own request");

    // A denied request's token stays closed.
    let reply = mint(
        &ca,
        json!({"scope": "secrets:read:vault/root", "ttl_seconds": 60}),
    )
    .await;
    assert_eq!(reply.status, 202, "{:?}", reply.json());
    let denied_id = reply.json()["approval_id"].as_str().unwrap().to_owned();
    let denied_token = reply.json()["token"].as_str().unwrap().to_owned();
    let deny = as_uid(
        APPROVER,
        &sock,
        Method::POST,
        &format!("/v1/approvals/{denied_id}/deny"),
        Some(json!({})),
    )
    .await;
    assert_eq!(deny.status, 200, "{:?}", deny.json());
    assert_eq!(deny.json()["status"], "denied");
    let closed = read(&b.client().with_token(&denied_token), "vault/root").await;
    assert_denied(&closed, "denied");
    assert!(!String::from_utf8_lossy(&closed.body).contains("crit-secret-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_from_the_command_line() {
    assert_root();
    let shared = Shared::new();
    let a = sidecar(&shared, "acme", "a", &["--role", "approver=uid:1003"]);
    let b = sidecar(&shared, "acme", "b", &[]);
    put(
        &a.client(),
        "vault/root",
        json!({"value": "crit-secret-2", "tier": "critical"}),
    )
    .await;

    let out = cli_as(
        None,
        &a.socket,
        &[
            "token",
            "create",
            "--scope",
            "secrets:read:vault/root",
            "--ttl",
            "60s",
        ],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let token = stdout.trim().to_owned();
    assert!(token.starts_with("avt_"), "{stdout:?}");
    let id = stderr
        .split_whitespace()
        .find(|w| w.starts_with("ap_"))
        .map(|w| w.trim_end_matches([':', ',', '.']).to_owned())
        .unwrap_or_else(|| panic!("no approval id on stderr: {stderr:?}"));

    let get_with_token = ["--token", token.as_str(), "get", "vault/root"];
    let out = cli_as(None, &b.socket, &get_with_token).await;
    assert_eq!(out.status.code(), Some(4), "pending: {out:?}");

    let out = cli_as(None, &a.socket, &["approvals"]).await;
    assert!(out.status.success(), "{out:?}");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listing
            .lines()
            .any(|l| l.contains(&id) && l.contains("pending")),
        "{listing:?}"
    );

    let out = cli_as(None, &a.socket, &["approvals", "approve", &id]).await;
    assert_eq!(out.status.code(), Some(4), "the requester may not: {out:?}");
    let out = cli_as(Some(APPROVER), &a.socket, &["approvals", "approve", &id]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("approved"),
        "{out:?}"
    );

    let out = cli_as(None, &b.socket, &get_with_token).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "crit-secret-2\n");
    let out = cli_as(Some(APPROVER), &a.socket, &["approvals", "approve", &id]).await;
    assert_eq!(out.status.code(), Some(6), "already decided: {out:?}");
    for sidecar in [&a, &b] {
        assert!(!sidecar.logs().contains(&token));
    }
}

// ---- tenants -----------------------------------------------------------------

fn redis_keys(redis: &RedisServer) -> Vec<String> {
    let mut con = redis.connection();
    redis::cmd("KEYS").arg("*").query(&mut con).expect("KEYS")
}

/// Copies a hash key field by field (HGETALL → HSET), bytes as they are.
fn copy_hash(con: &mut redis::Connection, from: &str, to: &str) {
    let fields: Vec<(Vec<u8>, Vec<u8>)> =
        redis::cmd("HGETALL").arg(from).query(con).expect("HGETALL");
    assert!(!fields.is_empty(), "{from} is empty");
    let mut hset = redis::cmd("HSET");
    hset.arg(to);
    for (field, value) in &fields {
        hset.arg(field).arg(value);
    }
    let _: i64 = hset.query(con).expect("HSET");
}

async fn two_tenants(shared: &Shared) -> (Sidecar, Sidecar) {
    let acme = sidecar(shared, "acme", "bot", &[]);
    let other = sidecar(shared, "other", "bot", &[]);
    for (tenant, c, paths) in [
        ("acme", acme.client(), ["p", "acme/only"]),
        ("other", other.client(), ["q", "other/only"]),
    ] {
        for path in paths {
            put_value(&c, path, &format!("plain-{path}-of-{tenant}-9f2c")).await;
        }
    }
    (acme, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_share_redis_and_keyring_but_nothing_else() {
    let shared = Shared::new();
    let (acme, other) = two_tenants(&shared).await;
    let (ca, co) = (acme.client(), other.client());
    // Tokens and grants make keys of their own kinds too.
    mint_ok(&ca, "secrets:read:acme/*", 60, None).await;
    mint_ok(&co, "secrets:read:other/*", 60, None).await;

    assert_eq!(
        list_paths(&get(&ca, "/v1/secrets").await),
        vec!["acme/only", "p"]
    );
    assert_eq!(
        list_paths(&get(&co, "/v1/secrets").await),
        vec!["other/only", "q"]
    );
    assert_error(&read(&co, "p").await, 404, "not_found");
    assert_error(&read(&ca, "q").await, 404, "not_found");

    let keys = redis_keys(&shared.redis);
    assert!(!keys.is_empty());
    let (acme_keys, rest): (Vec<_>, Vec<_>) =
        keys.iter().partition(|k| k.starts_with("av:{acme}:"));
    let (other_keys, stray): (Vec<_>, Vec<_>) =
        rest.iter().partition(|k| k.starts_with("av:{other}:"));
    assert!(stray.is_empty(), "keys outside both tenants: {stray:?}");
    for (tenant, keys, own, foreign) in [
        ("acme", &acme_keys, ["p", "acme/only"], ["q", "other/only"]),
        (
            "other",
            &other_keys,
            ["q", "other/only"],
            ["p", "acme/only"],
        ),
    ] {
        for path in own {
            for kind in ["s", "v"] {
                let key = format!("av:{{{tenant}}}:{kind}:{path}");
                assert!(keys.iter().any(|k| **k == key), "{key} missing: {keys:?}");
            }
        }
        for path in foreign {
            assert!(
                !keys
                    .iter()
                    .any(|k| k.ends_with(&format!(":s:{path}"))
                        || k.ends_with(&format!(":v:{path}"))),
                "{tenant} holds a key for the other tenant's {path}: {keys:?}"
            );
        }
        assert!(
            keys.iter().any(|k| k.contains(":tok:")),
            "{tenant}'s token key: {keys:?}"
        );
    }
}

/// A record copied verbatim from one tenant's keys to another's: the policy
/// decides on metadata nobody authenticated, so the copy must fail the
/// integrity check, never answer with its plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_copied_into_another_tenant_fails_closed() {
    let shared = Shared::new();
    let (acme, other) = two_tenants(&shared).await;
    let plaintext = read(&acme.client(), "p").await.json()["value"]
        .as_str()
        .expect("acme reads its own p")
        .to_owned();
    let mut con = shared.redis.connection();
    copy_hash(&mut con, "av:{acme}:s:p", "av:{other}:s:p");
    copy_hash(&mut con, "av:{acme}:v:p", "av:{other}:v:p");
    let _: i64 = redis::cmd("ZADD")
        .arg("av:{other}:idx")
        .arg(0)
        .arg("p")
        .query(&mut con)
        .expect("ZADD");

    let reply = read(&other.client(), "p").await;
    assert!(
        !String::from_utf8_lossy(&reply.body).contains(&plaintext),
        "plaintext leaked: {:?}",
        reply.json()
    );
    assert_error(&reply, 500, "internal");
    let logs = other.logs();
    assert!(
        logs.lines().any(|l| l.contains("possible tampering")),
        "no tampering line in the log:\n{logs}"
    );
    assert!(!logs.contains(&plaintext));
}

/// The same copy with the owner rewritten to the other tenant's agent, so
/// that the policy lets the read through to the decryption, which must fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copied_record_with_a_forged_owner_fails_its_integrity_check() {
    let shared = Shared::new();
    let (acme, other) = two_tenants(&shared).await;
    let plaintext = read(&acme.client(), "p").await.json()["value"]
        .as_str()
        .expect("acme reads its own p")
        .to_owned();
    let mut con = shared.redis.connection();
    copy_hash(&mut con, "av:{acme}:s:p", "av:{other}:s:p");
    copy_hash(&mut con, "av:{acme}:v:p", "av:{other}:v:p");
    let record: Vec<u8> = redis::cmd("HGET")
        .arg("av:{other}:s:p")
        .arg("record")
        .query(&mut con)
        .expect("HGET record");
    let mut record: Value = serde_json::from_slice(&record).expect("record is JSON");
    assert_eq!(record["owner"], agent_id("acme", "bot"));
    record["owner"] = json!(agent_id("other", "bot"));
    let _: i64 = redis::cmd("HSET")
        .arg("av:{other}:s:p")
        .arg("record")
        .arg(record.to_string())
        .query(&mut con)
        .expect("HSET record");
    let _: i64 = redis::cmd("ZADD")
        .arg("av:{other}:idx")
        .arg(0)
        .arg("p")
        .query(&mut con)
        .expect("ZADD");

    let reply = read(&other.client(), "p").await;
    assert!(
        !String::from_utf8_lossy(&reply.body).contains(&plaintext),
        "plaintext leaked: {:?}",
        reply.json()
    );
    assert_error(&reply, 500, "internal");
    let batch = send(
        &other.client(),
        Method::POST,
        "/v1/batch",
        json!({"paths": ["p", "q"]}),
    )
    .await;
    assert!(!String::from_utf8_lossy(&batch.body).contains(&plaintext));
    let logs = other.logs();
    assert!(
        logs.lines().any(|l| l.contains("possible tampering")),
        "no tampering line in the log:\n{logs}"
    );
    assert!(!logs.contains(&plaintext));
    // The rightful tenant still reads its own.
    assert_eq!(read(&acme.client(), "p").await.json()["value"], plaintext);
}
