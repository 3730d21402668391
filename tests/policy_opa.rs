//! Differential test: the default policies must give the same decisions, reasons
//! included, under regorus (in-process) and under the real OPA engine
//! (`shared/tools/opa-eval`): a table of every combination, and 1,500 inputs
//! from a seeded generator. Also runs the Rego unit tests under OPA.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use agentvault::model::{SecretType, Tier};
use agentvault::policy::{
    Action, Decision, EventInput, GrantInput, PolicyConfig, PolicyEngine, PolicyInput, Resource,
    Subject, TokenClaims, TokenScope,
};

mod support;

const ME: &str = "spiffe://example.org/agent/acme/bot";
const OTHER: &str = "spiffe://example.org/agent/acme/other-bot";
const QUERY: &str = "data.agentvault.authz.decision";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Evaluates `query` under OPA with the policies' config as data.
fn run_opa(
    policies: &Path,
    config: &PolicyConfig,
    query: &str,
    inputs: &[serde_json::Value],
) -> Vec<serde_json::Value> {
    let data = serde_json::json!({ "agentvault": { "config": config } });
    support::opa::run_opa(policies, Some(&data), query, inputs)
}

fn subject(role: Option<&str>) -> Subject {
    Subject {
        spiffe_id: role.map_or(ME.to_owned(), |r| format!("{ME}/{r}")),
        tenant: "acme".into(),
        agent: "bot".into(),
        agent_id: ME.into(),
        role: role.map(str::to_owned),
        uid: 1001,
        pid: Some(4242),
    }
}

fn secret(path: &str, owner: &str, scope: Option<&str>) -> Resource {
    Resource {
        path: path.into(),
        exists: true,
        owner: Some(owner.into()),
        owner_scope: scope.map(str::to_owned),
        tier: Some(Tier::Critical),
        secret_type: Some(SecretType::DbCredential),
        tags: BTreeMap::from([("env".into(), "prod".into())]),
    }
}

fn grant(agent_id: &str, path: &str) -> GrantInput {
    GrantInput {
        agent_id: agent_id.into(),
        path: path.into(),
        role: None,
    }
}

fn token_of(scope: &str, agent: &str, role: Option<&str>, tier: Tier) -> Option<TokenClaims> {
    Some(TokenScope::parse(scope).unwrap().claims(agent, role, tier))
}

/// An audit event by `caller`, as the vault asks the `audit` decision about it.
fn event_by(caller: &str) -> EventInput {
    EventInput {
        caller: caller.to_owned(),
        kind: "vault.accessed".into(),
        action: Some("read".into()),
    }
}

fn token(scope: &str) -> Option<TokenClaims> {
    token_of(scope, OTHER, None, Tier::Critical)
}

/// Every combination of caller, action, resource and extra (grants or token),
/// plus edge cases: some 2,400 inputs covering every rule, allowed and denied.
fn inputs() -> Vec<PolicyInput> {
    let roles = [
        None,
        Some("researcher"),
        Some("writer"),
        Some("approver"),
        Some("auditor"),
    ];
    let actions = Action::ALL;
    let resources = [
        secret("prod/openai", ME, None),
        secret("prod/openai/key", ME, Some("researcher")),
        secret("prod/db", OTHER, None),
        secret("team/x", OTHER, Some("researcher")),
        Resource::missing("new/key"),
        Resource::missing("prod"),
    ];
    type Extra = Box<dyn Fn(&Resource) -> (Vec<GrantInput>, Option<TokenClaims>)>;
    let extras: Vec<Extra> = vec![
        Box::new(|_| (vec![], None)),
        Box::new(|r| (vec![grant(ME, &r.path)], None)),
        Box::new(|_| (vec![grant(OTHER, "prod/*"), grant(ME, "prod/*")], None)),
        Box::new(|_| (vec![grant(OTHER, "prod/*")], None)),
        Box::new(|_| (vec![], token("secrets:read:prod/*"))),
        Box::new(|_| (vec![], token("secrets:write:prod/openai"))),
        Box::new(|_| (vec![], token("secrets:list:prod/*"))),
        Box::new(|_| {
            let by_role = token_of(
                "secrets:read:prod/*",
                ME,
                Some("researcher"),
                Tier::Critical,
            );
            (vec![], by_role)
        }),
        Box::new(|_| {
            let low_tier = token_of("secrets:read:prod/*", OTHER, None, Tier::Sensitive);
            (vec![], low_tier)
        }),
        Box::new(|r| {
            let by_role = GrantInput {
                role: Some("researcher".into()),
                ..grant(ME, &r.path)
            };
            (vec![by_role], None)
        }),
        Box::new(|_| (vec![grant(ME, "team/*")], token("secrets:read:staging/*"))),
    ];
    let mut out = Vec::new();
    for role in roles {
        for action in actions {
            for resource in &resources {
                for extra in &extras {
                    let (grants, token) = extra(resource);
                    let input = PolicyInput {
                        subject: subject(role),
                        action,
                        resource: resource.clone(),
                        grants,
                        token,
                        event: None,
                    };
                    // `audit` is asked per event too: the caller's own, and another's.
                    if action == Action::Audit {
                        for caller in [input.subject.spiffe_id.clone(), OTHER.to_owned()] {
                            out.push(PolicyInput {
                                event: Some(event_by(&caller)),
                                ..input.clone()
                            });
                        }
                    }
                    out.push(input);
                }
            }
        }
    }
    let edge = |action, resource: Resource, grants, token| PolicyInput {
        subject: subject(None),
        action,
        resource,
        grants,
        token,
        event: None,
    };
    out.extend([
        edge(
            Action::Read,
            secret("production/key", OTHER, None),
            vec![grant(ME, "prod/*")],
            None,
        ),
        edge(
            Action::Read,
            secret("prod", OTHER, None),
            vec![grant(ME, "prod/*")],
            None,
        ),
        edge(
            Action::Read,
            secret("prod/a/b/c", OTHER, None),
            vec![grant(ME, "prod/a/*")],
            None,
        ),
        edge(
            Action::Read,
            secret("prod/openai/key", OTHER, None),
            vec![grant(ME, "prod/openai")],
            None,
        ),
        edge(
            Action::List,
            Resource::missing("prod/"),
            vec![],
            token("secrets:list:prod/*"),
        ),
        edge(
            Action::List,
            Resource::missing("pro"),
            vec![],
            token("secrets:list:prod/*"),
        ),
        edge(
            Action::List,
            Resource::missing("prodx"),
            vec![],
            token("secrets:list:prod/*"),
        ),
        edge(
            Action::List,
            Resource::missing("prod/x"),
            vec![],
            token("secrets:list:prod/x"),
        ),
        edge(
            Action::Write,
            Resource::missing("prod/new"),
            vec![],
            token("secrets:write:prod/*"),
        ),
        edge(
            Action::Delete,
            secret("prod/db", OTHER, None),
            vec![grant(ME, "prod/*")],
            token("secrets:write:prod/*"),
        ),
    ]);
    out
}

fn opa_decision(result: &serde_json::Value) -> Result<Decision, String> {
    match result.get("result") {
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| format!("{e}: {result}")),
        None => Err(result.to_string()),
    }
}

#[test]
fn regorus_and_opa_agree_on_every_decision() {
    let inputs = inputs();
    let json: Vec<serde_json::Value> = inputs
        .iter()
        .map(|i| serde_json::to_value(i).unwrap())
        .collect();
    let configs = [
        PolicyConfig::default(),
        PolicyConfig {
            approver_roles: vec!["researcher".into(), "writer".into()],
            auditor_roles: vec![],
        },
    ];
    for config in configs {
        let engine = PolicyEngine::builtin(config.clone()).unwrap();
        let results = run_opa(&repo().join("policies"), &config, QUERY, &json);
        let mut mismatches = Vec::new();
        let (mut allowed, mut reason_sets) = (0, BTreeSet::new());
        for ((input, value), opa) in inputs.iter().zip(&json).zip(&results) {
            let ours = engine.decide(input).unwrap();
            allowed += usize::from(ours.allow);
            reason_sets.insert(ours.reasons.clone());
            match opa_decision(opa) {
                Ok(theirs) if theirs == ours => {}
                Ok(theirs) => mismatches.push(format!(
                    "{value}\n  regorus: {ours:?}\n  opa:     {theirs:?}"
                )),
                Err(e) => mismatches.push(format!("{value}\n  regorus: {ours:?}\n  opa:     {e}")),
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} of {} decisions differ (config {config:?}):\n{}",
            mismatches.len(),
            inputs.len(),
            mismatches
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        eprintln!(
            "{} inputs agree ({allowed} allowed, {} denied, {} distinct reason lists) for {config:?}",
            inputs.len(),
            inputs.len() - allowed,
            reason_sets.len()
        );
        assert!(
            allowed > 100 && inputs.len() - allowed > 100,
            "too little variety"
        );
        assert!(
            reason_sets.len() >= 15,
            "too few distinct reasons: {reason_sets:?}"
        );
    }
}

/// `opa-eval` skips `*_test.rego`, so the test files are copied under another
/// name and their package evaluated: every `test_` rule must come out true.
#[test]
fn rego_unit_tests_pass_under_opa() {
    let policies = repo().join("policies");
    let tmp = tempfile::tempdir().unwrap();
    let mut tests = Vec::new();
    for entry in std::fs::read_dir(&policies).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".rego") else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let target = match stem.strip_suffix("_test") {
            Some(stem) => {
                let package = text
                    .lines()
                    .find_map(|l| l.strip_prefix("package "))
                    .unwrap()
                    .trim()
                    .to_owned();
                for line in text.lines().filter(|l| l.starts_with("test_")) {
                    let rule: String = line
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    tests.push((package.clone(), rule));
                }
                format!("{stem}_unit.rego")
            }
            None => name,
        };
        std::fs::write(tmp.path().join(target), text).unwrap();
    }
    tests.sort();
    tests.dedup();
    assert!(
        !tests.is_empty(),
        "no test_ rules in {}",
        policies.display()
    );
    let packages: BTreeSet<&String> = tests.iter().map(|(p, _)| p).collect();
    let mut failed = Vec::new();
    for package in packages {
        let query = format!("data.{package}");
        let result = &run_opa(
            tmp.path(),
            &PolicyConfig::default(),
            &query,
            &[serde_json::json!({})],
        )[0];
        let passed = result.get("result").cloned().unwrap_or_default();
        for (_, rule) in tests.iter().filter(|(p, _)| p == package) {
            if passed.get(rule) != Some(&serde_json::Value::Bool(true)) {
                failed.push(format!("{package}.{rule}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} Rego tests fail under OPA: {failed:?}",
        failed.len(),
        tests.len()
    );
    eprintln!("{} Rego tests pass under OPA", tests.len());
}

/// Random inputs from a seeded generator: callers, actions, resources,
/// grants and tokens drawn independently, so combinations the table above
/// does not list are tried too. `POLICY_DIFF_SEED` replays a run; the seed
/// is printed on failure.
mod generated {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    const INPUTS: usize = 1_500;
    const THIRD: &str = "spiffe://example.org/agent/acme/third-bot";
    const AGENTS: [&str; 3] = [ME, OTHER, THIRD];
    const ROLES: [Option<&str>; 5] = [
        None,
        Some("researcher"),
        Some("writer"),
        Some("approver"),
        Some("auditor"),
    ];
    const PATHS: [&str; 8] = [
        "prod/openai",
        "prod/openai/key",
        "prod/db",
        "prod",
        "production/key",
        "team/x",
        "new/key",
        "prod/a/b/c",
    ];
    const PATTERNS: [&str; 8] = [
        "prod/*",
        "prod/openai",
        "prod/openai/*",
        "team/*",
        "prod/a/*",
        "production/*",
        "new/key",
        "staging/*",
    ];
    const ACTIONS: [Action; 10] = Action::ALL;
    const TIERS: [Tier; 3] = [Tier::Standard, Tier::Sensitive, Tier::Critical];
    const TYPES: [SecretType; 3] = [
        SecretType::ApiKey,
        SecretType::DbCredential,
        SecretType::Custom,
    ];

    fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
        items.choose(rng).expect("non-empty")
    }

    fn role(rng: &mut StdRng) -> Option<&'static str> {
        *pick(rng, &ROLES)
    }

    fn resource(rng: &mut StdRng) -> Resource {
        let path = *pick(rng, &PATHS);
        if rng.gen_bool(0.2) {
            return Resource::missing(path);
        }
        Resource {
            path: path.into(),
            exists: true,
            owner: Some((*pick(rng, &AGENTS)).to_owned()),
            owner_scope: role(rng).map(str::to_owned),
            tier: Some(*pick(rng, &TIERS)),
            secret_type: Some(*pick(rng, &TYPES)),
            tags: BTreeMap::from([("env".into(), "prod".into())]),
        }
    }

    fn input(rng: &mut StdRng) -> PolicyInput {
        let resource = resource(rng);
        let grants = (0..rng.gen_range(0..=3))
            .map(|_| GrantInput {
                agent_id: (*pick(rng, &AGENTS)).to_owned(),
                path: if rng.gen_bool(0.3) {
                    resource.path.clone()
                } else {
                    (*pick(rng, &PATTERNS)).to_owned()
                },
                role: role(rng).map(str::to_owned),
            })
            .collect();
        let token = rng.gen_bool(0.4).then(|| {
            let action = *pick(rng, &["read", "write", "list"]);
            let pattern = *pick(rng, &PATTERNS);
            let agent = AGENTS[rng.gen_range(0..AGENTS.len())];
            TokenScope::parse(&format!("secrets:{action}:{pattern}"))
                .unwrap()
                .claims(agent, role(rng), *pick(rng, &TIERS))
        });
        let action = *pick(rng, &ACTIONS);
        let subject = subject(role(rng));
        let event = (action == Action::Audit && rng.gen_bool(0.7)).then(|| {
            let own = subject.spiffe_id.clone();
            let caller = if rng.gen_bool(0.5) {
                own.as_str()
            } else {
                OTHER
            };
            event_by(caller)
        });
        PolicyInput {
            subject,
            action,
            resource,
            grants,
            token,
            event,
        }
    }

    #[test]
    fn regorus_and_opa_agree_on_generated_inputs() {
        let seed: u64 = std::env::var("POLICY_DIFF_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(rand::random);
        let mut rng = StdRng::seed_from_u64(seed);
        let inputs: Vec<PolicyInput> = (0..INPUTS).map(|_| input(&mut rng)).collect();
        let json: Vec<serde_json::Value> = inputs
            .iter()
            .map(|i| serde_json::to_value(i).unwrap())
            .collect();
        let config = PolicyConfig::default();
        let engine = PolicyEngine::builtin(config.clone()).unwrap();
        let results = run_opa(&repo().join("policies"), &config, QUERY, &json);
        let mut mismatches = Vec::new();
        let mut allowed = 0;
        for ((input, value), opa) in inputs.iter().zip(&json).zip(&results) {
            let ours = engine.decide(input).unwrap();
            allowed += usize::from(ours.allow);
            match opa_decision(opa) {
                Ok(theirs) if theirs == ours => {}
                Ok(theirs) => mismatches.push(format!(
                    "{value}\n  regorus: {ours:?}\n  opa:     {theirs:?}"
                )),
                Err(e) => mismatches.push(format!("{value}\n  regorus: {ours:?}\n  opa:     {e}")),
            }
        }
        assert!(
            mismatches.is_empty(),
            "seed {seed} (replay with POLICY_DIFF_SEED={seed}): {} of {} decisions differ:\n{}",
            mismatches.len(),
            inputs.len(),
            mismatches
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            allowed > INPUTS / 20 && INPUTS - allowed > INPUTS / 20,
            "seed {seed}: too little variety ({allowed} of {INPUTS} allowed)"
        );
        eprintln!("seed {seed}: {INPUTS} generated inputs agree ({allowed} allowed)");
    }
}
