//! X.509 trust bundles: the CA certificates of one trust domain.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The CA certificates of one trust domain, DER, in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct X509Bundle {
    certs: Vec<CertificateDer<'static>>,
    /// The certificates concatenated, computed once: every Workload API message carries it.
    der: bytes::Bytes,
}

/// Certificates concatenated in order, as the Workload API carries a chain or a bundle.
pub(crate) fn concat(certs: &[CertificateDer<'static>]) -> bytes::Bytes {
    certs
        .iter()
        .flat_map(|c| c.iter().copied())
        .collect::<Vec<u8>>()
        .into()
}

/// Why a bundle file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading bundle {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bundle {path} is not PEM with CERTIFICATE blocks: {why}")]
    Pem { path: String, why: String },
    #[error("bundle {path} holds no certificate")]
    Empty { path: String },
    #[error(
        "bundle {path}: certificate {index} is not a CA certificate (X5-11: bundles hold CA certificates only)"
    )]
    NotCa { path: String, index: usize },
}

impl X509Bundle {
    /// A bundle of the given certificates.
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Self {
        let der = concat(&certs);
        Self { certs, der }
    }

    /// Reads a PEM file of CA certificates.
    pub fn from_pem_file(path: &Path) -> Result<Self, Error> {
        let p = path.display().to_string();
        let data = std::fs::read(path).map_err(|source| Error::Read {
            path: p.clone(),
            source,
        })?;
        let certs = CertificateDer::pem_slice_iter(&data)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Pem {
                path: p.clone(),
                why: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(Error::Empty { path: p });
        }
        for (index, cert) in certs.iter().enumerate() {
            let is_ca = x509_parser::parse_x509_certificate(cert)
                .ok()
                .and_then(|(_, c)| c.basic_constraints().ok().flatten().map(|bc| bc.value.ca))
                .unwrap_or(false);
            if !is_ca {
                return Err(Error::NotCa { path: p, index });
            }
        }
        Ok(Self::new(certs))
    }

    /// The certificates.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// DER certificates concatenated, as the Workload API carries bundles (X5-11).
    pub fn concat_der(&self) -> Vec<u8> {
        self.der.to_vec()
    }

    /// The concatenated DER, shared (no copy): what a message of every stream carries.
    pub fn der_shared(&self) -> bytes::Bytes {
        self.der.clone()
    }

    /// PEM text, one CERTIFICATE block per certificate.
    pub fn to_pem(&self) -> String {
        self.certs
            .iter()
            .map(|c| crate::encoding::pem_cert(c))
            .collect()
    }
}
