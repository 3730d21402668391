//! The policy's input: who asks ([`Subject`]), to do what ([`Action`]), to
//! which secret ([`Resource`]), with which grants and token; and its
//! conversion to a regorus value, built field by field rather than through
//! serde, since it runs once per request.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::rule_input::push_key_part;
use super::PolicyError;
use crate::identity::{Caller, WorkloadIdentity};
use crate::model::{SecretPath, SecretRecord, SecretType, Tier};

/// What a request wants to do. The names are the policy's `input.action`.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Read,
    Write,
    Delete,
    List,
    Rotate,
    Grant,
    Token,
    Approve,
    Import,
    Audit,
}

impl Action {
    /// Every action, in declaration order.
    pub const ALL: [Action; 10] = [
        Self::Read,
        Self::Write,
        Self::Delete,
        Self::List,
        Self::Rotate,
        Self::Grant,
        Self::Token,
        Self::Approve,
        Self::Import,
        Self::Audit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Delete => "delete",
            Self::List => "list",
            Self::Rotate => "rotate",
            Self::Grant => "grant",
            Self::Token => "token",
            Self::Approve => "approve",
            Self::Import => "import",
            Self::Audit => "audit",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who asks: the caller's effective identity and what the kernel says about it.
#[derive(Serialize, Clone, Debug)]
pub struct Subject {
    /// The effective SPIFFE ID: the agent-level ID, plus `/<role>` when a role matched.
    pub spiffe_id: String,
    pub tenant: String,
    pub agent: String,
    /// The agent-level SPIFFE ID, which owners and grants name.
    pub agent_id: String,
    pub role: Option<String>,
    pub uid: u32,
    pub pid: Option<i32>,
}

impl Subject {
    pub fn new(workload: &WorkloadIdentity, caller: &Caller) -> Self {
        Self {
            spiffe_id: caller.spiffe_id.clone(),
            tenant: workload.tenant.clone(),
            agent: workload.agent.clone(),
            agent_id: workload.spiffe_id.clone(),
            role: caller.role.clone(),
            uid: caller.cred.uid,
            pid: caller.cred.pid,
        }
    }
}

/// What is asked for, always within the subject's tenant. For `list` the path
/// is the listed prefix, for `import` the namespace.
#[derive(Serialize, Clone, Debug, Default)]
pub struct Resource {
    pub path: String,
    pub exists: bool,
    /// The agent-level SPIFFE ID of the agent that first wrote the secret.
    pub owner: Option<String>,
    /// The role the secret was written scoped to.
    pub owner_scope: Option<String>,
    pub tier: Option<Tier>,
    #[serde(rename = "type")]
    pub secret_type: Option<SecretType>,
    pub tags: BTreeMap<String, String>,
}

impl Resource {
    /// A path that holds no secret (yet), or a prefix or namespace.
    pub fn missing(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            ..Self::default()
        }
    }

    pub fn of(record: &SecretRecord) -> Self {
        Self {
            path: record.path.clone(),
            exists: true,
            owner: Some(record.owner.clone()),
            owner_scope: record.scope.clone(),
            tier: Some(record.tier),
            secret_type: Some(record.secret_type),
            tags: record.tags.clone(),
        }
    }
}

/// A grant that may cover the resource: its grantee and its path.
#[derive(Serialize, Clone, Debug)]
pub struct GrantInput {
    /// The agent-level SPIFFE ID of the grantee.
    pub agent_id: String,
    /// An exact path or `prefix/*`.
    pub path: String,
    /// The role that made the grant; only its role-scoped secrets are reachable.
    pub role: Option<String>,
}

/// A token's scope: what it lets its bearer do, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenScope {
    /// `read`, `write` or `list`.
    pub action: String,
    /// An exact path or `prefix/*`.
    pub pattern: String,
}

impl TokenScope {
    /// Parses `secrets:<read|write|list>:<path or prefix/*>`. The path follows
    /// the contract's path rules, so no scope can cover the whole tenant.
    pub fn parse(scope: &str) -> Result<Self, PolicyError> {
        let bad = |reason: &str| PolicyError::BadScope {
            scope: scope.to_owned(),
            reason: reason.to_owned(),
        };
        let mut parts = scope.splitn(3, ':');
        let (Some("secrets"), Some(action), Some(pattern)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("expected secrets:<read|write|list>:<path or prefix/*>"));
        };
        if !matches!(action, "read" | "write" | "list") {
            return Err(bad("the action must be read, write or list"));
        }
        let path = pattern.strip_suffix("/*").unwrap_or(pattern);
        SecretPath::parse(path).map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            action: action.to_owned(),
            pattern: pattern.to_owned(),
        })
    }

    /// The claims of a token with this scope minted by `agent_id` (as `role`)
    /// for secrets up to `tier`.
    pub fn claims(self, agent_id: &str, role: Option<&str>, tier: Tier) -> TokenClaims {
        TokenClaims {
            action: self.action,
            pattern: self.pattern,
            agent_id: agent_id.to_owned(),
            role: role.map(str::to_owned),
            tier,
        }
    }
}

/// The claims of a presented bearer token, already checked in Rust for expiry
/// and uses. A token carries the authority of the agent and role that minted
/// it, up to the tier it was issued (or approved) for, never more.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub action: String,
    pub pattern: String,
    /// The agent-level SPIFFE ID of the minting agent.
    pub agent_id: String,
    /// The role the minting caller had, if any.
    pub role: Option<String>,
    /// The highest tier the token reaches.
    pub tier: Tier,
}

/// Everything the policy sees about one request.
#[derive(Serialize, Clone, Debug)]
pub struct PolicyInput {
    pub subject: Subject,
    pub action: Action,
    pub resource: Resource,
    /// Grants to the subject's agent that may cover the resource.
    pub grants: Vec<GrantInput>,
    pub token: Option<TokenClaims>,
    /// For `audit`: the audit event the caller would see; absent when the
    /// question is whether the caller sees the whole tenant's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<EventInput>,
}

/// An audit event as the `audit` decision sees it: who acted, and how. The
/// resource is the secret the event is about, as it is now.
#[derive(Serialize, Clone, Debug)]
pub struct EventInput {
    /// The acting caller's effective SPIFFE ID.
    pub caller: String,
    /// The event kind (`vault.accessed`, `vault.denied`, …).
    pub kind: String,
    pub action: Option<String>,
}

fn str_value(s: &str) -> regorus::Value {
    regorus::Value::from(s)
}

fn opt_str_value(s: Option<&str>) -> regorus::Value {
    s.map_or(regorus::Value::Null, str_value)
}

fn object<const N: usize>(fields: [(&str, regorus::Value); N]) -> regorus::Value {
    regorus::Value::from(
        fields
            .into_iter()
            .map(|(k, v)| (str_value(k), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn put_str(key: &mut Vec<u8>, s: &str) {
    key.extend_from_slice(&(s.len() as u64).to_le_bytes());
    key.extend_from_slice(s.as_bytes());
}

fn put_opt(key: &mut Vec<u8>, s: Option<&str>) {
    push_key_part(key, s.map(str::as_bytes));
}

/// Bytes that are equal exactly when the inputs' documents ([`input_value`])
/// are: the key of a memoized decision. Every field is destructured, so a
/// field added to the input cannot be left out of the key unnoticed.
pub(super) fn cache_key(input: &PolicyInput) -> Vec<u8> {
    let PolicyInput {
        subject,
        action,
        resource,
        grants,
        token,
        event,
    } = input;
    let Subject {
        spiffe_id,
        tenant,
        agent,
        agent_id,
        role,
        uid,
        pid,
    } = subject;
    let Resource {
        path,
        exists,
        owner,
        owner_scope,
        tier,
        secret_type,
        tags,
    } = resource;
    let mut key = Vec::with_capacity(256);
    for s in [spiffe_id, tenant, agent, agent_id] {
        put_str(&mut key, s);
    }
    put_opt(&mut key, role.as_deref());
    key.extend_from_slice(&uid.to_le_bytes());
    match pid {
        None => key.push(0),
        Some(pid) => {
            key.push(1);
            key.extend_from_slice(&pid.to_le_bytes());
        }
    }
    put_str(&mut key, action.as_str());
    put_str(&mut key, path);
    key.push(u8::from(*exists));
    put_opt(&mut key, owner.as_deref());
    put_opt(&mut key, owner_scope.as_deref());
    put_opt(&mut key, tier.map(Tier::as_str));
    put_opt(&mut key, secret_type.map(SecretType::as_str));
    key.extend_from_slice(&(tags.len() as u64).to_le_bytes());
    for (k, v) in tags {
        put_str(&mut key, k);
        put_str(&mut key, v);
    }
    key.extend_from_slice(&(grants.len() as u64).to_le_bytes());
    for GrantInput {
        agent_id,
        path,
        role,
    } in grants
    {
        put_str(&mut key, agent_id);
        put_str(&mut key, path);
        put_opt(&mut key, role.as_deref());
    }
    match token {
        None => key.push(0),
        Some(TokenClaims {
            action,
            pattern,
            agent_id,
            role,
            tier,
        }) => {
            key.push(1);
            put_str(&mut key, action);
            put_str(&mut key, pattern);
            put_str(&mut key, agent_id);
            put_opt(&mut key, role.as_deref());
            put_str(&mut key, tier.as_str());
        }
    }
    match event {
        None => key.push(0),
        Some(EventInput {
            caller,
            kind,
            action,
        }) => {
            key.push(1);
            put_str(&mut key, caller);
            put_str(&mut key, kind);
            put_opt(&mut key, action.as_deref());
        }
    }
    key
}

/// The policy input as a regorus value, built directly: the same document
/// serde would make (a unit test holds them equal) at a fraction of the cost.
pub(super) fn input_value(input: &PolicyInput) -> regorus::Value {
    let s = &input.subject;
    let r = &input.resource;
    let subject = object([
        ("spiffe_id", str_value(&s.spiffe_id)),
        ("tenant", str_value(&s.tenant)),
        ("agent", str_value(&s.agent)),
        ("agent_id", str_value(&s.agent_id)),
        ("role", opt_str_value(s.role.as_deref())),
        ("uid", regorus::Value::from(s.uid)),
        (
            "pid",
            s.pid.map_or(regorus::Value::Null, regorus::Value::from),
        ),
    ]);
    let tags = r
        .tags
        .iter()
        .map(|(k, v)| (str_value(k), str_value(v)))
        .collect::<BTreeMap<_, _>>();
    let resource = object([
        ("path", str_value(&r.path)),
        ("exists", regorus::Value::from(r.exists)),
        ("owner", opt_str_value(r.owner.as_deref())),
        ("owner_scope", opt_str_value(r.owner_scope.as_deref())),
        ("tier", opt_str_value(r.tier.map(Tier::as_str))),
        ("type", opt_str_value(r.secret_type.map(SecretType::as_str))),
        ("tags", regorus::Value::from(tags)),
    ]);
    let grants = input
        .grants
        .iter()
        .map(|g| {
            object([
                ("agent_id", str_value(&g.agent_id)),
                ("path", str_value(&g.path)),
                ("role", opt_str_value(g.role.as_deref())),
            ])
        })
        .collect::<Vec<_>>();
    let token = input.token.as_ref().map_or(regorus::Value::Null, |t| {
        object([
            ("action", str_value(&t.action)),
            ("pattern", str_value(&t.pattern)),
            ("agent_id", str_value(&t.agent_id)),
            ("role", opt_str_value(t.role.as_deref())),
            ("tier", str_value(t.tier.as_str())),
        ])
    });
    let mut document = object([
        ("subject", subject),
        ("action", str_value(input.action.as_str())),
        ("resource", resource),
        ("grants", regorus::Value::from(grants)),
        ("token", token),
    ]);
    if let (Some(e), Ok(fields)) = (&input.event, document.as_object_mut()) {
        let event = object([
            ("caller", str_value(&e.caller)),
            ("kind", str_value(&e.kind)),
            ("action", opt_str_value(e.action.as_deref())),
        ]);
        fields.insert(str_value("event"), event);
    }
    document
}
