//! What the benches share: child processes killed on drop, free ports,
//! waiting for a server, and a private `redis-server` (restartable, for the
//! recovery bench). Each bench uses part of it.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed and reaped when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `ready` every 20 ms; panics naming `what` after 20 s.
pub fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private redis-server on a free port, restartable on the same port and
/// dir. Durable, its append-only file keeps what it acknowledged across a
/// SIGKILL, as production runs it; otherwise it keeps nothing on disk.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    durable: bool,
}

impl Redis {
    /// Started and accepting connections.
    pub fn start(dir: &Path) -> Self {
        Self::started(dir, false)
    }

    /// [`Self::start`] with the append-only file on.
    pub fn start_durable(dir: &Path) -> Self {
        Self::started(dir, true)
    }

    fn started(dir: &Path, durable: bool) -> Self {
        std::fs::create_dir_all(dir).expect("redis dir");
        let mut redis = Self {
            child: None,
            port: free_port(),
            dir: dir.to_owned(),
            durable,
        };
        redis.spawn();
        wait_until("redis", || redis.accepts());
        redis
    }

    /// Starts the server again (after [`Self::kill`]); does not wait for it.
    pub fn spawn(&mut self) {
        let persistence: &[&str] = if self.durable {
            &["--appendonly", "yes", "--appendfsync", "everysec"]
        } else {
            &["--appendonly", "no"]
        };
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(persistence)
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
    }

    pub fn accepts(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    /// SIGKILL, and reaped: the port is closed when this returns.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL redis-server");
            child.wait().expect("reap redis-server");
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
