//! The leak guard's cost, in one short run:
//! - in-process: 1 MiB of log-like text against 1,000 secret values × their
//!   encodings (one automaton), p50/p99 of `Scanner::redact` (match and
//!   replace), with a single pass of `memchr` over the same text as the
//!   machine's floor and one per-secret `str::find` loop (what the automaton
//!   replaces) for the ratio;
//! - end to end: `POST /v1/redact` of the same text to a real `agentvault dev`
//!   sidecar holding the same 1,000 secrets: the first request (which builds
//!   the automaton) and the p50/p99 of the following ones.
//!
//! Run with `cargo bench --bench redact` (about 30 s).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agentvault::client::Client;
use agentvault::vault::{Scanner, DEFAULT_MIN_REDACT_BYTES};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::Guard;

mod support;

const SECRETS: usize = 1000;
const TEXT_BYTES: usize = 1 << 20;
/// Secret occurrences planted in the text, in assorted encodings.
const PLANTED: usize = 200;
const IN_PROCESS_RUNS: usize = 41;
const E2E_RUNS: usize = 15;
const SEED: u64 = 19;

fn secret(rng: &mut StdRng, i: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=";
    let len = rng.gen_range(20..60);
    let body: String = (0..len)
        .map(|_| char::from(CHARS[rng.gen_range(0..CHARS.len())]))
        .collect();
    format!("sk-{i}-{body}")
}

/// Log lines of words and numbers, with `PLANTED` secrets (raw, base64, hex,
/// JSON-quoted) spread through them.
fn text(rng: &mut StdRng, secrets: &[String]) -> String {
    const WORDS: &[&str] = &[
        "GET",
        "POST",
        "/v1/users",
        "status=200",
        "latency_ms=",
        "user_id=",
        "the",
        "agent",
        "called",
        "tool",
        "search",
        "with",
        "query",
        "result",
        "ok",
        "error",
        "retrying",
        "model",
        "tokens=",
        "Authorization:",
        "Bearer",
        "request_id=",
    ];
    let mut out = String::with_capacity(TEXT_BYTES + 1024);
    let plant_every = TEXT_BYTES / PLANTED;
    let mut next_plant = plant_every;
    while out.len() < TEXT_BYTES {
        for _ in 0..12 {
            out.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
            out.push_str(&rng.gen_range(0..100_000u32).to_string());
            out.push(' ');
        }
        if out.len() >= next_plant {
            let s = &secrets[rng.gen_range(0..secrets.len())];
            let planted = match rng.gen_range(0..4) {
                0 => s.clone(),
                1 => STANDARD.encode(s),
                2 => s.bytes().map(|b| format!("{b:02x}")).collect(),
                _ => URL_SAFE_NO_PAD.encode(s),
            };
            out.push_str(&planted);
            next_plant += plant_every;
        }
        out.push('\n');
    }
    out
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let mut rng = StdRng::seed_from_u64(SEED);
    let secrets: Vec<String> = (0..SECRETS).map(|i| secret(&mut rng, i)).collect();
    let paths: Vec<String> = (0..SECRETS).map(|i| format!("bench/s{i:04}")).collect();
    let text = text(&mut rng, &secrets);

    // ---- in process ----------------------------------------------------------
    let started = Instant::now();
    let scanner = Scanner::build(
        paths
            .iter()
            .zip(&secrets)
            .map(|(p, s)| (p.as_str(), 1, s.as_bytes())),
        DEFAULT_MIN_REDACT_BYTES,
    )
    .expect("automaton");
    let build = started.elapsed();
    let found = scanner.redact(&text).findings.len();
    assert!(
        found >= PLANTED,
        "only {found} of {PLANTED} planted secrets found"
    );
    let mut runs: Vec<Duration> = (0..IN_PROCESS_RUNS)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(scanner.redact(std::hint::black_box(&text)));
            started.elapsed()
        })
        .collect();
    let p50 = percentile(&mut runs, 0.5);
    let p99 = percentile(&mut runs, 0.99);
    let mut floor: Vec<Duration> = (0..IN_PROCESS_RUNS)
        .map(|_| {
            let started = Instant::now();
            std::hint::black_box(text.as_bytes().iter().filter(|b| **b == b'\n').count());
            started.elapsed()
        })
        .collect();
    let floor = percentile(&mut floor, 0.5);
    // What the automaton replaces: one search of the text per secret (raw form only).
    let started = Instant::now();
    let mut naive_hits = 0;
    for s in &secrets {
        naive_hits += std::hint::black_box(&text).matches(s.as_str()).count();
    }
    let naive = started.elapsed();
    std::hint::black_box(naive_hits);

    println!(
        "in process: {SECRETS} secrets -> {} patterns (values x distinct encodings), \
         text {} KiB, {found} findings",
        scanner.patterns(),
        text.len() / 1024
    );
    println!(
        "  automaton build          {:>9.2} ms, {:.1} MiB",
        ms(build),
        scanner.memory_usage() as f64 / (1 << 20) as f64
    );
    println!(
        "  redact (match + replace) p50 {:>7.2} ms  p99 {:>7.2} ms  (target <= 5 ms p50)",
        ms(p50),
        ms(p99)
    );
    println!(
        "  one byte-count pass      p50 {:>7.2} ms  (redact / floor = {:.1}x)",
        ms(floor),
        p50.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  per-secret find loop, raw form only, once: {:>7.2} ms  (loop / automaton = {:.0}x)",
        ms(naive),
        naive.as_secs_f64() / p50.as_secs_f64()
    );

    // ---- end to end -----------------------------------------------------------
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("agentvault.sock");
    let child = Command::new(env!("CARGO_BIN_EXE_agentvault"))
        .args(["dev", "--socket"])
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--metrics-addr", "off", "--rate-limit", "0"])
        .args(["--max-body-bytes", &(4 * TEXT_BYTES).to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start agentvault dev");
    let _guard = Guard(child);
    wait_for_socket(&socket);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client = Client::new(&socket);
        for (path, value) in paths.iter().zip(&secrets) {
            let reply = client
                .send_json(
                    Method::PUT,
                    &format!("/v1/secrets/{path}"),
                    &json!({ "value": value }),
                )
                .await
                .expect("put");
            assert_eq!(reply.status, 200, "put {path}");
        }
        let body = serde_json::to_vec(&json!({ "text": text })).expect("body");
        let redact = || async {
            let started = Instant::now();
            let reply = client
                .request(Method::POST, "/v1/redact", Some(body.clone()))
                .await
                .expect("redact");
            assert_eq!(reply.status, 200, "{:?}", reply.json()["error"]);
            started.elapsed()
        };
        let first = redact().await;
        // Until the change subscription is up, every request builds; wait for a cached one.
        let mut warm = redact().await;
        for _ in 0..10 {
            if warm < first / 2 {
                break;
            }
            warm = redact().await;
        }
        let mut runs = Vec::with_capacity(E2E_RUNS);
        for _ in 0..E2E_RUNS {
            runs.push(redact().await);
        }
        println!("end to end: POST /v1/redact of {} KiB", body.len() / 1024);
        println!(
            "  first request (builds the automaton from the store) {:>8.2} ms",
            ms(first)
        );
        println!(
            "  cached automaton  p50 {:>7.2} ms  p99 {:>7.2} ms  (in-process redact = {:.0}% of p50)",
            ms(percentile(&mut runs, 0.5)),
            ms(percentile(&mut runs, 0.99)),
            100.0 * p50.as_secs_f64() / percentile(&mut runs, 0.5).as_secs_f64()
        );
    });
}

fn wait_for_socket(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(Instant::now() < deadline, "the sidecar did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}
