//! The trust domain's signing authority: root/intermediate lifecycle, leaf minting, bundle.
//!
//! Keys are minted locally: no network round trip per SVID. The authority knows nothing about
//! processes; it signs what the issuer asks for and publishes its bundle.

pub mod authority;
pub mod bundle;
pub mod jwt;
mod leaf;
pub mod mint;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use authority::Authority;
pub use bundle::X509Bundle;
pub use jwt::MAX_JWT_TTL;
pub use mint::{Signer, SvidRequest, X509Svid};

use crate::spiffe_id::SpiffeId;

/// The shortest X.509-SVID lifetime accepted.
pub const MIN_X509_TTL: Duration = Duration::from_secs(60);
/// The shortest JWT-SVID lifetime accepted.
pub const MIN_JWT_TTL: Duration = Duration::from_secs(30);

/// Where the signing authority comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorityConfig {
    /// A root generated once and kept in the data directory.
    SelfSigned { ca_ttl: Duration },
    /// A root certificate and key from files; the agent mints and rotates its own intermediate.
    Upstream {
        cert_path: PathBuf,
        key_path: PathBuf,
        intermediate_ttl: Duration,
    },
    /// A SPIRE server keeps the keys and signs every SVID; this agent attests to it as a node.
    Spire(SpireConfig),
}

/// `[authority] mode = "spire"`: where the server is and how this node proves itself to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpireConfig {
    /// `host:port` of the server's agent API.
    pub server_address: String,
    /// The server's SPIFFE ID, checked in its certificate (default `spiffe://<td>/spire/server`).
    pub server_id: SpiffeId,
    /// PEM bundle that verifies the server on first contact.
    pub trust_bundle_path: Option<PathBuf>,
    /// First contact without verifying the server (the bundle is then taken from it).
    pub insecure_bootstrap: bool,
    /// Node attestation.
    pub attestation: NodeAttestation,
    /// How often authorized entries and bundles are fetched.
    pub sync_interval: Duration,
}

/// How this node attests to the SPIRE server.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeAttestation {
    /// A single-use token made with `spire-server token generate`.
    JoinToken(String),
    /// Proof of possession of a certificate's key (`x509pop`): the chain, leaf first, and the key
    /// (PEM; PKCS#8, SEC1 or PKCS#1).
    X509Pop {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    /// A projected service account token (`k8s_psat`), read afresh at each attestation.
    K8sPsat {
        cluster: String,
        token_path: PathBuf,
    },
}

impl NodeAttestation {
    /// SPIRE's name of the attestor.
    pub fn kind(&self) -> &'static str {
        match self {
            NodeAttestation::JoinToken(_) => "join_token",
            NodeAttestation::X509Pop { .. } => "x509pop",
            NodeAttestation::K8sPsat { .. } => "k8s_psat",
        }
    }
}

impl fmt::Debug for NodeAttestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAttestation::JoinToken(_) => f.write_str("JoinToken([redacted])"),
            NodeAttestation::X509Pop {
                cert_path,
                key_path,
            } => f
                .debug_struct("X509Pop")
                .field("cert_path", cert_path)
                .field("key_path", key_path)
                .finish(),
            NodeAttestation::K8sPsat {
                cluster,
                token_path,
            } => f
                .debug_struct("K8sPsat")
                .field("cluster", cluster)
                .field("token_path", token_path)
                .finish(),
        }
    }
}

/// A future returned by a [`RemoteSigner`].
pub type SignFuture<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send>>;

/// An authority that signs elsewhere (the SPIRE server): the issuer asks it instead of minting.
pub trait RemoteSigner: Send + Sync + fmt::Debug {
    /// A new X.509-SVID for `req` (key generated here, certificate signed by the server).
    fn x509(&self, req: SvidRequest) -> SignFuture<X509Svid>;
    /// A new JWT-SVID for `spiffe_id` and `audiences`.
    fn jwt(&self, spiffe_id: SpiffeId, audiences: Vec<String>) -> SignFuture<jwt::SignedJwt>;
}

/// Errors of the signing authority.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[source] rcgen::Error),
    #[error("cannot parse certificate: {0}")]
    BadCertificate(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    BadFile { path: String, why: String },
    #[error("aws-lc could not generate or serialise a P-256 key")]
    KeyGeneration,
    #[error("the signing CA has expired; no SVID can be minted")]
    SignerExpired,
    #[error("SPIRE server: {0}")]
    Server(String),
}

/// What the authority publishes: who signs now, and the trust domain's bundle.
#[derive(Debug, Clone)]
pub struct CaSnapshot {
    /// The CA that signs new SVIDs here (`None` when a SPIRE server signs).
    pub signer: Option<Arc<Signer>>,
    /// The SPIRE server, when it signs.
    pub remote: Option<Arc<dyn RemoteSigner>>,
    /// The trust domain's CA certificates: the signing root, a prepared next root and retired roots
    /// that may still have valid leaves below them (TB-1, TB-3).
    pub bundle: Arc<X509Bundle>,
    /// JWT-SVID signing keys and the trust domain's JWT bundle.
    pub jwt: Arc<jwt::JwtKeys>,
}
