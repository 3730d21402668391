//! Two timings of release sidecars (`agentvault dev`) on a private
//! `redis-server` with its append-only file on, as production runs it:
//!
//! 1. Recovery after a Redis outage. Redis is killed (SIGKILL) under four
//!    pollers, restarted on the same port and dir after 1 s (its data
//!    survives), and from the moment it accepts TCP again each poller's first
//!    success is timed: (a) a PUT, (b) a standard read on the cached sidecar,
//!    (c) a read of a `tier: critical` secret (strict audit: answered only once
//!    its event is stored), (d) a read on a sidecar without the cache
//!    (`--cache-max-entries 0`). Each poller sends a new request 1 ms after
//!    the last answer. Twice: killed idle (the pollers start right after the
//!    kill, so no audit event was waiting to be stored) and killed under load
//!    (they start 200 ms before it, so events of requests just served were).
//!    Several rounds each; p50 and max per kind.
//! 2. Existence-oracle timing. Agent `a` GETs (a) a path holding nothing,
//!    (b) a path holding agent `b`'s secret (same tenant; `a` may not read it),
//!    (c) a secret of its own. (a) and (b) both answer 404 by design; their
//!    latencies should be comparable too. Sequential on one connection,
//!    interleaved, on the cached and the uncached sidecar; p50/p99 and (b)/(a).
//!
//! Prints tables, no pass/fail on timings. `cargo bench --bench recovery`
//! (needs `redis-server` on PATH). Redis, the sidecars and the load generator
//! share the machine's cores. Sidecar logs go to `NAME.log` in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use agentvault::client::Connection;
use hyper::Method;
use support::{wait_until, Guard, Redis};

mod support;

/// Outages, one after another.
const ROUNDS: usize = 5;
/// How long Redis stays dead.
const OUTAGE: Duration = Duration::from_secs(1);
/// Pause between a poller's answer and its next request.
const POLL: Duration = Duration::from_millis(1);
/// A kind that has not recovered this long after Redis is back is reported as such.
const GIVE_UP: Duration = Duration::from_secs(20);
/// Pause between rounds, for every sidecar to be subscribed and caching again.
const BETWEEN_ROUNDS: Duration = Duration::from_secs(3);
/// GETs timed per path for the existence oracle, and untimed ones before.
const ORACLE_SAMPLES: usize = 5_000;
const ORACLE_WARMUP: usize = 300;
const TENANT: &str = "bench";
const VALUE: &str = "sk-bench-0123456789abcdef0123456789abcdef0123456789abcdef";

/// A dev sidecar of `TENANT`/`agent`; its log goes to `dir/NAME.log`.
fn sidecar(
    dir: &Path,
    name: &str,
    agent: &str,
    url: &str,
    keyring: &Path,
    extra: &[&str],
) -> (Guard, PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("sidecar log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentvault"));
    cmd.args(["dev", "--metrics-addr", "off", "--redis-url", url])
        .args(["--tenant", TENANT, "--agent", agent])
        // One caller drives the load: measure serving, not the limiter.
        .args(["--rate-limit", "0", "--expiry-check-interval", "1h"])
        .args(extra)
        .arg("--socket")
        .arg(&socket)
        .arg("--keyring")
        .arg(keyring)
        .arg("--data-dir")
        .arg(dir.join(name))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log);
    let guard = Guard(cmd.spawn().expect("agentvault binary"));
    wait_until(name, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    (guard, socket)
}

async fn connect(socket: &Path) -> Connection {
    Connection::open(socket)
        .await
        .expect("connect to the sidecar")
}

fn body(value: &str, tier: Option<&str>) -> Vec<u8> {
    let mut body = serde_json::json!({ "value": value });
    if let Some(tier) = tier {
        body["tier"] = tier.into();
    }
    body.to_string().into_bytes()
}

async fn put(socket: &Path, path: &str, tier: Option<&str>) {
    let reply = connect(socket)
        .await
        .send(
            Method::PUT,
            &format!("/v1/secrets/{path}"),
            Some(body(VALUE, tier)),
        )
        .await
        .expect("PUT");
    assert_eq!(reply.status, 200, "PUT {path}: {:?}", reply.json());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One poller of the recovery: what it sends, and where.
struct Probe {
    name: &'static str,
    socket: PathBuf,
    method: Method,
    uri: &'static str,
    body: Option<Vec<u8>>,
}

/// What one poller saw in one round.
struct Recovered {
    /// From the moment Redis accepted TCP again to the end of the first 200
    /// after it; `None` if none came within `GIVE_UP`.
    after: Option<Duration>,
    /// Non-200 answers (or broken connections) after Redis was back.
    refused: usize,
    /// The last refusal after Redis was back, e.g. `503 unavailable`.
    last_refusal: Option<String>,
}

/// Sends the probe's request every `POLL` from now on; returns once one
/// succeeds after `up` is set (Redis accepts TCP again).
async fn poll(probe: Arc<Probe>, up: Arc<OnceLock<Instant>>) -> Recovered {
    let started = Instant::now();
    let mut conn: Option<Connection> = None;
    let mut refused = 0;
    let mut last_refusal = None;
    loop {
        if conn.is_none() {
            conn = Connection::open(&probe.socket).await.ok();
        }
        let answer = match conn.as_mut() {
            Some(c) => c
                .send(probe.method.clone(), probe.uri, probe.body.clone())
                .await
                .map_err(|e| e.to_string()),
            None => Err("cannot connect".to_owned()),
        };
        let now = Instant::now();
        let ok = matches!(&answer, Ok(reply) if reply.status == 200);
        if answer.is_err() {
            conn = None;
        }
        match up.get() {
            Some(&up) if ok => {
                return Recovered {
                    after: Some(now.saturating_duration_since(up)),
                    refused,
                    last_refusal,
                };
            }
            Some(&up) => {
                refused += 1;
                last_refusal = Some(match answer {
                    Ok(reply) => format!(
                        "{} {}",
                        reply.status,
                        reply.error_code().unwrap_or_default()
                    ),
                    Err(e) => e,
                });
                if now.saturating_duration_since(up) > GIVE_UP {
                    return Recovered {
                        after: None,
                        refused,
                        last_refusal,
                    };
                }
            }
            None => assert!(
                started.elapsed() < OUTAGE + GIVE_UP,
                "Redis did not come back"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every probe answers 200 (the sidecars are healthy again).
async fn healthy(probes: &[Arc<Probe>]) {
    let deadline = Instant::now() + GIVE_UP;
    for probe in probes {
        let mut conn = connect(&probe.socket).await;
        loop {
            let reply = conn
                .send(probe.method.clone(), probe.uri, probe.body.clone())
                .await
                .expect("probe");
            if reply.status == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} still answers {:?}",
                probe.name,
                reply.json()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// `ROUNDS` outages. `under_load`: the pollers start 200 ms before the kill
/// (it lands amid served requests, whose audit events are then waiting to be
/// stored); otherwise right after it (nothing was waiting).
async fn recovery(redis: &mut Redis, probes: &[Arc<Probe>], under_load: bool) {
    let mut seen: Vec<Vec<Recovered>> = probes.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        healthy(probes).await;
        tokio::time::sleep(BETWEEN_ROUNDS).await;
        healthy(probes).await;

        let up = Arc::new(OnceLock::new());
        let spawn = || -> Vec<_> {
            probes
                .iter()
                .map(|p| tokio::spawn(poll(p.clone(), up.clone())))
                .collect()
        };
        let pollers = if under_load {
            let pollers = spawn();
            tokio::time::sleep(Duration::from_millis(200)).await;
            redis.kill();
            pollers
        } else {
            redis.kill();
            spawn()
        };
        tokio::time::sleep(OUTAGE).await;
        redis.spawn();
        let addr = ("127.0.0.1", redis.port);
        let deadline = Instant::now() + GIVE_UP;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not restart");
            tokio::time::sleep(POLL).await;
        }
        up.set(Instant::now()).expect("one restart per round");
        for (poller, seen) in pollers.into_iter().zip(&mut seen) {
            seen.push(poller.await.expect("poller"));
        }
    }

    println!(
        "recovery after a Redis outage, {}: SIGKILL, restarted on the same port and dir after \
         {} s (append-only file on), {ROUNDS} rounds; from the moment Redis accepts TCP to each \
         kind's first 200, polled every {} ms",
        if under_load {
            "killed under the pollers' load"
        } else {
            "killed idle"
        },
        OUTAGE.as_secs(),
        POLL.as_millis()
    );
    println!(
        "{:<34}{:>9}{:>9}  {:<36}  refused after Redis was back (last)",
        "first success", "p50 ms", "max ms", "each round, ms"
    );
    for (probe, seen) in probes.iter().zip(&seen) {
        let mut times: Vec<Duration> = seen.iter().filter_map(|r| r.after).collect();
        times.sort();
        let rounds = seen
            .iter()
            .map(|r| match r.after {
                Some(d) => format!("{:.0}", ms(d)),
                None => "never".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        let refused: usize = seen.iter().map(|r| r.refused).sum();
        let last = seen
            .iter()
            .rev()
            .find_map(|r| r.last_refusal.clone())
            .unwrap_or_default();
        let (p50, max) = if times.is_empty() {
            ("-".to_owned(), "-".to_owned())
        } else {
            (
                format!("{:.1}", ms(percentile(&times, 0.5))),
                format!("{:.1}", ms(times[times.len() - 1])),
            )
        };
        println!(
            "{:<34}{p50:>9}{max:>9}  {rounds:<36}  {refused} ({last})",
            probe.name
        );
    }
}

/// The existence oracle on one sidecar of agent `a`: p50/p99 per path.
async fn oracle(socket: &Path) -> Vec<(Duration, Duration)> {
    let paths = [
        ("/v1/secrets/nothing/here", 404),
        ("/v1/secrets/b/secret", 404),
        ("/v1/secrets/a/secret", 200),
    ];
    let mut conn = connect(socket).await;
    let mut samples: Vec<Vec<Duration>> = paths
        .iter()
        .map(|_| Vec::with_capacity(ORACLE_SAMPLES))
        .collect();
    for i in 0..ORACLE_WARMUP + ORACLE_SAMPLES {
        // Interleaved, each path first in turn.
        for j in 0..paths.len() {
            let k = (i + j) % paths.len();
            let (uri, status) = paths[k];
            let sent = Instant::now();
            let reply = conn.send(Method::GET, uri, None).await.expect("GET");
            let took = sent.elapsed();
            assert_eq!(reply.status, status, "GET {uri}: {:?}", reply.json());
            if i >= ORACLE_WARMUP {
                samples[k].push(took);
            }
        }
    }
    samples
        .iter_mut()
        .map(|s| {
            s.sort();
            (percentile(s, 0.5), percentile(s, 0.99))
        })
        .collect()
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keyring = dir.path().join("keyring.json");
    let out = Command::new(env!("CARGO_BIN_EXE_agentvault"))
        .arg("keygen")
        .arg(&keyring)
        .output()
        .expect("run agentvault keygen");
    assert!(out.status.success(), "keygen: {out:?}");
    let mut redis = Redis::start_durable(&dir.path().join("redis"));
    let url = redis.url();

    // Agent a: one sidecar with the cache (the default), one without; agent b
    // of the same tenant owns a secret a may not read.
    let (_warm, warm) = sidecar(dir.path(), "a-warm", "a", &url, &keyring, &[]);
    let cold_flags = ["--cache-max-entries", "0"];
    let (_cold, cold) = sidecar(dir.path(), "a-cold", "a", &url, &keyring, &cold_flags);
    let (_b, b) = sidecar(dir.path(), "b", "b", &url, &keyring, &cold_flags);
    eprintln!("sidecar logs: {}", dir.path().display());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        put(&warm, "a/secret", None).await;
        put(&warm, "a/critical", Some("critical")).await;
        put(&b, "b/secret", None).await;

        let mut timed = Vec::new();
        for socket in [&warm, &cold] {
            timed.push(oracle(socket).await);
        }
        println!(
            "existence oracle: agent a GETs three paths, interleaved, {ORACLE_SAMPLES} each, \
             sequential on one connection"
        );
        println!(
            "{:<40}{:>10}{:>10}{:>10}{:>10}",
            "path", "warm p50", "warm p99", "cold p50", "cold p99"
        );
        let names = [
            "(a) nothing there (404)",
            "(b) agent b's secret (404)",
            "(c) its own secret (200)",
        ];
        for (k, name) in names.iter().enumerate() {
            println!(
                "{name:<40}{:>8.0}µs{:>8.0}µs{:>8.0}µs{:>8.0}µs",
                us(timed[0][k].0),
                us(timed[0][k].1),
                us(timed[1][k].0),
                us(timed[1][k].1),
            );
        }
        let ratio = |t: &[(Duration, Duration)]| {
            (
                t[1].0.as_secs_f64() / t[0].0.as_secs_f64(),
                t[1].1.as_secs_f64() / t[0].1.as_secs_f64(),
            )
        };
        let (warm_p50, warm_p99) = ratio(&timed[0]);
        let (cold_p50, cold_p99) = ratio(&timed[1]);
        println!(
            "{:<40}{warm_p50:>9.2}×{warm_p99:>9.2}×{cold_p50:>9.2}×{cold_p99:>9.2}×",
            "(b)/(a)"
        );
        println!();

        let probes = [
            Probe {
                name: "(a) PUT",
                socket: warm.clone(),
                method: Method::PUT,
                uri: "/v1/secrets/a/written",
                body: Some(body(VALUE, None)),
            },
            Probe {
                name: "(b) standard read, cached sidecar",
                socket: warm.clone(),
                method: Method::GET,
                uri: "/v1/secrets/a/secret",
                body: None,
            },
            Probe {
                name: "(c) critical read (strict audit)",
                socket: warm.clone(),
                method: Method::GET,
                uri: "/v1/secrets/a/critical",
                body: None,
            },
            Probe {
                name: "(d) standard read, no cache",
                socket: cold.clone(),
                method: Method::GET,
                uri: "/v1/secrets/a/secret",
                body: None,
            },
        ]
        .map(Arc::new);
        recovery(&mut redis, &probes, false).await;
        println!();
        recovery(&mut redis, &probes, true).await;
    });
}
