//! The SVID source against a real Workload API: tonic over a Unix socket,
//! certificates from a test CA, rotations pushed over the open stream.

#[path = "support/workload_api.rs"]
mod workload_api;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentvault::svid::{Svid, SvidError, SvidSource, SvidState};
use tonic::Code;
use workload_api::{hex, RawClient, TestCa, WorkloadApi};

const ID: &str = "spiffe://example.org/agent/acme/research-bot";
const TTL: Duration = Duration::from_secs(3600);
const WAIT: Duration = Duration::from_secs(10);

/// Waits until the source holds the SVID whose leaf is `leaf_der`.
async fn wait_for_leaf(source: &SvidSource, leaf_der: &[u8], timeout: Duration) -> Arc<Svid> {
    let mut rx = source.subscribe();
    let found = tokio::time::timeout(
        timeout,
        rx.wait_for(|s| {
            s.svid()
                .is_some_and(|svid| svid.cert_chain_der[0] == leaf_der)
        }),
    )
    .await;
    match found {
        Ok(Ok(state)) => state.svid().cloned().expect("ready"),
        _ => panic!(
            "no SVID with the expected leaf after {timeout:?}; state: {:?}",
            source.current()
        ),
    }
}

fn leaf(svid: &Svid) -> x509_parser::certificate::X509Certificate<'_> {
    x509_parser::parse_x509_certificate(&svid.cert_chain_der[0])
        .expect("leaf parses")
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_the_svid_and_follows_rotations_on_the_same_stream() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let api = WorkloadApi::start(dir.path(), &ca, ID, TTL);
    let source = SvidSource::workload_api(&api.endpoint());

    let svid = source.ready(WAIT).await.expect("first SVID");
    let issued = api.current();
    assert_eq!(svid.spiffe_id, ID);
    assert_eq!(svid.cert_chain_der, issued.cert_chain_der);
    assert_eq!(*svid.private_key_der, issued.key_der);
    assert_eq!(svid.bundle_der, vec![ca.bundle_der()]);
    let leaf_not_after = leaf(&svid).validity().not_after.timestamp();
    assert_eq!(svid.not_after.timestamp(), leaf_not_after);
    let lifetime = svid.not_after - chrono::Utc::now();
    assert!(
        lifetime > chrono::Duration::seconds(3500) && lifetime <= chrono::Duration::seconds(3600),
        "{lifetime}"
    );

    let serial = api.rotate();
    let rotated_leaf = api.current().leaf_der().to_vec();
    assert_ne!(rotated_leaf, svid.cert_chain_der[0]);
    let rotated = wait_for_leaf(&source, &rotated_leaf, Duration::from_secs(2)).await;
    assert_eq!(hex(leaf(&rotated).raw_serial()), serial);
    assert_eq!(*rotated.private_key_der, api.current().key_der);
    assert_ne!(rotated.private_key_der, svid.private_key_der);
    assert_eq!(
        api.fetch_calls(),
        1,
        "the rotation must come without a reconnect"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_rejects_calls_without_the_security_header() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let api = WorkloadApi::start(dir.path(), &ca, ID, TTL);
    let mut client = RawClient::connect(api.socket()).await;

    let denied = client.fetch_x509_svid(false).await.unwrap_err();
    assert_eq!(denied.code(), Code::InvalidArgument, "{denied:?}");
    assert_eq!(api.fetch_calls(), 0);

    let response = client.fetch_x509_svid(true).await.expect("with the header");
    assert_eq!(response.svids.len(), 1);
    assert_eq!(response.svids[0].spiffe_id, ID);
    assert_eq!(response.svids[0].x509_svid, api.current().leaf_der());
    assert_eq!(response.svids[0].bundle, ca.bundle_der());

    let other = client
        .call_empty("/SpiffeWorkloadAPI/FetchJWTSVID")
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::Unimplemented, "{other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn becomes_ready_when_the_api_comes_up_late() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let source = SvidSource::workload_api(socket.to_str().unwrap());

    match source.ready(Duration::from_millis(300)).await {
        Err(SvidError::NotReady { reason, .. }) => {
            assert!(reason.contains("unreachable"), "{reason}")
        }
        other => panic!("expected Pending, got {other:?}"),
    }
    assert!(matches!(source.current(), SvidState::Pending(_)));

    let ca = TestCa::new("example.org");
    let api = WorkloadApi::start_after(&socket, Duration::from_millis(500), &ca, ID, TTL);
    let svid = source.ready(WAIT).await.expect("SVID once the API is up");
    assert_eq!(svid.cert_chain_der[0], api.current().leaf_der());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_the_last_svid_while_the_api_is_down_and_picks_up_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let mut api = WorkloadApi::start(dir.path(), &ca, ID, TTL);
    let source = SvidSource::workload_api(&api.endpoint());
    let first = source.ready(WAIT).await.expect("first SVID");

    let saw_pending = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn({
        let saw_pending = saw_pending.clone();
        let mut rx = source.subscribe();
        async move {
            while rx.changed().await.is_ok() {
                if matches!(*rx.borrow_and_update(), SvidState::Pending(_)) {
                    saw_pending.store(true, Ordering::SeqCst);
                }
            }
        }
    });

    api.stop();
    assert!(!api.socket().exists());
    tokio::time::sleep(Duration::from_millis(700)).await;
    match source.current() {
        SvidState::Ready(svid) => assert_eq!(svid, first),
        pending => panic!("the SVID was dropped: {pending:?}"),
    }

    let back = WorkloadApi::start_at(api.socket(), &ca, ID, TTL);
    let next = wait_for_leaf(&source, back.current().leaf_der(), WAIT).await;
    assert_ne!(next.cert_chain_der, first.cert_chain_der);
    assert!(!saw_pending.load(Ordering::SeqCst), "state went Pending");
    assert_eq!(back.fetch_calls(), 1);
    watcher.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_is_a_valid_svid_for_the_id() {
    let source = SvidSource::self_signed(ID, TTL).unwrap();
    let svid = source.ready(Duration::ZERO).await.unwrap();
    assert_eq!(svid.spiffe_id, ID);

    let checked =
        spiffe::X509Svid::parse_from_der(&svid.cert_chain_der.concat(), &svid.private_key_der)
            .expect("a valid X.509-SVID");
    assert_eq!(checked.spiffe_id().to_string(), ID);
    let leaf = leaf(&svid);
    assert_eq!(
        leaf.validity().not_after.timestamp(),
        svid.not_after.timestamp()
    );
    assert!(leaf.validity().is_valid());
    assert_eq!(svid.bundle_der, svid.cert_chain_der);

    let debug = format!("{svid:?} {:?}", source.current());
    let key = &svid.private_key_der;
    for part in [&key[..16], &key[key.len() - 16..]] {
        let bytes = format!("{part:?}");
        assert!(!debug.contains(bytes.trim_matches(['[', ']'])), "{debug}");
    }
}

#[test]
fn the_harness_runs_outside_a_tokio_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("example.org");
    let mut api = WorkloadApi::start(dir.path(), &ca, ID, TTL);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let response = runtime.block_on(async {
        RawClient::connect(api.socket())
            .await
            .fetch_x509_svid(true)
            .await
    });
    assert_eq!(response.unwrap().svids[0].spiffe_id, ID);
    api.stop();
    api.stop();
}
