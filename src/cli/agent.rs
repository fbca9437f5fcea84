//! `lanyard agent`: load the configuration, start the agent, reload on SIGHUP, stop on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use super::EXIT_CONFIG;
use crate::app;
use crate::clock::SystemClock;
use crate::config::{Config, DevMode, Overrides};

/// Flags of `lanyard agent`. Flags win over the environment, which wins over the file.
#[derive(Debug, clap::Args)]
pub(super) struct Args {
    /// Configuration file (TOML). Without it the embedded defaults apply.
    #[arg(long, short = 'c', env = "LANYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Run unprivileged on embedded defaults: socket and data under a per-user runtime directory, and
    /// one entry giving your uid the ID spiffe://<trust domain>/user/<your name>.
    #[arg(long)]
    dev: bool,
    /// Trust domain (default example.org).
    #[arg(long, env = "LANYARD_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Workload API socket path (default /run/lanyard/workload.sock).
    #[arg(long = "socket", env = "LANYARD_SOCKET_PATH")]
    socket_path: Option<PathBuf>,
    /// Admin API socket path (default /run/lanyard/admin/admin.sock; root only, never beside the
    /// Workload API socket).
    #[arg(long = "admin-socket", env = "LANYARD_ADMIN_SOCKET_PATH")]
    admin_socket_path: Option<PathBuf>,
    /// Data directory for the signing authority, entries and inventory (default /var/lib/lanyard).
    #[arg(long, env = "LANYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Default X.509-SVID lifetime, such as 1h or 10m (minimum 1m).
    #[arg(long, env = "LANYARD_X509_TTL")]
    x509_ttl: Option<String>,
    /// Address of the HTTP health endpoints /live and /ready (default 127.0.0.1:8788; "off" to
    /// disable).
    #[arg(long, env = "LANYARD_HEALTH_ADDR")]
    health_addr: Option<String>,
}

impl Args {
    fn load(&self, dev: Option<&DevMode>) -> Result<Config, crate::config::Errors> {
        let overrides = Overrides {
            trust_domain: self.trust_domain.clone(),
            socket_path: self.socket_path.clone(),
            admin_socket_path: self.admin_socket_path.clone(),
            data_dir: self.data_dir.clone(),
            x509_ttl: self.x509_ttl.clone(),
            health_addr: self.health_addr.clone(),
        };
        Config::load(self.config.as_deref(), &overrides, dev)
    }
}

/// Runs the agent until a signal stops it.
pub(super) async fn run(args: Args) -> ExitCode {
    let dev = args.dev.then(DevMode::for_current_user);
    if let Some(dev) = &dev
        && let Err(e) = crate::atomic_file::ensure_dir(&dev.runtime_dir, 0o700)
    {
        eprintln!("lanyard: cannot use {}: {e}", dev.runtime_dir.display());
        return ExitCode::FAILURE;
    }
    let config = match args.load(dev.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lanyard: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("lanyard: cannot install signal handlers");
        return ExitCode::FAILURE;
    };
    let endpoint = config.endpoint_socket();
    let dev_ids: Vec<String> = if dev.is_some() {
        config
            .entries
            .last()
            .map(|e| e.spiffe_id.to_string())
            .into_iter()
            .collect()
    } else {
        vec![]
    };
    let mut running = match app::start(config, Arc::new(SystemClock)).await {
        Ok(r) => r,
        Err(e @ app::Error::Policy(_)) => {
            eprintln!("lanyard: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(e) => {
            eprintln!("lanyard: {e}");
            return ExitCode::FAILURE;
        }
    };
    for id in dev_ids {
        println!("lanyard agent (dev mode): your processes get {id}");
    }
    println!("export SPIFFE_ENDPOINT_SOCKET={endpoint}");

    let failure = loop {
        tokio::select! {
            _ = hup.recv() => reload(&args, dev.as_ref(), &mut running),
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            e = running.wait_for_failure() => break Some(e),
        }
    };
    tracing::info!("stopping");
    running.shutdown().await;
    match failure {
        None => ExitCode::SUCCESS,
        Some(e) => {
            eprintln!("lanyard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn reload(args: &Args, dev: Option<&DevMode>, running: &mut app::Running) {
    let config = match args.load(dev) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("reload refused, keeping the running configuration: {e}");
            return;
        }
    };
    match running.reload(config) {
        Ok(restart) if !restart.is_empty() => tracing::warn!(
            fields = ?restart,
            "these settings changed but only take effect after a restart"
        ),
        Ok(_) => {}
        Err(errors) => tracing::error!(
            "reload refused, keeping the running configuration: {}",
            crate::config::Errors(errors)
        ),
    }
}
