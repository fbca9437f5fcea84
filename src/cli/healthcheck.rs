//! `lanyard healthcheck`: exit 0 only when the agent answers with a valid bundle.

use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_stream::StreamExt;

use super::fetch::{Endpoint, describe};
use crate::client;
use crate::proto::X509BundlesRequest;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Give up after this long, such as 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    let endpoint = client::resolve_endpoint(args.endpoint.socket());
    let check = async {
        let mut client = client::connect(&endpoint).await?;
        let mut stream = match client.fetch_x509_bundles(X509BundlesRequest {}).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::PermissionDenied => bail!(
                "the agent is up but gives this process no identity, so it cannot see the bundle; run the healthcheck as a process that has an entry ({})",
                s.message()
            ),
            Err(s) => return Err(describe(s)),
        };
        let msg = stream
            .next()
            .await
            .context("the agent closed the stream without an answer")?
            .map_err(describe)?;
        if msg.bundles.is_empty() {
            bail!("the agent answered with no bundle");
        }
        for (td, der) in &msg.bundles {
            let certs = crate::encoding::split_der(der)
                .filter(|c| !c.is_empty())
                .with_context(|| format!("the bundle of {td} is empty or not DER certificates"))?;
            for cert in &certs {
                x509_parser::parse_x509_certificate(cert).map_err(|e| {
                    anyhow::anyhow!("the bundle of {td} holds an unparsable certificate: {e}")
                })?;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(args.timeout, check)
        .await
        .with_context(|| {
            format!(
                "no answer from {endpoint} within {}",
                humantime::format_duration(args.timeout)
            )
        })??;
    println!("ok: agent at {endpoint} answered with a valid bundle");
    Ok(())
}
