//! `lanyard fetch`: one answer from the Workload API, printed or written to files.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio_stream::StreamExt;

use super::output::{self, bundle_file_name, pem_chain, summarize};
use crate::client;
use crate::proto::{X509BundlesRequest, X509svidRequest};

/// How long to wait for the agent's first message.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Fetch this process's X.509-SVIDs.
    X509(X509Args),
    /// Fetch the X.509 trust bundles this process may see.
    Bundles(BundlesArgs),
    /// Fetch JWT-SVIDs for one or more audiences.
    Jwt(JwtArgs),
    /// Fetch the JWT bundles (JWK Sets) this process may see.
    JwtBundles(BundlesArgs),
}

#[derive(Debug, clap::Args)]
pub(super) struct JwtArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Audience the token is for (repeat for several).
    #[arg(long = "audience", short = 'a', required = true)]
    audiences: Vec<String>,
    /// Only this one of your identities (you must be entitled to it).
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Print JSON (with the tokens) instead of text.
    #[arg(long)]
    json: bool,
}

/// Where the agent is.
#[derive(Debug, clap::Args)]
pub(super) struct Endpoint {
    /// Agent endpoint: unix:///path or /path. Default: $SPIFFE_ENDPOINT_SOCKET, else
    /// /run/lanyard/workload.sock, else (if only that exists) your `lanyard agent --dev` socket.
    #[arg(long)]
    socket: Option<String>,
}

impl Endpoint {
    /// The `--socket` value, if given.
    pub(super) fn socket(&self) -> Option<&str> {
        self.socket.as_deref()
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct X509Args {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Write the default SVID as svid.pem (chain), svid_key.pem (0600) and bundle.pem into DIR;
    /// further SVIDs as svid.N.pem, svid_key.N.pem, bundle.N.pem; federated bundles as <td>.pem.
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
    /// Print JSON (no key material) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct BundlesArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// Write each bundle as <trust-domain>.pem into DIR.
    #[arg(long, value_name = "DIR")]
    write: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::X509(args) => x509(args).await,
        Command::Bundles(args) => bundles(args).await,
        Command::Jwt(args) => jwt(args).await,
        Command::JwtBundles(args) => jwt_bundles(args).await,
    }
}

async fn jwt(args: JwtArgs) -> anyhow::Result<()> {
    let endpoint = client::resolve_endpoint(args.endpoint.socket.as_deref());
    let mut client = client::connect(&endpoint).await?;
    let resp = client
        .fetch_jwtsvid(client::handed_on(crate::proto::JwtsvidRequest {
            audience: args.audiences.clone(),
            spiffe_id: args.spiffe_id.clone().unwrap_or_default(),
        }))
        .await
        .map_err(describe)?
        .into_inner();
    if resp.svids.is_empty() {
        bail!("the agent returned no JWT-SVID");
    }
    if args.json {
        let svids: Vec<serde_json::Value> = resp
            .svids
            .iter()
            .map(|s| serde_json::json!({ "spiffe_id": s.spiffe_id, "hint": s.hint, "token": s.svid }))
            .collect();
        println!("{}", serde_json::json!({ "svids": svids }));
    } else {
        for s in &resp.svids {
            println!("SPIFFE ID:  {}", s.spiffe_id);
            if !s.hint.is_empty() {
                println!("Hint:       {}", s.hint);
            }
            println!("Token:      {}", s.svid);
            println!();
        }
    }
    Ok(())
}

async fn jwt_bundles(args: BundlesArgs) -> anyhow::Result<()> {
    let endpoint = client::resolve_endpoint(args.endpoint.socket.as_deref());
    let mut client = client::connect(&endpoint).await?;
    let mut stream = client
        .fetch_jwt_bundles(crate::proto::JwtBundlesRequest {})
        .await
        .map_err(describe)?
        .into_inner();
    let msg = first_message(&mut stream).await?;
    let mut tds: Vec<(&String, &Vec<u8>)> = msg.bundles.iter().collect();
    tds.sort();
    if let Some(dir) = &args.write {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (td, json) in &tds {
            let name = format!("{}.jwks.json", td.trim_start_matches("spiffe://"));
            crate::atomic_file::write(&dir.join(&name), json, 0o644)
                .with_context(|| format!("writing {name}"))?;
        }
    }
    let parsed: serde_json::Map<String, serde_json::Value> = tds
        .iter()
        .map(|(td, json)| Ok(((*td).clone(), serde_json::from_slice(json)?)))
        .collect::<anyhow::Result<_>>()?;
    if args.json {
        println!("{}", serde_json::json!({ "bundles": parsed }));
    } else {
        for (td, jwks) in &parsed {
            let kids: Vec<&str> = jwks["keys"]
                .as_array()
                .map(|k| k.iter().filter_map(|k| k["kid"].as_str()).collect())
                .unwrap_or_default();
            println!("{td}: {} key(s): {}", kids.len(), kids.join(", "));
        }
    }
    Ok(())
}

async fn x509(args: X509Args) -> anyhow::Result<()> {
    let endpoint = client::resolve_endpoint(args.endpoint.socket.as_deref());
    let mut client = client::connect(&endpoint).await?;
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .map_err(describe)?
        .into_inner();
    let msg = first_message(&mut stream).await?;
    if msg.svids.is_empty() {
        bail!("the agent returned no SVID");
    }
    if let Some(dir) = &args.write {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (i, svid) in msg.svids.iter().enumerate() {
            let suffix = if i == 0 {
                String::new()
            } else {
                format!(".{i}")
            };
            output::write_svid_files(dir, &suffix, svid)?;
        }
        for (td, der) in &msg.federated_bundles {
            let path = dir.join(bundle_file_name(td));
            crate::atomic_file::write(&path, pem_chain(der)?.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let summaries = msg
        .svids
        .iter()
        .map(summarize)
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.json {
        let federated: Vec<&String> = msg.federated_bundles.keys().collect();
        println!(
            "{}",
            serde_json::json!({ "svids": summaries, "federated_bundles": federated })
        );
    } else {
        for s in &summaries {
            println!("SPIFFE ID:  {}", s.spiffe_id);
            if !s.hint.is_empty() {
                println!("Hint:       {}", s.hint);
            }
            println!("Serial:     {}", s.serial);
            println!("Valid:      {} to {}", s.not_before, s.not_after);
            println!(
                "Chain:      {} certificate(s); bundle: {} CA certificate(s)",
                s.chain_length, s.bundle_certificates
            );
            println!();
        }
        for td in msg.federated_bundles.keys() {
            println!("Federated bundle: {td}");
        }
        if let Some(dir) = &args.write {
            println!(
                "Wrote svid.pem, svid_key.pem and bundle.pem to {}",
                dir.display()
            );
        }
    }
    Ok(())
}

async fn bundles(args: BundlesArgs) -> anyhow::Result<()> {
    let endpoint = client::resolve_endpoint(args.endpoint.socket.as_deref());
    let mut client = client::connect(&endpoint).await?;
    let mut stream = client
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .map_err(describe)?
        .into_inner();
    let msg = first_message(&mut stream).await?;
    let mut tds: Vec<(&String, &Vec<u8>)> = msg.bundles.iter().collect();
    tds.sort();
    if let Some(dir) = &args.write {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (td, der) in &tds {
            let path = dir.join(bundle_file_name(td));
            crate::atomic_file::write(&path, pem_chain(der)?.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if args.json {
        let out: serde_json::Map<String, serde_json::Value> = tds
            .iter()
            .map(|(td, der)| Ok(((*td).clone(), serde_json::Value::String(pem_chain(der)?))))
            .collect::<anyhow::Result<_>>()?;
        println!("{}", serde_json::json!({ "bundles": out }));
    } else {
        for (td, der) in &tds {
            let n = crate::encoding::split_der(der)
                .map(|c| c.len())
                .unwrap_or(0);
            println!("{td}: {n} CA certificate(s)");
        }
    }
    Ok(())
}

/// The first message of a stream, or a clear error if none comes in time.
pub(super) async fn first_message<S, M>(stream: &mut S) -> anyhow::Result<M>
where
    S: tokio_stream::Stream<Item = Result<M, tonic::Status>> + Unpin,
{
    tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, stream.next())
        .await
        .context("the agent sent nothing within 30s")?
        .context("the agent closed the stream without an answer")?
        .map_err(describe)
}

/// A status from the agent as a user-facing error.
pub(super) fn describe(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "the agent refused: {} ({:?})",
        status.message(),
        status.code()
    )
}
