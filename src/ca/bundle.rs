//! X.509 trust bundles: the CA certificates of one trust domain.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The CA certificates of one trust domain, DER, in a stable order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct X509Bundle {
    certs: Vec<CertificateDer<'static>>,
    /// The certificates concatenated, computed once: every Workload API message carries it.
    der: Vec<u8>,
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
        let der = certs.iter().flat_map(|c| c.iter().copied()).collect();
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
        self.der.clone()
    }

    /// The concatenated DER, borrowed.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// PEM text, one CERTIFICATE block per certificate.
    pub fn to_pem(&self) -> String {
        self.certs.iter().map(|c| pem_cert(c)).collect()
    }
}

/// One certificate as a PEM block.
pub fn pem_cert(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// A PEM block with the given label.
pub fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63] as char);
        out.push(ALPHABET[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Splits concatenated DER certificates (as in a Workload API bundle) into single certificates.
pub fn split_der(mut data: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let len = der_len(data)?;
        if len > data.len() {
            return None;
        }
        out.push(CertificateDer::from(data[..len].to_vec()));
        data = &data[len..];
    }
    Some(out)
}

/// Total length (header + content) of the DER SEQUENCE at the start of `data`.
fn der_len(data: &[u8]) -> Option<usize> {
    if data.len() < 2 || data[0] != 0x30 {
        return None;
    }
    let first = data[1] as usize;
    if first < 0x80 {
        return Some(2 + first);
    }
    let n = first & 0x7f;
    if n == 0 || n > 4 || data.len() < 2 + n {
        return None;
    }
    let mut len = 0usize;
    for b in &data[2..2 + n] {
        len = (len << 8) | *b as usize;
    }
    Some(2 + n + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn split_der_round_trips() {
        let a = vec![0x30, 0x03, 1, 2, 3];
        let mut b = vec![0x30, 0x81, 0x80];
        b.extend(std::iter::repeat_n(7u8, 0x80));
        let joined = [a.clone(), b.clone()].concat();
        let parts = split_der(&joined).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].as_ref(), &a[..]);
        assert_eq!(parts[1].as_ref(), &b[..]);
        assert!(split_der(&[0x30, 0x05, 1]).is_none());
    }
}
