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
use crate::listen::ConnectionTelemetry;
use crate::store::CacheTelemetry;

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
    envoy_checks: IntCounterVec,
    envoy_check_duration: Histogram,
    cache: CacheMetrics,
    redact: RedactMetrics,
    sds: SdsMetrics,
    connections: ConnectionMetrics,
}

/// The socket's connections (`agentvault_connections_*`).
struct ConnectionMetrics {
    open: IntGauge,
    accepted: IntCounter,
    refused: IntCounterVec,
    timed_out: IntCounterVec,
    accept_errors: IntCounter,
}

impl ConnectionMetrics {
    fn new() -> Self {
        let refused = IntCounterVec::new(
            Opts::new(
                "agentvault_connections_refused_total",
                "Socket connections answered 503 and closed, by reason \
                 (max_connections, max_per_uid, no_file_descriptors)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in ["max_connections", "max_per_uid", "no_file_descriptors"] {
            refused.with_label_values(&[reason]);
        }
        let timed_out = IntCounterVec::new(
            Opts::new(
                "agentvault_connections_timed_out_total",
                "Socket connections closed by a timeout, by kind (header, idle)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        for kind in ["header", "idle"] {
            timed_out.with_label_values(&[kind]);
        }
        Self {
            open: IntGauge::new("agentvault_connections_open", "Socket connections open now")
                .expect("valid metric"),
            accepted: IntCounter::new(
                "agentvault_connections_accepted_total",
                "Socket connections admitted and served",
            )
            .expect("valid metric"),
            refused,
            timed_out,
            accept_errors: IntCounter::new(
                "agentvault_connections_accept_errors_total",
                "Failed accepts on the socket (e.g. out of file descriptors)",
            )
            .expect("valid metric"),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.open.clone()),
            Box::new(self.accepted.clone()),
            Box::new(self.refused.clone()),
            Box::new(self.timed_out.clone()),
            Box::new(self.accept_errors.clone()),
        ]
    }
}

impl ConnectionTelemetry for Metrics {
    fn opened(&self) {
        self.connections.open.inc();
        self.connections.accepted.inc();
    }

    fn closed(&self) {
        self.connections.open.dec();
    }

    fn refused(&self, reason: &'static str) {
        self.connections.refused.with_label_values(&[reason]).inc();
    }

    fn timed_out(&self, kind: &'static str) {
        self.connections.timed_out.with_label_values(&[kind]).inc();
    }

    fn accept_error(&self) {
        self.connections.accept_errors.inc();
    }
}

/// The sealed-record cache's counters (`agentvault_cache_*`).
struct CacheMetrics {
    hits: IntCounter,
    misses: IntCounter,
    invalidations: IntCounter,
    evictions: IntCounter,
    resyncs: IntCounter,
    entries: IntGauge,
    bytes: IntGauge,
}

impl CacheMetrics {
    fn new() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        Self {
            hits: counter(
                "agentvault_cache_hits_total",
                "Reads of sealed records or grants answered from the sidecar's memory",
            ),
            misses: counter(
                "agentvault_cache_misses_total",
                "Reads of sealed records or grants that went to the store",
            ),
            invalidations: counter(
                "agentvault_cache_invalidations_total",
                "Changes (announced by the store or written here) that made cached data stale",
            ),
            evictions: counter(
                "agentvault_cache_evictions_total",
                "Cached entries dropped to stay within cache.max_entries and cache.max_bytes",
            ),
            resyncs: counter(
                "agentvault_cache_resyncs_total",
                "Times the change subscription was lost or fell behind and the cache was emptied",
            ),
            entries: gauge("agentvault_cache_entries", "Sealed reads held in memory"),
            bytes: gauge(
                "agentvault_cache_bytes",
                "Approximate bytes of sealed records held in memory",
            ),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.hits.clone()),
            Box::new(self.misses.clone()),
            Box::new(self.invalidations.clone()),
            Box::new(self.evictions.clone()),
            Box::new(self.resyncs.clone()),
            Box::new(self.entries.clone()),
            Box::new(self.bytes.clone()),
        ]
    }
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
        let envoy_checks = IntCounterVec::new(
            Opts::new(
                "agentvault_envoy_checks_total",
                "Envoy ext_authz checks answered, by decision (allowed, denied, error)",
            ),
            &["decision"],
        )
        .expect("valid metric");
        for decision in ["allowed", "denied", "error"] {
            envoy_checks.with_label_values(&[decision]);
        }
        let envoy_check_duration = Histogram::with_opts(
            HistogramOpts::new(
                "agentvault_envoy_check_duration_seconds",
                "Time to answer one Envoy ext_authz check, credential reads included",
            )
            .buckets(vec![
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5,
            ]),
        )
        .expect("valid metric");
        let cache = CacheMetrics::new();
        let redact = RedactMetrics::new();
        let sds = SdsMetrics::new();
        let connections = ConnectionMetrics::new();
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
            Box::new(envoy_checks.clone()),
            Box::new(envoy_check_duration.clone()),
        ]
        .into_iter()
        .chain(cache.collectors())
        .chain(redact.collectors())
        .chain(sds.collectors())
        .chain(connections.collectors())
        {
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
            envoy_checks,
            envoy_check_duration,
            cache,
            redact,
            sds,
            connections,
        }
    }

    /// Counts one Envoy check; `decision` is `allowed`, `denied` or `error`.
    pub fn envoy_check(&self, decision: &str, elapsed: Duration) {
        self.envoy_checks.with_label_values(&[decision]).inc();
        self.envoy_check_duration.observe(elapsed.as_secs_f64());
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

impl CacheTelemetry for Metrics {
    fn hit(&self) {
        self.cache.hits.inc();
    }

    fn miss(&self) {
        self.cache.misses.inc();
    }

    fn invalidated(&self) {
        self.cache.invalidations.inc();
    }

    fn evicted(&self, entries: usize) {
        self.cache.evictions.inc_by(entries as u64);
    }

    fn resynced(&self) {
        self.cache.resyncs.inc();
    }

    fn size(&self, entries: usize, bytes: usize) {
        self.cache
            .entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.cache
            .bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// The Envoy SDS service's counters (`agentvault_sds_*`). `api` is `sotw`
/// (StreamSecrets), `delta` (DeltaSecrets) or `fetch` (FetchSecrets); `type`
/// is the Secret's kind: `tls_certificate`, `validation_context` or
/// `generic_secret`.
struct SdsMetrics {
    streams_open: IntGaugeVec,
    pushes: IntCounterVec,
    nacks: IntCounterVec,
    served: IntCounterVec,
    left_out: IntCounterVec,
}

impl SdsMetrics {
    const APIS: [&'static str; 3] = ["sotw", "delta", "fetch"];
    const TYPES: [&'static str; 3] = ["tls_certificate", "validation_context", "generic_secret"];

    fn new() -> Self {
        let counter = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
        };
        let streams_open = IntGaugeVec::new(
            Opts::new(
                "agentvault_sds_streams_open",
                "Envoy SDS streams open now, by api (sotw, delta)",
            ),
            &["api"],
        )
        .expect("valid metric");
        let pushes = counter(
            "agentvault_sds_pushes_total",
            "SDS responses sent to Envoy, by api (sotw, delta, fetch)",
            "api",
        );
        let nacks = counter(
            "agentvault_sds_nacks_total",
            "SDS responses Envoy rejected (NACK with error_detail), by api",
            "api",
        );
        let served = counter(
            "agentvault_sds_resources_served_total",
            "Secrets sent to Envoy over SDS, by type",
            "type",
        );
        let left_out = counter(
            "agentvault_sds_resources_left_out_total",
            "Requested SDS resources left out of a response, by reason \
             (policy_denied, not_found, expired, invalid_request, unavailable)",
            "reason",
        );
        for api in Self::APIS {
            pushes.with_label_values(&[api]);
            nacks.with_label_values(&[api]);
        }
        for api in &Self::APIS[..2] {
            streams_open.with_label_values(&[*api]);
        }
        for kind in Self::TYPES {
            served.with_label_values(&[kind]);
        }
        Self {
            streams_open,
            pushes,
            nacks,
            served,
            left_out,
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.streams_open.clone()),
            Box::new(self.pushes.clone()),
            Box::new(self.nacks.clone()),
            Box::new(self.served.clone()),
            Box::new(self.left_out.clone()),
        ]
    }
}

impl Metrics {
    /// One more (`delta` +1) or one fewer (-1) open SDS stream of `api`.
    pub fn sds_streams(&self, api: &str, delta: i64) {
        self.sds.streams_open.with_label_values(&[api]).add(delta);
    }

    /// One SDS response sent, carrying secrets of the given types.
    pub fn sds_push<'a>(&self, api: &str, types: impl IntoIterator<Item = &'a str>) {
        self.sds.pushes.with_label_values(&[api]).inc();
        for kind in types {
            self.sds.served.with_label_values(&[kind]).inc();
        }
    }

    pub fn sds_nack(&self, api: &str) {
        self.sds.nacks.with_label_values(&[api]).inc();
    }

    /// A requested resource left out of a response; `reason` is a contract code.
    pub fn sds_left_out(&self, reason: &str) {
        self.sds.left_out.with_label_values(&[reason]).inc();
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

/// The leak guard's counters (`agentvault_redact_*`).
struct RedactMetrics {
    requests: IntCounter,
    bytes: IntCounter,
    findings: IntCounterVec,
    builds: IntCounter,
    build_duration: Histogram,
    patterns: IntGauge,
}

impl RedactMetrics {
    fn new() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let findings = IntCounterVec::new(
            Opts::new(
                "agentvault_redact_findings_total",
                "Secret values replaced by POST /v1/redact, by the encoding they were found in",
            ),
            &["form"],
        )
        .expect("valid metric");
        for form in crate::vault::Form::ALL {
            findings.with_label_values(&[form.as_str()]);
        }
        Self {
            requests: counter(
                "agentvault_redact_requests_total",
                "Texts scanned by POST /v1/redact",
            ),
            bytes: counter(
                "agentvault_redact_bytes_total",
                "Bytes of text scanned by POST /v1/redact",
            ),
            findings,
            builds: counter(
                "agentvault_redact_automaton_builds_total",
                "Redaction automata built (first use, or after the readable set changed)",
            ),
            build_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "agentvault_redact_automaton_build_seconds",
                    "Time to build one redaction automaton, secret reads included",
                )
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("valid metric"),
            patterns: IntGauge::new(
                "agentvault_redact_automaton_patterns",
                "Patterns (values x encodings) in the redaction automaton used last",
            )
            .expect("valid metric"),
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.bytes.clone()),
            Box::new(self.findings.clone()),
            Box::new(self.builds.clone()),
            Box::new(self.build_duration.clone()),
            Box::new(self.patterns.clone()),
        ]
    }
}

impl Metrics {
    /// Counts one redacted text of `scanned` bytes: its findings by form,
    /// and the automaton build it needed, if any. No path or value is a label.
    pub fn redaction(&self, redaction: &crate::vault::Redaction, scanned: usize) {
        let r = &self.redact;
        r.requests.inc();
        r.bytes.inc_by(scanned as u64);
        for finding in &redaction.findings {
            r.findings.with_label_values(&[finding.form.as_str()]).inc();
        }
        if let Some(took) = redaction.built {
            r.builds.inc();
            r.build_duration.observe(took.as_secs_f64());
        }
        r.patterns
            .set(i64::try_from(redaction.patterns).unwrap_or(i64::MAX));
    }
}
