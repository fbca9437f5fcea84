//! The kubelet client: `GET <kubelet>/pods`, over TLS with the service account token (or plain HTTP
//! to a read-only port), and the shared pod-list snapshot that concurrent attestations wait on.
//!
//! Unlike a poll of the whole list per attestation, one request is in flight at a time and every
//! attestation that arrives meanwhile shares its answer; an answer younger than the snapshot TTL is
//! reused outright. A container not in the list yet is looked for in fresh snapshots until a short,
//! configured deadline.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::cgroup::Location;
use super::pods::{Found, PodList, selectors};
use crate::selector::Selector;

/// Largest `/pods` answer accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// How long to wait between fresh snapshots while a container is missing.
const POLL: Duration = Duration::from_millis(250);
/// While the kubelet cannot be asked, a container found in the last good pod list (younger than
/// this) keeps its facts: a container ID never moves to another pod, so only label changes can be
/// missed meanwhile. Containers the agent has not seen in a good list get the kubelet's error.
pub const MAX_STALE: Duration = Duration::from_secs(300);

/// Where and how to reach the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletConfig {
    /// `https://host:10250` (secure port) or `http://host:10255` (read-only port).
    pub url: String,
    /// Bearer token file (re-read for every request), for HTTPS.
    pub token_path: Option<PathBuf>,
    /// CA certificates (PEM) that sign the kubelet's serving certificate; re-read when it changes.
    pub ca_path: Option<PathBuf>,
    /// Name to verify in the kubelet's certificate, when the URL's host is not in it.
    pub server_name: Option<String>,
    /// Accept any kubelet certificate (kubelets with self-signed serving certificates). Loud.
    pub skip_verify: bool,
    /// One request's time limit.
    pub request_timeout: Duration,
}

/// Why the pod list could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("kubelet URL {url:?}: {why}")]
    Url { url: String, why: String },
    #[error("kubelet token {path}: {why}")]
    Token { path: String, why: String },
    #[error("kubelet CA {path}: {why}")]
    Ca { path: String, why: String },
    #[error("cannot reach the kubelet at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("the kubelet at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("the kubelet at {url} sent an unreadable pod list: {why}")]
    Garbage { url: String, why: String },
}

/// A TLS configuration, valid while the CA file is unchanged.
struct TlsCache {
    stamp: (u64, u64, i64, i64),
    config: Arc<rustls::ClientConfig>,
}

/// A kubelet endpoint.
pub struct Kubelet {
    config: KubeletConfig,
    https: bool,
    host: String,
    port: u16,
    tls: Mutex<Option<TlsCache>>,
}

impl Kubelet {
    /// Checks the URL; files are read per request.
    pub fn new(config: KubeletConfig) -> Result<Self, Error> {
        let bad = |why: &str| Error::Url {
            url: config.url.clone(),
            why: why.into(),
        };
        let uri: hyper::Uri = config
            .url
            .parse()
            .map_err(|_| bad("not a URL; expected https://HOST:PORT or http://HOST:PORT"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be https or http")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 10250 } else { 10255 });
        Ok(Self {
            config,
            https,
            host,
            port,
            tls: Mutex::new(None),
        })
    }

    /// One `GET /pods`.
    pub async fn pods(&self) -> Result<PodList, Error> {
        let url = format!("{}/pods", self.config.url.trim_end_matches('/'));
        let unreachable = |why: String| Error::Unreachable {
            url: url.clone(),
            why,
        };
        let token = self.token()?;
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let mut req = hyper::Request::get("/pods")
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(token) = &token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = if self.https {
            let tls = self.tls_config()?;
            let name = self.config.server_name.as_deref().unwrap_or(&self.host);
            let name = ServerName::try_from(name.to_owned()).map_err(|_| Error::Url {
                url: self.config.url.clone(),
                why: format!("{name:?} is not a valid TLS server name"),
            })?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            send(TokioIo::new(stream), req).await
        } else {
            send(TokioIo::new(tcp), req).await
        }
        .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| Error::Garbage {
                url: url.clone(),
                why: format!("reading the body: {e}"),
            })?
            .to_bytes();
        if status != 200 {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned();
            return Err(Error::Status {
                url,
                status,
                body: text,
            });
        }
        serde_json::from_slice::<PodList>(&body).map_err(|e| Error::Garbage {
            url,
            why: e.to_string(),
        })
    }

    fn token(&self) -> Result<Option<String>, Error> {
        let Some(path) = &self.config.token_path else {
            return Ok(None);
        };
        let bad = |why: String| Error::Token {
            path: path.display().to_string(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let token = text.trim();
        if token.is_empty() || token.contains(['\r', '\n']) {
            return Err(bad("empty or not one line".into()));
        }
        Ok(Some(token.to_owned()))
    }

    /// The TLS configuration, rebuilt only when the CA file changes (a rotated service-account CA):
    /// a request costs one `stat` of the CA file.
    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, Error> {
        // What identifies the trust anchors: the CA file's identity and change time (nothing when
        // verification is skipped).
        let (stamp, ca_path) = if self.config.skip_verify {
            ((0, 0, 0, 0), None)
        } else {
            let Some(path) = &self.config.ca_path else {
                return Err(Error::Ca {
                    path: "(none)".into(),
                    why:
                        "HTTPS to the kubelet needs kubelet_ca_path (or skip_kubelet_verification)"
                            .into(),
                });
            };
            let meta = std::fs::metadata(path).map_err(|e| ca_error(path, e.to_string()))?;
            (
                (meta.dev(), meta.ino(), meta.mtime(), meta.mtime_nsec()),
                Some(path),
            )
        };
        let mut cache = self
            .tls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = cache.as_ref()
            && c.stamp == stamp
        {
            return Ok(c.config.clone());
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Ca {
                path: String::new(),
                why: e.to_string(),
            })?;
        let config = Arc::new(match ca_path {
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| ca_error(path, e.to_string()))?;
                let mut roots = rustls::RootCertStore::empty();
                use rustls::pki_types::pem::PemObject;
                for der in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                    let der = der.map_err(|e| ca_error(path, format!("not PEM: {e}")))?;
                    roots
                        .add(der)
                        .map_err(|e| ca_error(path, format!("not a CA certificate: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(ca_error(path, "no PEM certificates in the file".into()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        });
        *cache = Some(TlsCache {
            stamp,
            config: config.clone(),
        });
        Ok(config)
    }

    /// The configured base URL.
    pub fn url(&self) -> &str {
        &self.config.url
    }
}

fn ca_error(path: &std::path::Path, why: String) -> Error {
    Error::Ca {
        path: path.display().to_string(),
        why,
    }
}

async fn send<IO>(
    io: IO,
    req: hyper::Request<Empty<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// `skip_kubelet_verification`: accepts any certificate but still checks the handshake signature.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why a container could not be resolved to selectors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error(transparent)]
    Kubelet(#[from] Error),
    #[error(
        "container {container} of pod {pod} is not in the kubelet's pod list after {waited:?}; it may still be starting (retry), or it is not a Kubernetes container"
    )]
    NotFound {
        pod: String,
        container: String,
        waited: Duration,
    },
    #[error("container {container} appears in several pods ({pods}); refusing to guess")]
    Ambiguous { container: String, pods: String },
}

struct Snapshot {
    /// When the request that produced it was sent.
    requested: Instant,
    pods: PodList,
}

enum Last {
    Ok(Arc<Snapshot>),
    Err { requested: Instant, error: Error },
}

/// The shared pod-list snapshot.
pub struct PodCache {
    kubelet: Kubelet,
    /// Snapshots younger than this are reused.
    ttl: Duration,
    /// How long a missing container is waited for.
    wait: Duration,
    /// Held while a request is in flight, so concurrent lookups share it.
    last: tokio::sync::Mutex<Option<Last>>,
    /// The latest good snapshot, for lookups that must not wait.
    latest: RwLock<Option<Arc<Snapshot>>>,
    requests: AtomicU64,
}

impl PodCache {
    pub fn new(kubelet: Kubelet, ttl: Duration, wait: Duration) -> Self {
        Self {
            kubelet,
            ttl,
            wait,
            last: tokio::sync::Mutex::new(None),
            latest: RwLock::new(None),
            requests: AtomicU64::new(0),
        }
    }

    /// Requests sent to the kubelet so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// The selectors of `location` from a fresh snapshot, without waiting; `None` when a request is
    /// needed.
    pub fn cached(&self, location: &Location) -> Option<Result<Vec<Selector>, LookupError>> {
        let latest = self.latest.read().ok()?.clone()?;
        if latest.requested.elapsed() >= self.ttl {
            return None;
        }
        match latest.pods.find(location) {
            Found::Container(pod, status) => Some(Ok(selectors(pod, status))),
            Found::Ambiguous(pods) => Some(Err(ambiguous(location, pods))),
            Found::Missing => None,
        }
    }

    /// The selectors of `location`, waiting for fresh snapshots up to the configured deadline while
    /// the container is missing. When the kubelet cannot be asked, the last good pod list serves
    /// containers it lists, up to [`MAX_STALE`].
    pub async fn lookup(&self, location: &Location) -> Result<Vec<Selector>, LookupError> {
        let error = match self.lookup_fresh(location).await {
            Err(LookupError::Kubelet(e)) => e,
            other => return other,
        };
        let latest = self.latest.read().ok().and_then(|l| l.clone());
        if let Some(latest) = latest
            && latest.requested.elapsed() < MAX_STALE
            && let Found::Container(pod, status) = latest.pods.find(location)
        {
            tracing::warn!(
                container = %location.container_id,
                age = ?latest.requested.elapsed(),
                %error,
                "kubelet unavailable; using the pod facts of its last good answer for this container"
            );
            return Ok(selectors(pod, status));
        }
        Err(LookupError::Kubelet(error))
    }

    async fn lookup_fresh(&self, location: &Location) -> Result<Vec<Selector>, LookupError> {
        let start = Instant::now();
        let deadline = start + self.wait;
        let mut since = start.checked_sub(self.ttl).unwrap_or(start);
        loop {
            let snapshot =
                match tokio::time::timeout_at(deadline + POLL, self.snapshot_since(since)).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(LookupError::Kubelet(Error::Unreachable {
                            url: self.kubelet.url().to_owned(),
                            why: format!("no answer within {:?}", self.wait + POLL),
                        }));
                    }
                };
            match snapshot.pods.find(location) {
                Found::Container(pod, status) => return Ok(selectors(pod, status)),
                Found::Ambiguous(pods) => return Err(ambiguous(location, pods)),
                Found::Missing => {}
            }
            if Instant::now() + POLL > deadline {
                return Err(LookupError::NotFound {
                    pod: location
                        .pod_uid
                        .clone()
                        .unwrap_or_else(|| "(unknown: cgroup namespace)".into()),
                    container: location.container_id.clone(),
                    waited: start.elapsed(),
                });
            }
            tokio::time::sleep(POLL).await;
            since = Instant::now();
        }
    }

    /// A snapshot requested at or after `since`: the last one if it qualifies (or the error it
    /// ended in), else a new request. One request at a time; waiters share its answer.
    async fn snapshot_since(&self, since: Instant) -> Result<Arc<Snapshot>, Error> {
        let mut last = self.last.lock().await;
        match &*last {
            Some(Last::Ok(s)) if s.requested >= since => return Ok(s.clone()),
            Some(Last::Err { requested, error }) if *requested >= since => {
                return Err(error.clone());
            }
            _ => {}
        }
        let requested = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let result =
            match tokio::time::timeout(self.kubelet.config.request_timeout, self.kubelet.pods())
                .await
            {
                Ok(r) => r,
                Err(_) => Err(Error::Unreachable {
                    url: self.kubelet.url().to_owned(),
                    why: format!("no answer within {:?}", self.kubelet.config.request_timeout),
                }),
            };
        match result {
            Ok(pods) => {
                let snapshot = Arc::new(Snapshot { requested, pods });
                *last = Some(Last::Ok(snapshot.clone()));
                if let Ok(mut latest) = self.latest.write() {
                    *latest = Some(snapshot.clone());
                }
                Ok(snapshot)
            }
            Err(error) => {
                tracing::warn!(%error, "kubelet pod list unavailable");
                *last = Some(Last::Err {
                    requested,
                    error: error.clone(),
                });
                Err(error)
            }
        }
    }
}

fn ambiguous(location: &Location, pods: Vec<String>) -> LookupError {
    LookupError::Ambiguous {
        container: location.container_id.clone(),
        pods: pods.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn config(url: &str, ca: Option<PathBuf>) -> KubeletConfig {
        KubeletConfig {
            url: url.into(),
            token_path: None,
            ca_path: ca,
            server_name: None,
            skip_verify: false,
            request_timeout: Duration::from_secs(1),
        }
    }

    /// The CA file is re-read when it changes (a rotated service-account CA), and only then.
    #[test]
    fn ca_is_reread_when_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        std::fs::write(&path, ca_pem()).unwrap();
        let k = Kubelet::new(config("https://127.0.0.1:10250", Some(path.clone()))).unwrap();
        let first = k.tls_config().unwrap();
        assert!(
            Arc::ptr_eq(&first, &k.tls_config().unwrap()),
            "unchanged: reused"
        );
        // A new file in its place (as a Secret/ConfigMap volume update does: a new inode).
        let tmp = dir.path().join("ca.new");
        std::fs::write(&tmp, ca_pem()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &k.tls_config().unwrap()),
            "changed: re-read"
        );
        std::fs::write(&path, "not a certificate").unwrap();
        let err = k.tls_config().unwrap_err().to_string();
        assert!(err.contains("ca.crt"), "{err}");
    }

    #[test]
    fn urls_are_checked() {
        for (url, want) in [
            ("ftp://node:1", "scheme"),
            ("not a url", "not a URL"),
            ("https://", "not a URL"),
        ] {
            let err = Kubelet::new(config(url, None)).err().unwrap().to_string();
            assert!(err.contains(want) && err.contains(url), "{url}: {err}");
        }
        let k = Kubelet::new(config("http://10.0.0.1", None)).unwrap();
        assert_eq!((k.https, k.port), (false, 10255));
    }
}
