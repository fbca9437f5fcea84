//! Real SPIFFE client libraries against a running agent, unmodified: crates.io `spiffe` and
//! `spiffe-rustls` (two workloads in separate processes completing mutual TLS).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

use common::*;
use spiffe_rustls::{authorizer, mtls_server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

fn entry(path: &str, uid: u32) -> String {
    format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org{path}\"\nselectors = [\"unix:uid:{uid}\"]\n"
    )
}

#[tokio::test]
async fn spiffe_crate_x509_source_and_context() {
    let agent = TestAgent::start(&entry("/svc", euid())).await;
    let source = spiffe::X509Source::builder()
        .endpoint(agent.endpoint())
        .build()
        .await
        .expect("X509Source connects");
    let svid = source.svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/svc");
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    assert!(source.try_bundle_for_trust_domain(&td).is_some());

    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let ctx = client
        .fetch_x509_context()
        .await
        .expect("fetch_x509_context");
    assert_eq!(
        ctx.default_svid().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/svc"
    );
    let bundles = client.fetch_x509_bundles().await.unwrap();
    assert!(bundles.get(&td).is_some());
    record_interop(
        "rust",
        "sources",
        &serde_json::json!({
            "library": "spiffe (crates.io)",
            "exercised": ["X509Source", "fetch_x509_context", "fetch_x509_bundles"],
        }),
    );
    source.shutdown().await;
    agent.shutdown().await;
}

#[tokio::test]
async fn spiffe_crate_jwt_source_and_validation() {
    let agent = TestAgent::start(&entry("/svc", euid())).await;
    let source = spiffe::JwtSource::builder()
        .endpoint(agent.endpoint())
        .build()
        .await
        .expect("JwtSource connects");
    let svid = source.fetch_jwt_svid(["db.example"]).await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/svc");
    // Validated locally against the JWT bundle the source holds, then by the agent.
    let parsed = spiffe::JwtSvid::parse_and_validate(svid.token(), &source, &["db.example"])
        .expect("local validation against the source's bundle");
    assert_eq!(parsed.spiffe_id().to_string(), "spiffe://example.org/svc");
    assert!(
        spiffe::JwtSvid::parse_and_validate(svid.token(), &source, &["other"]).is_err(),
        "a wrong audience is refused"
    );
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let validated = client
        .validate_jwt_token("db.example", svid.token())
        .await
        .expect("ValidateJWTSVID");
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/svc"
    );
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    assert!(client.fetch_jwt_bundles().await.unwrap().get(&td).is_some());
    record_interop(
        "rust",
        "jwt",
        &serde_json::json!({
            "library": "spiffe (crates.io)",
            "exercised": ["JwtSource", "JwtSvid::parse_and_validate", "validate_jwt_token", "fetch_jwt_bundles"],
        }),
    );
    source.shutdown().await;
    agent.shutdown().await;
}

/// The example workload binary (built by `cargo test` with the other examples).
fn mtls_peer_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/mtls_peer");
    assert!(
        path.exists(),
        "{} missing: run `cargo test` (which builds examples) or `cargo build --examples`",
        path.display()
    );
    path
}

fn run_client_as(uid: u32, endpoint: &str, addr: &str, server_id: &str) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new(mtls_peer_bin())
        .args(["client", addr, server_id])
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap()
}

/// Two workloads, each with its own identity from the agent, complete mTLS authorizing each other's
/// SPIFFE IDs; a client with the wrong ID is refused, and so is a server with the wrong ID.
#[tokio::test]
async fn spiffe_rustls_mtls_between_two_workloads() {
    if !require_root("spiffe_rustls_mtls_between_two_workloads") {
        return;
    }
    let cfg = format!(
        "{}{}{}",
        entry("/server", 0),
        entry("/client", 1000),
        entry("/intruder", 1001)
    );
    let agent = TestAgent::start(&cfg).await;
    let source = spiffe::X509Source::builder()
        .endpoint(agent.endpoint())
        .build()
        .await
        .unwrap();
    assert_eq!(
        source.svid().unwrap().spiffe_id().to_string(),
        "spiffe://example.org/server"
    );
    let config = mtls_server(source.clone())
        .authorize(authorizer::exact(["spiffe://example.org/client"]).unwrap())
        .build()
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, mut results) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let outcome = match acceptor.accept(tcp).await {
                    Ok(mut tls) => {
                        let mut line = String::new();
                        let _ = BufReader::new(&mut tls).read_line(&mut line).await;
                        let _ = tls.write_all(b"pong\n").await;
                        let _ = tls.shutdown().await;
                        Ok(line)
                    }
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(outcome);
            });
        }
    });
    let endpoint = agent.endpoint();

    let (e, a) = (endpoint.clone(), addr.clone());
    let good = tokio::task::spawn_blocking(move || {
        run_client_as(1000, &e, &a, "spiffe://example.org/server")
    })
    .await
    .unwrap();
    assert!(
        good.status.success(),
        "client refused: {}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&good.stdout).trim(),
        "spiffe://example.org/client got: pong"
    );
    assert_eq!(results.recv().await.unwrap().unwrap().trim(), "ping");

    let (e, a) = (endpoint.clone(), addr.clone());
    let intruder = tokio::task::spawn_blocking(move || {
        run_client_as(1001, &e, &a, "spiffe://example.org/server")
    })
    .await
    .unwrap();
    assert!(
        !intruder.status.success(),
        "a client with the wrong ID must be refused"
    );
    let server_side = results.recv().await.unwrap();
    assert!(
        server_side.is_err(),
        "server must refuse spiffe://example.org/intruder: {server_side:?}"
    );

    let (e, a) = (endpoint.clone(), addr.clone());
    let wrong_server = tokio::task::spawn_blocking(move || {
        run_client_as(1000, &e, &a, "spiffe://example.org/not-the-server")
    })
    .await
    .unwrap();
    assert!(
        !wrong_server.status.success(),
        "the client must refuse a server with an unexpected ID"
    );
    record_interop(
        "rust",
        "mtls",
        &serde_json::json!({
            "library": "spiffe-rustls (crates.io)",
            "exercised": ["mtls_server", "mtls_client", "authorizer::exact"],
        }),
    );
    source.shutdown().await;
    agent.shutdown().await;
}
