//! Prometheus metrics. Labels are drawn from small fixed sets (operation,
//! outcome code), never from paths or values, so cardinality stays bounded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::audit::{EventKind, Telemetry};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    storage_errors: IntCounter,
    expiry_warnings: IntCounterVec,
    svid_expiry: IntGauge,
    policy_eval: Histogram,
    audit_events: IntCounterVec,
    audit_buffered: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "agentvault_requests_total",
                "Requests answered, by operation and outcome code",
            ),
            &["op", "outcome"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "agentvault_request_duration_seconds",
                "Time to answer a request",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
            ]),
            &["op"],
        )
        .expect("valid metric");
        let storage_errors = IntCounter::new(
            "agentvault_storage_errors_total",
            "Requests that failed because storage was unavailable",
        )
        .expect("valid metric");
        let expiry_warnings = IntCounterVec::new(
            Opts::new(
                "agentvault_expiry_warnings_total",
                "Expiry warnings this sidecar sent, by window",
            ),
            &["window"],
        )
        .expect("valid metric");
        let svid_expiry = IntGauge::new(
            "agentvault_svid_expiry_timestamp_seconds",
            "When the current X.509-SVID expires (Unix time)",
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new("agentvault_build_info", "Build of the running sidecar"),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let policy_eval = Histogram::with_opts(
            HistogramOpts::new(
                "agentvault_policy_eval_duration_seconds",
                "Time one policy decision took",
            )
            .buckets(vec![
                0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                0.05,
            ]),
        )
        .expect("valid metric");
        let audit_events = IntCounterVec::new(
            Opts::new(
                "agentvault_audit_events_total",
                "Audit events this sidecar emitted, by event name",
            ),
            &["event"],
        )
        .expect("valid metric");
        // Every event name is shown from the start, at zero.
        for kind in EventKind::ALL {
            audit_events.with_label_values(&[kind.as_str()]);
        }
        let audit_buffered = IntGauge::new(
            "agentvault_audit_buffered_events",
            "Audit events waiting in memory because the store could not take them",
        )
        .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(storage_errors.clone()),
            Box::new(expiry_warnings.clone()),
            Box::new(svid_expiry.clone()),
            Box::new(build_info),
            Box::new(policy_eval.clone()),
            Box::new(audit_events.clone()),
            Box::new(audit_buffered.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            duration,
            storage_errors,
            expiry_warnings,
            svid_expiry,
            policy_eval,
            audit_events,
            audit_buffered,
        }
    }

    pub fn svid_expiry(&self, unix_seconds: i64) {
        self.svid_expiry.set(unix_seconds);
    }

    pub fn expiry_warning(&self, window: &str) {
        self.expiry_warnings.with_label_values(&[window]).inc();
    }

    /// Counts one answered request; `outcome` is `ok` or a contract error code.
    pub fn observe(&self, op: &str, outcome: &str, elapsed: Duration) {
        self.requests.with_label_values(&[op, outcome]).inc();
        self.duration
            .with_label_values(&[op])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a request that failed because the store could not be reached.
    pub fn storage_error(&self) {
        self.storage_errors.inc();
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

impl Telemetry for Metrics {
    fn policy_evaluated(&self, elapsed: Duration) {
        self.policy_eval.observe(elapsed.as_secs_f64());
    }

    fn audit_event(&self, kind: EventKind) {
        self.audit_events.with_label_values(&[kind.as_str()]).inc();
    }

    fn audit_buffered(&self, waiting: usize) {
        self.audit_buffered
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` on a TCP listener until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(metrics.render())))
                    } else {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"not found\n")))
                    };
                    response
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}
