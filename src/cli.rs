//! The command line: one file per subcommand.

mod agent;
mod entry;
mod fetch;
mod healthcheck;
mod helper;
mod inventory;
mod output;
#[cfg(feature = "policy")]
mod policy;
mod validate;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Exit code for invalid configuration or usage (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// lanyard: short-lived, process-bound SPIFFE identities for every process on a node.
#[derive(Debug, Parser)]
#[command(name = "lanyard", version, about, long_about = None)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line. Level from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LANYARD_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent: serve the SPIFFE Workload API on a Unix socket.
    Agent(agent::Args),
    /// Fetch SVIDs or bundles once from a running agent.
    #[command(subcommand)]
    Fetch(fetch::Command),
    /// Validate a token through the agent.
    #[command(subcommand)]
    Validate(validate::Command),
    /// Follow the X.509-SVID stream and print one line per update.
    Watch(watch::Args),
    /// Manage registration entries (admin socket, root).
    #[command(subcommand)]
    Entry(entry::Command),
    /// Show the credential inventory: who holds what now, and history (admin socket, root).
    Inventory(inventory::Args),
    /// Keep certificate files fresh for software that only reads files (and reload it).
    Helper(helper::Args),
    /// Exit 0 only if the agent answers with a valid bundle.
    Healthcheck(healthcheck::Args),
    /// Evaluate requests against the Cedar policies of a config file, without issuing.
    #[cfg(feature = "policy")]
    #[command(subcommand)]
    Policy(policy::Command),
}

/// Parses arguments and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init(cli.log_format);
    let workers = match worker_threads(std::env::var("TOKIO_WORKER_THREADS").ok().as_deref()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("lanyard: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lanyard: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Agent(args) => agent::run(args).await,
            Command::Fetch(cmd) => report(fetch::run(cmd).await),
            Command::Validate(cmd) => report(validate::run(cmd).await),
            Command::Watch(args) => report(watch::run(args).await),
            Command::Entry(cmd) => report(entry::run(cmd).await),
            Command::Inventory(args) => report(inventory::run(args).await),
            Command::Helper(args) => helper::run(args).await,
            Command::Healthcheck(args) => report(healthcheck::run(args).await),
            #[cfg(feature = "policy")]
            Command::Policy(cmd) => match policy::run(cmd).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("lanyard: {e:#}");
                    ExitCode::FAILURE
                }
            },
        }
    })
}

/// Async worker threads: `TOKIO_WORKER_THREADS` when set, else half the CPUs (at least one). A
/// cached fetch is a few tens of microseconds of work; what costs is handing it between threads, so
/// fewer workers answer faster and leave the other CPUs to the blocking pool (minting, hashing,
/// the inventory's fsync) and to the workloads themselves.
fn worker_threads(env: Option<&str>) -> Result<usize, String> {
    match env {
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "TOKIO_WORKER_THREADS={v:?} is not a positive number of threads; unset it to use half the CPUs"
            )),
        },
        None => Ok(std::thread::available_parallelism()
            .map_or(1, |n| n.get() / 2)
            .max(1)),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lanyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}
