//! Cost of an Envoy ext_authz Check that allows without injection, against
//! two bare gRPC calls in the same run: the sidecar's own
//! `grpc.health.v1.Health/Check` on the same socket (same connection,
//! HTTP/2 framing and caller check, a tiny message), and a bare tonic
//! `Authorization/Check` echo on a Unix socket of its own that answers OK to
//! the same CheckRequest without looking at it (same message both ways).
//! Reports Checks/s at 16 concurrent callers and p50/p99 of sequential calls,
//! with the ratios; and, in-process, one evaluation of the Envoy rule against
//! one decision of a socket read (the issue's yardstick), both first seen
//! (evaluated) and repeated with a new `x-request-id` (memoized).
//!
//! `cargo bench --bench envoy`. Sidecar and load generator share the process
//! and the machine's cores.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentvault::client::grpc_channel;
use agentvault::config::{Config, Overrides, Settings};
use agentvault::envoy::{build_input, CheckInput, SubjectInput};
use agentvault::identity::WorkloadIdentity;
use agentvault::model::{SecretType, Tier};
use agentvault::policy::{Action, PolicyConfig, PolicyEngine, PolicyInput, Resource, Subject};
use agentvault::sidecar::Sidecar;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const CONCURRENCY: usize = 16;
const CHANNELS: usize = 4;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(4);
const SEQUENTIAL: usize = 5_000;
const DECISIONS: usize = 20_000;

const ROUTES: &str = r#"package envoy.authz
routes := {"api.example.com": {"roles": ["researcher"], "methods": ["POST"], "path_prefixes": ["/v1/"]}}
"#;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check_request() -> CheckRequest {
    let headers = [
        (":authority", "api.example.com"),
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("content-type", "application/json"),
        ("user-agent", "bench"),
        ("x-request-id", "bench-1"),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                time: None,
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    host: "api.example.com".into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
            }),
            context_extensions: [("agentvault_role".to_string(), "researcher".to_string())].into(),
            ..Default::default()
        }),
    }
}

#[derive(Clone, Copy)]
enum Call {
    Check,
    Health,
    Echo,
}

/// An Authorization server that allows everything without reading it.
struct Echo;

#[tonic::async_trait]
impl Authorization for Echo {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(envoy_types::pb::google::rpc::Status::default()),
            ..Default::default()
        }))
    }
}

async fn call(channel: Channel, which: Call) {
    match which {
        Call::Check | Call::Echo => {
            let resp = AuthorizationClient::new(channel)
                .check(check_request())
                .await
                .expect("check")
                .into_inner();
            assert_eq!(resp.status.map(|s| s.code), Some(0), "the check allows");
        }
        Call::Health => {
            HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await
                .expect("health");
        }
    }
}

/// Calls per second with CONCURRENCY callers over CHANNELS connections.
async fn throughput(channels: &[Channel], which: Call) -> f64 {
    let (counting, stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let channel = channels[w % channels.len()].clone();
            let (counting, stop, done) = (counting.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call(channel.clone(), which).await;
                    if counting.load(Ordering::Relaxed) {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(WARMUP).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(MEASURE).await;
    let calls = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    calls as f64 / elapsed.as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// p50 and p99 of SEQUENTIAL calls of each kind, one after another on one
/// connection per kind, in interleaved batches so that no kind gets a
/// warmer or colder machine than another.
async fn latencies(calls: &[(&Channel, Call)]) -> Vec<(Duration, Duration)> {
    const BATCH: usize = 250;
    let mut times = vec![Vec::with_capacity(SEQUENTIAL); calls.len()];
    for _ in 0..SEQUENTIAL / BATCH {
        for ((channel, which), times) in calls.iter().zip(&mut times) {
            for _ in 0..BATCH {
                let started = Instant::now();
                call((*channel).clone(), *which).await;
                times.push(started.elapsed());
            }
        }
    }
    times
        .into_iter()
        .map(|mut times| {
            times.sort();
            (percentile(&times, 0.50), percentile(&times, 0.99))
        })
        .collect()
}

/// p50 of `f` over DECISIONS runs.
fn p50(mut f: impl FnMut()) -> Duration {
    let mut times = Vec::with_capacity(DECISIONS);
    for _ in 0..DECISIONS {
        let started = Instant::now();
        f();
        times.push(started.elapsed());
    }
    times.sort();
    percentile(&times, 0.50)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One Envoy rule evaluation against one read decision, in-process.
fn policy_costs(policies: &Path) {
    let rule = "data.envoy.authz.allow";
    let engine =
        PolicyEngine::load_with(Some(policies), PolicyConfig::default(), vec![rule.into()])
            .expect("policies load");
    let me = "spiffe://dev.local/agent/dev/bench";
    let subject = SubjectInput {
        spiffe_id: me,
        tenant: "dev",
        agent: "bench",
        role: Some("researcher"),
    };
    // Each Check carries a new request id, as Envoy's do: the memo must key
    // on what the policy reads, not on the whole input. A few requests in
    // turn, warm in the CPU's caches as the socket read's input is.
    let requests: Vec<CheckRequest> = (0..64)
        .map(|n| {
            let mut req = check_request();
            if let Some(http) = req
                .attributes
                .as_mut()
                .and_then(|a| a.request.as_mut())
                .and_then(|r| r.http.as_mut())
            {
                http.headers
                    .insert("x-request-id".into(), format!("bench-{n}"));
            }
            req
        })
        .collect();
    let mut each_request = requests.iter().cycle();
    // What the sidecar does: key by the request fields the policy reads;
    // build only those parts and decide when the key is new.
    let envoy = p50(|| {
        let req = each_request.next().expect("a cycle never ends");
        let input = CheckInput {
            request: std::hint::black_box(req),
            subject: subject.clone(),
            parse_body: false,
        };
        let answer = engine.eval_rule_from::<_, Box<dyn std::error::Error>>(rule, &input);
        std::hint::black_box(answer.expect("eval"));
    });
    let whole_input = p50(|| {
        let req = each_request.next().expect("a cycle never ends");
        let input = build_input(std::hint::black_box(req), &subject, false).expect("input");
        std::hint::black_box(engine.eval_rule(rule, &input).expect("eval"));
    });
    let mut n = 0u64;
    let mut next_input = || {
        n += 1;
        let req = &requests[(n % 64) as usize];
        build_input(req, &subject, false).expect("input")
    };
    let built: Vec<_> = (0..64).map(|_| next_input()).collect();
    let mut each = built.iter().cycle();
    let decision_only = p50(|| {
        let input = each.next().expect("a cycle never ends");
        std::hint::black_box(
            engine
                .eval_rule(rule, std::hint::black_box(input))
                .expect("eval"),
        );
    });
    let uncached =
        PolicyEngine::load_with(Some(policies), PolicyConfig::default(), vec![rule.into()])
            .expect("policies load");
    let mut fresh = 0u64;
    let evaluated = p50(|| {
        // A new host each time: never seen, so evaluated.
        fresh += 1;
        let mut input = next_input();
        input["attributes"]["request"]["http"]["host"] = format!("h{fresh}.example.com").into();
        std::hint::black_box(
            uncached
                .eval_rule(rule, std::hint::black_box(&input))
                .expect("eval"),
        );
    });
    let read = PolicyInput {
        subject: Subject {
            spiffe_id: format!("{me}/researcher"),
            tenant: "dev".into(),
            agent: "bench".into(),
            agent_id: me.into(),
            role: Some("researcher".into()),
            uid: 1001,
            pid: Some(4242),
        },
        action: Action::Read,
        resource: Resource {
            path: "prod/openai/api-key".into(),
            exists: true,
            owner: Some(me.into()),
            owner_scope: None,
            tier: Some(Tier::Sensitive),
            secret_type: Some(SecretType::ApiKey),
            tags: BTreeMap::new(),
        },
        grants: Vec::new(),
        token: None,
        event: None,
    };
    let decide = p50(|| {
        std::hint::black_box(engine.decide(std::hint::black_box(&read)).expect("decide"));
    });
    println!(
        "policy (in-process p50), a repeated request with a new x-request-id: \
         {:.2} µs from the CheckRequest (the sidecar's path: keyed by the request fields the policy reads), \
         against a socket read decision {:.2} µs: ratio {:.2}; \
         {:.2} µs from a built input (keyed by its values), {:.2} µs building the whole input; \
         first seen, evaluated: {:.1} µs",
        us(envoy),
        us(decide),
        envoy.as_secs_f64() / decide.as_secs_f64(),
        us(decision_only),
        us(whole_input),
        us(evaluated),
    );
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).expect("policy dir");
    for file in ["authz.rego", "envoy.rego"] {
        std::fs::copy(repo().join("policies").join(file), policies.join(file)).expect("copy");
    }
    std::fs::write(policies.join("routes.rego"), ROUTES).expect("routes");
    policy_costs(&policies);

    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    let envoy_socket = dir.path().join("envoy.sock");
    let overrides = Overrides {
        socket: Some(dir.path().join("agentvault.sock")),
        data_dir: Some(dir.path().join("data")),
        metrics_addr: Some("off".into()),
        roles: vec![
            "researcher=uid:1001".parse().expect("role"),
            format!("envoy=uid:{uid}").parse().expect("role"),
        ],
        rate_limit: Some(0),
        policy_dir: Some(policies),
        envoy_socket: Some(envoy_socket.clone()),
        ..Overrides::default()
    };
    let identity = WorkloadIdentity::new("dev.local", "dev", "bench").expect("identity");
    let settings =
        Settings::resolve(Config::default(), overrides, Some(identity), true).expect("settings");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut sidecar = Sidecar::start(settings).await.expect("sidecar starts");
        sidecar
            .ready(Duration::from_secs(10))
            .await
            .expect("the dev identity is ready");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(sidecar.run(async {
            let _ = stop_rx.await;
        }));
        let mut channels = Vec::new();
        for _ in 0..CHANNELS {
            channels.push(
                grpc_channel(&envoy_socket)
                    .await
                    .expect("connect to the Envoy socket"),
            );
        }

        let echo_socket = dir.path().join("echo.sock");
        let listener = tokio::net::UnixListener::bind(&echo_socket).expect("echo socket");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(Echo))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let mut echoes = Vec::new();
        for _ in 0..CHANNELS {
            echoes.push(grpc_channel(&echo_socket).await.expect("connect to the echo"));
        }

        let sequential = latencies(&[
            (&channels[0], Call::Check),
            (&channels[1], Call::Health),
            (&echoes[0], Call::Echo),
        ])
        .await;
        let [(check_p50, check_p99), (health_p50, health_p99), (echo_p50, echo_p99)] =
            sequential[..]
        else {
            unreachable!("three kinds measured");
        };
        let checks = throughput(&channels, Call::Check).await;
        let health = throughput(&channels, Call::Health).await;
        let echo = throughput(&echoes, Call::Echo).await;

        println!(
            "sequential: Check p50 {:.0} µs p99 {:.0} µs; health p50 {:.0} µs p99 {:.0} µs; \
             bare Check echo p50 {:.0} µs p99 {:.0} µs; Check p50 / health {:.2}, / echo {:.2}",
            us(check_p50),
            us(check_p99),
            us(health_p50),
            us(health_p99),
            us(echo_p50),
            us(echo_p99),
            check_p50.as_secs_f64() / health_p50.as_secs_f64(),
            check_p50.as_secs_f64() / echo_p50.as_secs_f64(),
        );
        println!(
            "{CONCURRENCY} concurrent: Check {checks:.0}/s, health {health:.0}/s, bare Check echo {echo:.0}/s; \
             Check at {:.0}% of health, {:.0}% of the echo",
            100.0 * checks / health,
            100.0 * checks / echo,
        );
        let _ = stop_tx.send(());
        let _ = running.await;
    });
}
