//! `lanyard helper`: keep certificate files fresh for software that cannot speak SPIFFE.
//!
//! Settings come from `--config helper.toml` and/or flags; a flag wins over the file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::Deserialize;

use super::EXIT_CONFIG;
use crate::helper::{self, HelperConfig};

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Settings file (TOML) with the same names as the flags (socket, cert_dir, once, cmd, args,
    /// signal, pid_file, reload_cmd, jwt_audiences, owner, combined, bundle_federated,
    /// bundle_intermediates, health_address). A flag given wins over the file; a yes/no flag can only
    /// switch its setting on.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Agent endpoint (default: $SPIFFE_ENDPOINT_SOCKET, else /run/lanyard/workload.sock).
    #[arg(long)]
    socket: Option<String>,
    /// Directory for svid.pem, svid_key.pem (0600), bundle.pem and the `ready` marker.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Write the files once and exit 0 (for init containers); non-zero, writing nothing, if the agent
    /// cannot be reached.
    #[arg(long)]
    once: bool,
    /// Program to run as a child: started once the first files exist, restarted if it exits,
    /// signalled after each update, sent SIGTERM when the helper stops. Its arguments follow `--`.
    /// Without --cmd, everything after `--` is the program and its arguments.
    #[arg(long)]
    cmd: Option<String>,
    /// Signal sent after each update, by name or number (default HUP).
    #[arg(long, value_parser = parse_signal)]
    signal: Option<i32>,
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
    #[arg(long)]
    owner: Option<String>,
    /// Also write svid_combined.pem (0600): key and chain in one file, replaced in one rename, for
    /// software that reads one file (HAProxy) or must never see a key and chain from different
    /// updates.
    #[arg(long)]
    combined: bool,
    /// Add the federated trust domains' CA certificates to bundle.pem.
    #[arg(long)]
    bundle_federated: bool,
    /// Add the SVID's intermediate CA certificates to bundle.pem.
    #[arg(long)]
    bundle_intermediates: bool,
    /// Serve /live and /ready (ready once the files are written and the SVID in them is valid) on
    /// this address, such as 127.0.0.1:8789. Off by default.
    #[arg(long)]
    health_address: Option<String>,
    /// The child's arguments (with --cmd), or the child program and its arguments.
    #[arg(last = true)]
    rest: Vec<String>,
}

/// `helper.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHelper {
    socket: Option<String>,
    cert_dir: Option<PathBuf>,
    once: Option<bool>,
    cmd: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    signal: Option<String>,
    pid_file: Option<PathBuf>,
    #[serde(default)]
    reload_cmd: Vec<String>,
    #[serde(default)]
    jwt_audiences: Vec<String>,
    owner: Option<String>,
    combined: Option<bool>,
    bundle_federated: Option<bool>,
    bundle_intermediates: Option<bool>,
    health_address: Option<String>,
}

pub(super) async fn run(args: Args) -> ExitCode {
    let config = match resolve(args) {
        Ok(c) => c,
        Err(problems) => {
            eprintln!(
                "lanyard helper: invalid settings ({} problem{}):",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            );
            for p in problems {
                eprintln!("  {p}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match helper::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanyard helper: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Merges the file and the flags; every problem is reported, each naming the setting and value.
fn resolve(args: Args) -> Result<HelperConfig, Vec<String>> {
    let mut problems = Vec::new();
    let file = match &args.config {
        None => RawHelper::default(),
        Some(path) => read_file(path).map_err(|e| vec![e])?,
    };
    let at = |name: &str| match &args.config {
        Some(p) => format!("{}: {name}", p.display()),
        None => name.to_owned(),
    };
    let cert_dir = args.cert_dir.or(file.cert_dir);
    if cert_dir.is_none() {
        problems.push("cert_dir: missing; give --cert-dir DIR or cert_dir in the file".to_owned());
    }
    let signal = match (args.signal, &file.signal) {
        (Some(s), _) => s,
        (None, Some(text)) => parse_signal(text).unwrap_or_else(|e| {
            problems.push(format!("{}: {e}", at("signal")));
            libc::SIGHUP
        }),
        (None, None) => libc::SIGHUP,
    };
    let owner = match args.owner.as_deref().or(file.owner.as_deref()) {
        None => None,
        Some(text) => match parse_owner(text) {
            Ok(o) => Some(o),
            Err(e) => {
                problems.push(format!("owner: {e}"));
                None
            }
        },
    };
    let health_addr = match args
        .health_address
        .as_deref()
        .or(file.health_address.as_deref())
    {
        None => None,
        Some(text) => crate::health::parse_addr(text).unwrap_or_else(|e| {
            problems.push(format!("health_address: {e}"));
            None
        }),
    };
    // The child: --cmd with its arguments after `--`, or `-- program args`, or cmd + args in the
    // file.
    let cmd: Vec<String> = match (args.cmd, args.rest.is_empty()) {
        (Some(program), _) => std::iter::once(program).chain(args.rest).collect(),
        (None, false) => args.rest,
        (None, true) => file
            .cmd
            .map(|program| std::iter::once(program).chain(file.args.clone()).collect())
            .unwrap_or_default(),
    };
    if cmd.first().is_some_and(std::string::String::is_empty) {
        problems.push("cmd: empty program name".to_owned());
    }
    let once = args.once || file.once.unwrap_or(false);
    if once && !cmd.is_empty() {
        problems.push("once: a one-shot run cannot also run a child (cmd); pick one".to_owned());
    }
    let reload_cmd = match args.reload_cmd {
        Some(c) => c.split_whitespace().map(str::to_owned).collect(),
        None => file.reload_cmd,
    };
    let jwt_audiences = if args.jwt_audiences.is_empty() {
        file.jwt_audiences
    } else {
        args.jwt_audiences
    };
    if let Some(bad) = jwt_audiences.iter().find(|a| a.is_empty()) {
        problems.push(format!("jwt_audiences: empty audience {bad:?}"));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(HelperConfig {
        endpoint: crate::client::resolve_endpoint(
            args.socket.as_deref().or(file.socket.as_deref()),
        ),
        cert_dir: cert_dir.unwrap_or_default(),
        once,
        cmd,
        signal,
        pid_file: args.pid_file.or(file.pid_file),
        reload_cmd,
        owner,
        jwt_audiences,
        combined: args.combined || file.combined.unwrap_or(false),
        bundle_federated: args.bundle_federated || file.bundle_federated.unwrap_or(false),
        bundle_intermediates: args.bundle_intermediates
            || file.bundle_intermediates.unwrap_or(false),
        health_addr,
    })
}

fn read_file(path: &Path) -> Result<RawHelper, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--config: cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        format!(
            "{}: {}",
            path.display(),
            crate::config::toml_error(&text, &e)
        )
    })
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
