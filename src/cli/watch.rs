//! `lanyard watch`: follow the X.509-SVID stream, one line per update.

use std::time::SystemTime;

use tokio_stream::StreamExt;

use super::fetch::{Endpoint, describe};
use super::output::{rfc3339, summarize};
use crate::client;
use crate::proto::X509svidRequest;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    endpoint: Endpoint,
}

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    let endpoint = client::resolve_endpoint(args.endpoint_socket());
    let mut client = client::connect(&endpoint).await?;
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .map_err(describe)?
        .into_inner();
    let mut n = 0u64;
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(describe)?;
        n += 1;
        let now = rfc3339(SystemTime::now());
        if msg.svids.is_empty() {
            println!("{now} update={n} (no SVIDs)");
        }
        for svid in &msg.svids {
            let s = summarize(svid)?;
            println!(
                "{now} update={n} spiffe_id={} serial={} expires={}",
                s.spiffe_id, s.serial, s.not_after
            );
        }
    }
    anyhow::bail!("the agent closed the stream")
}

impl Args {
    fn endpoint_socket(&self) -> Option<&str> {
        self.endpoint.socket()
    }
}
