//! The kubelet client: `GET <kubelet>/pods`, over TLS with the service account token (or plain HTTP
//! to a read-only port). The shared pod-list snapshot that attestations wait on is `pod_cache.rs`.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::pods::PodList;

/// Largest `/pods` answer accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;

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
    pub(super) config: KubeletConfig,
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
