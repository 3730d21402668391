//! Time from a PUT to the SDS push that carries the new value: two
//! in-process sidecars of one agent share a real `redis-server`; the writer
//! takes the PUT on its socket, and the other's SDS stream (StreamSecrets on
//! its Envoy socket, ACKing each response as Envoy does) receives the push.
//! The clock starts when the PUT is sent and stops when the push with that
//! value arrives. The PUT's own round trip, measured in the same run, is the
//! yardstick: the push has to wait for the PUT to commit anyway.
//!
//! `cargo bench --bench sds` (needs `redis-server` on PATH). Both sidecars,
//! Redis and the client share the machine's cores.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use agentvault::client::{grpc_channel, Client};
use agentvault::config::{Config, Overrides, Settings};
use agentvault::identity::WorkloadIdentity;
use agentvault::sidecar::Sidecar;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use hyper::Method;
use prost::Message;
use support::Redis;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod support;

const PUTS: usize = 300;
const WARMUP: usize = 20;
const PATH: &str = "envoy/bench/api-key";
const TYPE_URL: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn settings(dir: &Path, name: &str, redis: &str, envoy: Option<&Path>) -> Settings {
    let uid = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    let overrides = Overrides {
        socket: Some(dir.join(format!("{name}.sock"))),
        data_dir: Some(dir.join(name)),
        keyring: Some(dir.join("keyring.json")),
        redis_url: Some(redis.to_owned()),
        metrics_addr: Some("off".into()),
        roles: envoy
            .map(|_| vec![format!("envoy=uid:{uid}").parse().expect("role")])
            .unwrap_or_default(),
        rate_limit: Some(0),
        envoy_socket: envoy.map(Path::to_owned),
        ..Overrides::default()
    };
    let identity = WorkloadIdentity::new("dev.local", "bench", "agent").expect("identity");
    Settings::resolve(Config::default(), overrides, Some(identity), true).expect("settings")
}

fn value_of(resp: &DiscoveryResponse) -> String {
    let secret = Secret::decode(resp.resources[0].value.as_slice()).expect("a Secret");
    match secret.r#type {
        Some(secret::Type::GenericSecret(g)) => match g.secret.and_then(|s| s.specifier) {
            Some(Specifier::InlineString(v)) => v,
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn put(client: &Client, value: &str) {
    let body = serde_json::json!({"value": value, "scope": "envoy"});
    let reply = client
        .send_json(Method::PUT, &format!("/v1/secrets/{PATH}"), &body)
        .await
        .expect("PUT");
    assert_eq!(reply.status, 200, "{:?}", reply.json());
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let redis = Redis::start(&dir.path().join("redis"));
    let url = redis.url();
    let envoy_socket = dir.path().join("envoy.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut sds = Sidecar::start(settings(dir.path(), "sds", &url, Some(&envoy_socket)))
            .await
            .expect("the SDS sidecar starts");
        sds.ready(Duration::from_secs(10)).await.expect("ready");
        let mut writer = Sidecar::start(settings(dir.path(), "writer", &url, None))
            .await
            .expect("the writer starts");
        writer.ready(Duration::from_secs(10)).await.expect("ready");
        let writer_client = Client::new(writer.socket_path());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let running = [
            tokio::spawn(sds.run(stopped(stop_rx.clone()))),
            tokio::spawn(writer.run(stopped(stop_rx.clone()))),
        ];

        put(&writer_client, "initial").await;
        let name = format!("secret:{PATH}");
        let (tx, requests) = mpsc::channel(4);
        let request = |version: &str, nonce: &str| DiscoveryRequest {
            version_info: version.into(),
            resource_names: vec![name.clone()],
            type_url: TYPE_URL.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        tx.send(request("", "")).await.expect("send");
        let channel = grpc_channel(&envoy_socket).await.expect("Envoy socket");
        let mut stream = SecretDiscoveryServiceClient::new(channel)
            .stream_secrets(ReceiverStream::new(requests))
            .await
            .expect("StreamSecrets")
            .into_inner();
        let first = stream.message().await.expect("stream").expect("open");
        tx.send(request(&first.version_info, &first.nonce))
            .await
            .expect("ack");

        let mut pushes = Vec::with_capacity(PUTS);
        let mut puts = Vec::with_capacity(PUTS);
        for i in 0..WARMUP + PUTS {
            let value = format!("bench-value-{i}");
            let started = Instant::now();
            let writing = {
                let client = Client::new(writer_client.socket());
                let value = value.clone();
                tokio::spawn(async move {
                    put(&client, &value).await;
                    started.elapsed()
                })
            };
            let pushed = loop {
                let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
                    .await
                    .expect("a push within 5 s")
                    .expect("stream")
                    .expect("open");
                tx.send(request(&resp.version_info, &resp.nonce))
                    .await
                    .expect("ack");
                if value_of(&resp) == value {
                    break started.elapsed();
                }
            };
            let put_took = writing.await.expect("PUT task");
            if i >= WARMUP {
                pushes.push(pushed);
                puts.push(put_took);
            }
        }
        pushes.sort();
        puts.sort();
        let (push50, push99) = (percentile(&pushes, 0.5), percentile(&pushes, 0.99));
        let (put50, put99) = (percentile(&puts, 0.5), percentile(&puts, 0.99));
        println!(
            "{PUTS} PUTs through another sidecar sharing Redis: push arrives p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             the PUT's own reply p50 {:.2} ms, p99 {:.2} ms; push/PUT p50 ratio {:.2}",
            ms(push50),
            ms(push99),
            ms(pushes[pushes.len() - 1]),
            ms(put50),
            ms(put99),
            push50.as_secs_f64() / put50.as_secs_f64()
        );
        drop(tx);
        stop_tx.send_replace(true);
        for task in running {
            let _ = task.await;
        }
    });
}
