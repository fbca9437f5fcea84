//! Byte encodings the agent reads and writes, on the crates already in the tree: lowercase hex
//! (serials, IDs, digests), base64, PEM (`pem`, LF line endings) and lists of DER certificates
//! (`x509-parser`).

use rustls_pki_types::CertificateDer;

/// Lowercase hex, two digits per byte.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A PEM block with `label` (64 columns, LF line endings).
pub fn pem_block(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

/// One certificate as a PEM block.
pub fn pem_cert(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// Splits concatenated DER certificates (as the Workload API carries chains and bundles) into
/// single certificates; `None` unless every byte belongs to a certificate.
pub fn split_der(mut data: &[u8]) -> Option<Vec<CertificateDer<'static>>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(data).ok()?;
        let len = data.len() - rest.len();
        out.push(CertificateDer::from(data[..len].to_vec()));
        data = rest;
    }
    Some(out)
}

/// The URI SANs of a DER certificate (a SPIFFE ID is the only one an SVID has, X5-1).
pub fn uri_sans(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        let block = pem_block("X", &[0u8; 60]);
        assert!(block.starts_with("-----BEGIN X-----\n"), "{block}");
        assert!(block.ends_with("-----END X-----\n"), "{block}");
        assert!(!block.contains('\r'));
        assert!(block.lines().all(|l| l.len() <= 64));
    }

    #[test]
    fn split_der_round_trips_real_certificates() {
        let cert = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            rcgen::CertificateParams::new(vec![name.to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap()
                .der()
                .to_vec()
        };
        let (a, b) = (cert("a.test"), cert("b.test"));
        let joined = [a.clone(), b.clone()].concat();
        let parts = split_der(&joined).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].as_ref(), &a[..]);
        assert_eq!(parts[1].as_ref(), &b[..]);
        assert_eq!(split_der(&[]).unwrap().len(), 0);
        assert!(split_der(&joined[..joined.len() - 1]).is_none());
        assert!(split_der(&[0x30, 0x03, 1, 2, 3]).is_none());
    }
}
