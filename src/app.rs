//! The composition root: builds the components, spawns the supervised tasks, and returns what was
//! bound plus the handles to reload and stop the agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;

use crate::admin_api::AdminApi;
use crate::attest::Attestor;
use crate::attest::k8s::K8sAttestor;
use crate::attest::unix::UnixAttestor;
use crate::ca::jwt::Jwks;
use crate::ca::{Authority, CaSnapshot, X509Bundle};
use crate::clock::SharedClock;
use crate::config::{Config, FieldError};
use crate::inventory::{Inventory, Reason};
use crate::issuer::jwt::JwtCache;
use crate::issuer::{Issuer, IssuerHandle};
use crate::lifecycle::{Exited, Lifecycle};
use crate::registry::manager::{Declared, Registry};
use crate::registry::{Entry, FederatedBundle};
use crate::workload_api::listener::{self, Incoming};
use crate::workload_api::service::WorkloadApi;

/// How long shutdown waits for streams and connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Errors starting or running the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing authority: {0}")]
    Authority(#[from] crate::ca::Error),
    #[error("SPIRE server: {0}")]
    Spire(crate::spire::Error),
    #[error("{}", crate::config::Errors(.0.clone()))]
    Policy(Vec<FieldError>),
    #[error("entry database: {0}")]
    Registry(#[from] crate::registry::manager::Error),
    #[error(transparent)]
    Inventory(#[from] crate::inventory::Error),
    #[error(transparent)]
    Bind(#[from] listener::BindError),
    #[error(transparent)]
    Health(#[from] crate::health::BindError),
    #[error(transparent)]
    Oidc(#[from] crate::oidc::Error),
    #[error("kubernetes attestation: {0}")]
    Kubernetes(#[from] crate::attest::k8s::kubelet::Error),
    #[error("task {task} stopped unexpectedly: {why}")]
    TaskFailed { task: &'static str, why: String },
    #[error("internal: {0}")]
    Internal(String),
}

/// Who signs: this agent, or the SPIRE server it joined.
enum Signing {
    Local(Box<Authority>),
    Server(Box<crate::spire::Spire>),
}

/// A running agent.
pub struct Running {
    /// Where the Workload API listens.
    pub socket_path: PathBuf,
    /// Where the admin API listens.
    pub admin_socket_path: PathBuf,
    /// Where `/live` and `/ready` are served, if enabled.
    pub health_addr: Option<std::net::SocketAddr>,
    config: Config,
    registry: Arc<Registry>,
    inventory: Inventory,
    shutdown_tx: watch::Sender<bool>,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    issuer: IssuerHandle,
    jwt: JwtCache,
    /// The Cedar policies in force (replaced on reload).
    policies: crate::workload_api::gate::Policies,
    tasks: JoinSet<(&'static str, Result<(), String>)>,
    /// Fires when the inventory's writer thread ends (supervised apart from `tasks`: it must
    /// outlive them, to record the withdrawals of shutdown).
    writer: oneshot::Receiver<()>,
}

/// Starts the agent: authority, issuer, Workload API on `config.socket_path`.
pub async fn start(config: Config, clock: SharedClock) -> Result<Running, Error> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    // Health first, so probes see "live, not ready" while the authority loads.
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probes: Arc<std::sync::OnceLock<Probes>> = Arc::default();
    let health_addr = match config.health_addr {
        None => None,
        Some(addr) => {
            let listener = crate::health::bind(addr).await?;
            let bound = listener.local_addr().ok();
            let check: crate::health::ReadyCheck = {
                let (ready, socket) = (ready.clone(), config.socket_path.clone());
                let probes = probes.clone();
                Arc::new(move || {
                    if !ready.load(std::sync::atomic::Ordering::Acquire) {
                        return Err("starting: authority or socket not ready yet".into());
                    }
                    if !socket.exists() {
                        return Err(format!("the socket {} is gone", socket.display()));
                    }
                    match probes.get() {
                        Some(p) => p.check(),
                        None => Ok(None),
                    }
                })
            };
            let shutdown = shutdown_rx.clone();
            let metrics: crate::health::MetricsText = {
                let probes = probes.clone();
                Arc::new(move || {
                    let m = crate::metrics::metrics();
                    // Gauges of live state are read at scrape time.
                    if let Some(p) = probes.get() {
                        let (connections, streams) = p.shares.open();
                        m.connections_open
                            .set(i64::try_from(connections).unwrap_or(i64::MAX));
                        m.streams_open
                            .set(i64::try_from(streams).unwrap_or(i64::MAX));
                    }
                    m.render()
                })
            };
            tasks.spawn(async move {
                crate::health::serve(listener, check, Some(metrics), shutdown).await;
                ("health", Ok(()))
            });
            bound
        }
    };
    crate::atomic_file::ensure_dir(&config.data_dir, 0o700).map_err(|source| Error::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let declared = load_declared(&config).map_err(Error::Policy)?;
    let policies = crate::workload_api::gate::Policies::new(
        load_engine(&config).map_err(Error::Policy)?,
        config.policy.clone(),
    );
    let db = config.data_dir.join("lanyard.db");
    let registry = {
        let db = db.clone();
        Arc::new(
            tokio::task::spawn_blocking(move || Registry::open(&db, declared))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??,
        )
    };
    // The signing authority: local (self-signed, upstream), or a SPIRE server this node joins.
    let mut server_status = None;
    let (authority, ca_rx) = match &config.authority {
        crate::ca::AuthorityConfig::Spire(spire) => {
            let (spire, ca_rx) = crate::spire::Spire::start(
                spire,
                &config.data_dir,
                registry.clone(),
                config.x509_ttl,
                clock.clone(),
            )
            .await
            .map_err(Error::Spire)?;
            server_status = Some(Box::new(spire.status()) as ServerStatusFn);
            (Signing::Server(Box::new(spire)), ca_rx)
        }
        _ => {
            let (cfg, td, dir, jwt_key_ttl, jwt_key_type, clock) = (
                config.authority.clone(),
                config.trust_domain.clone(),
                config.data_dir.clone(),
                config.jwt_key_ttl,
                config.jwt_key_type,
                clock.clone(),
            );
            let authority = tokio::task::spawn_blocking(move || {
                Authority::load(&cfg, &td, &dir, jwt_key_ttl, jwt_key_type, clock)
            })
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
            let ca_rx = authority.subscribe();
            (Signing::Local(Box::new(authority)), ca_rx)
        }
    };
    let audit =
        match &config.audit {
            Some(a) => Some(crate::audit::Audit::open(a).map_err(|e| {
                Error::Internal(format!("cannot open the audit stream ({a:?}): {e}"))
            })?),
            None => None,
        };
    crate::metrics::metrics().set_spiffe_id_labels(config.metrics_spiffe_id_labels);
    let (inventory, writer) =
        Inventory::open(&db, clock.clone(), config.inventory_retention, audit)?;
    // The inventory's writer thread, supervised: if it ever stops before shutdown, the agent stops
    // (no credential may be delivered unrecorded).
    // On a thread of its own, not the blocking pool: a blocking task that never ends would also
    // stop paused test time from advancing. `stopped` fires when the thread ends, even by a panic.
    let writer = {
        let (tx, stopped) = oneshot::channel::<()>();
        struct Notify(Option<oneshot::Sender<()>>);
        impl Drop for Notify {
            fn drop(&mut self) {
                if let Some(tx) = self.0.take() {
                    let _ = tx.send(());
                }
            }
        }
        std::thread::Builder::new()
            .name("lanyard-inventory".into())
            .spawn(move || {
                let _notify = Notify(Some(tx));
                writer.run();
            })
            .map_err(|e| Error::Internal(format!("cannot start the inventory writer: {e}")))?;
        stopped
    };
    let (lifecycle, mut exits) = Lifecycle::new();
    let policy_rx = registry.subscribe();
    let (issuer, issuer_handle) = Issuer::new(ca_rx.clone(), clock.clone());
    let jwt_cache = JwtCache::new(
        ca_rx.clone(),
        clock.clone(),
        config.jwt_cache_size,
        config.jwt_cache_bytes,
        config.oidc.as_ref().map(|o| o.issuer.as_str()),
    );
    {
        // When a holder exits: its credentials are withdrawn, and SVIDs no open stream holds leave
        // the cache at once.
        let (inventory, issuer) = (inventory.clone(), issuer_handle.clone());
        let mut shutdown = shutdown_rx.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = crate::shutdown::signalled(&mut shutdown) => break,
                    exit = exits.recv() => match exit {
                        Some(Exited { holder }) => {
                            for id in inventory.holder_exited(holder) {
                                issuer.release_id(id);
                            }
                        }
                        None => break,
                    },
                }
            }
            ("lifecycle", Ok(()))
        });
    }

    let mut attestors: Vec<Box<dyn Attestor>> =
        vec![Box::new(UnixAttestor::new(config.hash_max_bytes))];
    if let Some(k8s) = &config.kubernetes {
        attestors.push(Box::new(K8sAttestor::new(k8s)?));
        tracing::info!(kubelet = %k8s.kubelet.url, "kubernetes attestation on");
    }
    let streams = Arc::new(Semaphore::new(config.limits.max_streams));
    let shares = crate::limits::Shares::new(config.limits.clone());
    let nofile = fd_budget(&config.limits);
    let _ = probes.set(Probes {
        inventory: inventory.clone(),
        shares: shares.clone(),
        nofile,
        server: server_status,
    });
    let exec_hub = Arc::new(crate::workload_api::exec_hub::ExecHub::default());
    let ctx = crate::workload_api::Context {
        trust_domain: config.trust_domain.clone(),
        attestors: Arc::new(attestors),
        policy: policy_rx,
        ca: ca_rx.clone(),
        issuer: issuer_handle.clone(),
        jwt: jwt_cache.clone(),
        inventory: inventory.clone(),
        lifecycle: lifecycle.clone(),
        exec: exec_hub.clone(),
        clock: clock.clone(),
        shutdown: shutdown_rx.clone(),
        streams: streams.clone(),
        shares: shares.clone(),
        jwt_revocation: config.jwt_revocation,
        cedar: policies.subscribe(),
        events: crate::workload_api::agent_events(
            shutdown_rx.clone(),
            ca_rx.clone(),
            policies.subscribe(),
        ),
    };
    let admin = AdminApi {
        registry: registry.clone(),
        inventory: inventory.clone(),
        trust_domain: config.trust_domain.to_string(),
        authority_mode: match config.authority {
            crate::ca::AuthorityConfig::SelfSigned { .. } => "self-signed",
            crate::ca::AuthorityConfig::Upstream { .. } => "upstream",
            crate::ca::AuthorityConfig::Spire(_) => "spire",
        },
        ca: ca_rx.clone(),
        issuer: issuer_handle.clone(),
        jwt: jwt_cache.clone(),
        streams,
        max_streams: config.limits.max_streams,
        policies: policies.clone(),
    };
    // The admin socket first: its directory is private (0700) and the socket 0600.
    let admin_listener = listener::bind(&config.admin_socket_path, 0o600, 0o700)?;
    let listener = listener::bind(&config.socket_path, 0o666, 0o755)?;
    tracing::info!(
        socket = %config.socket_path.display(),
        trust_domain = %config.trust_domain,
        entries = config.entries.len(),
        "workload api listening"
    );

    {
        let shutdown = shutdown_rx.clone();
        match authority {
            Signing::Local(authority) => tasks.spawn(async move {
                (
                    "authority",
                    authority.run(shutdown).await.map_err(|e| e.to_string()),
                )
            }),
            Signing::Server(mut spire) => {
                spire.set_issuer(issuer_handle.clone());
                tasks.spawn(async move {
                    spire.run(shutdown).await;
                    ("spire-server-sync", Ok(()))
                })
            }
        };
    }
    {
        let shutdown = shutdown_rx.clone();
        tasks.spawn(async move {
            issuer.run(shutdown).await;
            ("issuer", Ok(()))
        });
    }
    {
        let shutdown = shutdown_rx.clone();
        let enabled = config.exec_events;
        tasks.spawn(async move {
            if enabled {
                exec_hub.run(shutdown).await;
            } else {
                let mut shutdown = shutdown;
                crate::shutdown::signalled(&mut shutdown).await;
            }
            ("exec-events", Ok(()))
        });
    }
    if let Some(oidc) = &config.oidc {
        let (listener, tls) = crate::oidc::bind(oidc).await?;
        tracing::info!(
            address = %oidc.address,
            issuer = %oidc.issuer,
            tls = tls.is_some(),
            "OIDC discovery for JWT-SVIDs"
        );
        let (issuer, ca, shutdown) = (oidc.issuer.clone(), ca_rx.clone(), shutdown_rx.clone());
        tasks.spawn(async move {
            crate::oidc::serve(listener, tls, issuer, ca, shutdown).await;
            ("oidc", Ok(()))
        });
    }
    {
        let shutdown = shutdown_rx.clone();
        let cache = jwt_cache.clone();
        tasks.spawn(async move {
            cache.run(shutdown).await;
            ("jwt-cache", Ok(()))
        });
    }
    {
        let mut shutdown = shutdown_rx.clone();
        let api = WorkloadApi::new(ctx);
        // Envoy SDS v3 beside the Workload API on the same socket (no security header: Envoy
        // sends none; the caller is attested the same way).
        #[cfg(feature = "sds")]
        let sds = config.sds.then(|| {
            crate::workload_api::sds::Sds::new(api.clone(), config.sds_disable_spiffe_validation)
                .into_server()
        });
        #[cfg(not(feature = "sds"))]
        if config.sds {
            tracing::warn!("built without the \"sds\" feature: [sds] is not served");
        }
        let service = api.into_server();
        let max_concurrent_streams = config.limits.max_concurrent_streams;
        let shares = shares.clone();
        tasks.spawn(async move {
            let router = tonic::transport::Server::builder()
                .max_concurrent_streams(Some(max_concurrent_streams))
                .add_service(service);
            #[cfg(feature = "sds")]
            let router = router.add_optional_service(sds);
            let result = router
                .serve_with_incoming_shutdown(
                    Incoming::new(listener, config.peer_pidfd, Some(shares)),
                    async move {
                        crate::shutdown::signalled(&mut shutdown).await;
                    },
                )
                .await;
            ("workload-api", result.map_err(|e| e.to_string()))
        });
    }
    {
        let mut shutdown = shutdown_rx.clone();
        let service = admin.into_server();
        tasks.spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    Incoming::new(admin_listener, config.peer_pidfd, None),
                    async move {
                        crate::shutdown::signalled(&mut shutdown).await;
                    },
                )
                .await;
            ("admin-api", result.map_err(|e| e.to_string()))
        });
    }
    ready.store(true, std::sync::atomic::Ordering::Release);
    Ok(Running {
        socket_path: config.socket_path.clone(),
        admin_socket_path: config.admin_socket_path.clone(),
        health_addr,
        config,
        registry,
        inventory,
        shutdown_tx,
        ca: ca_rx,
        issuer: issuer_handle,
        jwt: jwt_cache,
        policies,
        tasks,
        writer,
    })
}

/// The Cedar policies of `[policy]`, read and validated now; every problem with Cedar's message.
pub(crate) fn load_engine(
    config: &Config,
) -> Result<Option<Arc<crate::workload_api::gate::Engine>>, Vec<FieldError>> {
    crate::workload_api::gate::engine_for(config.policy.as_ref()).map_err(|errors| {
        errors
            .into_iter()
            .map(|message| FieldError {
                field: "policy".into(),
                message,
            })
            .collect()
    })
}

/// What the config file contributes to the policy: declared entries and federated bundles (read from
/// their files now).
pub fn load_declared(config: &Config) -> Result<Declared, Vec<FieldError>> {
    let mut federation = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, f) in config.federation.iter().enumerate() {
        let mut bundle = FederatedBundle::default();
        if let Some(path) = &f.bundle_path {
            match X509Bundle::from_pem_file(path) {
                Ok(b) => bundle.x509 = Some(b),
                Err(e) => errors.push(FieldError {
                    field: format!("federation[{i}].bundle_path"),
                    message: e.to_string(),
                }),
            }
        }
        if let Some(path) = &f.jwks_path {
            match Jwks::from_file(path) {
                Ok(j) => bundle.jwt = Some(j),
                Err(message) => errors.push(FieldError {
                    field: format!("federation[{i}].jwks_path"),
                    message,
                }),
            }
        }
        federation.insert(f.trust_domain.clone(), bundle);
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Declared {
        trust_domain: config.trust_domain.clone(),
        entries: config.entries.clone(),
        templates: config.templates.clone(),
        federation,
        default_x509_ttl: config.x509_ttl,
        default_jwt_ttl: config.jwt_ttl,
    })
}

impl Running {
    /// Applies the entries and federation of a new configuration; open streams see the change at once.
    /// Settings that need a restart (trust domain, socket, data dir, authority) are reported back.
    pub fn reload(&mut self, config: Config) -> Result<Vec<&'static str>, Vec<FieldError>> {
        let declared = load_declared(&config)?;
        // An invalid policy set is refused as a whole; the running one stays.
        let engine = load_engine(&config)?;
        let mut restart_needed = Vec::new();
        if config.trust_domain != self.config.trust_domain {
            restart_needed.push("trust_domain");
        }
        if config.socket_path != self.config.socket_path {
            restart_needed.push("socket_path");
        }
        if config.data_dir != self.config.data_dir {
            restart_needed.push("data_dir");
        }
        if config.admin_socket_path != self.config.admin_socket_path {
            restart_needed.push("admin_socket_path");
        }
        if config.authority != self.config.authority {
            restart_needed.push("authority");
        }
        if config.kubernetes != self.config.kubernetes {
            restart_needed.push("kubernetes");
        }
        if config.health_addr != self.config.health_addr {
            restart_needed.push("health.address");
        }
        tracing::info!(
            entries = config.entries.len(),
            federation = config.federation.len(),
            "policy reloaded"
        );
        self.registry.reload(declared);
        self.policies.replace(config.policy.clone(), engine);
        self.config = config;
        Ok(restart_needed)
    }

    /// Replaces the entries, keeping everything else (for embedding and benchmarks).
    pub fn set_entries(&self, entries: Vec<Entry>) {
        self.registry.set_declared_entries(entries);
    }

    /// The credential inventory.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The authority's current snapshot (signer and bundle).
    pub fn ca(&self) -> Arc<CaSnapshot> {
        self.ca.borrow().clone()
    }

    /// The issuer, for its counters.
    pub fn issuer(&self) -> &IssuerHandle {
        &self.issuer
    }

    /// The JWT-SVID cache, for its counters.
    pub fn jwt_cache(&self) -> &JwtCache {
        &self.jwt
    }

    /// A handle that stops the agent from elsewhere.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shutdown_tx.clone())
    }

    /// Waits until a supervised task stops. Before shutdown that is a failure, and the agent stops.
    pub async fn wait_for_failure(&mut self) -> Error {
        let done = tokio::select! {
            done = self.tasks.join_next() => done,
            _ = &mut self.writer => {
                return Error::TaskFailed {
                    task: "inventory-writer",
                    why: "stopped; no credential can be recorded".into(),
                };
            }
        };
        match done {
            Some(Ok((task, Ok(())))) => Error::TaskFailed {
                task,
                why: "ended".into(),
            },
            Some(Ok((task, Err(why)))) => Error::TaskFailed { task, why },
            Some(Err(e)) => Error::TaskFailed {
                task: "unknown",
                why: e.to_string(),
            },
            None => Error::Internal("no tasks".into()),
        }
    }

    /// Stops the agent: streams end with Unavailable, connections get a bounded grace period, the
    /// socket is removed.
    pub async fn shutdown(mut self) {
        self.shutdown_tx.send_replace(true);
        let drain = async {
            while let Some(done) = self.tasks.join_next().await {
                if let Ok((task, Err(why))) = done {
                    tracing::warn!(task, error = %why, "task ended with an error during shutdown");
                }
            }
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("shutdown grace period over; closing remaining connections");
            self.tasks.abort_all();
        }
        if let Err(e) = self.inventory.withdraw_all(Reason::AgentStopped).await {
            tracing::error!(error = %e, "cannot mark held credentials withdrawn");
        }
        self.inventory.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.writer)
            .await
            .is_err()
        {
            tracing::warn!("the inventory writer did not stop within the grace period");
        }
        for path in [&self.socket_path, &self.admin_socket_path] {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "cannot remove socket");
                }
            }
        }
        tracing::info!("agent stopped");
    }
}

/// What `/ready` looks at once the agent runs: the inventory can write, and no resource is above
/// 90 % of its limit.
struct Probes {
    inventory: Inventory,
    shares: crate::limits::Shares,
    nofile: u64,
    /// The SPIRE server's status, in mode "spire".
    server: Option<ServerStatusFn>,
}

type ServerStatusFn = Box<dyn Fn() -> crate::spire::ServerStatus + Send + Sync>;

impl Probes {
    fn check(&self) -> Result<Option<String>, String> {
        self.check_local()?;
        let Some(status) = self.server.as_ref().map(|f| f()) else {
            return Ok(None);
        };
        let since = status
            .unreachable_since
            .map(|t| humantime::format_rfc3339_seconds(t).to_string())
            .unwrap_or_default();
        let why = status.last_error.unwrap_or_default();
        if status.refused {
            return Err(format!(
                "the SPIRE server refuses this node since {since} ({why}); attest it again"
            ));
        }
        Ok(status.unreachable_since.map(|_| {
            format!(
                "SPIRE server unreachable since {since} ({why}); cached SVIDs are served while valid"
            )
        }))
    }

    fn check_local(&self) -> Result<(), String> {
        if let Some(e) = self.inventory.write_error() {
            return Err(format!(
                "the inventory cannot write ({e}): new credentials are refused; credentials already delivered keep being served"
            ));
        }
        let limits = self.shares.config();
        let (connections, streams) = self.shares.open();
        let fds = crate::sys::open_fds() as u64;
        for (what, used, limit) in [
            (
                "connections",
                connections as u64,
                limits.max_connections as u64,
            ),
            ("streams", streams as u64, limits.max_streams as u64),
            ("file descriptors", fds, self.nofile),
        ] {
            if limit > 0 && used * 10 > limit * 9 {
                return Err(format!("{what} above 90 % of the limit: {used} of {limit}"));
            }
        }
        Ok(())
    }
}

/// Raises the open-files limit as far as allowed and warns when the configured limits could need
/// more file descriptors than that (each connection: a socket, a pidfd and, once it was served, its
/// caller's `/proc` directory; each stream at most one more `/proc` directory — streams share their
/// connection's once it is kept). Returns the limit in force.
fn fd_budget(limits: &crate::limits::LimitsConfig) -> u64 {
    let nofile = match crate::sys::raise_nofile() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit");
            return 0;
        }
    };
    let need = (limits.max_connections as u64) * 3 + limits.max_streams as u64 + 256;
    if nofile < need {
        tracing::warn!(
            nofile,
            need,
            "the open-files limit is below what limits.max_connections and limits.max_streams can use; raise LimitNOFILE (systemd) or lower the limits"
        );
    }
    nofile
}

/// Stops a running agent from another task.
#[derive(Clone)]
pub struct Stopper(watch::Sender<bool>);

impl Stopper {
    /// Begins shutdown.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}
