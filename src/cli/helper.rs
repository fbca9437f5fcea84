//! `lanyard helper`: keep certificate files fresh for software that cannot speak SPIFFE.

use std::path::PathBuf;

use crate::helper::{self, HelperConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agent endpoint (default: $SPIFFE_ENDPOINT_SOCKET, else /run/lanyard/workload.sock).
    #[arg(long)]
    socket: Option<String>,
    /// Directory for svid.pem, svid_key.pem (0600), bundle.pem and the `ready` marker.
    #[arg(long)]
    cert_dir: PathBuf,
    /// Write the files once and exit 0 (for init containers); non-zero, writing nothing, if the agent
    /// cannot be reached.
    #[arg(long)]
    once: bool,
    /// Signal sent after each update, by name or number (HUP, USR1, ...).
    #[arg(long, default_value = "HUP", value_parser = parse_signal)]
    signal: i32,
    /// Signal the process whose PID this file holds (re-read right before each signal).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Run this command after each update (one string, split on spaces).
    #[arg(long)]
    reload_cmd: Option<String>,
    /// Keep a JWT-SVID for this audience in jwt_<audience>.token (0600), refreshed before half its
    /// life, plus jwt_bundle.json (repeat for several audiences).
    #[arg(long = "jwt-audience")]
    jwt_audiences: Vec<String>,
    /// Owner of the written files, as UID:GID.
    #[arg(long, value_parser = parse_owner)]
    owner: Option<(u32, u32)>,
    /// Program and arguments to run as a child, after `--`: started once the first files exist,
    /// restarted if it exits, signalled after each update, sent SIGTERM when the helper stops.
    #[arg(last = true)]
    cmd: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = HelperConfig {
        endpoint: crate::client::resolve_endpoint(args.socket.as_deref()),
        cert_dir: args.cert_dir,
        once: args.once,
        cmd: args.cmd,
        signal: args.signal,
        pid_file: args.pid_file,
        reload_cmd: args
            .reload_cmd
            .map(|c| c.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        owner: args.owner,
        jwt_audiences: args.jwt_audiences,
    };
    helper::run(config).await?;
    Ok(())
}

fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Ok(n);
    }
    match s.trim_start_matches("SIG").to_ascii_uppercase().as_str() {
        "HUP" => Ok(libc::SIGHUP),
        "USR1" => Ok(libc::SIGUSR1),
        "USR2" => Ok(libc::SIGUSR2),
        "TERM" => Ok(libc::SIGTERM),
        "INT" => Ok(libc::SIGINT),
        "QUIT" => Ok(libc::SIGQUIT),
        "WINCH" => Ok(libc::SIGWINCH),
        other => Err(format!(
            "unknown signal {other:?}; use HUP, USR1, USR2, TERM, INT, QUIT, WINCH or a number"
        )),
    }
}

fn parse_owner(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected UID:GID"))?;
    Ok((
        u.parse()
            .map_err(|_| format!("{u:?} is not a numeric UID"))?,
        g.parse()
            .map_err(|_| format!("{g:?} is not a numeric GID"))?,
    ))
}
