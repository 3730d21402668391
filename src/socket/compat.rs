//! `/v1/vault/*`: the grant-based REST shape of the documents agentvault was
//! designed from, so an orchestrator written for it works unchanged. Every
//! route is the same vault call as its `/v1/...` twin (same policy, same
//! audit); only names and shapes differ:
//!
//! - a secret is named by an id, `sec_` and the first 32 hex digits of
//!   SHA-256(`tenant` `\n` `path`): stable, the same on every sidecar of the
//!   tenant, and nothing to store. An id is resolved by walking the caller's
//!   own listing, so a caller can only name secrets it could list.
//! - `POST /v1/vault/secrets` creates (409 if the path holds a secret); no
//!   answer of these routes ever carries a value.
//! - a grant is `grt_…`, the grant's own id under that prefix, and names the
//!   secret by `secret_id`.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use hyper::body::Body;
use hyper::{Method, Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

use super::http::{empty_response, json_response, Answer, ApiError, BodyReader, BoxError, Query};
use crate::identity::Caller;
use crate::model::{Grant, SecretType, Tier};
use crate::vault::{Metadata, PutRequest, SecretValue, Vault, VaultError};

const SECRET_ID_PREFIX: &str = "sec_";
const GRANT_ID_PREFIX: &str = "grt_";
/// The prefix of the vault's own grant ids, which `grt_` replaces.
const VAULT_GRANT_PREFIX: &str = "g_";
/// Page size of the walk that resolves a secret id.
const WALK_PAGE: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSecret {
    #[serde(alias = "name")]
    path: String,
    value: SecretValue,
    #[serde(default, rename = "type")]
    secret_type: Option<SecretType>,
    #[serde(default)]
    tier: Option<Tier>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGrant {
    agent_id: String,
    secret_id: String,
}

/// The id of the secret at `path` in `tenant`.
pub fn secret_id(tenant: &str, path: &str) -> String {
    let digest = Sha256::digest(format!("{tenant}\n{path}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{SECRET_ID_PREFIX}{hex}")
}

/// Answers `/v1/vault/<resource>[/<id>]`.
pub(super) async fn route<B>(
    bodies: &BodyReader,
    vault: &Vault,
    caller: &Caller,
    rest: Option<&str>,
    query: &Query,
    req: Request<B>,
) -> Answer
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let method = req.method().clone();
    let (resource, id) = match rest.map(|r| r.split_once('/').unwrap_or((r, ""))) {
        Some((resource, "")) => (resource, None),
        Some((resource, id)) => (resource, Some(id)),
        None => ("", None),
    };
    match (resource, id, method) {
        ("secrets", None, Method::POST) => {
            let body: CreateSecret = bodies.json(req).await?;
            create_secret(vault, caller, body).await
        }
        ("secrets", None, Method::GET) => {
            let limit = query.number::<usize>("limit")?;
            let page = vault
                .list(
                    caller,
                    query.get("prefix").unwrap_or(""),
                    limit,
                    query.get("cursor"),
                )
                .await?;
            let tenant = &vault.workload().tenant;
            let items: Vec<Value> = page.items.iter().map(|m| secret_view(tenant, m)).collect();
            Ok(json_response(
                StatusCode::OK,
                &json!({ "items": items, "next_cursor": page.next_cursor }),
            ))
        }
        ("secrets", None, _) => Err(ApiError::MethodNotAllowed("GET, POST")),
        ("secrets", Some(id), Method::GET) => {
            let meta = find_secret(vault, caller, id).await?;
            Ok(json_response(
                StatusCode::OK,
                &secret_view(&vault.workload().tenant, &meta),
            ))
        }
        ("secrets", Some(id), Method::DELETE) => {
            let meta = find_secret(vault, caller, id).await?;
            vault.delete(caller, &meta.path, None).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        ("secrets", Some(_), _) => Err(ApiError::MethodNotAllowed("GET, DELETE")),
        ("grants", None, Method::POST) => {
            let body: CreateGrant = bodies.json(req).await?;
            let meta = find_secret(vault, caller, &body.secret_id).await?;
            let grant = vault
                .create_grant(caller, &body.agent_id, &meta.path)
                .await?;
            Ok(json_response(
                StatusCode::CREATED,
                &grant_view(&vault.workload().tenant, &grant),
            ))
        }
        ("grants", None, Method::GET) => {
            let tenant = &vault.workload().tenant;
            let grants: Vec<Value> = vault
                .grants(caller)
                .await?
                .iter()
                .map(|g| grant_view(tenant, g))
                .collect();
            Ok(json_response(StatusCode::OK, &json!({ "items": grants })))
        }
        ("grants", None, _) => Err(ApiError::MethodNotAllowed("GET, POST")),
        ("grants", Some(id), Method::DELETE) => {
            let own = id
                .strip_prefix(GRANT_ID_PREFIX)
                .map(|rest| format!("{VAULT_GRANT_PREFIX}{rest}"))
                .ok_or_else(|| VaultError::NotFound(format!("no grant `{id}`")))?;
            vault.delete_grant(caller, &own).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        ("grants", Some(_), _) => Err(ApiError::MethodNotAllowed("DELETE")),
        _ => Err(
            VaultError::NotFound(format!("no route for `/v1/vault/{}`", rest.unwrap_or(""))).into(),
        ),
    }
}

async fn create_secret(vault: &Vault, caller: &Caller, body: CreateSecret) -> Answer {
    let put = PutRequest {
        value: body.value,
        secret_type: body.secret_type,
        tier: body.tier,
        description: body.description,
        tags: body.tags,
        expires_at: body.expires_at,
        scope: body.scope,
        cas: Some(0),
    };
    let written = vault.put(caller, &body.path, put).await?;
    let tenant = &vault.workload().tenant;
    let id = secret_id(tenant, &written.path);
    // The metadata as stored, from the caller's own listing (never the value).
    let meta = walk(vault, caller, &written.path, |m| m.path == written.path).await?;
    let view = match meta {
        Some(meta) => secret_view(tenant, &meta),
        None => json!({ "id": id, "path": written.path, "version": written.version }),
    };
    Ok(json_response(StatusCode::CREATED, &view))
}

/// The secret with this id among those the caller may list.
async fn find_secret(vault: &Vault, caller: &Caller, id: &str) -> Result<Metadata, ApiError> {
    let not_found = || VaultError::NotFound(format!("no secret with id `{id}`"));
    if !id.starts_with(SECRET_ID_PREFIX) {
        return Err(not_found().into());
    }
    let tenant = vault.workload().tenant.clone();
    walk(vault, caller, "", |m| secret_id(&tenant, &m.path) == id)
        .await?
        .ok_or_else(|| not_found().into())
}

/// The first secret under `prefix`, in the caller's listing, that `wanted` picks.
async fn walk(
    vault: &Vault,
    caller: &Caller,
    prefix: &str,
    wanted: impl Fn(&Metadata) -> bool,
) -> Result<Option<Metadata>, VaultError> {
    let mut cursor: Option<String> = None;
    loop {
        let page = vault
            .list(caller, prefix, Some(WALK_PAGE), cursor.as_deref())
            .await?;
        if let Some(found) = page.items.into_iter().find(|m| wanted(m)) {
            return Ok(Some(found));
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(None),
        }
    }
}

fn secret_view(tenant: &str, meta: &Metadata) -> Value {
    let mut view = serde_json::to_value(meta).unwrap_or_else(|_| json!({}));
    if let Value::Object(fields) = &mut view {
        fields.insert("id".into(), Value::from(secret_id(tenant, &meta.path)));
    }
    view
}

fn grant_view(tenant: &str, grant: &Grant) -> Value {
    let id = match grant.grant_id.strip_prefix(VAULT_GRANT_PREFIX) {
        Some(rest) => format!("{GRANT_ID_PREFIX}{rest}"),
        None => format!("{GRANT_ID_PREFIX}{}", grant.grant_id),
    };
    // A grant of `prefix/*` names no one secret.
    let secret = (!grant.path.ends_with("/*")).then(|| secret_id(tenant, &grant.path));
    json!({
        "id": id,
        "grant_id": id,
        "agent_id": grant.agent_id,
        "secret_id": secret,
        "path": grant.path,
        "created_at": grant.created_at,
        "created_by": grant.created_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_ids_are_stable_per_tenant_and_path() {
        let id = secret_id("acme", "db/password");
        assert_eq!(id, secret_id("acme", "db/password"));
        assert!(id.starts_with("sec_") && id.len() == 4 + 32, "{id}");
        assert!(id[4..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(id, secret_id("other", "db/password"));
        assert_ne!(id, secret_id("acme", "db/passwords"));
        // The separator keeps tenant and path apart.
        assert_ne!(secret_id("a", "b/c"), secret_id("a\nb", "c"));
    }
}
