//! Authorization: every request becomes one [`PolicyInput`] and one
//! [`Decision`], evaluated in-process by regorus from the Rego files of a
//! policy directory (`data.agentvault.authz.decision`). Policies are compiled
//! once; a reload swaps in a new compiled policy only if it compiles, so a
//! broken file never leaves the sidecar without a policy.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::identity::{Caller, WorkloadIdentity};
use crate::model::{SecretPath, SecretRecord, SecretType, Tier};

/// The document every policy set must define.
pub const DECISION_RULE: &str = "data.agentvault.authz.decision";

/// The reason given when the policy leaves the decision undefined.
pub const UNDEFINED_REASON: &str = "the policy gave no decision";

/// The default policies, compiled into the binary for `agentvault dev`.
const BUILTIN_POLICIES: &[(&str, &str)] = &[("authz.rego", include_str!("../policies/authz.rego"))];

/// A policy that runs longer than this is stopped and the request denied.
const EVAL_TIME_LIMIT: Duration = Duration::from_millis(250);

/// Evaluation steps between two looks at the clock for [`EVAL_TIME_LIMIT`].
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::MIN.saturating_add(63);

/// The VM's instruction budget per decision; its default (25,000) is too tight
/// for policies that walk long grant lists.
const MAX_VM_INSTRUCTIONS: usize = 5_000_000;

/// Idle VMs kept per compiled policy, at most: about one per concurrent request.
const MAX_IDLE_VMS: usize = 64;

/// How deep `load` descends into sub-directories of the policy directory.
const MAX_DIR_DEPTH: usize = 8;

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
    #[error("policy file {file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("policy directory {0} holds no .rego file")]
    NoPolicies(PathBuf),
    #[error("policies do not compile: {0}")]
    Compile(String),
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    #[error("policy returned a malformed decision: {0}")]
    Malformed(String),
    #[error("token scope `{scope}`: {reason}")]
    BadScope { scope: String, reason: String },
}

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
}

/// The policy's answer. When denied, `reasons` says why; when allowed, on what grounds.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub reasons: Vec<String>,
}

impl Decision {
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allow: false,
            reasons: vec![reason.into()],
        }
    }
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

/// Where a file's content stood when it was read; a change means reload.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    path: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

/// One policy file: its name for regorus (relative to the policy directory),
/// where it lives, and its text.
struct PolicySource {
    name: String,
    file: PathBuf,
    text: String,
}

/// How a compiled policy set is evaluated.
enum Evaluator {
    /// Bytecode for regorus's VM, about ten times faster than the interpreter
    /// on the default policy. Idle VMs are kept for reuse: each run resets
    /// the VM's evaluation state, and a fresh VM costs more than the run.
    Vm {
        program: Arc<regorus::rvm::program::Program>,
        data: regorus::Value,
        idle: Mutex<Vec<regorus::rvm::vm::RegoVM>>,
    },
    /// The tree-walking interpreter, for policies the VM compiler does not
    /// handle (such as `with`). Each evaluation clones the prepared engine,
    /// which shares modules and data behind `Arc`s.
    Interpreter(Box<regorus::Engine>),
}

/// A compiled policy set.
struct Compiled {
    evaluator: Evaluator,
}

fn timer_config() -> regorus::utils::limits::ExecutionTimerConfig {
    regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: TIMER_CHECK_INTERVAL,
    }
}

impl Compiled {
    fn new(sources: &[PolicySource], config: &PolicyConfig) -> Result<Self, PolicyError> {
        Self::build(sources, config, true)
    }

    fn build(
        sources: &[PolicySource],
        config: &PolicyConfig,
        prefer_vm: bool,
    ) -> Result<Self, PolicyError> {
        let mut engine = regorus::Engine::new();
        // OPA's default: a builtin error makes its expression undefined instead of failing the query.
        engine.set_strict_builtin_errors(false);
        engine.set_execution_timer_config(timer_config());
        for source in sources {
            engine
                .add_policy(source.name.clone(), source.text.clone())
                .map_err(|e| PolicyError::Parse {
                    file: source.file.clone(),
                    message: format!("{e:#}"),
                })?;
        }
        let data = regorus::Value::from(serde_json::json!({ "agentvault": { "config": config } }));
        engine
            .add_data(data.clone())
            .map_err(|e| PolicyError::Compile(format!("{e:#}")))?;
        // Evaluating once prepares the engine (analysis, scheduling) and proves
        // the decision rule exists, so load fails early and clones start ready.
        engine.set_input(regorus::Value::new_object());
        engine
            .eval_rule(DECISION_RULE.to_owned())
            .map_err(|e| PolicyError::Compile(format!("{e:#}")))?;
        if !prefer_vm {
            return Ok(Self {
                evaluator: Evaluator::Interpreter(Box::new(engine)),
            });
        }
        let program = engine
            .compile_with_entrypoint(&DECISION_RULE.into())
            .map_err(|e| format!("{e:#}"))
            .and_then(|policy| {
                regorus::languages::rego::compiler::Compiler::compile_from_policy(
                    &policy,
                    &[DECISION_RULE],
                )
                .map_err(|e| e.to_string())
            });
        let evaluator = match program {
            Ok(program) => Evaluator::Vm {
                program,
                data,
                idle: Mutex::new(Vec::new()),
            },
            Err(e) => {
                tracing::warn!(error = %e, "policy does not compile to VM bytecode; using the slower interpreter");
                Evaluator::Interpreter(Box::new(engine))
            }
        };
        Ok(Self { evaluator })
    }

    fn uses_vm(&self) -> bool {
        matches!(self.evaluator, Evaluator::Vm { .. })
    }

    fn eval(&self, input: regorus::Value) -> Result<regorus::Value, PolicyError> {
        match &self.evaluator {
            Evaluator::Vm {
                program,
                data,
                idle,
            } => {
                let pooled = idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
                let mut vm = match pooled {
                    Some(vm) => vm,
                    None => {
                        let mut vm = regorus::rvm::vm::RegoVM::new();
                        vm.load_program(Arc::clone(program));
                        vm.set_data(data.clone())
                            .map_err(|e| PolicyError::Eval(format!("{e:#}")))?;
                        vm.set_max_instructions(MAX_VM_INSTRUCTIONS);
                        vm.set_execution_timer_config(Some(timer_config()));
                        vm
                    }
                };
                vm.set_input(input);
                let result = vm.execute().map_err(|e| PolicyError::Eval(e.to_string()));
                vm.set_input(regorus::Value::Null);
                let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE_VMS {
                    idle.push(vm);
                }
                result
            }
            Evaluator::Interpreter(engine) => {
                let mut engine = (**engine).clone();
                engine.set_input(input);
                engine
                    .eval_rule(DECISION_RULE.to_owned())
                    .map_err(|e| PolicyError::Eval(format!("{e:#}")))
            }
        }
    }
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

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Standard => "standard",
        Tier::Sensitive => "sensitive",
        Tier::Critical => "critical",
    }
}

fn type_name(secret_type: SecretType) -> &'static str {
    match secret_type {
        SecretType::ApiKey => "api_key",
        SecretType::OauthToken => "oauth_token",
        SecretType::DbCredential => "db_credential",
        SecretType::SshKey => "ssh_key",
        SecretType::PaymentCredential => "payment_credential",
        SecretType::Custom => "custom",
    }
}

/// The policy input as a regorus value, built directly: the same document
/// serde would make (a unit test holds them equal) at a fraction of the cost.
fn input_value(input: &PolicyInput) -> regorus::Value {
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
        ("tier", opt_str_value(r.tier.map(tier_name))),
        ("type", opt_str_value(r.secret_type.map(type_name))),
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
            ("tier", str_value(tier_name(t.tier))),
        ])
    });
    object([
        ("subject", subject),
        ("action", str_value(input.action.as_str())),
        ("resource", resource),
        ("grants", regorus::Value::from(grants)),
        ("token", token),
    ])
}

fn to_decision(value: &regorus::Value) -> Result<Decision, PolicyError> {
    if *value == regorus::Value::Undefined {
        return Ok(Decision::deny(UNDEFINED_REASON));
    }
    let malformed = || PolicyError::Malformed(value.to_string());
    let allow = *value["allow"].as_bool().map_err(|_| malformed())?;
    let reasons = value["reasons"]
        .as_array()
        .map_err(|_| malformed())?
        .iter()
        .map(|r| {
            r.as_string()
                .map(|r| r.to_string())
                .map_err(|_| malformed())
        })
        .collect::<Result<_, _>>()?;
    Ok(Decision { allow, reasons })
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
    current: RwLock<Arc<Compiled>>,
    /// The files as they stood at the last load attempt, good or bad, so that
    /// `watch` retries a broken policy only when its files change again.
    seen: Mutex<Vec<FileStamp>>,
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
    /// A file that does not compile is an error here, at start-up.
    pub fn load(dir: &Path, config: PolicyConfig) -> Result<Self, PolicyError> {
        let stamps = scan_dir(dir)?;
        let sources = read_sources(dir, &stamps)?;
        let compiled = Compiled::new(&sources, &config)?;
        tracing::info!(dir = %dir.display(), files = sources.len(), "policies loaded");
        Ok(Self {
            origin: Origin::Dir(dir.to_owned()),
            config,
            current: RwLock::new(Arc::new(compiled)),
            seen: Mutex::new(stamps),
        })
    }

    /// The default policies from `policies/`, compiled into the binary, for
    /// `agentvault dev` without a policy directory. `reload` and `watch` do nothing.
    pub fn builtin(config: PolicyConfig) -> Result<Self, PolicyError> {
        let sources: Vec<PolicySource> = BUILTIN_POLICIES
            .iter()
            .map(|(name, text)| PolicySource {
                name: (*name).to_owned(),
                file: Path::new("<builtin>").join(name),
                text: (*text).to_owned(),
            })
            .collect();
        let compiled = Compiled::new(&sources, &config)?;
        Ok(Self {
            origin: Origin::Builtin,
            config,
            current: RwLock::new(Arc::new(compiled)),
            seen: Mutex::new(Vec::new()),
        })
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
        to_decision(&self.compiled().eval(input_value(input))?)
    }

    /// Recompiles from the directory and swaps the new policy in. On error the
    /// last good policy stays in force; the error is logged and returned.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let Origin::Dir(dir) = &self.origin else {
            return Ok(());
        };
        let scanned = scan_dir(dir);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) =
            scanned.as_ref().cloned().unwrap_or_default();
        let result = scanned
            .and_then(|stamps| read_sources(dir, &stamps))
            .and_then(|sources| Ok((sources.len(), Compiled::new(&sources, &self.config)?)));
        match result {
            Ok((files, compiled)) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(compiled);
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
                    let stamps = match scan_dir(&dir) {
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

fn is_policy_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".rego") && !n.ends_with("_test.rego"))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// The policy files under `dir`, sorted, with their sizes and mtimes
/// (symlinks followed, so a ConfigMap update shows as a change).
fn scan_dir(dir: &Path) -> Result<Vec<FileStamp>, PolicyError> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<FileStamp>) -> Result<(), PolicyError> {
        let read_err = |source| PolicyError::ReadDir {
            dir: dir.to_owned(),
            source,
        };
        for entry in std::fs::read_dir(dir).map_err(read_err)? {
            let path = entry.map_err(read_err)?.path();
            if is_hidden(&path) {
                continue;
            }
            let meta = std::fs::metadata(&path).map_err(|source| PolicyError::ReadFile {
                file: path.clone(),
                source,
            })?;
            if meta.is_dir() {
                if depth < MAX_DIR_DEPTH {
                    walk(&path, depth + 1, out)?;
                }
            } else if meta.is_file() && is_policy_file(&path) {
                out.push(FileStamp {
                    modified: meta.modified().ok(),
                    len: meta.len(),
                    path,
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, 0, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Reads the files of a scan, each named by its path relative to `dir`.
fn read_sources(dir: &Path, stamps: &[FileStamp]) -> Result<Vec<PolicySource>, PolicyError> {
    if stamps.is_empty() {
        return Err(PolicyError::NoPolicies(dir.to_owned()));
    }
    stamps
        .iter()
        .map(|stamp| {
            let text =
                std::fs::read_to_string(&stamp.path).map_err(|source| PolicyError::ReadFile {
                    file: stamp.path.clone(),
                    source,
                })?;
            let name = stamp.path.strip_prefix(dir).unwrap_or(&stamp.path);
            Ok(PolicySource {
                name: name.display().to_string(),
                file: stamp.path.clone(),
                text,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;
    use crate::identity::{Peer, PeerCred, RoleMap};

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
                "agent-level audits",
                input(None, Audit, Resource::missing("audit")),
                true,
                vec!["the agent-level identity may read audit"],
            ),
            (
                "auditor audits",
                input(Some("auditor"), Audit, Resource::missing("audit")),
                true,
                vec!["role auditor may read audit"],
            ),
            (
                "other role may not audit",
                input(Some("writer"), Audit, Resource::missing("audit")),
                false,
                vec!["only the agent or an auditor may read audit"],
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
        let actions = [
            Action::Read,
            Action::Write,
            Action::Delete,
            Action::List,
            Action::Rotate,
            Action::Grant,
            Action::Token,
            Action::Approve,
            Action::Import,
            Action::Audit,
        ];
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
        for tier in [Tier::Standard, Tier::Sensitive, Tier::Critical] {
            assert_eq!(serde_json::to_value(tier).unwrap(), tier_name(tier));
        }
        for t in [
            SecretType::ApiKey,
            SecretType::OauthToken,
            SecretType::DbCredential,
            SecretType::SshKey,
            SecretType::PaymentCredential,
            SecretType::Custom,
        ] {
            assert_eq!(serde_json::to_value(t).unwrap(), type_name(t));
        }
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

    /// Runs every `test_` rule of `policies/*_test.rego` through regorus.
    #[test]
    fn rego_unit_tests_pass() {
        let dir = policies_dir();
        let mut sources = Vec::new();
        let mut tests = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rego"))
            .collect();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with("_test.rego") {
                let package = text
                    .lines()
                    .find_map(|l| l.strip_prefix("package "))
                    .unwrap_or_else(|| panic!("{name} has no package"))
                    .trim()
                    .to_owned();
                for line in text.lines().filter(|l| l.starts_with("test_")) {
                    let rule: String = line
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let rule = format!("data.{package}.{rule}");
                    if !tests.contains(&rule) {
                        tests.push(rule);
                    }
                }
            }
            sources.push(PolicySource {
                name,
                file: path,
                text,
            });
        }
        assert!(
            !tests.is_empty(),
            "no test_ rules found in {}",
            dir.display()
        );
        // The tests use `with`, which only the interpreter supports.
        let compiled = Compiled::build(&sources, &PolicyConfig::default(), false).unwrap();
        let Evaluator::Interpreter(engine) = &compiled.evaluator else {
            unreachable!("built for the interpreter")
        };
        let mut failed = Vec::new();
        for rule in &tests {
            let mut engine = (**engine).clone();
            match engine.eval_rule(rule.clone()) {
                Ok(regorus::Value::Bool(true)) => {}
                Ok(other) => failed.push(format!("{rule}: {other}")),
                Err(e) => failed.push(format!("{rule}: error {e:#}")),
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {} Rego tests failed:\n{}",
            failed.len(),
            tests.len(),
            failed.join("\n")
        );
        eprintln!("{} Rego tests passed", tests.len());
    }
}
