//! OpenID Connect discovery for JWT-SVIDs (`[oidc]`): relying parties that only speak OIDC (cloud
//! STS services, go-oidc, PyJWT) verify JWT-SVIDs from the discovery document alone.
//!
//! - `GET /.well-known/openid-configuration`: `issuer`, `jwks_uri` (`<issuer>/keys`),
//!   `authorization_endpoint` (none: this issuer has no interactive login; the field is required by
//!   the spec, so it is present and empty, as SPIRE's discovery provider does), `response_types_supported`
//!   (`id_token`), `subject_types_supported` (`public`), `id_token_signing_alg_values_supported` (the
//!   algorithms of the published keys: ES256, RS256 with `jwt_key_type = "rsa-2048"`).
//! - `GET /keys`: the trust domain's JWT signing keys as a JWK Set with `kid`, `alg` and
//!   `use: "sig"` — the keys the JWT bundle publishes, on the same schedule (a next key appears before
//!   it signs; a retired key stays until every token it signed has expired).
//!
//! Responses carry `Cache-Control: public, max-age=300` and an `ETag`; `If-None-Match` gets `304`.
//! Plain HTTP/1.1 (behind a TLS-terminating ingress), or HTTPS with `cert_path`/`key_path`.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ca::CaSnapshot;

/// How long a relying party may cache an answer.
const MAX_AGE: &str = "public, max-age=300";
/// A connection that has not finished a request by then is dropped.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// Why discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr} for OIDC discovery: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("oidc TLS files: {0}")]
    Tls(String),
}

/// Binds the discovery listener (and loads its TLS files).
pub(crate) async fn bind(
    config: &crate::config::OidcConfig,
) -> Result<(TcpListener, Option<tokio_rustls::TlsAcceptor>), Error> {
    let listener = TcpListener::bind(config.address)
        .await
        .map_err(|source| Error::Bind {
            addr: config.address,
            source,
        })?;
    let tls = match &config.tls {
        None => None,
        Some((cert, key)) => Some(acceptor(cert, key)?),
    };
    Ok((listener, tls))
}

fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, Error> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    crate::atomic_file::check_key_file(key, false)
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves discovery until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    issuer: String,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let issuer: Arc<str> = issuer.into();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "oidc accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = crate::shutdown::signalled(&mut shutdown) => return,
        };
        let (issuer, ca, tls) = (issuer.clone(), ca.clone(), tls.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (issuer, ca) = (issuer.clone(), ca.clone());
                async move { Ok::<_, Infallible>(answer(&req, &issuer, &ca)) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(tls) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            })
            .await;
        });
    }
}

fn answer(
    req: &Request<Incoming>,
    issuer: &str,
    ca: &watch::Receiver<Arc<CaSnapshot>>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
            None,
        );
    }
    let body = match req.uri().path() {
        "/.well-known/openid-configuration" => discovery(issuer, ca.borrow().jwt.jwks_json()),
        "/keys" => jwks(ca.borrow().jwt.jwks_json()),
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found: /.well-known/openid-configuration and /keys are served\n".into(),
                None,
            );
        }
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes());
    let etag = format!("\"{}\"", crate::encoding::hex(&digest.as_ref()[..12]));
    let not_modified = req
        .headers()
        .get(hyper::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if not_modified {
        return reply(
            StatusCode::NOT_MODIFIED,
            "application/json",
            String::new(),
            Some(&etag),
        );
    }
    reply(StatusCode::OK, "application/json", body, Some(&etag))
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: String,
    etag: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    if let Some(etag) = etag.and_then(|e| hyper::header::HeaderValue::from_str(e).ok()) {
        h.insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static(MAX_AGE),
        );
        h.insert(hyper::header::ETAG, etag);
    }
    resp
}

/// The discovery document; the signing algorithms are those of the published keys.
fn discovery(issuer: &str, bundle: &[u8]) -> String {
    let keys: serde_json::Value = serde_json::from_str(&jwks(bundle)).unwrap_or_default();
    let mut algs: Vec<&str> = keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["alg"].as_str())
        .collect();
    algs.sort_unstable();
    algs.dedup();
    if algs.is_empty() {
        algs.push("ES256");
    }
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/keys"),
        "authorization_endpoint": "",
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
    })
    .to_string()
}

/// The JWT bundle as an OIDC JWK Set: every key gets `use: "sig"` and its `alg`.
fn jwks(bundle: &[u8]) -> String {
    let mut doc: serde_json::Value =
        serde_json::from_slice(bundle).unwrap_or_else(|_| serde_json::json!({ "keys": [] }));
    let keys: Vec<serde_json::Value> = doc["keys"]
        .as_array_mut()
        .map(std::mem::take)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|mut k| {
            let alg = match (k["kty"].as_str(), k["crv"].as_str()) {
                (Some("EC"), Some("P-256")) => "ES256",
                (Some("EC"), Some("P-384")) => "ES384",
                (Some("RSA"), _) => "RS256",
                _ => return None,
            };
            k["use"] = "sig".into();
            k["alg"] = alg.into();
            Some(k)
        })
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwks_for_oidc_sets_use_and_alg() {
        let bundle = br#"{"keys":[{"kty":"EC","crv":"P-256","x":"a","y":"b","kid":"k1","use":"jwt-svid"},{"kty":"OKP","kid":"x"}]}"#;
        let v: serde_json::Value = serde_json::from_str(&jwks(bundle)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"keys": [{"kty":"EC","crv":"P-256","x":"a","y":"b","kid":"k1","use":"sig","alg":"ES256"}]})
        );
        let d: serde_json::Value =
            serde_json::from_str(&discovery("https://o.example", bundle)).unwrap();
        assert_eq!(d["jwks_uri"], "https://o.example/keys");
        assert_eq!(
            d["id_token_signing_alg_values_supported"],
            serde_json::json!(["ES256"])
        );
    }
}
