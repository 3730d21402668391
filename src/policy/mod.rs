//! Authorization: every request becomes one [`PolicyInput`] and one
//! [`Decision`], evaluated in-process by regorus from the Rego files of a
//! policy directory (`data.agentvault.authz.decision`). Policies are compiled
//! once; a reload swaps in a new compiled policy only if it compiles, so a
//! broken file never leaves the sidecar without a policy. The directory may
//! be an OPA bundle (`bundle.rs`); OPA builtins regorus lacks are ours
//! (`builtins/`); `tooling.rs` serves `agentvault policy eval/test/check`.

mod ast;
mod builtins;
mod bundle;
mod compiled;
mod decision;
mod input;
mod memo;
mod reads;
mod rule_input;
mod source;
mod tooling;

pub use self::builtins::{capabilities, Capability, Provider};
pub use self::decision::Decision;
pub use self::input::{
    Action, EventInput, GrantInput, PolicyInput, Resource, Subject, TokenClaims, TokenScope,
};
pub use self::rule_input::{push_key_part, RuleInput};
pub use self::tooling::{PolicySet, TestOutcome, TestResult};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use self::compiled::Compiled;
use self::source::{FileStamp, PolicySource};

/// The document every policy set must define.
pub const DECISION_RULE: &str = "data.agentvault.authz.decision";

/// The reason given when the policy leaves the decision undefined.
pub const UNDEFINED_REASON: &str = "the policy gave no decision";

/// The default policies, compiled into the binary for `agentvault dev`.
const BUILTIN_POLICIES: &[(&str, &str)] = &[
    ("authz.rego", include_str!("../../policies/authz.rego")),
    ("envoy.rego", include_str!("../../policies/envoy.rego")),
];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy directory {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read policy file {file}: {source}")]
    ReadFile {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `at` is `:line:col` when regorus says where.
    #[error("{}{at}: {message}", file.display())]
    Parse {
        file: PathBuf,
        at: String,
        message: String,
    },
    #[error("bundle {file}: {message}", file = file.display())]
    Bundle { file: PathBuf, message: String },
    #[error("policy directory {0} holds no .rego file")]
    NoPolicies(PathBuf),
    #[error("{}:{line}:{col}: unknown function `{name}`: neither regorus nor agentvault provides it (`agentvault policy capabilities` lists every builtin)", file.display())]
    UnknownFunction {
        file: PathBuf,
        line: u32,
        col: u32,
        name: String,
    },
    #[error("policies do not compile: {0}")]
    Compile(String),
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    #[error("policy returned a malformed decision: {0}")]
    Malformed(String),
    #[error("token scope `{scope}`: {reason}")]
    BadScope { scope: String, reason: String },
}

/// Settings the policies read as `data.agentvault.config`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(default)]
pub struct PolicyConfig {
    /// Roles that may approve token requests for critical secrets.
    pub approver_roles: Vec<String>,
    /// Roles that may read the audit log besides the agent-level identity.
    pub auditor_roles: Vec<String>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            approver_roles: vec!["approver".into()],
            auditor_roles: vec!["auditor".into()],
        }
    }
}

#[derive(Debug, Clone)]
enum Origin {
    Dir(PathBuf),
    Builtin,
}

/// The policy decision point, shared as `Arc` by every request handler.
pub struct PolicyEngine {
    origin: Origin,
    config: PolicyConfig,
    /// Rules besides [`DECISION_RULE`] that every load must define and compile.
    rules: Vec<String>,
    current: RwLock<Arc<Compiled>>,
    /// The files as they stood at the last load attempt, good or bad, so that
    /// `watch` retries a broken policy only when its files change again.
    seen: Mutex<Vec<FileStamp>>,
    /// Bumped by every reload that swaps a new policy in.
    revision: AtomicU64,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("origin", &self.origin)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Compiles every `*.rego` under `dir` (sub-directories included, hidden
    /// entries such as a ConfigMap's `..data` skipped) except `*_test.rego`.
    /// `dir` may be an OPA bundle: a directory or `.tar.gz` whose `data.json` /
    /// `data.yaml` files become data and whose `.manifest` roots are enforced.
    /// A file that does not compile, or calls a function nothing provides, is
    /// an error here, at start-up.
    pub fn load(dir: &Path, config: PolicyConfig) -> Result<Self, PolicyError> {
        Self::load_with(Some(dir), config, Vec::new())
    }

    /// The default policies from `policies/`, compiled into the binary, for
    /// `agentvault dev` without a policy directory. `reload` and `watch` do nothing.
    pub fn builtin(config: PolicyConfig) -> Result<Self, PolicyError> {
        Self::load_with(None, config, Vec::new())
    }

    /// Loads from `dir` (the built-in policies when `None`) and also compiles
    /// `rules`, further entrypoints such as the Envoy decision rule, for
    /// [`PolicyEngine::eval_rule`]. A policy set that does not define one of
    /// them fails to load (and to reload), as one without [`DECISION_RULE`] does.
    pub fn load_with(
        dir: Option<&Path>,
        config: PolicyConfig,
        rules: Vec<String>,
    ) -> Result<Self, PolicyError> {
        let (origin, sources, data, stamps) = match dir {
            Some(dir) => {
                let stamps = bundle::scan(dir, false)?;
                let loaded = bundle::read(dir, &stamps, false)?;
                (
                    Origin::Dir(dir.to_owned()),
                    loaded.sources,
                    loaded.data,
                    stamps,
                )
            }
            None => {
                let sources = BUILTIN_POLICIES
                    .iter()
                    .map(|(name, text)| PolicySource {
                        name: (*name).to_owned(),
                        file: Path::new("<builtin>").join(name),
                        text: (*text).to_owned(),
                    })
                    .collect();
                (
                    Origin::Builtin,
                    sources,
                    serde_json::Value::Null,
                    Vec::new(),
                )
            }
        };
        let compiled = Compiled::build_with_data(&sources, &data, &config, &rules, true)?;
        if let Origin::Dir(dir) = &origin {
            tracing::info!(dir = %dir.display(), files = sources.len(), "policies loaded");
        }
        Ok(Self {
            origin,
            config,
            rules,
            current: RwLock::new(Arc::new(compiled)),
            seen: Mutex::new(stamps),
            revision: AtomicU64::new(0),
        })
    }

    /// Changes whenever a reload puts a new policy in force, so that what was
    /// derived from the old one's decisions (such as the leak guard's
    /// readable sets) can tell it is stale.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// Whether the current policy runs as VM bytecode (the fast path) rather
    /// than in the interpreter, which `load` falls back to for Rego the VM
    /// compiler does not handle.
    pub fn uses_vm(&self) -> bool {
        self.compiled().uses_vm()
    }

    fn compiled(&self) -> Arc<Compiled> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// One decision on the current policy. An undefined decision is a denial
    /// with [`UNDEFINED_REASON`]; an error means the caller must deny.
    pub fn decide(&self, input: &PolicyInput) -> Result<Decision, PolicyError> {
        self.compiled().decide(input)
    }

    /// Evaluates one of the rules given to [`PolicyEngine::load_with`] on the
    /// current policy, with `input` as `input`. An undefined result is
    /// [`regorus::Value::Undefined`]; what it means is the caller's business.
    pub fn eval_rule(
        &self,
        rule: &str,
        input: &serde_json::Value,
    ) -> Result<regorus::Value, PolicyError> {
        self.compiled().eval_rule(rule, input)
    }

    /// [`Self::eval_rule`] on a front end's own request: built only in the
    /// parts of `input` the rule can read, so that a front end need not
    /// build what the policy never looks at, and not at all when the
    /// request's key was answered before. A policy that reads only those
    /// paths decides the built input as it would the whole one.
    pub fn eval_rule_from<I: RuleInput, E: From<PolicyError> + From<I::Error>>(
        &self,
        rule: &str,
        input: &I,
    ) -> Result<regorus::Value, E> {
        self.compiled().eval_rule_from(rule, input)
    }

    /// Recompiles from the directory and swaps the new policy in. On error the
    /// last good policy stays in force; the error is logged and returned.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Origin::Dir(dir) = &self.origin else {
            return Ok(());
        };
        let scanned = bundle::scan(dir, false);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) =
            scanned.as_ref().cloned().unwrap_or_default();
        let result = scanned
            .and_then(|stamps| bundle::read(dir, &stamps, false))
            .and_then(|loaded| {
                let compiled = Compiled::build_with_data(
                    &loaded.sources,
                    &loaded.data,
                    &self.config,
                    &self.rules,
                    true,
                )?;
                Ok((loaded.sources.len(), compiled))
            });
        match result {
            Ok((files, compiled)) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(compiled);
                self.revision.fetch_add(1, Ordering::SeqCst);
                tracing::info!(dir = %dir.display(), files, "policies reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "policy reload failed; keeping the last good policy");
                Err(e)
            }
        }
    }

    /// Spawns a task that checks the directory's files (names, sizes, mtimes)
    /// every `interval` and reloads when they change. For the builtin policy
    /// the task ends at once. Abort the handle to stop watching.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let Origin::Dir(dir) = this.origin.clone() else {
                return;
            };
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let this = Arc::clone(&this);
                let dir = dir.clone();
                let checked = tokio::task::spawn_blocking(move || {
                    let stamps = match bundle::scan(&dir, false) {
                        Ok(stamps) => stamps,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot check the policy directory");
                            return;
                        }
                    };
                    let changed =
                        *this.seen.lock().unwrap_or_else(PoisonError::into_inner) != stamps;
                    if changed {
                        // reload logs its own failure; the next change retries.
                        let _ = this.reload();
                    }
                })
                .await;
                if let Err(e) = checked {
                    tracing::error!(error = %e, "policy watcher check panicked");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::OnceLock;

    use super::decision::to_decision;
    use super::input::{cache_key, input_value};
    use super::*;
    use crate::identity::{Caller, Peer, PeerCred, RoleMap, WorkloadIdentity};
    use crate::model::{SecretType, Tier};

    const ME: &str = "spiffe://example.org/agent/acme/bot";
    const OTHER: &str = "spiffe://example.org/agent/acme/other-bot";

    fn policies_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
    }

    fn builtin() -> &'static PolicyEngine {
        static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
        ENGINE.get_or_init(|| PolicyEngine::builtin(PolicyConfig::default()).unwrap())
    }

    fn subject(role: Option<&str>) -> Subject {
        Subject {
            spiffe_id: match role {
                Some(role) => format!("{ME}/{role}"),
                None => ME.to_owned(),
            },
            tenant: "acme".into(),
            agent: "bot".into(),
            agent_id: ME.into(),
            role: role.map(str::to_owned),
            uid: 1001,
            pid: Some(42),
        }
    }

    fn secret(path: &str, owner: &str, scope: Option<&str>) -> Resource {
        Resource {
            path: path.into(),
            exists: true,
            owner: Some(owner.into()),
            owner_scope: scope.map(str::to_owned),
            tier: Some(Tier::Sensitive),
            secret_type: Some(SecretType::ApiKey),
            tags: BTreeMap::from([("team".into(), "ml".into())]),
        }
    }

    fn input(role: Option<&str>, action: Action, resource: Resource) -> PolicyInput {
        PolicyInput {
            subject: subject(role),
            action,
            resource,
            grants: Vec::new(),
            token: None,
            event: None,
        }
    }

    fn grant(agent_id: &str, path: &str) -> GrantInput {
        GrantInput {
            agent_id: agent_id.into(),
            path: path.into(),
            role: None,
        }
    }

    /// A token minted by this agent's agent-level caller, reaching every tier.
    fn token(scope: &str) -> Option<TokenClaims> {
        Some(
            TokenScope::parse(scope)
                .unwrap()
                .claims(ME, None, Tier::Critical),
        )
    }

    fn with_grants(mut input: PolicyInput, grants: Vec<GrantInput>) -> PolicyInput {
        input.grants = grants;
        input
    }

    fn with_token(mut input: PolicyInput, scope: &str) -> PolicyInput {
        input.token = token(scope);
        input
    }

    fn with_token_of(
        mut input: PolicyInput,
        scope: &str,
        agent: &str,
        role: Option<&str>,
        tier: Tier,
    ) -> PolicyInput {
        input.token = Some(TokenScope::parse(scope).unwrap().claims(agent, role, tier));
        input
    }

    const NOT_OWNER: &str = "not the owner of this secret";
    const NO_GRANT: &str = "no grant covers this path";

    #[test]
    fn decisions() {
        use Action::*;
        let new_owner = "no secret at this path yet; the writer becomes its owner";
        let cases: Vec<(&str, PolicyInput, bool, Vec<&str>)> = vec![
            (
                "owner agent-level reads unscoped",
                input(None, Read, secret("prod/openai", ME, None)),
                true,
                vec!["caller's agent owns this secret"],
            ),
            (
                "owner role deletes unscoped",
                input(Some("writer"), Delete, secret("prod/openai", ME, None)),
                true,
                vec!["caller's agent owns this secret"],
            ),
            (
                "scoped secret, its role rotates",
                input(
                    Some("researcher"),
                    Rotate,
                    secret("prod/openai", ME, Some("researcher")),
                ),
                true,
                vec!["caller's role researcher owns this secret"],
            ),
            (
                "scoped secret, other role",
                input(
                    Some("writer"),
                    Read,
                    secret("prod/openai", ME, Some("researcher")),
                ),
                false,
                vec!["secret is scoped to role researcher"],
            ),
            (
                "scoped secret, agent-level caller",
                input(None, Grant, secret("prod/openai", ME, Some("researcher"))),
                false,
                vec!["secret is scoped to role researcher"],
            ),
            (
                "scoped secret, agent-level caller provisions",
                input(None, Write, secret("prod/openai", ME, Some("researcher"))),
                true,
                vec!["the agent-level caller provisions its roles' secrets"],
            ),
            (
                "scoped secret, agent-level caller may not read",
                input(None, Read, secret("prod/openai", ME, Some("researcher"))),
                false,
                vec!["secret is scoped to role researcher"],
            ),
            (
                "scoped secret, other role may not list it",
                input(
                    Some("writer"),
                    List,
                    secret("prod/openai", ME, Some("researcher")),
                ),
                false,
                vec!["secret is scoped to role researcher"],
            ),
            (
                "grant on a prefix holding nothing yet",
                input(Some("writer"), Grant, Resource::missing("shared/*")),
                true,
                vec!["grants and tokens reach only their maker's own secrets"],
            ),
            (
                "new path write",
                input(Some("writer"), Write, Resource::missing("new/key")),
                true,
                vec![new_owner],
            ),
            (
                "new path read answers 404",
                input(None, Read, Resource::missing("new/key")),
                true,
                vec![new_owner],
            ),
            (
                "new path import",
                input(None, Import, Resource::missing("imported")),
                true,
                vec![new_owner],
            ),
            (
                "new path delete",
                input(None, Delete, Resource::missing("new/key")),
                false,
                vec!["no secret at this path to delete"],
            ),
            (
                "other agent's secret, no grant",
                input(None, Read, secret("prod/openai", OTHER, None)),
                false,
                vec![NO_GRANT, NOT_OWNER],
            ),
            (
                "other agent's secret, write",
                input(None, Write, secret("prod/openai", OTHER, None)),
                false,
                vec![NOT_OWNER],
            ),
            (
                "exact grant",
                with_grants(
                    input(None, Read, secret("prod/openai", OTHER, None)),
                    vec![grant(ME, "prod/openai")],
                ),
                true,
                vec!["grant of prod/openai covers this path"],
            ),
            (
                "prefix grant",
                with_grants(
                    input(Some("writer"), Read, secret("prod/openai/key", OTHER, None)),
                    vec![grant(OTHER, "prod/*"), grant(ME, "prod/*")],
                ),
                true,
                vec!["grant of prod/* covers this path"],
            ),
            (
                "prefix grant needs whole segments",
                with_grants(
                    input(None, Read, secret("production/key", OTHER, None)),
                    vec![grant(ME, "prod/*")],
                ),
                false,
                vec![NO_GRANT, NOT_OWNER],
            ),
            (
                "grant to another agent",
                with_grants(
                    input(None, Read, secret("prod/openai", OTHER, None)),
                    vec![grant(OTHER, "prod/openai")],
                ),
                false,
                vec![NO_GRANT, NOT_OWNER],
            ),
            (
                "a grant lists",
                with_grants(
                    input(None, List, secret("prod/openai", OTHER, None)),
                    vec![grant(ME, "prod/*")],
                ),
                true,
                vec!["grant of prod/* covers this path"],
            ),
            (
                "other agent's secret is not listed without a grant",
                input(None, List, secret("prod/openai", OTHER, None)),
                false,
                vec![NO_GRANT, NOT_OWNER],
            ),
            (
                "a grant by the agent-level caller does not reach a scoped secret",
                with_grants(
                    input(None, Read, secret("prod/openai", OTHER, Some("researcher"))),
                    vec![grant(ME, "prod/*")],
                ),
                false,
                vec![NO_GRANT, NOT_OWNER],
            ),
            (
                "a grant by the scope's role reaches its secret",
                with_grants(
                    input(None, Read, secret("prod/openai", OTHER, Some("researcher"))),
                    vec![GrantInput {
                        role: Some("researcher".into()),
                        ..grant(ME, "prod/*")
                    }],
                ),
                true,
                vec!["grant of prod/* covers this path"],
            ),
            (
                "grants never allow delete",
                with_grants(
                    input(None, Delete, secret("prod/openai", OTHER, None)),
                    vec![grant(ME, "prod/*")],
                ),
                false,
                vec![NOT_OWNER],
            ),
            (
                "read token of the owning agent",
                with_token_of(
                    input(None, Read, secret("prod/openai", OTHER, None)),
                    "secrets:read:prod/*",
                    OTHER,
                    None,
                    Tier::Sensitive,
                ),
                true,
                vec!["token scope secrets:read:prod/* covers this path"],
            ),
            (
                "read token of another agent",
                with_token(
                    input(None, Read, secret("prod/openai", OTHER, None)),
                    "secrets:read:prod/*",
                ),
                false,
                vec![
                    NO_GRANT,
                    NOT_OWNER,
                    "token minted for critical secrets of its maker does not reach this one",
                ],
            ),
            (
                "read token above its tier",
                with_token_of(
                    input(None, Read, secret("prod/openai", OTHER, None)),
                    "secrets:read:prod/*",
                    OTHER,
                    None,
                    Tier::Standard,
                ),
                false,
                vec![
                    NO_GRANT,
                    NOT_OWNER,
                    "token minted for standard secrets of its maker does not reach this one",
                ],
            ),
            (
                "write token of the scope's role ignores the caller's role",
                with_token_of(
                    input(
                        Some("writer"),
                        Write,
                        secret("prod/openai", ME, Some("researcher")),
                    ),
                    "secrets:write:prod/openai",
                    ME,
                    Some("researcher"),
                    Tier::Critical,
                ),
                true,
                vec!["token scope secrets:write:prod/openai covers this path"],
            ),
            (
                "write token of another role does not reach a scoped secret",
                with_token(
                    input(
                        Some("writer"),
                        Write,
                        secret("prod/openai", ME, Some("researcher")),
                    ),
                    "secrets:write:prod/openai",
                ),
                false,
                vec![
                    "secret is scoped to role researcher",
                    "token minted for critical secrets of its maker does not reach this one",
                ],
            ),
            (
                "list token",
                with_token(
                    input(None, List, Resource::missing("prod/openai")),
                    "secrets:list:prod/*",
                ),
                true,
                vec!["token scope secrets:list:prod/* covers this path"],
            ),
            (
                "token action mismatch",
                with_token(
                    input(None, Write, secret("prod/openai", OTHER, None)),
                    "secrets:read:prod/*",
                ),
                false,
                vec![NOT_OWNER, "token scope allows read, not write"],
            ),
            (
                "token path mismatch",
                with_token(
                    input(None, Read, secret("staging/openai", OTHER, None)),
                    "secrets:read:prod/*",
                ),
                false,
                vec![NO_GRANT, NOT_OWNER, "token scope does not cover this path"],
            ),
            (
                "any caller lists",
                input(Some("writer"), List, Resource::missing("prod")),
                true,
                vec!["any caller of the tenant may list"],
            ),
            (
                "approver approves",
                input(Some("approver"), Approve, Resource::missing("approvals")),
                true,
                vec!["role approver may approve"],
            ),
            (
                "agent-level may not approve",
                input(None, Approve, Resource::missing("approvals")),
                false,
                vec!["role may not approve"],
            ),
            (
                "agent-level sees only its share of the audit",
                input(None, Audit, Resource::missing("audit")),
                false,
                vec!["only an auditor role sees the whole tenant's audit"],
            ),
            (
                "auditor audits",
                input(Some("auditor"), Audit, Resource::missing("audit")),
                true,
                vec!["role auditor audits the tenant"],
            ),
            (
                "other role sees only its share of the audit",
                input(Some("writer"), Audit, Resource::missing("audit")),
                false,
                vec!["only an auditor role sees the whole tenant's audit"],
            ),
        ];
        let mut failures = Vec::new();
        for (name, input, allow, reasons) in cases {
            let got = builtin().decide(&input).unwrap();
            let want = Decision {
                allow,
                reasons: reasons.into_iter().map(str::to_owned).collect(),
            };
            if got != want {
                failures.push(format!("{name}: got {got:?}, want {want:?}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Every combination of caller, action, resource and grants or token.
    fn combinations() -> Vec<PolicyInput> {
        let roles = [None, Some("researcher"), Some("approver"), Some("auditor")];
        let actions = Action::ALL;
        let resources = [
            secret("prod/openai", ME, None),
            secret("prod/openai/key", ME, Some("researcher")),
            secret("prod/db", OTHER, None),
            Resource::missing("prod"),
        ];
        let extras: [(Vec<GrantInput>, Option<&str>); 6] = [
            (vec![], None),
            (vec![grant(ME, "prod/*")], None),
            (vec![grant(OTHER, "prod/db")], None),
            (vec![], Some("secrets:read:prod/*")),
            (vec![], Some("secrets:list:prod/*")),
            (vec![], Some("secrets:write:prod/openai/*")),
        ];
        let mut out = Vec::new();
        for role in roles {
            for action in actions {
                for resource in &resources {
                    for (grants, scope) in &extras {
                        out.push(PolicyInput {
                            subject: subject(role),
                            action,
                            resource: resource.clone(),
                            grants: grants.clone(),
                            token: scope.and_then(token),
                            event: None,
                        });
                    }
                }
            }
        }
        out
    }

    #[test]
    fn built_input_matches_serde() {
        let mut inputs = combinations();
        let mut odd = input(Some("r"), Action::Import, Resource::missing("ns"));
        odd.subject.pid = None;
        odd.resource.tier = Some(Tier::Standard);
        odd.resource.secret_type = Some(SecretType::PaymentCredential);
        inputs.push(odd);
        for input in inputs {
            let via_serde = regorus::Value::from(serde_json::to_value(&input).unwrap());
            assert_eq!(input_value(&input), via_serde, "{input:?}");
        }
    }

    /// Every combination, and each with one field changed: equal keys exactly
    /// for equal documents, so no two inputs share a memoized decision.
    #[test]
    fn cache_keys_are_equal_exactly_when_inputs_are() {
        let mut inputs = combinations();
        let base = input(Some("r"), Action::Read, secret("a/b", ME, None));
        let mut variants = vec![base.clone()];
        let mut vary = |f: &dyn Fn(&mut PolicyInput)| {
            let mut v = base.clone();
            f(&mut v);
            variants.push(v);
        };
        vary(&|i| i.subject.pid = None);
        vary(&|i| i.subject.uid += 1);
        vary(&|i| i.subject.role = None);
        vary(&|i| i.subject.spiffe_id.push('x'));
        vary(&|i| i.subject.tenant.push('x'));
        vary(&|i| i.subject.agent.push('x'));
        vary(&|i| i.subject.agent_id.push('x'));
        vary(&|i| i.resource.exists = false);
        vary(&|i| i.resource.owner_scope = Some(String::new()));
        vary(&|i| i.resource.tier = Some(Tier::Critical));
        vary(&|i| i.resource.secret_type = Some(SecretType::SshKey));
        vary(&|i| {
            i.resource.tags.insert("k".into(), "v".into());
        });
        vary(&|i| {
            i.resource.tags.insert("kv".into(), String::new());
        });
        // the same bytes split differently between two strings
        vary(&|i| {
            i.resource.path = "a/bx".into();
            i.resource.owner = Some(ME[1..].into());
        });
        vary(&|i| i.grants.push(grant(ME, "a/*")));
        vary(&|i| i.token = token("secrets:read:a/*"));
        let event = |action: Option<&str>| input::EventInput {
            caller: ME.into(),
            kind: "vault.accessed".into(),
            action: action.map(str::to_owned),
        };
        vary(&|i| i.event = Some(event(None)));
        vary(&|i| i.event = Some(event(Some("read"))));
        inputs.extend(variants);
        let seen: Vec<(Vec<u8>, regorus::Value)> = inputs
            .iter()
            .map(|i| (cache_key(i), input_value(i)))
            .collect();
        for (n, (key_a, doc_a)) in seen.iter().enumerate() {
            for (m, (key_b, doc_b)) in seen.iter().enumerate().skip(n + 1) {
                assert_eq!(
                    key_a == key_b,
                    doc_a == doc_b,
                    "{:?}\n{:?}",
                    inputs[n],
                    inputs[m]
                );
            }
        }
    }

    /// A memoized decision is the one evaluation gives, asked cold and warm.
    #[test]
    fn memoized_decisions_are_the_evaluated_ones() {
        let engine = PolicyEngine::builtin(PolicyConfig::default()).unwrap();
        assert!(engine.compiled().memoizes());
        for round in ["cold", "warm"] {
            for input in combinations() {
                let evaluated = to_decision(&engine.compiled().eval(input_value(&input)).unwrap());
                assert_eq!(
                    engine.decide(&input).unwrap(),
                    evaluated.unwrap(),
                    "{round}: {input:?}"
                );
            }
        }
    }

    #[test]
    fn a_policy_that_reads_the_clock_is_never_memoized() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "authz.rego",
            "package agentvault.authz\nimport rego.v1\n\
             decision := {\"allow\": allow, \"reasons\": []}\n\
             default allow := false\n\
             allow if time.now_ns() % 2 == 0\n",
        );
        let engine = PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap();
        assert!(!engine.compiled().memoizes());
        // and a policy reloaded with new rules answers by the new rules at once
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "authz.rego",
            "package agentvault.authz\nimport rego.v1\n\
             decision := {\"allow\": true, \"reasons\": [\"open\"]}\n",
        );
        let engine = PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap();
        assert!(engine.compiled().memoizes());
        let probe = input(None, Action::Read, secret("a/b", OTHER, None));
        assert!(engine.decide(&probe).unwrap().allow);
        write(
            dir.path(),
            "authz.rego",
            "package agentvault.authz\nimport rego.v1\n\
             decision := {\"allow\": false, \"reasons\": [\"closed\"]}\n",
        );
        let revision = engine.revision();
        engine.reload().unwrap();
        assert_eq!(engine.revision(), revision + 1);
        assert_eq!(engine.decide(&probe).unwrap(), Decision::deny("closed"));
    }

    #[test]
    fn vm_and_interpreter_agree() {
        let sources = vec![PolicySource {
            name: "authz.rego".into(),
            file: policies_dir().join("authz.rego"),
            text: std::fs::read_to_string(policies_dir().join("authz.rego")).unwrap(),
        }];
        let config = PolicyConfig::default();
        let vm = Compiled::build(&sources, &config, true).unwrap();
        let interpreter = Compiled::build(&sources, &config, false).unwrap();
        assert!(vm.uses_vm() && !interpreter.uses_vm());
        assert!(builtin().uses_vm());
        for input in combinations() {
            let value = input_value(&input);
            let a = to_decision(&vm.eval(value.clone()).unwrap()).unwrap();
            let b = to_decision(&interpreter.eval(value).unwrap()).unwrap();
            assert_eq!(a, b, "{input:?}");
        }
    }

    #[test]
    fn falls_back_to_the_interpreter_for_rego_the_vm_cannot_compile() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "authz.rego",
            "package agentvault.authz\nimport rego.v1\n\
             inner := {\"allow\": input.action == \"audit\", \"reasons\": [\"w\"]}\n\
             decision := d if { d := inner with input.action as \"audit\" }\n",
        );
        let engine = PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap();
        assert!(!engine.uses_vm());
        let read = input(None, Action::Read, secret("a", ME, None));
        assert_eq!(
            engine.decide(&read).unwrap(),
            Decision {
                allow: true,
                reasons: vec!["w".into()]
            }
        );
    }

    #[test]
    fn config_names_approver_and_auditor_roles() {
        let engine = PolicyEngine::builtin(PolicyConfig {
            approver_roles: vec!["lead".into()],
            auditor_roles: vec!["sec".into()],
        })
        .unwrap();
        let decide = |role, action| {
            engine
                .decide(&input(Some(role), action, Resource::missing("x")))
                .unwrap()
                .allow
        };
        assert!(decide("lead", Action::Approve));
        assert!(!decide("approver", Action::Approve));
        assert!(decide("sec", Action::Audit));
        assert!(!decide("auditor", Action::Audit));
    }

    proptest::proptest! {
        /// A token's scope string, as a caller sends it, is parsed or
        /// refused, never a panic; a parsed one is exactly what was sent and
        /// names a valid path or prefix.
        #[test]
        fn token_scopes_are_parsed_exactly_or_refused(
            scope in "(?s).{0,200}|secrets:(read|write|list|x):[a-z0-9./*-]{0,24}"
        ) {
            if let Ok(parsed) = TokenScope::parse(&scope) {
                proptest::prop_assert!(matches!(parsed.action.as_str(), "read" | "write" | "list"));
                proptest::prop_assert_eq!(format!("secrets:{}:{}", parsed.action, parsed.pattern), scope);
                let path = parsed.pattern.strip_suffix("/*").unwrap_or(&parsed.pattern);
                proptest::prop_assert!(crate::model::SecretPath::parse(path).is_ok());
            }
        }
    }

    #[test]
    fn parses_token_scopes() {
        for (scope, action, pattern) in [
            ("secrets:read:prod/openai", "read", "prod/openai"),
            ("secrets:write:prod/*", "write", "prod/*"),
            ("secrets:list:a.b/c-d_e/*", "list", "a.b/c-d_e/*"),
        ] {
            let claims = TokenScope::parse(scope).unwrap();
            assert_eq!(
                (claims.action.as_str(), claims.pattern.as_str()),
                (action, pattern)
            );
        }
        for scope in [
            "",
            "secrets",
            "secrets:read",
            "secrets:read:",
            "secrets:delete:prod/x",
            "keys:read:prod/x",
            "secrets:read:*",
            "secrets:read:/*",
            "secrets:read:prod/*/x",
            "secrets:read:prod/",
            "secrets:read:../x",
            "secrets:read:prod/**",
            "secrets:read:a:b",
            "Secrets:read:prod/x",
        ] {
            assert!(
                matches!(TokenScope::parse(scope), Err(PolicyError::BadScope { .. })),
                "{scope:?}"
            );
        }
    }

    #[test]
    fn builds_subject_and_resource_from_domain_types() {
        let workload = WorkloadIdentity::new("example.org", "acme", "bot").unwrap();
        let roles = RoleMap::new(vec!["researcher=uid:1001".parse().unwrap()]);
        let cred = PeerCred {
            pid: Some(7),
            uid: 1001,
            gid: 1,
        };
        let subject = Subject::new(
            &workload,
            &Caller::new(&workload, &Peer::identify(&roles, cred), None),
        );
        assert_eq!(subject.spiffe_id, format!("{ME}/researcher"));
        assert_eq!(subject.agent_id, ME);
        assert_eq!(subject.role.as_deref(), Some("researcher"));
        assert_eq!(
            (subject.tenant.as_str(), subject.agent.as_str()),
            ("acme", "bot")
        );

        let json = serde_json::to_value(PolicyInput {
            subject,
            action: Action::Read,
            resource: secret("a/b", ME, None),
            grants: vec![],
            token: None,
            event: None,
        })
        .unwrap();
        assert_eq!(json["action"], "read");
        assert_eq!(json["resource"]["type"], "api_key");
        assert_eq!(json["resource"]["tier"], "sensitive");
        assert_eq!(json["resource"]["owner_scope"], serde_json::Value::Null);
        assert_eq!(json["token"], serde_json::Value::Null);
    }

    #[test]
    fn engine_is_send_and_sync() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<PolicyEngine>();
    }

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn undefined_decision_denies_and_malformed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "authz.rego",
            "package agentvault.authz\nimport rego.v1\n\
             decision := {\"allow\": true, \"reasons\": []} if input.action == \"approve\"\n\
             decision := \"yes\" if input.action == \"audit\"\n",
        );
        let engine = PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap();
        let read = input(None, Action::Read, secret("a", ME, None));
        assert_eq!(
            engine.decide(&read).unwrap(),
            Decision::deny(UNDEFINED_REASON)
        );
        let approve = input(None, Action::Approve, Resource::missing("x"));
        assert!(engine.decide(&approve).unwrap().allow);
        let audit = input(None, Action::Audit, Resource::missing("x"));
        assert!(matches!(
            engine.decide(&audit),
            Err(PolicyError::Malformed(_))
        ));
    }

    #[test]
    fn load_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            PolicyEngine::load(dir.path(), PolicyConfig::default()),
            Err(PolicyError::NoPolicies(_))
        ));
        assert!(matches!(
            PolicyEngine::load(&dir.path().join("absent"), PolicyConfig::default()),
            Err(PolicyError::ReadDir { .. })
        ));

        write(
            dir.path(),
            "broken.rego",
            "package agentvault.authz\ndecision := {\n",
        );
        let err = PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap_err();
        assert!(matches!(&err, PolicyError::Parse { file, .. } if file.ends_with("broken.rego")));
        assert!(err.to_string().contains("broken.rego"), "{err}");

        std::fs::remove_file(dir.path().join("broken.rego")).unwrap();
        write(
            dir.path(),
            "other.rego",
            "package other\nimport rego.v1\nx := 1\n",
        );
        assert!(matches!(
            PolicyEngine::load(dir.path(), PolicyConfig::default()),
            Err(PolicyError::Compile(_))
        ));
    }

    #[test]
    fn load_skips_tests_and_hidden_entries_and_reads_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            policies_dir().join("authz.rego"),
            dir.path().join("authz.rego"),
        )
        .unwrap();
        write(dir.path(), "broken_test.rego", "not rego at all {");
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        write(
            &dir.path().join("..data"),
            "broken.rego",
            "not rego at all {",
        );
        write(dir.path(), "notes.txt", "not rego at all {");
        std::fs::create_dir(dir.path().join("extra")).unwrap();
        write(
            &dir.path().join("extra"),
            "more.rego",
            "package agentvault.extra\nimport rego.v1\nx := 1\n",
        );
        let engine = PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap();
        let read = input(None, Action::Read, secret("a", ME, None));
        assert!(engine.decide(&read).unwrap().allow);
    }

    const LOCKED: &str = "package agentvault.authz\nimport rego.v1\n\
                          decision := {\"allow\": false, \"reasons\": [\"locked\"]}\n";

    #[test]
    fn reload_keeps_the_last_good_policy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            policies_dir().join("authz.rego"),
            dir.path().join("authz.rego"),
        )
        .unwrap();
        let engine = PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap();
        let read = input(None, Action::Read, secret("a", ME, None));
        let good = engine.decide(&read).unwrap();
        assert!(good.allow);

        write(
            dir.path(),
            "authz.rego",
            "package agentvault.authz\ndecision := {\n",
        );
        assert!(matches!(engine.reload(), Err(PolicyError::Parse { .. })));
        assert_eq!(engine.decide(&read).unwrap(), good);

        write(dir.path(), "authz.rego", LOCKED);
        engine.reload().unwrap();
        assert_eq!(engine.decide(&read).unwrap(), Decision::deny("locked"));

        std::fs::remove_file(dir.path().join("authz.rego")).unwrap();
        assert!(matches!(engine.reload(), Err(PolicyError::NoPolicies(_))));
        assert_eq!(engine.decide(&read).unwrap(), Decision::deny("locked"));
    }

    #[test]
    fn builtin_reload_is_a_no_op() {
        builtin().reload().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_picks_up_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            policies_dir().join("authz.rego"),
            dir.path().join("authz.rego"),
        )
        .unwrap();
        let engine = Arc::new(PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap());
        let interval = Duration::from_millis(20);
        let watcher = engine.watch(interval);
        let read = input(None, Action::Read, secret("a", ME, None));
        let wait_for = |want: bool| {
            let engine = Arc::clone(&engine);
            let read = read.clone();
            async move {
                for _ in 0..100 {
                    if engine.decide(&read).unwrap().allow == want {
                        return true;
                    }
                    tokio::time::sleep(interval).await;
                }
                false
            }
        };

        write(dir.path(), "authz.rego", LOCKED);
        assert!(
            wait_for(false).await,
            "the watcher did not load the new policy"
        );

        // A broken file keeps the locked policy; fixing it is picked up.
        write(
            dir.path(),
            "authz.rego",
            "package agentvault.authz\ndecision := {\n",
        );
        tokio::time::sleep(interval * 5).await;
        assert_eq!(engine.decide(&read).unwrap(), Decision::deny("locked"));
        std::fs::copy(
            policies_dir().join("authz.rego"),
            dir.path().join("authz.rego"),
        )
        .unwrap();
        assert!(
            wait_for(true).await,
            "the watcher did not load the fixed policy"
        );

        // A new file is a change too.
        write(
            dir.path(),
            "zz_lock.rego",
            "package agentvault.lock\nimport rego.v1\nx := 1\n",
        );
        write(dir.path(), "authz.rego", LOCKED);
        assert!(wait_for(false).await);
        watcher.abort();
    }

    /// Runs every `test_` rule of `policies/` the way `agentvault policy test` does.
    #[test]
    fn rego_unit_tests_pass() {
        let set = PolicySet::load(&policies_dir()).unwrap();
        assert!(set.tests().len() >= 10, "too few tests: {:?}", set.tests());
        let failed: Vec<_> = set
            .run_tests()
            .into_iter()
            .filter(|r| r.outcome != TestOutcome::Pass)
            .collect();
        assert!(failed.is_empty(), "Rego tests failed: {failed:#?}");
    }
}
