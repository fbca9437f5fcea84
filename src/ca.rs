//! The trust domain's signing authority: root/intermediate lifecycle, leaf minting, bundle.
//!
//! Keys are minted locally: no network round trip per SVID. The authority knows nothing about
//! processes; it signs what the issuer asks for and publishes its bundle.

pub mod authority;
pub mod bundle;
pub mod jwt;
pub mod mint;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use authority::Authority;
pub use bundle::X509Bundle;
pub use jwt::MAX_JWT_TTL;
pub use mint::{Signer, SvidRequest, X509Svid};

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
    #[error("the signing CA has expired; no SVID can be minted")]
    SignerExpired,
}

/// What the authority publishes: who signs now, and the trust domain's bundle.
#[derive(Debug, Clone)]
pub struct CaSnapshot {
    /// The CA that signs new SVIDs.
    pub signer: Arc<Signer>,
    /// The trust domain's CA certificates: the signing root, a prepared next root and retired roots
    /// that may still have valid leaves below them (TB-1, TB-3).
    pub bundle: Arc<X509Bundle>,
    /// JWT-SVID signing keys and the trust domain's JWT bundle.
    pub jwt: Arc<jwt::JwtKeys>,
}
