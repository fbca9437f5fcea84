//! `cargo bench --bench sds`: Envoy SDS against the Workload API on the same agent, as users run it.
//!
//! A separate `lanyard agent` process (default configuration, one entry for this uid, SVIDs of one
//! minute so a rotation happens during the run) and, in this process:
//!
//! - first response: a new SDS `StreamSecrets` stream asking for `default` vs a new FetchX509SVID
//!   stream (first message), both on persistent connections, interleaved call by call;
//! - rotation push: 100 SDS streams and 100 Workload API streams open over 10 connections each; when
//!   the agent rotates the SVID, each stream's arrival time is taken relative to the first arrival
//!   on any stream (the fan-out delay of each API).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use lanyard::proto::X509svidRequest;
use tokio_stream::StreamExt;

#[path = "support/agent.rs"]
mod agent;
use agent::Agent;

const ROUNDS: usize = 1000;
const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn channel(socket: &Path) -> tonic::transport::Channel {
    let socket: PathBuf = socket.to_owned();
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .unwrap()
}

fn request() -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "bench".into(),
            ..Node::default()
        }),
        resource_names: vec!["default".into()],
        type_url: SECRET.into(),
        ..DiscoveryRequest::default()
    }
}

/// A new SDS stream: the request is sent, the sender kept (Envoy keeps its stream open).
async fn sds_stream(
    client: &mut SecretDiscoveryServiceClient<tonic::transport::Channel>,
) -> (
    tokio::sync::mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(request()).await.unwrap();
    let s = client
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, s)
}

fn pct(d: &mut [Duration], q: f64) -> Duration {
    d.sort();
    d[((d.len() as f64 * q) as usize).min(d.len() - 1)]
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let uid = lanyard::sys::euid();
    let agent = Agent::start(
        dir.path(),
        &format!(
            "[svid]\nx509_ttl = \"1m\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/bench\"\nselectors = [\"unix:uid:{uid}\"]\n"
        ),
        "warn",
    )
    .await;
    let socket = agent.socket.clone();
    let mut sds = SecretDiscoveryServiceClient::new(channel(&socket).await);
    let mut wl = lanyard::client::connect(&format!("unix://{}", socket.display()))
        .await
        .unwrap();
    // The streams of the rotation measurement are opened first, so the SVID they hold is the one
    // the whole run uses.
    let mut held = Vec::new();
    let mut sds_streams = Vec::new();
    let mut wl_streams = Vec::new();
    for _ in 0..10 {
        let mut c = SecretDiscoveryServiceClient::new(channel(&socket).await);
        let mut w = lanyard::client::connect(&format!("unix://{}", socket.display()))
            .await
            .unwrap();
        for _ in 0..10 {
            let (tx, mut s) = sds_stream(&mut c).await;
            s.next().await.unwrap().unwrap();
            held.push(tx);
            sds_streams.push(s);
            let mut s = w
                .fetch_x509svid(X509svidRequest {})
                .await
                .unwrap()
                .into_inner();
            s.next().await.unwrap().unwrap();
            wl_streams.push(s);
        }
    }
    let opened = Instant::now();

    // First response, interleaved.
    let (mut sds_first, mut wl_first) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS + 100 {
        let t = Instant::now();
        let (tx, mut s) = sds_stream(&mut sds).await;
        let r = s.next().await.unwrap().unwrap();
        let sds_took = t.elapsed();
        assert_eq!(r.resources.len(), 1);
        drop((tx, s));
        let t = Instant::now();
        let mut s = wl
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        s.next().await.unwrap().unwrap();
        let wl_took = t.elapsed();
        drop(s);
        if i >= 100 {
            sds_first.push(sds_took);
            wl_first.push(wl_took);
        }
    }
    println!("lanyard SDS bench: agent as a separate process, {ROUNDS} interleaved rounds");
    println!(
        "  first response, new stream:  SDS StreamSecrets p50 {:>7.1?} p99 {:>7.1?} | FetchX509SVID p50 {:>7.1?} p99 {:>7.1?}",
        pct(&mut sds_first, 0.5),
        pct(&mut sds_first, 0.99),
        pct(&mut wl_first, 0.5),
        pct(&mut wl_first, 0.99)
    );

    // Rotation push: every stream's next message.
    let (arrivals_tx, mut arrivals) = tokio::sync::mpsc::unbounded_channel();
    for mut s in sds_streams {
        let tx = arrivals_tx.clone();
        tokio::spawn(async move {
            if let Some(Ok(_)) = s.next().await {
                let _ = tx.send(("sds", Instant::now()));
            }
        });
    }
    for mut s in wl_streams {
        let tx = arrivals_tx.clone();
        tokio::spawn(async move {
            if let Some(Ok(_)) = s.next().await {
                let _ = tx.send(("workload", Instant::now()));
            }
        });
    }
    drop(arrivals_tx);
    let mut got = Vec::new();
    while got.len() < 200 {
        match tokio::time::timeout(Duration::from_secs(90), arrivals.recv()).await {
            Ok(Some(a)) => got.push(a),
            _ => break,
        }
    }
    assert_eq!(got.len(), 200, "not every stream saw the rotation");
    let first = got.iter().map(|(_, t)| *t).min().unwrap();
    let by = |api: &str| {
        let mut d: Vec<Duration> = got
            .iter()
            .filter(|(a, _)| *a == api)
            .map(|(_, t)| t.duration_since(first))
            .collect();
        (pct(&mut d, 0.5), pct(&mut d, 0.99))
    };
    let (s50, s99) = by("sds");
    let (w50, w99) = by("workload");
    println!(
        "  rotation push ({:.0} s after the streams opened), delay after the first arrival on any stream: SDS p50 {s50:>7.1?} p99 {s99:>7.1?} | Workload API p50 {w50:>7.1?} p99 {w99:>7.1?} (100 streams each)",
        first.duration_since(opened).as_secs_f64()
    );
    drop(held);
}
