//! A `lanyard agent` process for the benchmarks that measure it as users run it: its config written
//! into a directory of the bench's, started on it, killed (and reaped) when dropped.
#![allow(dead_code)] // each bench uses part of it

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A child process, killed and reaped when dropped.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running agent: the process, its Workload API socket and its config file.
pub(crate) struct Agent {
    pub(crate) proc: Proc,
    pub(crate) socket: PathBuf,
    pub(crate) config: PathBuf,
}

impl Agent {
    /// Writes the config (socket, admin socket and data under `dir`, health off, then `extra`)
    /// and starts `lanyard agent` on it with `RUST_LOG=log`; returns once the socket exists.
    pub(crate) async fn start(dir: &Path, extra: &str, log: &str) -> Self {
        Self::start_logging(dir, extra, log, Stdio::inherit()).await
    }

    /// As [`Agent::start`], with the agent's log lines (stderr) going to `stderr`.
    pub(crate) async fn start_logging(dir: &Path, extra: &str, log: &str, stderr: Stdio) -> Self {
        let socket = dir.join("agent.sock");
        let config = dir.join("lanyard.toml");
        std::fs::write(&config, config_text(dir, extra)).unwrap();
        let proc = Proc(
            Command::new(env!("CARGO_BIN_EXE_lanyard"))
                .args(["agent", "--config", config.to_str().unwrap()])
                .env("RUST_LOG", log)
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap(),
        );
        wait_for(&socket).await;
        Self {
            proc,
            socket,
            config,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// `unix:///...` for a client.
    pub(crate) fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

/// The config text `Agent::start` writes for `dir` and `extra` (rewrite it, then SIGHUP, to reload).
pub(crate) fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        "socket_path = \"{}\"\nadmin_socket_path = \"{}\"\ndata_dir = \"{}\"\nhealth = {{ address = \"off\" }}\n{extra}",
        dir.join("agent.sock").display(),
        dir.join("admin/admin.sock").display(),
        dir.join("data").display()
    )
}

/// Waits up to 10 s for `path` to exist.
pub(crate) async fn wait_for(path: &Path) {
    for _ in 0..400 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never appeared", path.display());
}
