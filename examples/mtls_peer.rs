//! A workload that uses its lanyard identity for mutual TLS with `spiffe-rustls`, unmodified.
//!
//! ```text
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/workload.sock \
//!   cargo run --example mtls_peer -- server 127.0.0.1:8443 spiffe://example.org/client
//! SPIFFE_ENDPOINT_SOCKET=unix:///run/lanyard/workload.sock \
//!   cargo run --example mtls_peer -- client 127.0.0.1:8443 spiffe://example.org/server
//! ```
//!
//! The server answers one line per connection from a peer with the authorized ID; the client sends
//! `ping`, prints the answer and exits 0, or exits 1 when the handshake or authorization fails.

use std::sync::Arc;

use anyhow::{Context, bail};
use spiffe_rustls::{authorizer, mtls_client, mtls_server};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, addr, peer_id] = args.as_slice() else {
        bail!("usage: mtls_peer (client|server) ADDR AUTHORIZED_PEER_SPIFFE_ID");
    };
    let source = spiffe::X509Source::new()
        .await
        .context("X509Source from SPIFFE_ENDPOINT_SOCKET")?;
    let me = source.svid().context("own SVID")?.spiffe_id().to_string();
    match mode.as_str() {
        "client" => {
            let config = mtls_client(source)
                .authorize(authorizer::exact([peer_id.as_str()])?)
                .build()?;
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let tcp = TcpStream::connect(addr).await?;
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            let mut tls = connector
                .connect(name, tcp)
                .await
                .context("TLS handshake")?;
            tls.write_all(b"ping\n").await?;
            let mut line = String::new();
            BufReader::new(&mut tls).read_line(&mut line).await?;
            if line.is_empty() {
                bail!("the server closed the connection (it refused {me})");
            }
            println!("{me} got: {}", line.trim_end());
        }
        "server" => {
            let config = mtls_server(source)
                .authorize(authorizer::exact([peer_id.as_str()])?)
                .build()?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind(addr).await?;
            eprintln!("{me} serving on {}", listener.local_addr()?);
            loop {
                let (tcp, _) = listener.accept().await?;
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor.accept(tcp).await {
                        Ok(mut tls) => {
                            let _ = tls.write_all(b"pong\n").await;
                            let _ = tls.shutdown().await;
                        }
                        Err(e) => eprintln!("refused: {e}"),
                    }
                });
            }
        }
        other => bail!("unknown mode {other:?}; use client or server"),
    }
    Ok(())
}
