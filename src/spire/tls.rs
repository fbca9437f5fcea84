//! TLS to the SPIRE server: the server is checked as SPIRE's agent checks it — its X.509-SVID must
//! chain to the trust domain's bundle and name the server's SPIFFE ID (no DNS name is involved) —
//! and, once attested, this node presents its agent SVID.

use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

/// How the server's certificate is checked.
#[derive(Clone, Debug)]
pub(super) enum Trust {
    /// Chains to one of these roots and names `server_id`.
    Bundle {
        roots: Vec<CertificateDer<'static>>,
        server_id: String,
    },
    /// Not checked (first contact with `insecure_bootstrap = true`).
    Insecure,
}

#[derive(Debug)]
struct Verifier {
    trust: Trust,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (roots, server_id) = match &self.trust {
            Trust::Insecure => return Ok(ServerCertVerified::assertion()),
            Trust::Bundle { roots, server_id } => (roots, server_id),
        };
        let anchors: Vec<_> = roots
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("server certificate: {e}")))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::General(format!(
                "the server's certificate does not chain to the trust bundle: {e}"
            ))
        })?;
        let ids = crate::encoding::uri_sans(end_entity).map_err(rustls::Error::General)?;
        if ids.iter().any(|id| id == server_id) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server presented {ids:?}, not {server_id}"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate: the agent SVID chain and its key (PKCS#8 DER).
pub(super) struct ClientCert {
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key_pkcs8: Vec<u8>,
}

/// A lazily connecting gRPC channel to `address` (`host:port`), TLS with `trust`, presenting
/// `client` when given. Go's gRPC server insists on ALPN `h2`.
pub(super) fn channel(
    address: &str,
    trust: Trust,
    client: Option<ClientCert>,
) -> Result<Channel, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { trust, provider }));
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(c.chain, PrivateKeyDer::Pkcs8(c.key_pkcs8.into()))
            .map_err(|e| format!("agent SVID: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let address = address.to_owned();
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("server address {address:?}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(30))
        .http2_keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_while_idle(false);
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let (connector, address) = (connector.clone(), address.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&address).await?;
                let _ = tcp.set_nodelay(true);
                // The name is not checked (the verifier checks the SPIFFE ID); SNI carries the host.
                let host = address
                    .rsplit_once(':')
                    .map_or(address.as_str(), |(h, _)| h)
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned();
                // An IP or DNS name as given; anything else gets a fixed SNI name.
                let name = ServerName::try_from(host).or_else(|_| {
                    ServerName::try_from("spire-server")
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                })?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        })),
    )
}
