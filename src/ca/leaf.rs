//! An X.509-SVID leaf written as DER directly (SPEC.md §5), for a signer with a P-256 key.
//!
//! A leaf differs from the next one only in its serial, validity, SANs, public key and the two
//! values derived from them (the subject key identifier, the signature). Everything else — the
//! signature algorithm, the issuer's name exactly as its certificate carries it, the authority key
//! identifier, KeyUsage, ExtendedKeyUsage and BasicConstraints — is fixed per signer and kept here
//! as bytes, so a mint writes a few hundred bytes into one buffer and signs them. rcgen wrote the
//! same bytes through a general encoder (the issuer's name parsed and encoded again, the authority
//! key identifier copied, every extension in its own buffer) for about an eighth of a mint's time;
//! `mint.rs` tests that the two give the same to-be-signed bytes for the same inputs.

use std::time::SystemTime;

use aws_lc_rs::digest;
use rcgen::{PKCS_ECDSA_P256_SHA256, SigningKey};
use time::OffsetDateTime;

use super::Error;

/// AlgorithmIdentifier ecdsa-with-SHA256 (RFC 5758 §3.2: no parameters).
const ECDSA_WITH_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
/// SubjectPublicKeyInfo of a P-256 key up to its 65-byte uncompressed point: id-ecPublicKey,
/// prime256v1, BIT STRING of 66 bytes (no unused bits).
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// Length of an uncompressed P-256 point.
const P256_POINT_LEN: usize = 65;
/// X5-3: KeyUsage, critical, digitalSignature only.
const KEY_USAGE: &[u8] = &[
    0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x07, 0x80,
];
/// X5-4: ExtendedKeyUsage serverAuth and clientAuth.
const EXTENDED_KEY_USAGE: &[u8] = &[
    0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x25, 0x04, 0x16, 0x30, 0x14, 0x06, 0x08, 0x2b, 0x06, 0x01,
    0x05, 0x05, 0x07, 0x03, 0x01, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02,
];
/// X5-2: BasicConstraints, critical, cA absent (false).
const BASIC_CONSTRAINTS: &[u8] = &[
    0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00,
];
/// SubjectKeyIdentifier's OID, not critical, and the OCTET STRING headers around a 20-byte id.
const SKI_PREFIX: &[u8] = &[
    0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x0e, 0x04, 0x16, 0x04, 0x14,
];
/// SubjectAltName's OID, critical (X5-5: the subject is empty).
const SAN_OID_CRITICAL: &[u8] = &[0x06, 0x03, 0x55, 0x1d, 0x11, 0x01, 0x01, 0xff];
/// Version v3, explicitly tagged.
const VERSION_V3: &[u8] = &[0xa0, 0x03, 0x02, 0x01, 0x02];
/// An empty subject Name (X5-5).
const EMPTY_NAME: &[u8] = &[0x30, 0x00];
/// Key identifiers are the first 20 bytes of a SHA-256 (as rcgen derives them).
const KEY_ID_LEN: usize = 20;

/// What every leaf of one signer shares.
pub(super) struct LeafTemplate {
    /// The issuer's subject Name, byte for byte as its certificate carries it.
    issuer: Vec<u8>,
    /// The AuthorityKeyIdentifier extension, whole.
    authority_key_id: Vec<u8>,
}

/// A leaf's varying parts.
pub(super) struct LeafFields<'a> {
    pub serial: &'a [u8; 16],
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub uri: &'a str,
    pub dns_names: &'a [String],
    /// The leaf key's uncompressed P-256 point.
    pub public_point: &'a [u8],
}

impl LeafTemplate {
    /// The template for a signer, or `None` when its key is not P-256 (rcgen then writes leaves).
    /// `subject` is the signer certificate's subject Name (DER); `subject_key_id` its
    /// SubjectKeyIdentifier when it has one (else the id is derived from the key, as rcgen does).
    pub(super) fn new(
        key: &rcgen::KeyPair,
        subject: &[u8],
        subject_key_id: Option<&[u8]>,
    ) -> Option<Self> {
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return None;
        }
        let derived;
        let key_id = match subject_key_id {
            Some(id) => id,
            None => {
                derived = key_identifier(&rcgen::PublicKeyData::subject_public_key_info(key));
                &derived[..]
            }
        };
        // Extension { authorityKeyIdentifier, OCTET STRING { SEQUENCE { [0] keyIdentifier } } }
        let mut inner = Vec::with_capacity(key_id.len() + 4);
        tlv(&mut inner, 0x80, key_id);
        let mut seq = Vec::with_capacity(inner.len() + 4);
        tlv(&mut seq, 0x30, &inner);
        let mut body = vec![0x06, 0x03, 0x55, 0x1d, 0x23];
        tlv(&mut body, 0x04, &seq);
        let mut authority_key_id = Vec::with_capacity(body.len() + 4);
        tlv(&mut authority_key_id, 0x30, &body);
        Some(Self {
            issuer: subject.to_vec(),
            authority_key_id,
        })
    }

    /// The leaf's TBSCertificate (RFC 5280 §4.1), in rcgen's extension order: AKI, SAN, KU, EKU,
    /// SKI, BasicConstraints.
    pub(super) fn tbs(&self, f: &LeafFields<'_>) -> Result<Vec<u8>, Error> {
        if f.public_point.len() != P256_POINT_LEN {
            return Err(Error::KeyGeneration);
        }
        let mut out = Vec::with_capacity(600 + f.uri.len() + f.dns_names.len() * 64);
        let tbs = open(&mut out, 0x30);
        out.extend_from_slice(VERSION_V3);
        out.extend_from_slice(&[0x02, 0x10]);
        out.extend_from_slice(f.serial);
        out.extend_from_slice(ECDSA_WITH_SHA256);
        out.extend_from_slice(&self.issuer);
        let validity = open(&mut out, 0x30);
        time(&mut out, f.not_before)?;
        time(&mut out, f.not_after)?;
        close(&mut out, validity);
        out.extend_from_slice(EMPTY_NAME);
        let spki = out.len();
        out.extend_from_slice(P256_SPKI_PREFIX);
        out.extend_from_slice(f.public_point);
        let subject_key_id = key_identifier(&out[spki..]);
        let explicit = open(&mut out, 0xa3);
        let extensions = open(&mut out, 0x30);
        out.extend_from_slice(&self.authority_key_id);
        let san = open(&mut out, 0x30);
        out.extend_from_slice(SAN_OID_CRITICAL);
        let octets = open(&mut out, 0x04);
        let names = open(&mut out, 0x30);
        tlv(&mut out, 0x86, ia5(f.uri)?);
        for name in f.dns_names {
            tlv(&mut out, 0x82, ia5(name)?);
        }
        close(&mut out, names);
        close(&mut out, octets);
        close(&mut out, san);
        out.extend_from_slice(KEY_USAGE);
        out.extend_from_slice(EXTENDED_KEY_USAGE);
        out.extend_from_slice(SKI_PREFIX);
        out.extend_from_slice(&subject_key_id);
        out.extend_from_slice(BASIC_CONSTRAINTS);
        close(&mut out, extensions);
        close(&mut out, explicit);
        close(&mut out, tbs);
        Ok(out)
    }

    /// The whole certificate: `tbs`, the algorithm, and `key`'s signature over `tbs`.
    pub(super) fn sign(tbs: Vec<u8>, key: &rcgen::KeyPair) -> Result<Vec<u8>, Error> {
        let signature = key.sign(&tbs).map_err(Error::Rcgen)?;
        let mut out =
            Vec::with_capacity(tbs.len() + ECDSA_WITH_SHA256.len() + signature.len() + 12);
        let cert = open(&mut out, 0x30);
        out.extend_from_slice(&tbs);
        out.extend_from_slice(ECDSA_WITH_SHA256);
        let bits = open(&mut out, 0x03);
        out.push(0);
        out.extend_from_slice(&signature);
        close(&mut out, bits);
        close(&mut out, cert);
        Ok(out)
    }
}

/// SHA-256 of `spki`, first 20 bytes.
fn key_identifier(spki: &[u8]) -> [u8; KEY_ID_LEN] {
    let digest = digest::digest(&digest::SHA256, spki);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
    id
}

/// `s` as an IA5String's bytes: ASCII only, as a URI or DNS SAN must be.
fn ia5(s: &str) -> Result<&[u8], Error> {
    if s.is_ascii() {
        Ok(s.as_bytes())
    } else {
        Err(Error::Rcgen(rcgen::Error::InvalidAsn1String(
            rcgen::InvalidAsn1String::Ia5String(s.to_owned()),
        )))
    }
}

/// A Time (RFC 5280 §4.1.2.5): UTCTime for 1950–2049, GeneralizedTime otherwise; whole seconds, UTC.
fn time(out: &mut Vec<u8>, t: SystemTime) -> Result<(), Error> {
    let t = OffsetDateTime::from(t);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return Err(Error::BadCertificate(format!(
            "validity year {year} cannot be written"
        )));
    }
    let two = |out: &mut Vec<u8>, v: u8| {
        out.push(b'0' + v / 10);
        out.push(b'0' + v % 10);
    };
    if (1950..2050).contains(&year) {
        out.extend_from_slice(&[0x17, 13]);
        two(out, (year % 100) as u8);
    } else {
        out.extend_from_slice(&[0x18, 15]);
        two(out, (year / 100) as u8);
        two(out, (year % 100) as u8);
    }
    two(out, u8::from(t.month()));
    two(out, t.day());
    two(out, t.hour());
    two(out, t.minute());
    two(out, t.second());
    out.push(b'Z');
    Ok(())
}

/// Writes `tag`, `content`'s DER length and `content`.
fn tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    length(out, content.len());
    out.extend_from_slice(content);
}

/// Starts a constructed value: its tag now, its length when `close` knows it.
fn open(out: &mut Vec<u8>, tag: u8) -> usize {
    out.push(tag);
    out.len()
}

/// Ends the value `open` started at `at`: inserts its DER length before its content.
fn close(out: &mut Vec<u8>, at: usize) {
    let mut len = Vec::with_capacity(3);
    length(&mut len, out.len() - at);
    out.splice(at..at, len);
}

/// A DER length: short form under 128, else the fewest big-endian bytes.
fn length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_minimal() {
        for (len, want) in [
            (0usize, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x81, 0x80]),
            (255, vec![0x81, 0xff]),
            (256, vec![0x82, 0x01, 0x00]),
            (65_536, vec![0x83, 0x01, 0x00, 0x00]),
        ] {
            let mut out = Vec::new();
            length(&mut out, len);
            assert_eq!(out, want, "length {len}");
        }
    }

    #[test]
    fn close_inserts_the_length_of_what_was_written() {
        let mut out = Vec::new();
        let at = open(&mut out, 0x30);
        out.extend_from_slice(&[7u8; 200]);
        close(&mut out, at);
        assert_eq!(&out[..3], &[0x30, 0x81, 200]);
        assert_eq!(out.len(), 203);
    }

    #[test]
    fn times_switch_to_generalized_in_2050() {
        let at = |secs: i64| {
            let t = OffsetDateTime::from_unix_timestamp(secs).unwrap();
            let mut out = Vec::new();
            time(&mut out, t.into()).unwrap();
            out
        };
        // 2049-12-31T23:59:59Z and 2050-01-01T00:00:00Z
        assert_eq!(at(2_524_607_999), b"\x17\x0d491231235959Z");
        assert_eq!(at(2_524_608_000), b"\x18\x0f20500101000000Z");
    }

    #[test]
    fn a_san_that_is_not_ascii_is_refused() {
        assert!(ia5("spiffe://example.org/ü").is_err());
        assert!(ia5("spiffe://example.org/a").is_ok());
    }
}
