//! Who is asking. The workload identity (tenant and agent) comes from the
//! pod's SPIFFE ID; the local caller is identified by the kernel
//! (`SO_PEERCRED`) and mapped to a role by configuration. Nothing here trusts
//! anything a request says about itself.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::model::is_path_char;

/// The default shape of an agent's SPIFFE ID.
pub const DEFAULT_ID_PATTERN: &str = "spiffe://{trust_domain}/agent/{tenant}/{agent}";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("SPIFFE ID `{id}` does not match the pattern `{pattern}`")]
    NoMatch { id: String, pattern: String },
    #[error("identity pattern `{0}` must start with spiffe:// and name {{trust_domain}}, {{tenant}} and {{agent}} once each")]
    BadPattern(String),
    #[error("{what} `{value}` may only hold A-Z a-z 0-9 . _ -")]
    BadName { what: &'static str, value: String },
    #[error("role `{0}`: expected NAME=uid:N, NAME=gid:N or NAME=exe:/path")]
    BadRole(String),
}

/// The pod's identity: the agent-level SPIFFE ID and the names parsed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIdentity {
    pub spiffe_id: String,
    pub trust_domain: String,
    pub tenant: String,
    pub agent: String,
}

fn check_name(what: &'static str, value: &str) -> Result<(), IdentityError> {
    if value.is_empty() || value.len() > 128 || !value.chars().all(is_path_char) {
        return Err(IdentityError::BadName {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

impl WorkloadIdentity {
    /// Builds the identity for the default pattern from its parts.
    pub fn new(trust_domain: &str, tenant: &str, agent: &str) -> Result<Self, IdentityError> {
        check_name("trust domain", trust_domain)?;
        check_name("tenant", tenant)?;
        check_name("agent", agent)?;
        Ok(Self {
            spiffe_id: format!("spiffe://{trust_domain}/agent/{tenant}/{agent}"),
            trust_domain: trust_domain.to_owned(),
            tenant: tenant.to_owned(),
            agent: agent.to_owned(),
        })
    }

    /// Parses a SPIFFE ID against a pattern such as [`DEFAULT_ID_PATTERN`],
    /// segment by segment.
    pub fn parse(id: &str, pattern: &str) -> Result<Self, IdentityError> {
        let bad_pattern = || IdentityError::BadPattern(pattern.to_owned());
        let no_match = || IdentityError::NoMatch {
            id: id.to_owned(),
            pattern: pattern.to_owned(),
        };
        let pattern_rest = pattern.strip_prefix("spiffe://").ok_or_else(bad_pattern)?;
        for placeholder in ["{trust_domain}", "{tenant}", "{agent}"] {
            if pattern_rest
                .split('/')
                .filter(|p| *p == placeholder)
                .count()
                != 1
            {
                return Err(bad_pattern());
            }
        }
        let id_rest = id.strip_prefix("spiffe://").ok_or_else(no_match)?;
        let (pattern_parts, id_parts): (Vec<_>, Vec<_>) = (
            pattern_rest.split('/').collect(),
            id_rest.split('/').collect(),
        );
        if pattern_parts.len() != id_parts.len() {
            return Err(no_match());
        }
        let (mut td, mut tenant, mut agent) = (None, None, None);
        for (p, v) in pattern_parts.iter().zip(&id_parts) {
            let slot = match *p {
                "{trust_domain}" => &mut td,
                "{tenant}" => &mut tenant,
                "{agent}" => &mut agent,
                literal if literal == *v => continue,
                _ => return Err(no_match()),
            };
            if slot.replace(*v).is_some() {
                return Err(bad_pattern());
            }
        }
        let (Some(td), Some(tenant), Some(agent)) = (td, tenant, agent) else {
            return Err(bad_pattern());
        };
        for (what, value) in [("trust domain", td), ("tenant", tenant), ("agent", agent)] {
            check_name(what, value).map_err(|_| no_match())?;
        }
        Ok(Self {
            spiffe_id: id.to_owned(),
            trust_domain: td.to_owned(),
            tenant: tenant.to_owned(),
            agent: agent.to_owned(),
        })
    }
}

/// What the kernel says about the process at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: Option<i32>,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleMatcher {
    Uid(u32),
    Gid(u32),
    Exe(PathBuf),
}

/// One `NAME=uid:N|gid:N|exe:/path` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleRule {
    pub role: String,
    pub matcher: RoleMatcher,
}

/// The `NAME=uid:N|gid:N|exe:/path` form [`FromStr`] reads.
impl fmt::Display for RoleRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.role, self.matcher)
    }
}

impl fmt::Display for RoleMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Uid(n) => write!(f, "uid:{n}"),
            Self::Gid(n) => write!(f, "gid:{n}"),
            Self::Exe(path) => write!(f, "exe:{}", path.display()),
        }
    }
}

impl FromStr for RoleRule {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::BadRole(s.to_owned());
        let (role, matcher) = s.split_once('=').ok_or_else(bad)?;
        check_name("role", role).map_err(|_| bad())?;
        Ok(Self {
            role: role.to_owned(),
            matcher: RoleMatcher::from_str(matcher).map_err(|_| bad())?,
        })
    }
}

impl FromStr for RoleMatcher {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IdentityError::BadRole(s.to_owned());
        match s.split_once(':').ok_or_else(bad)? {
            ("uid", n) => n.parse().map(Self::Uid).map_err(|_| bad()),
            ("gid", n) => n.parse().map(Self::Gid).map_err(|_| bad()),
            ("exe", p) if p.starts_with('/') => Ok(Self::Exe(PathBuf::from(p))),
            _ => Err(bad()),
        }
    }
}

/// Maps local callers to roles; the first matching rule wins.
#[derive(Debug, Clone, Default)]
pub struct RoleMap {
    rules: Vec<RoleRule>,
}

impl RoleMap {
    pub fn new(rules: Vec<RoleRule>) -> Self {
        Self { rules }
    }

    pub fn rules(&self) -> &[RoleRule] {
        &self.rules
    }

    /// The role of a caller, if any rule matches. `gid:` rules match the
    /// primary and the supplementary groups; `exe:` rules the executable the
    /// kernel reports for the pid.
    pub fn resolve(&self, cred: &PeerCred) -> Option<&str> {
        let needs_proc = |m: &RoleMatcher| !matches!(m, RoleMatcher::Uid(_));
        let proc_info = if self.rules.iter().any(|r| needs_proc(&r.matcher)) {
            cred.pid.map(ProcInfo::read).unwrap_or_default()
        } else {
            ProcInfo::default()
        };
        self.rules
            .iter()
            .find(|rule| match &rule.matcher {
                RoleMatcher::Uid(uid) => cred.uid == *uid,
                RoleMatcher::Gid(gid) => cred.gid == *gid || proc_info.groups.contains(gid),
                RoleMatcher::Exe(exe) => proc_info.exe.as_ref() == Some(exe),
            })
            .map(|rule| rule.role.as_str())
    }
}

#[derive(Debug, Default)]
struct ProcInfo {
    exe: Option<PathBuf>,
    groups: Vec<u32>,
}

impl ProcInfo {
    fn read(pid: i32) -> Self {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let groups = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("Groups:"))
                    .map(|g| {
                        g.split_whitespace()
                            .filter_map(|n| n.parse().ok())
                            .collect()
                    })
            })
            .unwrap_or_default();
        Self { exe, groups }
    }
}

/// What a local caller that no role rule matches may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmappedCallers {
    /// It acts as the whole agent: `dev`, `serve` without role rules, or by
    /// the operator's choice (`--unmapped-callers agent`).
    Agent,
    /// It is refused unless it presents a valid bearer token, and then it may
    /// do only what the token's scope says: the default of `serve` once roles
    /// are configured, so that a stray process of an unexpected uid cannot
    /// act as the agent.
    Refuse,
}

impl UnmappedCallers {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Refuse => "refuse",
        }
    }
}

impl FromStr for UnmappedCallers {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Self::Agent),
            "refuse" => Ok(Self::Refuse),
            _ => Err("expected `agent` or `refuse`".to_owned()),
        }
    }
}

/// The process at the other end of a connection: its kernel credentials and
/// the role they map to, fixed when the connection is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub cred: PeerCred,
    pub role: Option<String>,
}

impl Peer {
    pub fn identify(roles: &RoleMap, cred: PeerCred) -> Self {
        Self {
            role: roles.resolve(&cred).map(str::to_owned),
            cred,
        }
    }
}

/// A caller as the policy sees it: the effective SPIFFE ID (`…/<agent>/<role>`,
/// or the agent-level ID when no role matched), the kernel's credentials, and
/// the bearer token the request presented, if any.
#[derive(Clone, PartialEq, Eq)]
pub struct Caller {
    pub spiffe_id: String,
    pub role: Option<String>,
    pub cred: PeerCred,
    pub bearer: Option<String>,
    /// The front end's id for the request, carried into audit events and logs.
    pub request_id: Option<String>,
    /// A caller that no role matched under [`UnmappedCallers::Refuse`]: it
    /// holds no authority of its own, only its bearer token's.
    pub token_only: bool,
}

impl Caller {
    pub fn new(workload: &WorkloadIdentity, peer: &Peer, bearer: Option<String>) -> Self {
        let spiffe_id = match &peer.role {
            Some(role) => format!("{}/{role}", workload.spiffe_id),
            None => workload.spiffe_id.clone(),
        };
        Self {
            spiffe_id,
            role: peer.role.clone(),
            cred: peer.cred,
            bearer,
            request_id: None,
            token_only: false,
        }
    }

    /// The same caller, with no authority but its bearer token's.
    pub fn token_only(mut self) -> Self {
        self.token_only = true;
        self
    }

    /// The same caller, acting in the request with this id.
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request_id = Some(request_id.into());
        self
    }
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("spiffe_id", &self.spiffe_id)
            .field("role", &self.role)
            .field("cred", &self.cred)
            .field("bearer", &self.bearer.as_ref().map(|_| "[redacted]"))
            .field("request_id", &self.request_id)
            .field("token_only", &self.token_only)
            .finish()
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (uid {}", self.spiffe_id, self.cred.uid)?;
        if let Some(pid) = self.cred.pid {
            write!(f, ", pid {pid}")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_default_pattern() {
        let id = WorkloadIdentity::parse(
            "spiffe://example.org/agent/acme/research-bot",
            DEFAULT_ID_PATTERN,
        )
        .unwrap();
        assert_eq!(id.trust_domain, "example.org");
        assert_eq!(id.tenant, "acme");
        assert_eq!(id.agent, "research-bot");
        assert_eq!(
            id,
            WorkloadIdentity::new("example.org", "acme", "research-bot").unwrap()
        );
    }

    #[test]
    fn parses_custom_pattern() {
        let id = WorkloadIdentity::parse(
            "spiffe://td/ns/acme/sa/bot",
            "spiffe://{trust_domain}/ns/{tenant}/sa/{agent}",
        )
        .unwrap();
        assert_eq!((id.tenant.as_str(), id.agent.as_str()), ("acme", "bot"));
    }

    #[test]
    fn rejects_non_matching_ids_and_bad_patterns() {
        for id in [
            "spiffe://td/agent/acme",
            "spiffe://td/workload/acme/bot",
            "https://td/agent/acme/bot",
            "spiffe://td/agent/acme/bot/extra",
            "spiffe://td/agent/ac{me/bot",
        ] {
            assert!(
                matches!(
                    WorkloadIdentity::parse(id, DEFAULT_ID_PATTERN),
                    Err(IdentityError::NoMatch { .. })
                ),
                "{id}"
            );
        }
        for pattern in [
            "td/{tenant}/{agent}",
            "spiffe://{trust_domain}/{tenant}",
            "spiffe://{tenant}/{tenant}/{agent}",
        ] {
            assert!(
                matches!(
                    WorkloadIdentity::parse("spiffe://a/b/c", pattern),
                    Err(IdentityError::BadPattern(_))
                ),
                "{pattern}"
            );
        }
    }

    #[test]
    fn parses_role_rules() {
        assert_eq!(
            "researcher=uid:1001".parse::<RoleRule>().unwrap(),
            RoleRule {
                role: "researcher".into(),
                matcher: RoleMatcher::Uid(1001)
            }
        );
        assert_eq!(
            "w=exe:/usr/bin/python3"
                .parse::<RoleRule>()
                .unwrap()
                .matcher,
            RoleMatcher::Exe("/usr/bin/python3".into())
        );
        for bad in [
            "researcher",
            "r=uid:x",
            "r=exe:relative",
            "r=pid:1",
            "bad role=uid:1",
        ] {
            assert!(bad.parse::<RoleRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn resolves_roles_from_credentials() {
        let roles = RoleMap::new(vec![
            "a=uid:1001".parse().unwrap(),
            "b=gid:2000".parse().unwrap(),
            format!("me=exe:{}", std::env::current_exe().unwrap().display())
                .parse()
                .unwrap(),
        ]);
        let cred = |uid, gid, pid| PeerCred { pid, uid, gid };
        assert_eq!(roles.resolve(&cred(1001, 0, None)), Some("a"));
        assert_eq!(roles.resolve(&cred(5, 2000, None)), Some("b"));
        assert_eq!(roles.resolve(&cred(5, 5, None)), None);
        let me = cred(5, 5, Some(std::process::id() as i32));
        assert_eq!(roles.resolve(&me), Some("me"));

        let workload = WorkloadIdentity::new("dev.local", "dev", "bot").unwrap();
        let caller = Caller::new(
            &workload,
            &Peer::identify(&roles, cred(1001, 0, None)),
            Some("avt_x".into()),
        );
        assert_eq!(caller.spiffe_id, "spiffe://dev.local/agent/dev/bot/a");
        assert!(
            !format!("{caller:?}").contains("avt_x"),
            "the bearer token is redacted"
        );
        let anonymous = Caller::new(&workload, &Peer::identify(&roles, cred(7, 7, None)), None);
        assert_eq!(anonymous.spiffe_id, workload.spiffe_id);
        assert_eq!(anonymous.role, None);
    }
}
