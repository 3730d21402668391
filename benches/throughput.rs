//! Throughput of the running sidecar against raw Redis on the same server, in
//! the same run: GET and PUT through the Unix socket versus GET and SET
//! straight to Redis, each at 16 concurrent connections. Prints ops/s and the
//! ratios. Run with `cargo bench --bench throughput`.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentvault::client::Connection;
use hyper::Method;

const CONCURRENCY: usize = 16;
const KEYS: usize = 100;
const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(3);
const VALUE: &str = "sk-bench-0123456789abcdef0123456789abcdef0123456789abcdef";

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `op` from `CONCURRENCY` workers for the warm-up and then the measured
/// window; returns completed operations per second in the measured window.
async fn measure<S, F, Fut>(setup: impl Fn() -> Fut + Clone + Send + 'static, op: F) -> f64
where
    S: Send + 'static,
    Fut: std::future::Future<Output = S> + Send,
    F: Fn(&mut S, usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>
        + Clone
        + Send
        + Sync
        + 'static,
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

fn redis_setup(
    url: String,
) -> impl Fn() -> std::pin::Pin<
    Box<dyn std::future::Future<Output = redis::aio::ConnectionManager> + Send>,
> + Clone {
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

fn sidecar_setup(
    socket: &Path,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Connection> + Send>> + Clone {
    let socket = socket.to_owned();
    move || {
        let socket = socket.clone();
        Box::pin(async move { Connection::open(&socket).await.expect("sidecar connection") })
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let _redis = Guard(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed"),
    );
    let url = format!("redis://127.0.0.1:{port}/");
    wait_until("redis", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let socket = dir.path().join("agentvault.sock");
    let mut sidecar = Command::new(env!("CARGO_BIN_EXE_agentvault"));
    sidecar
        .args([
            "dev",
            "--metrics-addr",
            "off",
            "--redis-url",
            &url,
            // One caller drives the load: measure serving, not the limiter.
            "--rate-limit",
            "0",
            "--socket",
        ])
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    // POLICY_DIR serves with the policies of another directory, to weigh the policy's share.
    if let Some(policies) = std::env::var_os("POLICY_DIR") {
        sidecar.arg("--policy-dir").arg(policies);
    }
    let _sidecar = Guard(sidecar.spawn().expect("agentvault binary"));
    wait_until("the sidecar", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut seed = Connection::open(&socket).await.expect("connect");
        let mut raw = redis::Client::open(url.as_str()).unwrap().get_connection_manager().await.unwrap();
        let body = serde_json::json!({ "value": VALUE }).to_string().into_bytes();
        for k in 0..KEYS {
            let reply = seed.send(Method::PUT, &format!("/v1/secrets/bench/k{k}"), Some(body.clone())).await.unwrap();
            assert_eq!(reply.status, 200);
            let _: () = redis::cmd("SET").arg(format!("raw:k{k}")).arg(VALUE).query_async(&mut raw).await.unwrap();
        }

        let redis_get = measure(redis_setup(url.clone()), |conn, k| {
            Box::pin(async move {
                let v: Option<String> = redis::cmd("GET").arg(format!("raw:k{k}")).query_async(conn).await.unwrap();
                assert!(v.is_some());
            })
        })
        .await;
        let sidecar_get = measure(sidecar_setup(&socket), |conn, k| {
            Box::pin(async move {
                let reply = conn.send(Method::GET, &format!("/v1/secrets/bench/k{k}"), None).await.unwrap();
                assert_eq!(reply.status, 200);
            })
        })
        .await;
        let redis_set = measure(redis_setup(url.clone()), |conn, k| {
            Box::pin(async move {
                let _: () = redis::cmd("SET").arg(format!("raw:k{k}")).arg(VALUE).query_async(conn).await.unwrap();
            })
        })
        .await;
        let put_body = Arc::new(body);
        let sidecar_put = measure(sidecar_setup(&socket), move |conn, k| {
            let body = put_body.clone();
            Box::pin(async move {
                let reply = conn.send(Method::PUT, &format!("/v1/secrets/bench/k{k}"), Some(body.to_vec())).await.unwrap();
                assert_eq!(reply.status, 200);
            })
        })
        .await;

        println!("agentvault throughput, {CONCURRENCY} concurrent connections, {KEYS} keys, {}-byte value", VALUE.len());
        println!("{:<28}{:>14}", "operation", "ops/s");
        for (name, ops) in [
            ("raw Redis GET", redis_get),
            ("sidecar GET /v1/secrets", sidecar_get),
            ("raw Redis SET", redis_set),
            ("sidecar PUT /v1/secrets", sidecar_put),
        ] {
            println!("{name:<28}{ops:>14.0}");
        }
        println!("ratio GET sidecar/raw: {:.1}%", 100.0 * sidecar_get / redis_get);
        println!("ratio PUT sidecar/raw SET: {:.1}%", 100.0 * sidecar_put / redis_set);
    });
}
