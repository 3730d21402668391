//! Cost of one policy decision with the builtin policy: criterion numbers for
//! a typical allowed and a typical denied read, and before them the latency
//! distribution (p50/p99/p999) of 100,000 decisions in a plain loop, twice:
//! warm (the same inputs again, answered from the engine's memoized
//! decisions) and cold (each input with a pid never seen, so each one is
//! evaluated by the VM). Target: warm p99 ≤ 10 µs for every input.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;

use agentvault::model::{SecretType, Tier};
use agentvault::policy::{
    Action, GrantInput, PolicyConfig, PolicyEngine, PolicyInput, Resource, Subject, TokenScope,
};

const ME: &str = "spiffe://example.org/agent/acme/bot";
const OTHER: &str = "spiffe://example.org/agent/acme/other-bot";
const DECISIONS: usize = 100_000;

fn read(owner: &str) -> PolicyInput {
    PolicyInput {
        subject: Subject {
            spiffe_id: format!("{ME}/researcher"),
            tenant: "acme".into(),
            agent: "bot".into(),
            agent_id: ME.into(),
            role: Some("researcher".into()),
            uid: 1001,
            pid: Some(4242),
        },
        action: Action::Read,
        resource: Resource {
            path: "prod/openai/api-key".into(),
            exists: true,
            owner: Some(owner.into()),
            owner_scope: None,
            tier: Some(Tier::Sensitive),
            secret_type: Some(SecretType::ApiKey),
            tags: BTreeMap::from([("team".into(), "ml".into())]),
        },
        grants: Vec::new(),
        token: None,
        event: None,
    }
}

fn allowed_read() -> PolicyInput {
    read(ME)
}

fn denied_read() -> PolicyInput {
    read(OTHER)
}

fn granted_read() -> PolicyInput {
    let mut input = read(OTHER);
    input.grants = vec![GrantInput {
        agent_id: ME.into(),
        path: "prod/*".into(),
        role: None,
    }];
    input
}

fn role_scoped_read() -> PolicyInput {
    let mut input = read(ME);
    input.resource.owner_scope = Some("researcher".into());
    input
}

fn token_read() -> PolicyInput {
    let mut input = read(OTHER);
    input.token = TokenScope::parse("secrets:read:prod/openai/*")
        .ok()
        .map(|s| s.claims(OTHER, None, Tier::Critical));
    input
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn report(name: &str, mut nanos: Vec<u64>) {
    nanos.sort_unstable();
    println!(
        "{name:<28} n={:<7} p50 {:>6.1} µs   p99 {:>6.1} µs   p999 {:>6.1} µs   max {:>7.1} µs",
        nanos.len(),
        percentile(&nanos, 0.50),
        percentile(&nanos, 0.99),
        percentile(&nanos, 0.999),
        percentile(&nanos, 1.0),
    );
}

/// 100,000 decisions cycling through an owner's read, a role-scoped read, a
/// denied read, a granted read and a token read, each timed on its own.
/// `cold` gives every decision a new pid, so none is answered from memory.
fn latency_loop(engine: &PolicyEngine, cold: bool) {
    let mut inputs = [
        ("allowed read (owner)", allowed_read()),
        ("allowed read (role scope)", role_scoped_read()),
        ("denied read (other agent)", denied_read()),
        ("allowed read (grant)", granted_read()),
        ("allowed read (token)", token_read()),
    ];
    for (name, input) in &inputs {
        let decision = engine.decide(input).expect("decision");
        assert_eq!(
            decision.allow,
            name.starts_with("allowed"),
            "{name}: {decision:?}"
        );
        for _ in 0..1_000 {
            black_box(engine.decide(input).expect("decision"));
        }
    }
    let mut per_input: Vec<Vec<u64>> =
        vec![Vec::with_capacity(DECISIONS / inputs.len()); inputs.len()];
    for i in 0..DECISIONS {
        let slot = i % inputs.len();
        if cold {
            inputs[slot].1.subject.pid = Some(100_000 + i as i32);
        }
        let started = Instant::now();
        black_box(engine.decide(black_box(&inputs[slot].1)).expect("decision"));
        per_input[slot].push(started.elapsed().as_nanos() as u64);
    }
    println!(
        "policy decisions, {} evaluator, {}:",
        if engine.uses_vm() {
            "VM"
        } else {
            "interpreter"
        },
        if cold {
            "cold (each input new)"
        } else {
            "warm (memoized)"
        }
    );
    report("all", per_input.concat());
    for ((name, _), nanos) in inputs.iter().zip(per_input) {
        report(name, nanos);
    }
}

fn main() {
    // POLICY_DIR measures the policies of another directory instead of the built-in ones.
    let engine = match std::env::var_os("POLICY_DIR") {
        Some(dir) => PolicyEngine::load(std::path::Path::new(&dir), PolicyConfig::default()),
        None => PolicyEngine::builtin(PolicyConfig::default()),
    }
    .expect("policy");
    // `cargo test --benches` runs this without --bench: skip the long loop there.
    if std::env::args().any(|a| a == "--bench") {
        latency_loop(&engine, false);
        latency_loop(&engine, true);
    }
    let mut c = Criterion::default().configure_from_args();
    let (allowed, denied) = (allowed_read(), denied_read());
    assert!(engine.decide(&allowed).expect("decision").allow);
    assert!(!engine.decide(&denied).expect("decision").allow);
    c.bench_function("decide/allowed_read", |b| {
        b.iter(|| engine.decide(black_box(&allowed)))
    });
    c.bench_function("decide/denied_read", |b| {
        b.iter(|| engine.decide(black_box(&denied)))
    });
    c.final_summary();
}
