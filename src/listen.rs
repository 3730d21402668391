//! What every front end that listens needs and none owns: a Unix socket
//! bound safely (a stale file replaced, a live one never stolen, its mode
//! set, the file removed on drop), the counters of its connections, and the
//! process's stop signals.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

/// Counts what happens to connections (`agentvault_connections_*`).
pub trait ConnectionTelemetry: Send + Sync + 'static {
    fn opened(&self);
    fn closed(&self);
    /// `reason`: `max_connections`, `max_per_uid` or `no_file_descriptors`.
    fn refused(&self, reason: &'static str);
    /// `kind`: `header` or `idle`.
    fn timed_out(&self, kind: &'static str);
    fn accept_error(&self);
}

/// Telemetry that records nothing.
pub struct NoConnectionTelemetry;

impl ConnectionTelemetry for NoConnectionTelemetry {
    fn opened(&self) {}
    fn closed(&self) {}
    fn refused(&self, _: &'static str) {}
    fn timed_out(&self, _: &'static str) {}
    fn accept_error(&self) {}
}

/// A bound socket; the file is removed when this is dropped.
pub struct BoundSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl BoundSocket {
    /// Binds `path` with the given mode. A socket file nobody answers on is
    /// stale and replaced; one that answers belongs to a running sidecar, and
    /// binding fails rather than stealing it.
    pub async fn bind(path: &Path, mode: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if UnixStream::connect(path).await.is_ok() {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{} is in use by a running sidecar", path.display()),
                    ));
                }
                std::fs::remove_file(path)?;
            }
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next connection.
    pub async fn accept(&self) -> io::Result<UnixStream> {
        self.listener.accept().await.map(|(stream, _)| stream)
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// [`shutdown_signal`] with its handlers installed now, not on first poll:
/// a SIGTERM that arrives while the process is still starting (the kubelet
/// may stop a pod at any time) then leads to a clean shutdown, rather than
/// the signal's default action killing the process mid-way.
pub fn shutdown_signal_installed() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    use futures_util::FutureExt;
    let mut signal = Box::pin(shutdown_signal());
    // The first poll registers the handlers; a finished future must not be polled again.
    match signal.as_mut().now_or_never() {
        Some(()) => Box::pin(std::future::ready(())),
        None => signal,
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the sidecar");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
