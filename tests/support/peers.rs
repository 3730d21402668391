//! Callers under other uids, so that the sidecar sees them through
//! `SO_PEERCRED` and maps them to roles. Needs root, as CI runs.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use agentvault::client::{Client, Reply};
use hyper::Method;
use serde_json::{json, Value};
use tempfile::TempDir;

use super::BIN;

const PEER_REQUEST: &str = "AGENTVAULT_TEST_PEER_REQUEST";
const PEER_REPLY: &str = "AGENTVAULT_TEST_PEER_REPLY:";

pub fn assert_root() {
    let euid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    assert_eq!(
        euid, 0,
        "this test runs client processes under other uids to exercise SO_PEERCRED roles, \
         which needs root: run the tests as root (CI does)"
    );
}

/// A temp dir that processes of other uids may traverse (tempfile makes 0700
/// dirs), so that they can reach a socket inside it.
pub fn shared_dir() -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Where a process of another uid can run `binary`: the binary itself when
/// every directory above it lets others through, else a hard link (or copy)
/// in `dir`, a directory the test owns and removes. A CI checkout may well
/// sit in a 0700 temp dir.
fn runnable(binary: &Path, dir: &Path) -> PathBuf {
    let reachable = binary
        .ancestors()
        .skip(1)
        .all(|d| std::fs::metadata(d).is_ok_and(|m| m.mode() & 0o001 != 0));
    if reachable {
        return binary.to_owned();
    }
    let name = binary.file_name().expect("a binary's file name");
    let target = dir.join(format!("peer-{}", name.to_string_lossy()));
    if !target.exists() {
        std::fs::hard_link(binary, &target)
            .or_else(|_| std::fs::copy(binary, &target).map(drop))
            .expect("link the binary where other uids can run it");
    }
    target
}

/// The directory a socket lives in, which its test owns.
fn socket_dir(socket: &Path) -> &Path {
    socket.parent().expect("the socket's directory")
}

/// Not a test of its own: the body of the child process [`as_uid`] starts
/// (this test binary again, under another uid) to send one request over the
/// socket and print the reply. Without the variable it does nothing.
#[test]
fn peer_request() {
    let Ok(spec) = std::env::var(PEER_REQUEST) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).expect("request spec");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let reply = runtime.block_on(async {
        let client = Client::new(spec["socket"].as_str().expect("socket"));
        let method = Method::from_bytes(spec["method"].as_str().expect("method").as_bytes())
            .expect("method");
        let body = spec["body"].as_str().map(|b| b.as_bytes().to_vec());
        client
            .request(method, spec["uri"].as_str().expect("uri"), body)
            .await
            .expect("request")
    });
    println!(
        "\n{PEER_REPLY}{}",
        json!({"status": reply.status, "body": String::from_utf8_lossy(&reply.body)})
    );
}

/// Sends one request from a process running as `uid` (gid 0, so the root
/// socket of mode 0660 is reachable).
pub async fn as_uid(
    uid: u32,
    socket: &Path,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> Reply {
    let spec = json!({
        "socket": socket, "method": method.as_str(), "uri": uri,
        "body": body.map(|b| b.to_string()),
    });
    let test_binary = std::env::current_exe().expect("test binary");
    let out = tokio::process::Command::new(runnable(&test_binary, socket_dir(socket)))
        .args([
            "--exact",
            "support::peers::peer_request",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PEER_REQUEST, spec.to_string())
        .uid(uid)
        .gid(0)
        .output()
        .await
        .expect("run the peer process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once(PEER_REPLY).map(|(_, reply)| reply))
        .unwrap_or_else(|| {
            panic!(
                "the peer process (uid {uid}) printed no reply: {out:?}\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let reply: Value = serde_json::from_str(line).expect("peer reply");
    Reply {
        status: reply["status"].as_u64().expect("status") as u16,
        headers: Default::default(),
        body: reply["body"].as_str().unwrap_or_default().to_owned().into(),
    }
}

/// Runs the `agentvault` CLI against `socket`, as `uid` (gid 0) when given.
pub async fn cli_as(uid: Option<u32>, socket: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(runnable(Path::new(BIN), socket_dir(socket)));
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("AGENTVAULT_TOKEN")
        .env_remove("AGENTVAULT_SOCKET")
        .stdin(Stdio::null());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(0);
    }
    cmd.output().await.expect("run the agentvault CLI")
}
