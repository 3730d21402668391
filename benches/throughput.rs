//! Throughput of running sidecars against raw Redis and a bare hyper server,
//! all in the same run on the same machine, each at 16 concurrent
//! connections with the same load generator:
//! - raw Redis GET and SET (the shared store's own ceiling);
//! - a bare hyper server on a Unix socket answering a fixed body (the
//!   transport's ceiling);
//! - sidecar GET warm (the sealed-record cache on) and cold (`--cache-max-entries 0`),
//!   and PUT;
//! - the same, and the bare server, on one worker thread each: the sidecar
//!   sizes its runtime by the CPUs it may use, so under the injected CPU limit
//!   (100m) a pod's sidecar runs one.
//!
//! Then, from `INFO commandstats`, `INFO cpu` and the sidecars' own CPU
//! time: Redis and sidecar CPU per audited read, warm and cold, and per PUT; and the invalidation latency: a PUT on sidecar A until
//! sidecar B (which had the old value cached) answers the new one, p50/p99.
//! Prints tables of ratios. Run with `cargo bench --bench throughput`;
//! `PROFILE=warm|cold|put` runs only that load, on a sidecar whose pid it
//! prints, for a profiler (`perf record -p PID`). With `COMPARE=path` as well,
//! it runs that load on a second sidecar started from the binary at `path`
//! (another build) on the same Redis, alternating rounds between the two, and
//! prints each one's requests/s and CPU per request: an A/B in one run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentvault::client::Connection;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response};
use support::{wait_until, Guard, Redis};

mod support;

const CONCURRENCY: usize = 16;
const KEYS: usize = 100;
const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);
/// Rounds of every throughput measurement, interleaved; each figure is the
/// best round, which on a shared machine is the least disturbed one.
const ROUNDS: usize = 2;
/// Reads counted for Redis CPU per read.
const CPU_READS: usize = 20_000;
/// Writes timed for the invalidation latency.
const LATENCY_SAMPLES: usize = 200;
const VALUE: &str = "sk-bench-0123456789abcdef0123456789abcdef0123456789abcdef";

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Runs `op` from `CONCURRENCY` workers for the warm-up and then the measured
/// window; returns completed operations per second in the measured window.
async fn measure<S, F, Fut>(setup: impl Fn() -> Fut + Clone + Send + 'static, op: F) -> f64
where
    S: Send + 'static,
    Fut: std::future::Future<Output = S> + Send,
    F: Fn(&mut S, usize) -> BoxFuture<'_, ()> + Clone + Send + Sync + 'static,
{
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let (setup, op) = (setup.clone(), op.clone());
        let (counting, stop, done) = (counting.clone(), stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            let mut state = setup().await;
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                op(&mut state, i % KEYS).await;
                if counting.load(Ordering::Relaxed) {
                    done.fetch_add(1, Ordering::Relaxed);
                }
                i += CONCURRENCY;
            }
        }));
    }
    tokio::time::sleep(WARMUP).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(MEASURE).await;
    let ops = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    ops as f64 / elapsed.as_secs_f64()
}

/// Runs exactly `count` operations from `CONCURRENCY` workers.
async fn run_count<S, F, Fut>(setup: impl Fn() -> Fut + Clone + Send + 'static, op: F, count: usize)
where
    S: Send + 'static,
    Fut: std::future::Future<Output = S> + Send,
    F: Fn(&mut S, usize) -> BoxFuture<'_, ()> + Clone + Send + Sync + 'static,
{
    let mut workers = Vec::new();
    for w in 0..CONCURRENCY {
        let (setup, op) = (setup.clone(), op.clone());
        workers.push(tokio::spawn(async move {
            let mut state = setup().await;
            for i in (w..count).step_by(CONCURRENCY) {
                op(&mut state, i % KEYS).await;
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
}

fn redis_setup(
    url: String,
) -> impl Fn() -> BoxFuture<'static, redis::aio::ConnectionManager> + Clone {
    move || {
        let url = url.clone();
        Box::pin(async move {
            let client = redis::Client::open(url).expect("redis url");
            client
                .get_connection_manager()
                .await
                .expect("redis connection")
        })
    }
}

fn socket_setup(socket: &Path) -> impl Fn() -> BoxFuture<'static, Connection> + Clone {
    let socket = socket.to_owned();
    move || {
        let socket = socket.clone();
        Box::pin(async move { Connection::open(&socket).await.expect("socket connection") })
    }
}

/// One request of the load on a sidecar connection, for key `k`.
type Request = for<'a> fn(&'a mut Connection, usize) -> BoxFuture<'a, ()>;

fn sidecar_get(conn: &mut Connection, k: usize) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        let reply = conn
            .send(Method::GET, &format!("/v1/secrets/bench/k{k}"), None)
            .await
            .expect("GET");
        assert_eq!(reply.status, 200);
    })
}

/// A read of one secret's path, which the bare server answers like any other.
fn bare_get(conn: &mut Connection, _k: usize) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        let reply = conn
            .send(Method::GET, "/v1/secrets/bench/k0", None)
            .await
            .expect("GET");
        assert_eq!(reply.status, 200);
    })
}

fn sidecar_put(conn: &mut Connection, k: usize) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        let body = serde_json::json!({ "value": VALUE })
            .to_string()
            .into_bytes();
        let reply = conn
            .send(Method::PUT, &format!("/v1/secrets/bench/k{k}"), Some(body))
            .await
            .expect("PUT");
        assert_eq!(reply.status, 200);
    })
}

fn redis_get(conn: &mut redis::aio::ConnectionManager, k: usize) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("raw:k{k}"))
            .query_async(conn)
            .await
            .expect("GET");
        assert!(v.is_some());
    })
}

/// A bare hyper HTTP/1.1 server on a Unix socket answering every request with
/// the same body, on its own runtime of `workers` threads (as the sidecar has).
fn bare_hyper(socket: &Path, workers: usize) {
    let socket = socket.to_owned();
    let body = Bytes::from(
        serde_json::json!({"path": "bench/k0", "value": VALUE, "version": 1}).to_string(),
    );
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::UnixListener::bind(&socket).expect("bind bare socket");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let body = body.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let body = body.clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(body))
                                    .expect("response"),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
}

fn sidecar(
    bin: &Path,
    dir: &Path,
    name: &str,
    url: &str,
    keyring: &Path,
    extra: &[&str],
) -> (Guard, std::path::PathBuf) {
    let socket = dir.join(format!("{name}.sock"));
    let mut cmd = Command::new(bin);
    cmd.args(["dev", "--metrics-addr", "off", "--redis-url", url])
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
        .stdout(Stdio::null());
    // POLICY_DIR serves with the policies of another directory, to weigh the policy's share.
    if let Some(policies) = std::env::var_os("POLICY_DIR") {
        cmd.arg("--policy-dir").arg(policies);
    }
    let guard = Guard(cmd.spawn().expect("agentvault binary"));
    wait_until(name, || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    (guard, socket)
}

/// `INFO commandstats` as (calls, usec) per command, and the server's CPU seconds.
fn redis_stats(redis: &mut redis::Connection) -> (BTreeMap<String, (u64, u64)>, f64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(redis)
        .expect("INFO");
    let commands = info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |f: &str| {
                stats
                    .split(',')
                    .find_map(|s| s.strip_prefix(f)?.parse::<u64>().ok())
            };
            Some((name.to_owned(), (field("calls=")?, field("usec=")?)))
        })
        .collect();
    let cpu: String = redis::cmd("INFO").arg("cpu").query(redis).expect("INFO");
    let seconds = cpu
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == "used_cpu_sys" || k == "used_cpu_user").then(|| v.trim().parse::<f64>().ok())?
        })
        .sum();
    (commands, seconds)
}

/// Redis cost of `CPU_READS` reads run by `reads`: command CPU and process CPU
/// per read (µs), and the commands per read.
async fn redis_cost(
    redis: &mut redis::Connection,
    audited: bool,
    reads: impl std::future::Future<Output = ()>,
) -> (f64, f64, String) {
    // Events ever appended (the stream itself is trimmed to audit.max_len).
    let audit_len = |redis: &mut redis::Connection| -> u64 {
        let info: BTreeMap<String, redis::Value> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg("av:{dev}:audit")
            .query(redis)
            .unwrap_or_default();
        match info.get("entries-added") {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        }
    };
    let settle = |redis: &mut redis::Connection| {
        let mut last = audit_len(redis);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = audit_len(redis);
            if now == last {
                return now;
            }
            last = now;
        }
    };
    let before_events = settle(redis);
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(redis)
        .expect("RESETSTAT");
    let (_, cpu_before) = redis_stats(redis);
    reads.await;
    if audited {
        while audit_len(redis) < before_events + CPU_READS as u64 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (commands, cpu_after) = redis_stats(redis);
    let ours = |name: &str| matches!(name, "info" | "config|resetstat" | "xinfo|stream");
    let usec: u64 = commands
        .iter()
        .filter(|(n, _)| !ours(n))
        .map(|(_, (_, usec))| usec)
        .sum();
    let per_read = commands
        .iter()
        .filter(|(n, _)| !ours(n))
        .map(|(n, (calls, us))| {
            format!(
                "{n} {:.2} ({:.1} µs)",
                *calls as f64 / CPU_READS as f64,
                *us as f64 / CPU_READS as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    (
        usec as f64 / CPU_READS as f64,
        (cpu_after - cpu_before) * 1e6 / CPU_READS as f64,
        per_read,
    )
}

/// CPU ticks spent over one `measure` round of `ops` requests/s, as µs per request.
fn ticks_per_op(ticks: u64, ops: f64) -> f64 {
    ticks as f64 * 10_000.0 / (ops * (MEASURE + WARMUP).as_secs_f64())
}

/// CPU ticks spent on `CPU_READS` requests, as µs per request.
fn per_request_us(ticks: u64) -> f64 {
    ticks as f64 * 10_000.0 / CPU_READS as f64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(&dir.path().join("redis"));
    let url = redis.url();

    // Two sidecars of one agent on one Redis and keyring: B caches (the
    // default), A does not. A writes, B reads.
    let keyring = dir.path().join("keyring.json");
    let this_build = Path::new(env!("CARGO_BIN_EXE_agentvault"));
    let (warm, warm_socket) = sidecar(this_build, dir.path(), "warm", &url, &keyring, &[]);
    let (cold, cold_socket) = sidecar(
        this_build,
        dir.path(),
        "cold",
        &url,
        &keyring,
        &["--cache-max-entries", "0"],
    );
    let one = ["--worker-threads", "1"];
    let (_warm1, warm1_socket) = sidecar(this_build, dir.path(), "warm1", &url, &keyring, &one);
    let (_cold1, cold1_socket) = sidecar(
        this_build,
        dir.path(),
        "cold1",
        &url,
        &keyring,
        &[&one[..], &["--cache-max-entries", "0"]].concat(),
    );
    let bare_socket = dir.path().join("bare.sock");
    let bare1_socket = dir.path().join("bare1.sock");
    bare_hyper(&bare_socket, 2);
    bare_hyper(&bare1_socket, 1);
    for socket in [&bare_socket, &bare1_socket] {
        wait_until("the bare server", || {
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        });
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut seed = Connection::open(&cold_socket).await.expect("connect");
        let mut raw = redis::Client::open(url.as_str()).unwrap().get_connection_manager().await.unwrap();
        let body = serde_json::json!({ "value": VALUE }).to_string().into_bytes();
        for k in 0..KEYS {
            let reply = seed.send(Method::PUT, &format!("/v1/secrets/bench/k{k}"), Some(body.clone())).await.unwrap();
            assert_eq!(reply.status, 200);
            let _: () = redis::cmd("SET").arg(format!("raw:k{k}")).arg(VALUE).query_async(&mut raw).await.unwrap();
        }

        // PROFILE=warm|cold|put: only that load, five rounds, on a sidecar
        // whose pid is printed for a profiler to attach to.
        if let Ok(op) = std::env::var("PROFILE") {
            let (socket, pid, request): (_, _, Request) = match op.as_str() {
                "warm" => (&warm_socket, warm.0.id(), sidecar_get),
                "cold" => (&cold_socket, cold.0.id(), sidecar_get),
                "put" => (&warm_socket, warm.0.id(), sidecar_put),
                other => panic!("PROFILE={other}: expected warm, cold or put"),
            };
            println!("profiling {op}: sidecar pid {pid}");
            // COMPARE=path: the same load on a sidecar of another build, round by round.
            let other = std::env::var_os("COMPARE").map(|bin| {
                let uncached: &[&str] = if op == "cold" { &["--cache-max-entries", "0"] } else { &[] };
                sidecar(Path::new(&bin), dir.path(), "compare", &url, &keyring, uncached)
            });
            for _ in 0..5 {
                let ticks = cpu_ticks(pid);
                let ops = measure(socket_setup(socket), request).await;
                let cpu = ticks_per_op(cpu_ticks(pid) - ticks, ops);
                match &other {
                    None => println!("{op}: {ops:.0} ops/s, {cpu:.1} µs CPU per request"),
                    Some((guard, other_socket)) => {
                        let ticks = cpu_ticks(guard.0.id());
                        let other_ops = measure(socket_setup(other_socket), request).await;
                        let other_cpu = ticks_per_op(cpu_ticks(guard.0.id()) - ticks, other_ops);
                        println!(
                            "{op}: this build {ops:.0} ops/s, {cpu:.1} µs CPU/request; COMPARE {other_ops:.0} ops/s, {other_cpu:.1} µs; ratio {:.3}",
                            ops / other_ops
                        );
                    }
                }
            }
            return;
        }

        let mut best: BTreeMap<&str, f64> = BTreeMap::new();
        let mut keep = |name: &'static str, ops: f64| {
            let slot = best.entry(name).or_insert(0.0);
            *slot = slot.max(ops);
        };
        for _ in 0..ROUNDS {
            keep("raw Redis GET", measure(redis_setup(url.clone()), redis_get).await);
            keep("bare hyper, fixed body", measure(socket_setup(&bare_socket), bare_get).await);
            keep("sidecar GET, warm", measure(socket_setup(&warm_socket), sidecar_get).await);
            keep("sidecar GET, cold", measure(socket_setup(&cold_socket), sidecar_get).await);
            keep("raw Redis SET", measure(redis_setup(url.clone()), |conn: &mut redis::aio::ConnectionManager, k| {
                Box::pin(async move {
                    let _: () = redis::cmd("SET").arg(format!("raw:k{k}")).arg(VALUE).query_async(conn).await.unwrap();
                })
            })
            .await);
            keep("sidecar PUT", measure(socket_setup(&warm_socket), sidecar_put).await);
            keep("1 thread: bare hyper", measure(socket_setup(&bare1_socket), bare_get).await);
            keep("1 thread: sidecar GET, warm", measure(socket_setup(&warm1_socket), sidecar_get).await);
            keep("1 thread: sidecar GET, cold", measure(socket_setup(&cold1_socket), sidecar_get).await);
            keep("1 thread: sidecar PUT", measure(socket_setup(&warm1_socket), sidecar_put).await);
        }
        let raw_get = best["raw Redis GET"];
        let bare = best["bare hyper, fixed body"];
        let raw_set = best["raw Redis SET"];
        println!(
            "agentvault throughput: {CONCURRENCY} concurrent connections, {KEYS} keys, {}-byte value, best of {ROUNDS} rounds of {}s",
            VALUE.len(),
            MEASURE.as_secs()
        );
        println!("{:<30}{:>12}{:>14}{:>16}{:>14}", "operation", "ops/s", "vs Redis GET", "vs bare hyper", "vs Redis SET");
        let print = |name: &str, bare: f64| {
            let ops = best[name];
            println!(
                "{name:<30}{ops:>12.0}{:>13.2}x{:>15.2}x{:>13.2}x",
                ops / raw_get,
                ops / bare,
                ops / raw_set
            );
        };
        for name in ["raw Redis GET", "bare hyper, fixed body", "sidecar GET, warm", "sidecar GET, cold", "raw Redis SET", "sidecar PUT"] {
            print(name, bare);
        }
        // One worker thread each, the sidecar as a pod under the injected
        // CPU limit runs it; "vs bare hyper" is against the bare server on one too.
        for name in ["1 thread: bare hyper", "1 thread: sidecar GET, warm", "1 thread: sidecar GET, cold", "1 thread: sidecar PUT"] {
            print(name, best["1 thread: bare hyper"]);
        }

        // Redis's cost per read, warm (cache on) and cold, audited alike.
        let mut redis = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        println!();
        println!("CPU per request, Redis and sidecar ({CPU_READS} requests, {CONCURRENCY} connections, audit appends included)");
        println!("{:<20}{:>12}{:>12}{:>12}  commands per request", "request", "command µs", "Redis µs", "sidecar µs");
        let (command_us, process_us, per_read) =
            redis_cost(&mut redis, false, run_count(redis_setup(url.clone()), redis_get, CPU_READS)).await;
        println!("{:<20}{command_us:>12.2}{process_us:>12.2}{:>12}  {per_read}", "raw Redis GET", "");
        let rows: [(&str, &Path, u32, Request); 3] = [
            ("sidecar GET, warm", &warm_socket, warm.0.id(), sidecar_get),
            ("sidecar GET, cold", &cold_socket, cold.0.id(), sidecar_get),
            ("sidecar PUT", &warm_socket, warm.0.id(), sidecar_put),
        ];
        for (name, socket, pid, request) in rows {
            let ticks = cpu_ticks(pid);
            let (command_us, process_us, per_request) =
                redis_cost(&mut redis, true, run_count(socket_setup(socket), request, CPU_READS)).await;
            let sidecar_us = per_request_us(cpu_ticks(pid) - ticks);
            println!("{name:<20}{command_us:>12.2}{process_us:>12.2}{sidecar_us:>12.2}  {per_request}");
        }

        // Invalidation latency: A's PUT returns; B had the old value cached; how
        // long until B answers the new one.
        let mut writer = Connection::open(&cold_socket).await.expect("connect");
        let mut reader = Connection::open(&warm_socket).await.expect("connect");
        let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
        for n in 0..LATENCY_SAMPLES {
            let value = format!("v{n}");
            // Warm B with the current value.
            for _ in 0..2 {
                reader.send(Method::GET, "/v1/secrets/bench/latency", None).await.unwrap();
            }
            let body = serde_json::json!({ "value": value }).to_string().into_bytes();
            let reply = writer.send(Method::PUT, "/v1/secrets/bench/latency", Some(body)).await.unwrap();
            assert_eq!(reply.status, 200);
            let written = Instant::now();
            loop {
                let reply = reader.send(Method::GET, "/v1/secrets/bench/latency", None).await.unwrap();
                if reply.json()["value"] == value.as_str() {
                    samples.push(written.elapsed());
                    break;
                }
                assert!(written.elapsed() < Duration::from_secs(5), "B never saw the write");
            }
        }
        samples.sort();
        println!();
        println!(
            "invalidation: A's PUT returned → B answers the new value ({LATENCY_SAMPLES} writes): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            percentile(&samples, 0.5).as_secs_f64() * 1e3,
            percentile(&samples, 0.99).as_secs_f64() * 1e3,
            samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );

        println!();
        println!("warm sidecar, idle: {}", idle(warm.0.id(), IDLE_WINDOW).await);
    });
}

/// How long the idle sidecar is watched for its CPU use.
const IDLE_WINDOW: Duration = Duration::from_secs(10);

/// CPU time process `pid` has spent, user and system, in clock ticks (10 ms
/// on Linux: USER_HZ 100).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which ends at the last ')': utime and stime are 14 and 15.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Resident memory of process `pid` (all, anonymous, file-backed: the
/// binary's pages) and the CPU it spends over `window` while nothing calls it.
async fn idle(pid: u32, window: Duration) -> String {
    let before = cpu_ticks(pid);
    tokio::time::sleep(window).await;
    let spent = cpu_ticks(pid) - before;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .expect("a memory field")
    };
    let millicores = spent as f64 * 10.0 / window.as_secs_f64();
    format!(
        "RSS {:.1} MiB (anonymous {:.1} MiB, file {:.1} MiB); CPU {millicores:.2} mCPU over {}s ({spent} ticks)",
        kib("VmRSS:") / 1024.0,
        kib("RssAnon:") / 1024.0,
        kib("RssFile:") / 1024.0,
        window.as_secs()
    )
}
