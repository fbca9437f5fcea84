//! `lanyard helper`: delivers the SVIDs of the process it runs as to files, for software that can
//! only read a certificate, key and CA file and reload on a signal.
//!
//! Files are replaced atomically (temp file, fsync, rename), the key before the certificate, modes
//! enforced on every write, and a `ready` file renamed into place last, so a reader never pairs a new
//! certificate with an old key or sees a partial file. While the agent is unreachable the last good
//! files stay and the helper retries with backoff.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;

mod pid_file;

use crate::encoding::{pem_block, pem_cert, split_der};
use crate::proto::{JwtBundlesRequest, JwtsvidRequest, X509svidRequest, X509svidResponse};
use crate::sys::pidfd::Pidfd;
use pid_file::PidFile;

/// What the helper does.
#[derive(Debug, Clone)]
pub(crate) struct HelperConfig {
    pub endpoint: String,
    pub cert_dir: PathBuf,
    /// Write the files once and exit (init containers).
    pub once: bool,
    /// Run this program (and arguments) as a child once the first files exist; restart it when it
    /// exits; signal it after each update; forward SIGTERM/SIGINT to it.
    pub cmd: Vec<String>,
    /// Signal sent after each update (to the child, or the process in `pid_file`).
    pub signal: i32,
    /// Signal the process whose PID this file holds (re-read right before each signal).
    pub pid_file: Option<PathBuf>,
    /// Run this command after each update.
    pub reload_cmd: Vec<String>,
    /// Owner (uid, gid) of the written files.
    pub owner: Option<(u32, u32)>,
    /// Audiences to keep a JWT-SVID file for (`jwt_<audience>.token`), plus `jwt_bundle.json`.
    pub jwt_audiences: Vec<String>,
    /// Also write `svid_combined.pem` (key, then chain; 0600) in one rename.
    pub combined: bool,
    /// Add federated trust domains' CA certificates to `bundle.pem`.
    pub bundle_federated: bool,
    /// Add the SVID's intermediate CA certificates to `bundle.pem`.
    pub bundle_intermediates: bool,
    /// Serve `/live` and `/ready` here.
    pub health_addr: Option<std::net::SocketAddr>,
}

/// What a write produced.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    /// Serial of the leaf, hex.
    pub serial: String,
    /// When the written SVID expires.
    pub not_after: std::time::SystemTime,
}

/// Why the helper stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(transparent)]
    Client(#[from] crate::client::Error),
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error("the agent closed the stream")]
    Closed,
    #[error("the agent returned no SVID")]
    Empty,
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the SVID chain or bundle is not DER certificates")]
    BadDer,
    #[error("{0}")]
    Health(String),
    #[error("starting {cmd:?}: {source}")]
    Spawn { cmd: String, source: std::io::Error },
}

/// Writes the default SVID of `msg` into `dir`: `svid_key.pem` (0600), then `svid.pem` (leaf and
/// intermediates), `svid_combined.pem` (0600, when asked) and `bundle.pem` (0644), then `ready`
/// (ID and serial) last. Every file is replaced by one rename after an fsync, with its mode set on
/// every write.
pub(crate) fn write_files(
    dir: &Path,
    msg: &X509svidResponse,
    config: &HelperConfig,
) -> Result<Written, Error> {
    let svid = msg.svids.first().ok_or(Error::Empty)?;
    let chain = split_der(&svid.x509_svid).ok_or(Error::BadDer)?;
    let mut bundle = split_der(&svid.bundle).ok_or(Error::BadDer)?;
    let (_, not_after, serial) = chain
        .first()
        .and_then(|leaf| crate::ca::mint::cert_facts(leaf).ok())
        .ok_or(Error::BadDer)?;
    if config.bundle_intermediates {
        bundle.extend(chain.iter().skip(1).cloned());
    }
    if config.bundle_federated {
        for der in msg.federated_bundles.values() {
            bundle.extend(split_der(der).ok_or(Error::BadDer)?);
        }
    }
    let write = |name: &str, data: &[u8], mode: u32| {
        let path = dir.join(name);
        crate::atomic_file::write_owned(&path, data, mode, config.owner)
            .map_err(|source| Error::Write { path, source })
    };
    let key = zeroize::Zeroizing::new(pem_block("PRIVATE KEY", &svid.x509_svid_key));
    write("svid_key.pem", key.as_bytes(), 0o600)?;
    let chain_pem: String = chain.iter().map(|c| pem_cert(c)).collect();
    write("svid.pem", chain_pem.as_bytes(), 0o644)?;
    if config.combined {
        let combined = zeroize::Zeroizing::new(format!("{}{chain_pem}", key.as_str()));
        write("svid_combined.pem", combined.as_bytes(), 0o600)?;
    }
    let bundle_pem: String = bundle.iter().map(|c| pem_cert(c)).collect();
    write("bundle.pem", bundle_pem.as_bytes(), 0o644)?;
    write(
        "ready",
        format!("{} {serial}\n", svid.spiffe_id).as_bytes(),
        0o644,
    )?;
    Ok(Written { serial, not_after })
}

/// What `/ready` reports: ready once files are written and the SVID in them is still valid.
#[derive(Clone, Default)]
struct Health(std::sync::Arc<std::sync::Mutex<Option<std::time::SystemTime>>>);

impl Health {
    fn written(&self, w: &Written) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(w.not_after);
        }
    }

    fn check(&self) -> Result<(), String> {
        let not_after = self
            .0
            .lock()
            .map_err(|_| "internal error".to_owned())?
            .ok_or_else(|| "no files written yet".to_owned())?;
        if std::time::SystemTime::now() >= not_after {
            return Err("the SVID in the files has expired (agent unreachable?)".into());
        }
        Ok(())
    }
}

/// Runs the helper until a signal stops it (or after the first write with `once`).
pub(crate) async fn run(config: HelperConfig) -> Result<(), Error> {
    let config = &config;
    // The directory must be the helper's own: whoever else can write in it could swap the files
    // between the helper's writes and the consumer's reads.
    crate::atomic_file::adopt_or_create_dir(&config.cert_dir, 0o755).map_err(|source| {
        Error::Write {
            path: config.cert_dir.clone(),
            source,
        }
    })?;
    if config.once {
        let msg = first_message(&config.endpoint).await?;
        // Every token is fetched before anything is written, so a failure writes nothing.
        let jwts = fetch_jwts(config).await?;
        let written = write_files(&config.cert_dir, &msg, config)?;
        write_jwts(config, &jwts)?;
        tracing::info!(serial = written.serial, dir = %config.cert_dir.display(), "files written");
        return Ok(());
    }
    let health = Health::default();
    let (_health_stop, health_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = config.health_addr {
        let listener = crate::health::bind(addr)
            .await
            .map_err(|e| Error::Health(e.to_string()))?;
        let h = health.clone();
        tokio::spawn(crate::health::serve(
            listener,
            std::sync::Arc::new(move || h.check().map(|()| None)),
            None,
            health_rx,
        ));
    }
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            return Err(Error::Spawn {
                cmd: "signal handlers".into(),
                source: e,
            });
        }
    };
    let mut consumers = Consumers {
        child: None,
        pid_file: config.pid_file.clone().map(PidFile::new),
    };
    let backoff = crate::clock::Backoff {
        first: Duration::from_millis(500),
        cap: Duration::from_secs(30),
    };
    let mut failures = 0u32;
    let mut last_error: Option<String> = None;
    loop {
        let started = tokio::time::Instant::now();
        let session = follow(config, &mut consumers, &health);
        let outcome = tokio::select! {
            r = session => r,
            _ = term.recv() => return stop_child(consumers.child, libc::SIGTERM).await,
            _ = int.recv() => return stop_child(consumers.child, libc::SIGINT).await,
        };
        let why = match outcome {
            Ok(()) => "the agent closed the stream".to_owned(),
            Err(e) => e.to_string(),
        };
        // Log once per state change (WARN), then quietly (DEBUG) retry.
        if last_error.as_deref() == Some(why.as_str()) {
            tracing::debug!(error = %why, "still cannot follow the agent; retrying");
        } else {
            tracing::warn!(error = %why, "lost the agent; keeping the last good files and retrying");
            last_error = Some(why);
        }
        // A session that ran for a while was a success: start the backoff over.
        if started.elapsed() > Duration::from_secs(60) {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(backoff.delay(failures)) => {}
            _ = term.recv() => return stop_child(consumers.child, libc::SIGTERM).await,
            _ = int.recv() => return stop_child(consumers.child, libc::SIGINT).await,
        }
    }
}

async fn first_message(endpoint: &str) -> Result<X509svidResponse, Error> {
    let mut client = crate::client::connect(endpoint).await?;
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .map_err(|s| Error::Refused(format!("{} ({:?})", s.message(), s.code())))?
        .into_inner();
    match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Ok(m))) => Ok(m),
        Ok(Some(Err(s))) => Err(Error::Refused(format!("{} ({:?})", s.message(), s.code()))),
        Ok(None) | Err(_) => Err(Error::Closed),
    }
}

/// Follows one stream: writes every update, starts or signals the consumer.
async fn follow(
    config: &HelperConfig,
    consumers: &mut Consumers,
    health: &Health,
) -> Result<(), Error> {
    let mut client = crate::client::connect(&config.endpoint).await?;
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .map_err(|s| Error::Refused(format!("{} ({:?})", s.message(), s.code())))?
        .into_inner();
    let mut jwt_refresh: Option<tokio::time::Instant> = None;
    loop {
        let next = tokio::select! {
            m = stream.next() => m,
            _ = crate::clock::sleep_until(jwt_refresh), if jwt_refresh.is_some() => {
                let jwts = fetch_jwts(config).await?;
                write_jwts(config, &jwts)?;
                jwt_refresh = refresh_at(&jwts);
                tracing::info!(tokens = jwts.tokens.len(), "jwt files refreshed");
                continue;
            }
            status = wait_child(&mut consumers.child), if consumers.child.is_some() => {
                tracing::warn!(?status, "child exited; restarting it");
                consumers.child = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                consumers.child = Some(spawn_child(&config.cmd, config.signal)?);
                continue;
            }
        };
        let msg = match next {
            Some(Ok(m)) => m,
            Some(Err(s)) => {
                return Err(Error::Refused(format!("{} ({:?})", s.message(), s.code())));
            }
            None => return Ok(()),
        };
        let jwts = fetch_jwts(config).await?;
        let written = write_files(&config.cert_dir, &msg, config)?;
        health.written(&written);
        write_jwts(config, &jwts)?;
        jwt_refresh = refresh_at(&jwts);
        tracing::info!(serial = written.serial, dir = %config.cert_dir.display(), "files written");
        notify(config, consumers).await?;
    }
}

/// JWT-SVIDs (one per configured audience, for the default identity) and the JWT bundles.
struct Jwts {
    /// (audience, token, issued at, expires at) in seconds since the epoch.
    tokens: Vec<(String, String, u64, u64)>,
    bundles: Vec<u8>,
}

async fn fetch_jwts(config: &HelperConfig) -> Result<Jwts, Error> {
    let mut out = Jwts {
        tokens: Vec::new(),
        bundles: Vec::new(),
    };
    if config.jwt_audiences.is_empty() {
        return Ok(out);
    }
    let refused = |s: tonic::Status| Error::Refused(format!("{} ({:?})", s.message(), s.code()));
    let mut client = crate::client::connect(&config.endpoint).await?;
    for aud in &config.jwt_audiences {
        let resp = client
            .fetch_jwtsvid(crate::client::handed_on(JwtsvidRequest {
                audience: vec![aud.clone()],
                spiffe_id: String::new(),
            }))
            .await
            .map_err(refused)?
            .into_inner();
        let token = resp.svids.first().ok_or(Error::Empty)?.svid.clone();
        let (iat, exp) = token_times(&token).ok_or(Error::BadDer)?;
        out.tokens.push((aud.clone(), token, iat, exp));
    }
    let mut stream = client
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .map_err(refused)?
        .into_inner();
    let msg = match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
        Ok(Some(Ok(m))) => m,
        Ok(Some(Err(s))) => return Err(refused(s)),
        _ => return Err(Error::Closed),
    };
    let mut bundles = serde_json::Map::new();
    for (td, jwks) in msg.bundles {
        let v: serde_json::Value = serde_json::from_slice(&jwks).map_err(|_| Error::BadDer)?;
        bundles.insert(td, v);
    }
    out.bundles = serde_json::to_vec_pretty(&bundles).map_err(|_| Error::BadDer)?;
    Ok(out)
}

fn write_jwts(config: &HelperConfig, jwts: &Jwts) -> Result<(), Error> {
    if config.jwt_audiences.is_empty() {
        return Ok(());
    }
    let write = |name: String, data: &[u8], mode: u32| {
        let path = config.cert_dir.join(name);
        crate::atomic_file::write_owned(&path, data, mode, config.owner)
            .map_err(|source| Error::Write { path, source })
    };
    for (aud, token, _, _) in &jwts.tokens {
        write(jwt_file_name(aud), token.as_bytes(), 0o600)?;
    }
    write("jwt_bundle.json".into(), &jwts.bundles, 0o644)
}

/// `jwt_<audience>.token`, with anything but letters, digits, '.', '-' and '_' replaced by '_'.
pub(crate) fn jwt_file_name(audience: &str) -> String {
    let safe: String = audience
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("jwt_{safe}.token")
}

/// Refresh before any token passes half its life.
fn refresh_at(jwts: &Jwts) -> Option<tokio::time::Instant> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    jwts.tokens
        .iter()
        .map(|(_, _, iat, exp)| {
            let half = iat + (exp.saturating_sub(*iat)) * 2 / 5;
            tokio::time::Instant::now() + Duration::from_secs(half.saturating_sub(now).max(1))
        })
        .min()
}

fn token_times(token: &str) -> Option<(u64, u64)> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = v.get("exp")?.as_u64()?;
    let iat = v
        .get("iat")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(exp.saturating_sub(300));
    Some((iat, exp))
}

/// Who is told about updates: the child (pinned by a pidfd from the moment it is spawned) and the
/// process of the pid file (pinned while the file is unchanged).
struct Consumers {
    child: Option<Supervised>,
    pid_file: Option<PidFile>,
}

/// The helper's child and a pidfd on it: signals reach exactly this process, even after it exited
/// and was reaped and its PID went to someone else.
struct Supervised {
    child: Child,
    pidfd: Pidfd,
}

/// After an update: start the child the first time, else signal it; signal the pid file's process;
/// run the reload command.
async fn notify(config: &HelperConfig, consumers: &mut Consumers) -> Result<(), Error> {
    if !config.cmd.is_empty() {
        match &consumers.child {
            None => consumers.child = Some(spawn_child(&config.cmd, config.signal)?),
            Some(c) => {
                if let Err(e) = c.pidfd.send_signal(config.signal) {
                    tracing::warn!(error = %e, "cannot signal the child");
                }
            }
        }
    }
    if let Some(pid_file) = &mut consumers.pid_file {
        match pid_file.signal(config.signal) {
            Ok(pid) => tracing::debug!(pid, "signalled the process in the pid file"),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    if let Some((program, args)) = config.reload_cmd.split_first() {
        match Command::new(program).args(args).status().await {
            Ok(s) if s.success() => {}
            Ok(s) => tracing::warn!(status = ?s, "reload command failed"),
            Err(e) => tracing::warn!(error = %e, "cannot run the reload command"),
        }
    }
    Ok(())
}

fn spawn_child(cmd: &[String], reload_signal: i32) -> Result<Supervised, Error> {
    let (program, args) = cmd.split_first().ok_or_else(|| Error::Spawn {
        cmd: String::new(),
        source: std::io::Error::other("empty command"),
    })?;
    let mut command = Command::new(program);
    command.args(args);
    // The signals the helper sends it mean what they mean even if the helper ignores them.
    crate::sys::default_signals_in_child(
        &mut command,
        &[reload_signal, libc::SIGTERM, libc::SIGINT],
    );
    let mut child = command.spawn().map_err(|source| Error::Spawn {
        cmd: program.clone(),
        source,
    })?;
    // Not reaped before it is waited for, so the PID is still the child's here.
    let pidfd = match child.id().map(Pidfd::open) {
        Some(Ok(fd)) => fd,
        other => {
            let _ = child.start_kill();
            let why = match other {
                Some(Err(e)) => e.to_string(),
                _ => "it exited at once".into(),
            };
            return Err(Error::Spawn {
                cmd: program.clone(),
                source: std::io::Error::other(format!("cannot pin the child with a pidfd: {why}")),
            });
        }
    };
    tracing::info!(pid = child.id(), program, "child started");
    Ok(Supervised { child, pidfd })
}

async fn wait_child(child: &mut Option<Supervised>) -> Option<std::process::ExitStatus> {
    match child {
        Some(c) => c.child.wait().await.ok(),
        None => std::future::pending().await,
    }
}

async fn stop_child(child: Option<Supervised>, sig: i32) -> Result<(), Error> {
    if let Some(mut c) = child {
        // An error: it has exited already.
        let _ = c.pidfd.send_signal(sig);
        let _ = tokio::time::timeout(Duration::from_secs(10), c.child.wait()).await;
    }
    Ok(())
}
