//! The socket's life cycle: mode, stale files, a live socket kept, clean
//! removal on shutdown, and in-flight requests drained on SIGTERM.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;
use std::time::Duration;

use support::{Sidecar, BIN};

#[test]
fn socket_is_0660_and_removed_on_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::dev(dir.path(), &[]);
    let mode = std::fs::metadata(&sidecar.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660);
    assert!(sidecar.stop().success());
    assert!(!sidecar.socket.exists());
}

#[test]
fn stale_socket_is_replaced_but_a_live_one_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agentvault.sock");
    // A socket file left behind by a crashed process: nobody listens on it.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let sidecar = Sidecar::dev(dir.path(), &[]);
    assert!(UnixStream::connect(&sidecar.socket).is_ok());

    // A second sidecar on the same live socket refuses to start and leaves it alone.
    let out = Command::new(BIN)
        .args(["dev", "--metrics-addr", "off", "--socket"])
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    assert!(
        UnixStream::connect(&sidecar.socket).is_ok(),
        "the first sidecar still serves"
    );

    // A regular file at the socket path is not deleted.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, b"keep").unwrap();
    let out = Command::new(BIN)
        .args(["dev", "--metrics-addr", "off", "--socket"])
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.path().join("third"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
}

#[test]
fn sigterm_drains_a_request_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = Sidecar::dev(dir.path(), &[]);
    let body = br#"{"value": "drained"}"#;
    let mut stream = UnixStream::connect(&sidecar.socket).unwrap();
    write!(
        stream,
        "PUT /v1/secrets/drain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("kill")
        .args(["-TERM", &sidecar.pid().to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(300));
    // The sidecar stopped accepting but still finishes this request.
    assert!(
        UnixStream::connect(&sidecar.socket).is_err(),
        "no new connections while draining"
    );
    stream.write_all(&body[5..]).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""version":1"#), "{response}");
    assert!(sidecar.stop().success());
}
