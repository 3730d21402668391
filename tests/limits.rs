//! Connection limits of the socket server, against a real `agentvault dev`:
//! slowloris clients are cut off after the header timeout (timed from a
//! head's first byte), idle keep-alive
//! connections after the idle timeout, connections over the overall or
//! per-uid cap are answered 503, and with the file limit reached a new client
//! still gets an answer while the log stays quiet.

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use support::{assert_error, get, wait_for, Sidecar};

const HEALTH: &[u8] = b"GET /v1/health HTTP/1.1\r\nHost: agentvault\r\n\r\n";

/// Reads until the server closes the connection (or `deadline`); returns
/// what was read and whether the server closed it.
fn read_until_closed(stream: &mut UnixStream, deadline: Instant) -> (Vec<u8>, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => {}
        }
    }
    (got, false)
}

/// Sends one complete request on `stream` and reads one whole response
/// (headers and a `content-length` body); the connection stays open.
fn request(stream: &mut UnixStream) -> String {
    stream.write_all(HEALTH).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("a response");
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

fn sidecar(dir: &Path, extra: &[&str]) -> Sidecar {
    Sidecar::dev(dir, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_slowloris_clients_are_cut_off_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sc = sidecar(
        dir.path(),
        &["--header-timeout", "1s", "--idle-timeout", "1h"],
    );
    let mut slow: Vec<UnixStream> = (0..50)
        .map(|_| {
            let mut s = UnixStream::connect(&sc.socket).unwrap();
            // Headers begun and never finished.
            s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: agentvault\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, s) in slow.iter_mut().enumerate() {
        // Trickling one more byte does not restart the clock.
        let _ = s.write_all(b"a");
        let (got, closed) = read_until_closed(s, deadline);
        assert!(closed, "slowloris client {i} was never cut off");
        assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
    }
    // The sidecar still serves everyone else.
    assert_eq!(get(&sc.client(), "/v1/health").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_clock_runs_from_a_heads_first_byte_until_it_is_complete() {
    let dir = tempfile::tempdir().unwrap();
    let sc = sidecar(
        dir.path(),
        &["--header-timeout", "1s", "--idle-timeout", "1h"],
    );
    let mut s = UnixStream::connect(&sc.socket).unwrap();
    // Waiting for a first request is idle time, not header time.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(request(&mut s).starts_with("HTTP/1.1 200"));
    // A head split over two reads, completed in time, is served.
    let (start, rest) = HEALTH.split_at(20);
    s.write_all(start).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.write_all(rest).unwrap();
    let mut answer = [0u8; 12];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let (_, closed) = read_until_closed(&mut s, Instant::now() + Duration::from_millis(300));
    assert!(!closed);
    // Its clock stopped with it: a keep-alive wait past the header timeout
    // does not cut the connection.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(request(&mut s).starts_with("HTTP/1.1 200"));
    // A second split head, left incomplete, is cut off.
    s.write_all(start).unwrap();
    let (got, closed) = read_until_closed(&mut s, Instant::now() + Duration::from_secs(10));
    assert!(closed, "an incomplete head was never cut off");
    assert!(
        got.is_empty(),
        "nothing is answered to a head never completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sc = sidecar(
        dir.path(),
        &["--idle-timeout", "1s", "--header-timeout", "1h"],
    );
    let mut idle: Vec<UnixStream> = (0..20)
        .map(|_| {
            let mut s = UnixStream::connect(&sc.socket).unwrap();
            assert!(request(&mut s).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (i, s) in idle.iter_mut().enumerate() {
        let (got, closed) = read_until_closed(s, deadline);
        assert!(closed, "idle connection {i} was held open");
        assert!(got.is_empty(), "nothing more is sent before closing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_overall_cap_are_answered_503() {
    let dir = tempfile::tempdir().unwrap();
    let sc = sidecar(
        dir.path(),
        &["--max-connections", "4", "--max-connections-per-uid", "100"],
    );
    // Four connections, each proven admitted by an answer, then held open.
    let mut held: Vec<UnixStream> = (0..4)
        .map(|_| {
            let mut s = UnixStream::connect(&sc.socket).unwrap();
            assert!(request(&mut s).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    let reply = get(&sc.client(), "/v1/health").await;
    assert_error(&reply, 503, "unavailable");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("maximum of 4 connections"), "{message}");
    assert_eq!(
        reply
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    // Those already in keep going, and a freed place is taken again.
    assert!(request(&mut held[0]).starts_with("HTTP/1.1 200"));
    drop(held.pop());
    let client = sc.client();
    wait_for("a freed connection slot", Duration::from_secs(20), || {
        let client = client.clone();
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async move { client.get("/v1/health").await.map(|r| r.status) })
        })
        .join()
        .unwrap()
        .is_ok_and(|status| status == 200)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_over_its_own_cap_is_answered_503_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let sc = sidecar(
        dir.path(),
        &["--max-connections", "100", "--max-connections-per-uid", "3"],
    );
    let _held: Vec<UnixStream> = (0..3)
        .map(|_| {
            let mut s = UnixStream::connect(&sc.socket).unwrap();
            assert!(request(&mut s).starts_with("HTTP/1.1 200"));
            s
        })
        .collect();
    let reply = get(&sc.client(), "/v1/health").await;
    assert_error(&reply, 503, "unavailable");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    // The test's own uid: the owner of the directory it just made.
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dir.path()).unwrap());
    assert!(
        message.contains(&format!("uid {uid}")) && message.contains("maximum of 3"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_every_client_is_answered_and_the_log_stays_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let sc = sidecar(
        dir.path(),
        &["--header-timeout", "1h", "--idle-timeout", "1h"],
    );
    // Leave the sidecar eight descriptors beyond what it holds now.
    let pid = sc.pid();
    let in_use = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = in_use + 8;
    let status = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());

    let mut clients: Vec<UnixStream> = (0..24)
        .map(|_| {
            let mut s = UnixStream::connect(&sc.socket).unwrap();
            s.write_all(HEALTH).unwrap();
            s
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, s) in clients.iter_mut().enumerate() {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            assert!(Instant::now() < deadline, "client {i} got no answer");
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        let text = String::from_utf8_lossy(&got);
        if text.starts_with("HTTP/1.1 200") {
            ok += 1;
        } else {
            assert!(text.starts_with("HTTP/1.1 503"), "client {i}: {text:?}");
            assert!(text.contains("file descriptors"), "{text}");
            refused += 1;
        }
    }
    assert!(ok >= 1 && refused >= 1, "{ok} answered, {refused} refused");
    let warnings = sc.logs().matches("accepting connections fails").count();
    assert!(
        warnings <= 3,
        "{warnings} accept-error lines for {refused} refusals"
    );
}

/// Audit streams of a tenant share one follower of Redis per sidecar: N
/// open streams hold one blocking-read connection, not N; stream N+1 over
/// `--audit-max-streams` is answered 503 `unavailable`; every stream still
/// gets the caller's events, and none gets what the caller may not see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_streams_share_one_redis_follower_up_to_their_cap() {
    const STREAMS: usize = 6;
    let shared = support::Shared::new();
    let other = shared.sidecar("acme", "other", &[]);
    let me = shared.sidecar("acme", "me", &["--audit-max-streams", "6"]);
    let client = me.client();
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let stream = client
            .stream("/v1/audit/stream", &[])
            .await
            .expect("stream");
        assert_eq!(stream.status, 200);
        streams.push(stream);
    }
    let over = client
        .stream("/v1/audit/stream", &[])
        .await
        .expect("stream");
    let over = over.into_reply().await.expect("an answer");
    assert_error(&over, 503, "unavailable");
    let message = over.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("6 audit streams"), "{message}");
    assert_eq!(
        over.headers.get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "a refused stream says when to retry"
    );

    support::put_value(&other.client(), "other/hidden", "v").await;
    support::put_value(&client, "mine/a", "v").await;
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut seen: Vec<String> = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while !seen.iter().any(|p| p == "mine/a") {
                let event = stream.next_event().await.expect("event").expect("open");
                let data: serde_json::Value = serde_json::from_str(&event.data).expect("json");
                seen.extend(data["path"].as_str().map(str::to_owned));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("stream {i}: the caller's write never came; saw {seen:?}"));
        assert!(
            !seen.iter().any(|p| p.starts_with("other/")),
            "stream {i}: {seen:?}"
        );
    }

    // Every stream has had its event through the follower: one connection
    // of this tenant's sidecars waits on the stream (`XREAD`), not six.
    let mut redis = shared.redis.connection();
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut redis).unwrap();
    let followers = clients.lines().filter(|l| l.contains("cmd=xread")).count();
    assert_eq!(followers, 1, "{clients}");

    // A closed stream frees its place.
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stream = client
            .stream("/v1/audit/stream", &[])
            .await
            .expect("stream");
        if stream.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's place was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
