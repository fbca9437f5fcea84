//! lanyard as a SPIRE agent (`[authority] mode = "spire"`): the SPIRE server keeps the keys and
//! decides who may be what; this agent attests workloads, caches, streams, records and cuts off.
//!
//! - [`node`]: node attestation (`join_token`), the persisted agent SVID, renewal at half life.
//! - Every `sync_interval`: the authorized entries (`SyncAuthorizedEntries`, incremental by
//!   revision; `GetAuthorizedEntries` on servers without it), the bundle and the federated bundles
//!   the entries name. Entries replace the registry's; a changed bundle is published to every stream.
//! - SVIDs: the issuer asks [`ServerSigner`] (a [`RemoteSigner`]) instead of minting: keys are made
//!   here, `BatchNewX509SVID` signs them; JWT-SVIDs come from `NewJWTSVID`. Every authorized entry's
//!   X.509-SVID is pre-fetched (held in the issuer's cache), so a first fetch is served from it.
//! - Outages: the cache keeps serving what is valid; calls are retried with jittered backoff; an
//!   SVID is never served past `not_after` (the issuer's rule).

mod convert;
mod node;
mod proto;
mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use crate::ca::jwt::{JwtKeys, SignedJwt};
use crate::ca::{
    CaSnapshot, RemoteSigner, SignFuture, SpireConfig, SvidRequest, X509Bundle, X509Svid,
};
use crate::clock::{Backoff, SharedClock};
use crate::issuer::IssuerHandle;
use crate::registry::manager::Registry;
use crate::registry::{Entry, FederatedBundle};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use node::{AgentSvid, Files};
use proto::{bundle, entry, svid, types};
use tls::Trust;

/// Retry delays while the server cannot be reached.
const RETRY: Backoff = Backoff {
    first: Duration::from_millis(500),
    cap: Duration::from_secs(30),
};

/// Errors talking to the SPIRE server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Server(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{what}: the SPIRE server answered {code:?}: {message}")]
    Refused {
        what: &'static str,
        code: tonic::Code,
        message: String,
    },
}

impl Error {
    fn from_status(what: &'static str, s: &tonic::Status) -> Self {
        Error::Refused {
            what,
            code: s.code(),
            message: s.message().to_owned(),
        }
    }

    /// The server no longer accepts this node (evicted, banned, expired agent SVID).
    fn node_refused(&self) -> bool {
        matches!(
            self,
            Error::Refused {
                code: tonic::Code::PermissionDenied | tonic::Code::Unauthenticated,
                ..
            }
        )
    }
}

/// What `/ready` and the admin API report about the server.
#[derive(Debug, Clone, Default)]
pub struct ServerStatus {
    /// When the last sync failed first, while it keeps failing.
    pub unreachable_since: Option<SystemTime>,
    /// The last failure.
    pub last_error: Option<String>,
    /// The server refused this node (evicted or banned): no SVIDs until it attests again.
    pub refused: bool,
}

/// SPIFFE ID → the authorized entries (ID, DNS names) that give it.
type EntryIndex = HashMap<SpiffeId, Vec<(String, Vec<String>)>>;

/// What the signer and the sync loop share.
struct Shared {
    address: String,
    server_id: String,
    /// mTLS with the current agent SVID, trusting the current bundle.
    channel: RwLock<Channel>,
    /// SPIFFE ID → the authorized entries (ID, DNS names) that give it.
    entries: RwLock<EntryIndex>,
    status: Mutex<ServerStatus>,
    clock: SharedClock,
    /// CSRs for the batcher.
    csrs: mpsc::UnboundedSender<CsrJob>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("address", &self.address)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn channel(&self) -> Channel {
        self.channel
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn entry_for(
        &self,
        id: &SpiffeId,
        dns_names: Option<&[String]>,
    ) -> Result<String, crate::ca::Error> {
        let entries = self
            .entries
            .read()
            .map_err(|_| crate::ca::Error::Server("lock".into()))?;
        entries
            .get(id)
            .and_then(|list| {
                list.iter()
                    .find(|(_, dns)| dns_names.is_none_or(|want| dns.as_slice() == want))
            })
            .map(|(entry, _)| entry.clone())
            .ok_or_else(|| {
                crate::ca::Error::Server(format!("no entry authorized for this node gives {id}"))
            })
    }

    fn reconnect(&self, trust: Trust, svid: &AgentSvid) -> Result<(), Error> {
        let channel =
            tls::channel(&self.address, trust, Some(svid.client_cert())).map_err(Error::Server)?;
        if let Ok(mut c) = self.channel.write() {
            *c = channel;
        }
        Ok(())
    }
}

/// The SPIRE server as the issuer's signer.
#[derive(Debug, Clone)]
pub struct ServerSigner(Arc<Shared>);

impl RemoteSigner for ServerSigner {
    fn x509(&self, req: SvidRequest) -> SignFuture<X509Svid> {
        let shared = self.0.clone();
        Box::pin(async move {
            let entry_id = shared.entry_for(&req.spiffe_id, Some(&req.dns_names))?;
            let (key, csr) =
                node::key_and_csr().map_err(|e| crate::ca::Error::Server(e.to_string()))?;
            // Queued for the batcher: CSRs that arrive together (a sync's pre-fetch, rotations
            // due at once) go to the server in one BatchNewX509SVID.
            let (reply, answer) = oneshot::channel();
            shared
                .csrs
                .send(CsrJob {
                    entry_id,
                    csr,
                    reply,
                })
                .map_err(|_| crate::ca::Error::Server("the SPIRE client has stopped".into()))?;
            let result = answer
                .await
                .map_err(|_| crate::ca::Error::Server("the SPIRE client has stopped".into()))?
                .map_err(crate::ca::Error::Server)?;
            x509_result(&req.spiffe_id, result, Zeroizing::new(key.serialize_der()))
        })
    }

    fn jwt(&self, spiffe_id: SpiffeId, audiences: Vec<String>) -> SignFuture<SignedJwt> {
        let shared = self.0.clone();
        Box::pin(async move {
            let entry_id = shared.entry_for(&spiffe_id, None)?;
            let svid = svid::svid_client::SvidClient::new(shared.channel())
                .new_jwtsvid(svid::NewJwtsvidRequest {
                    entry_id,
                    audience: audiences,
                })
                .await
                .map_err(|s| {
                    crate::ca::Error::Server(Error::from_status("NewJWTSVID", &s).to_string())
                })?
                .into_inner()
                .svid
                .ok_or_else(|| crate::ca::Error::Server("NewJWTSVID: no SVID".into()))?;
            jwt_result(&spiffe_id, svid)
        })
    }
}

/// One CSR waiting for the batcher.
struct CsrJob {
    entry_id: String,
    csr: Vec<u8>,
    reply: oneshot::Sender<Result<svid::batch_new_x509svid_response::Result, String>>,
}

/// The most CSRs in one `BatchNewX509SVID` (what SPIRE's own agent sends at most).
const MAX_BATCH: usize = 500;

/// Sends queued CSRs in batches: whatever is queued when a call can start goes in it, so a burst
/// costs one round trip per [`MAX_BATCH`] and a lone rotation is not delayed. Ends when the
/// shared state is gone.
async fn batcher(shared: std::sync::Weak<Shared>, mut rx: mpsc::UnboundedReceiver<CsrJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let Some(channel) = shared.upgrade().map(|s| s.channel()) else {
            return;
        };
        let params = jobs
            .iter_mut()
            .map(|j| svid::NewX509svidParams {
                entry_id: j.entry_id.clone(),
                csr: std::mem::take(&mut j.csr),
            })
            .collect();
        let sent = jobs.len();
        let outcome = svid::svid_client::SvidClient::new(channel)
            .batch_new_x509svid(svid::BatchNewX509svidRequest { params })
            .await;
        match outcome {
            Ok(r) => {
                let results = r.into_inner().results;
                if results.len() != sent {
                    let why = format!(
                        "BatchNewX509SVID answered {} results for {sent} CSRs",
                        results.len()
                    );
                    for job in jobs {
                        let _ = job.reply.send(Err(why.clone()));
                    }
                    continue;
                }
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(status) => {
                let why = Error::from_status("BatchNewX509SVID", &status).to_string();
                for job in jobs {
                    let _ = job.reply.send(Err(why.clone()));
                }
            }
        }
    }
}

/// An X.509-SVID from one `BatchNewX509SVID` result, checked: success, and the ID asked for.
fn x509_result(
    want: &SpiffeId,
    result: svid::batch_new_x509svid_response::Result,
    key_pkcs8: Zeroizing<Vec<u8>>,
) -> Result<X509Svid, crate::ca::Error> {
    if let Some(status) = result.status.as_ref().filter(|s| s.code != 0) {
        return Err(crate::ca::Error::Server(format!(
            "BatchNewX509SVID refused {want}: {} (code {})",
            status.message, status.code
        )));
    }
    let svid = result
        .svid
        .ok_or_else(|| crate::ca::Error::Server("BatchNewX509SVID: no SVID".into()))?;
    let chain: Vec<_> = svid
        .cert_chain
        .into_iter()
        .map(rustls_pki_types::CertificateDer::from)
        .collect();
    let leaf = chain
        .first()
        .ok_or_else(|| crate::ca::Error::Server("empty chain".into()))?;
    let ids = crate::encoding::uri_sans(leaf).map_err(crate::ca::Error::BadCertificate)?;
    if ids.len() != 1 || ids[0] != want.as_str() {
        return Err(crate::ca::Error::Server(format!(
            "the server signed {ids:?}, not {want}"
        )));
    }
    X509Svid::from_parts(want.clone(), chain, key_pkcs8)
}

/// A JWT-SVID from `NewJWTSVID`: `jti` and `kid` read from the token (a server that sets no `jti`
/// gets a digest of the token as its inventory serial).
fn jwt_result(want: &SpiffeId, svid: types::Jwtsvid) -> Result<SignedJwt, crate::ca::Error> {
    let bad = |why: &str| crate::ca::Error::Server(format!("NewJWTSVID: {why}"));
    let mut parts = svid.token.split('.');
    let decode = |part: Option<&str>| -> Option<serde_json::Value> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part?)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    };
    let header = decode(parts.next()).ok_or_else(|| bad("the token's header is not JSON"))?;
    let claims = decode(parts.next()).ok_or_else(|| bad("the token's claims are not JSON"))?;
    if claims["sub"].as_str() != Some(want.as_str()) {
        return Err(bad(&format!(
            "the token is for {}, not {want}",
            claims["sub"]
        )));
    }
    let secs = |v: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(v.max(0).unsigned_abs());
    let jti = claims["jti"].as_str().map_or_else(
        || {
            let digest =
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, svid.token.as_bytes());
            crate::encoding::hex(&digest.as_ref()[..16])
        },
        str::to_owned,
    );
    Ok(SignedJwt {
        jti,
        kid: header["kid"].as_str().unwrap_or_default().to_owned(),
        issued_at: secs(svid.issued_at),
        expires_at: secs(svid.expires_at),
        token: svid.token,
    })
}

/// The sync loop's state; [`Spire::run`] drives it.
pub struct Spire {
    shared: Arc<Shared>,
    config: SpireConfig,
    files: Files,
    registry: Arc<Registry>,
    ca_tx: watch::Sender<Arc<CaSnapshot>>,
    agent: AgentSvid,
    bundle: X509Bundle,
    jwt_bundle: crate::ca::jwt::Jwks,
    default_x509_ttl: Duration,
    /// Entry revisions as last synced (incremental sync).
    known: HashMap<String, types::Entry>,
    /// `SyncAuthorizedEntries` is not served: use `GetAuthorizedEntries`.
    legacy_sync: bool,
    /// Pre-fetched SVIDs, held so the issuer keeps them cached and rotated.
    held: HashMap<SvidRequest, crate::issuer::Subscription>,
    issuer: Option<IssuerHandle>,
    /// Entry IDs already reported as unusable here.
    warned: HashSet<String>,
}

impl std::fmt::Debug for Spire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spire")
            .field("server", &self.shared.address)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl Spire {
    /// Attests (or resumes with the persisted agent SVID), syncs once, and returns the loop and the
    /// authority snapshot it publishes. With a persisted SVID, an unreachable server is not fatal:
    /// the agent starts and syncs when the server is back.
    pub async fn start(
        config: &SpireConfig,
        data_dir: &Path,
        registry: Arc<Registry>,
        default_x509_ttl: Duration,
        clock: SharedClock,
    ) -> Result<(Self, watch::Receiver<Arc<CaSnapshot>>), Error> {
        let files = Files::new(data_dir)?;
        let now = clock.now();
        let server_id = config.server_id.as_str().to_owned();
        let persisted = files.load()?;
        let resumed = persisted
            .as_ref()
            .is_some_and(|(svid, _)| svid.not_after > now);
        let (agent, bundle) = match persisted {
            Some((svid, bundle)) if svid.not_after > now => {
                tracing::info!(agent_id = %svid.id, "resuming with the persisted agent SVID; no attestation needed");
                (svid, bundle)
            }
            persisted => {
                let bootstrap = match (persisted, &config.trust_bundle_path) {
                    (Some((_, bundle)), _) => Trust::Bundle {
                        roots: bundle.certs().to_vec(),
                        server_id: server_id.clone(),
                    },
                    (None, Some(path)) => Trust::Bundle {
                        roots: X509Bundle::from_pem_file(path)
                            .map_err(|e| {
                                Error::Server(format!("authority.trust_bundle_path: {e}"))
                            })?
                            .certs()
                            .to_vec(),
                        server_id: server_id.clone(),
                    },
                    (None, None) => Trust::Insecure,
                };
                let (svid, bundle) = node::attest(config, bootstrap).await?;
                check_chain(&svid, &bundle)?;
                files.save_bundle(&bundle)?;
                files.save_agent(&svid)?;
                tracing::info!(agent_id = %svid.id, server = %config.server_address, "node attested");
                (svid, bundle)
            }
        };
        let trust = Trust::Bundle {
            roots: bundle.certs().to_vec(),
            server_id: server_id.clone(),
        };
        let channel = tls::channel(&config.server_address, trust, Some(agent.client_cert()))
            .map_err(Error::Server)?;
        let (csrs, queued) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            address: config.server_address.clone(),
            server_id,
            channel: RwLock::new(channel),
            entries: RwLock::new(HashMap::new()),
            status: Mutex::new(ServerStatus::default()),
            clock: clock.clone(),
            csrs,
        });
        tokio::spawn(batcher(Arc::downgrade(&shared), queued));
        let jwt_bundle = crate::ca::jwt::Jwks::default();
        let snapshot = Arc::new(snapshot(&shared, &bundle, &jwt_bundle));
        let (ca_tx, ca_rx) = watch::channel(snapshot);
        registry.serve_from_server();
        let mut spire = Self {
            shared,
            config: config.clone(),
            files,
            registry,
            ca_tx,
            agent,
            bundle,
            jwt_bundle,
            default_x509_ttl,
            known: HashMap::new(),
            legacy_sync: false,
            held: HashMap::new(),
            issuer: None,
            warned: HashSet::new(),
        };
        match tokio::time::timeout(Duration::from_secs(10), spire.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if !resumed => return Err(e),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "SPIRE server not reachable at start; serving nothing new until it is");
            }
            Err(_) if !resumed => {
                return Err(Error::Server(format!(
                    "{}: no answer in 10s",
                    config.server_address
                )));
            }
            Err(_) => {
                tracing::warn!(server = %config.server_address, "SPIRE server not answering at start; retrying");
            }
        }
        Ok((spire, ca_rx))
    }

    /// The issuer to pre-fetch SVIDs into (set before [`Spire::run`]).
    pub fn set_issuer(&mut self, issuer: IssuerHandle) {
        self.issuer = Some(issuer);
    }

    /// The signer the issuer calls.
    pub fn signer(&self) -> ServerSigner {
        ServerSigner(self.shared.clone())
    }

    /// A reader of the server's status (for `/ready`).
    pub fn status(&self) -> impl Fn() -> ServerStatus + Send + Sync + 'static {
        let shared = self.shared.clone();
        move || shared.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The agent's SPIFFE ID at the server.
    pub fn agent_id(&self) -> &str {
        &self.agent.id
    }

    /// Syncs every interval, renews the agent SVID at half life, until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        self.prefetch().await;
        let mut failures = 0u32;
        loop {
            let delay = if failures == 0 {
                self.config.sync_interval
            } else {
                RETRY.delay(failures).max(self.config.sync_interval)
            };
            tokio::select! {
                () = crate::shutdown::signalled(&mut shutdown) => return,
                () = tokio::time::sleep(delay) => {}
            }
            if self.shared.clock.now() >= self.agent.renew_at() {
                match node::renew(self.shared.channel()).await {
                    Ok(svid) => {
                        if let Err(e) = self.adopt_agent_svid(svid) {
                            tracing::warn!(error = %e, "renewed agent SVID not usable");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "agent SVID renewal failed; retrying"),
                }
            }
            match self.sync().await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(server = %self.shared.address, "SPIRE server reachable again");
                    }
                    failures = 0;
                    self.prefetch().await;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        tracing::warn!(server = %self.shared.address, error = %e, "SPIRE server sync failed; cached SVIDs are served while valid");
                    } else {
                        tracing::debug!(error = %e, failures, "SPIRE server sync failed again");
                    }
                    if e.node_refused() && self.reattest().await {
                        failures = 0;
                        continue;
                    }
                    if e.node_refused() {
                        // Evicted or banned: nothing the server authorized before still holds.
                        if self.registry.set_server_state(Vec::new(), BTreeMap::new()) {
                            tracing::error!(agent_id = %self.agent.id, error = %e, "the SPIRE server refuses this node; its workloads get no identity until it attests again (new join token; remove <data_dir>/spire/agent.pem)");
                        }
                        self.known.clear();
                        self.held.clear();
                    }
                    if let Ok(mut s) = self.shared.status.lock() {
                        s.unreachable_since.get_or_insert(self.shared.clock.now());
                        s.last_error = Some(e.to_string());
                        s.refused = e.node_refused();
                    }
                }
            }
        }
    }

    /// Attests again after the server refused this node, where the attestor allows it (x509pop and
    /// k8s_psat prove the node afresh; a join token is spent). True on success.
    async fn reattest(&mut self) -> bool {
        if matches!(
            self.config.attestation,
            crate::ca::NodeAttestation::JoinToken(_)
        ) {
            return false;
        }
        match node::attest(&self.config, self.trust()).await {
            Ok((svid, bundle)) => {
                tracing::info!(agent_id = %svid.id, "node attested again after the server refused it");
                if bundle != self.bundle {
                    self.bundle = bundle;
                    let _ = self.files.save_bundle(&self.bundle);
                }
                if let Err(e) = self.adopt_agent_svid(svid) {
                    tracing::warn!(error = %e, "new agent SVID not usable");
                    return false;
                }
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "attesting again failed");
                false
            }
        }
    }

    fn adopt_agent_svid(&mut self, svid: AgentSvid) -> Result<(), Error> {
        check_chain(&svid, &self.bundle)?;
        self.files.save_agent(&svid)?;
        self.shared.reconnect(self.trust(), &svid)?;
        tracing::info!(agent_id = %svid.id, not_after = ?svid.not_after, "agent SVID renewed");
        self.agent = svid;
        Ok(())
    }

    fn trust(&self) -> Trust {
        Trust::Bundle {
            roots: self.bundle.certs().to_vec(),
            server_id: self.shared.server_id.clone(),
        }
    }

    /// One sync: bundle, entries, federated bundles.
    async fn sync(&mut self) -> Result<(), Error> {
        let channel = self.shared.channel();
        let own = bundle::bundle_client::BundleClient::new(channel.clone())
            .get_bundle(bundle::GetBundleRequest::default())
            .await
            .map_err(|s| Error::from_status("GetBundle", &s))?
            .into_inner();
        let entries = self.authorized_entries(channel.clone()).await?;
        let mut usable = Vec::with_capacity(entries.len());
        for e in &entries {
            match convert::entry(e) {
                Ok(Some(entry)) => usable.push(entry),
                Ok(None) => {}
                Err(why) => {
                    if self.warned.insert(e.id.clone()) {
                        tracing::warn!(entry_id = %e.id, "entry cannot apply on this agent: {why}");
                    }
                }
            }
        }
        let mut federation = BTreeMap::new();
        let wanted: HashSet<TrustDomain> = usable
            .iter()
            .flat_map(|e| e.federates_with.iter().cloned())
            .collect();
        for td in wanted {
            match bundle::bundle_client::BundleClient::new(channel.clone())
                .get_federated_bundle(bundle::GetFederatedBundleRequest {
                    trust_domain: td.to_string(),
                    output_mask: None,
                })
                .await
            {
                Ok(b) => {
                    let b = b.into_inner();
                    federation.insert(
                        td,
                        FederatedBundle {
                            x509: Some(convert::x509_bundle(&b)),
                            jwt: Some(convert::jwks(&b)),
                        },
                    );
                }
                Err(s) => {
                    tracing::debug!(trust_domain = %td, error = %s.message(), "no federated bundle from the server");
                }
            }
        }
        self.publish_bundle(&own)?;
        let index = index(&usable);
        if let Ok(mut e) = self.shared.entries.write() {
            *e = index;
        }
        if self.registry.set_server_state(usable, federation) {
            tracing::debug!(entries = entries.len(), "authorized entries changed");
        }
        if let Ok(mut s) = self.shared.status.lock() {
            *s = ServerStatus::default();
        }
        Ok(())
    }

    fn publish_bundle(&mut self, own: &types::Bundle) -> Result<(), Error> {
        let x509 = convert::x509_bundle(own);
        if x509.certs().is_empty() {
            return Err(Error::Server(
                "the server's bundle has no X.509 authorities".into(),
            ));
        }
        let jwks = convert::jwks(own);
        if x509 == self.bundle && jwks == self.jwt_bundle {
            return Ok(());
        }
        let roots_changed = x509 != self.bundle;
        self.bundle = x509;
        self.jwt_bundle = jwks;
        if roots_changed {
            self.files.save_bundle(&self.bundle)?;
            self.shared.reconnect(self.trust(), &self.agent)?;
        }
        tracing::info!(
            x509_authorities = self.bundle.certs().len(),
            "trust bundle from the SPIRE server updated"
        );
        self.ca_tx.send_replace(Arc::new(snapshot(
            &self.shared,
            &self.bundle,
            &self.jwt_bundle,
        )));
        Ok(())
    }

    /// The full set of entries authorized for this node.
    async fn authorized_entries(&mut self, channel: Channel) -> Result<Vec<types::Entry>, Error> {
        if !self.legacy_sync {
            match self.sync_entries(channel.clone()).await {
                Err(Error::Refused {
                    code: tonic::Code::Unimplemented,
                    ..
                }) => {
                    tracing::info!(
                        "the server has no SyncAuthorizedEntries; using GetAuthorizedEntries"
                    );
                    self.legacy_sync = true;
                }
                other => return other,
            }
        }
        Ok(entry::entry_client::EntryClient::new(channel)
            .get_authorized_entries(entry::GetAuthorizedEntriesRequest::default())
            .await
            .map_err(|s| Error::from_status("GetAuthorizedEntries", &s))?
            .into_inner()
            .entries)
    }

    /// `SyncAuthorizedEntries`: the server sends revisions (or, for few entries, the entries); only
    /// new or changed entries are asked for in full.
    async fn sync_entries(&mut self, channel: Channel) -> Result<Vec<types::Entry>, Error> {
        let what = "SyncAuthorizedEntries";
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let _ = tx
            .send(entry::SyncAuthorizedEntriesRequest::default())
            .await;
        let mut responses = entry::entry_client::EntryClient::new(channel)
            .sync_authorized_entries(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| Error::from_status(what, &s))?
            .into_inner();
        let mut revisions = Vec::new();
        let mut full = Vec::new();
        loop {
            let r = responses
                .next()
                .await
                .ok_or_else(|| Error::Server(format!("{what}: stream ended early")))?
                .map_err(|s| Error::from_status(what, &s))?;
            revisions.extend(r.entry_revisions);
            full.extend(r.entries);
            if !r.more {
                break;
            }
        }
        if revisions.is_empty() {
            self.known = full.iter().map(|e| (e.id.clone(), e.clone())).collect();
            return Ok(full);
        }
        let needed: Vec<String> = revisions
            .iter()
            .filter(|r| {
                self.known
                    .get(&r.id)
                    .is_none_or(|e| e.revision_number != r.revision_number)
            })
            .map(|r| r.id.clone())
            .collect();
        if !needed.is_empty() {
            let _ = tx
                .send(entry::SyncAuthorizedEntriesRequest {
                    output_mask: None,
                    ids: needed,
                })
                .await;
            loop {
                let r = responses
                    .next()
                    .await
                    .ok_or_else(|| Error::Server(format!("{what}: stream ended early")))?
                    .map_err(|s| Error::from_status(what, &s))?;
                for e in r.entries {
                    self.known.insert(e.id.clone(), e);
                }
                if !r.more {
                    break;
                }
            }
        }
        drop(tx);
        let current: HashSet<&str> = revisions.iter().map(|r| r.id.as_str()).collect();
        self.known.retain(|id, _| current.contains(id.as_str()));
        Ok(self.known.values().cloned().collect())
    }

    /// Holds an X.509-SVID in the issuer's cache for every authorized entry, so a workload's first
    /// fetch is served from it; lets go of entries no longer authorized.
    async fn prefetch(&mut self) {
        let Some(issuer) = self.issuer.clone() else {
            return;
        };
        let policy = self.registry.subscribe().borrow().clone();
        let wanted: HashSet<SvidRequest> = policy
            .entries
            .iter()
            .map(|e| SvidRequest {
                spiffe_id: e.spiffe_id.clone(),
                ttl: e.x509_ttl.unwrap_or(self.default_x509_ttl),
                dns_names: e.dns_names.clone(),
            })
            .collect();
        let gone: Vec<SvidRequest> = self
            .held
            .keys()
            .filter(|r| !wanted.contains(*r))
            .cloned()
            .collect();
        for req in gone {
            self.held.remove(&req);
            issuer.release(req);
        }
        for req in wanted {
            if self.held.contains_key(&req) {
                continue;
            }
            if let Ok(rx) = issuer.subscribe(req.clone()).await {
                self.held.insert(req, rx);
            }
        }
    }
}

/// The authority snapshot in server mode: nothing signs here.
fn snapshot(shared: &Arc<Shared>, bundle: &X509Bundle, jwks: &crate::ca::jwt::Jwks) -> CaSnapshot {
    CaSnapshot {
        signer: None,
        remote: Some(Arc::new(ServerSigner(shared.clone()))),
        bundle: Arc::new(bundle.clone()),
        jwt: Arc::new(JwtKeys::public_only(jwks.clone())),
    }
}

fn index(entries: &[Entry]) -> EntryIndex {
    let mut out = EntryIndex::new();
    for e in entries {
        out.entry(e.spiffe_id.clone())
            .or_default()
            .push((e.id.as_str().to_owned(), e.dns_names.clone()));
    }
    out
}

/// The agent SVID must chain to the bundle (on an insecure bootstrap, this is the only check that
/// the SVID and the bundle came from the same server).
fn check_chain(svid: &AgentSvid, bundle: &X509Bundle) -> Result<(), Error> {
    let anchors: Vec<_> = bundle
        .certs()
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    let leaf = svid
        .chain
        .first()
        .ok_or_else(|| Error::Server("empty agent SVID".into()))?;
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| Error::Server(format!("agent SVID: {e}")))?;
    let now = rustls_pki_types::UnixTime::now();
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &svid.chain[1..],
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| {
        Error::Server(format!(
            "the agent SVID does not chain to the server's bundle: {e}"
        ))
    })?;
    Ok(())
}
