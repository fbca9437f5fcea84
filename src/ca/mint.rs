//! Certificate minting with rcgen: roots, intermediates and X.509-SVID leaves (SPEC.md §5).

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _};
use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use super::Error;
use super::bundle::concat;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Leaves are backdated by this much so a peer whose clock is slightly behind accepts them.
const BACKDATE: Duration = Duration::from_secs(10);

/// What an X.509-SVID is minted from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SvidRequest {
    pub spiffe_id: SpiffeId,
    pub ttl: Duration,
    pub dns_names: Vec<String>,
}

/// A signing CA: its key, its certificate, and the intermediates that go between it and the bundle.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    /// Certificates placed after the leaf in an SVID chain (this signer's own certificate when it is an
    /// intermediate, then any above it that are not in the bundle).
    chain: Vec<CertificateDer<'static>>,
    not_before: SystemTime,
    not_after: SystemTime,
    serial: String,
}

/// A minted X.509-SVID: certificate chain (leaf first) and its private key.
pub struct X509Svid {
    pub spiffe_id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    /// `chain` concatenated, computed once at mint; shared with every message that carries it.
    chain_der: Bytes,
    /// Shared with every message that carries it; the buffer is zeroed when the last of them and
    /// the SVID are gone.
    key_pkcs8: Bytes,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Signer {
    /// A signer from a key and its certificate. `chain` holds what follows the leaf in an SVID.
    pub fn new(
        key: KeyPair,
        cert: CertificateDer<'static>,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(Error::Rcgen)?;
        let (not_before, not_after, serial) = cert_facts(&cert)?;
        Ok(Self {
            issuer,
            cert,
            chain,
            not_before,
            not_after,
            serial,
        })
    }

    /// The signing certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Intermediates that follow a leaf in an SVID chain.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The signing certificate's notBefore.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// The signing certificate's notAfter; no leaf outlives it (X5-6).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Serial of the signing certificate, hex, for logs.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The signing key (for minting intermediates below this CA).
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl X509Svid {
    /// An SVID signed elsewhere (a SPIRE server): `chain` leaf first, the key made here.
    pub fn from_parts(
        spiffe_id: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Zeroizing<Vec<u8>>,
    ) -> Result<Self, Error> {
        let leaf = chain
            .first()
            .ok_or_else(|| Error::BadCertificate("empty certificate chain".into()))?;
        let (not_before, not_after, serial) = cert_facts(leaf)?;
        let chain_der = concat(&chain);
        Ok(Self {
            spiffe_id,
            chain,
            chain_der,
            key_pkcs8: Bytes::from_owner(key_pkcs8),
            serial,
            not_before,
            not_after,
        })
    }

    /// The private key, unencrypted PKCS#8 DER (X5-7).
    pub fn key_pkcs8_der(&self) -> &[u8] {
        &self.key_pkcs8
    }

    /// The key, shared (no copy) for a message.
    pub(crate) fn key_shared(&self) -> Bytes {
        self.key_pkcs8.clone()
    }

    /// The chain as concatenated DER, leaf first, as the Workload API carries it: shared (no copy)
    /// for a message.
    pub(crate) fn chain_shared(&self) -> Bytes {
        self.chain_der.clone()
    }
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// A fresh P-256 key.
pub fn generate_key() -> Result<KeyPair, Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Rcgen)
}

/// A leaf's fresh P-256 key, made by aws-lc directly: the PKCS#8 handed to the workload and the
/// public point the certificate carries. (rcgen's `KeyPair::generate_for` parses its own PKCS#8
/// back, and that parse checks the key by deriving the public point again: a third P-256 scalar
/// multiplication per mint, after the key's own and the signature's, for a key the agent never
/// signs with.)
struct LeafKey {
    pkcs8: Zeroizing<Vec<u8>>,
    public: Vec<u8>,
}

impl LeafKey {
    fn generate() -> Result<Self, Error> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING)
            .map_err(|_| Error::KeyGeneration)?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| Error::KeyGeneration)?;
        let pkcs8 = Zeroizing::new(pkcs8.as_ref().to_vec());
        Ok(Self {
            pkcs8,
            public: pair.public_key().as_ref().to_vec(),
        })
    }
}

impl PublicKeyData for LeafKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Mints an X.509-SVID leaf: one URI SAN (X5-1), cA=false (X5-2), critical KeyUsage with
/// digitalSignature only (X5-3), serverAuth+clientAuth (X5-4), empty subject with a critical SAN
/// (X5-5), valid now and never past the signer (X5-6), PKCS#8 key (X5-7).
pub fn mint_svid(signer: &Signer, req: &SvidRequest, now: SystemTime) -> Result<X509Svid, Error> {
    let key = LeafKey::generate()?;
    let not_before = (now - BACKDATE).max(signer.not_before);
    let not_after = (now + req.ttl).min(signer.not_after);
    if not_after <= now {
        return Err(Error::SignerExpired);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = Vec::with_capacity(1 + req.dns_names.len());
    params.subject_alt_names.push(SanType::URI(
        req.spiffe_id.as_str().try_into().map_err(Error::Rcgen)?,
    ));
    for name in &req.dns_names {
        params.subject_alt_names.push(SanType::DnsName(
            name.as_str().try_into().map_err(Error::Rcgen)?,
        ));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let serial = random_serial();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, signer.issuer())
        .map_err(Error::Rcgen)?;
    let mut chain = Vec::with_capacity(1 + signer.chain.len());
    chain.push(cert.der().clone());
    chain.extend(signer.chain.iter().cloned());
    let chain_der = concat(&chain);
    Ok(X509Svid {
        spiffe_id: req.spiffe_id.clone(),
        chain,
        chain_der,
        key_pkcs8: Bytes::from_owner(key.pkcs8),
        serial: crate::encoding::hex(&serial),
        // rcgen writes whole seconds.
        not_before: truncate_to_seconds(not_before),
        not_after: truncate_to_seconds(not_after),
    })
}

/// Parameters of a signing certificate for `td` (X5-8, X5-9).
fn ca_params(
    td: &TrustDomain,
    common_name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
    path_len: Option<u8>,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "lanyard");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        td.id_string().try_into().map_err(Error::Rcgen)?,
    )];
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    Ok(params)
}

/// A new self-signed root for `td`, valid from now for `ttl`.
pub fn self_signed_root(
    td: &TrustDomain,
    now: SystemTime,
    ttl: Duration,
) -> Result<(KeyPair, CertificateDer<'static>), Error> {
    let key = generate_key()?;
    let params = ca_params(td, &format!("{td} root"), now - BACKDATE, now + ttl, None)?;
    let cert = params.self_signed(&key).map_err(Error::Rcgen)?;
    Ok((key, cert.der().clone()))
}

/// A new intermediate for `td` signed by `parent`, valid from now for `ttl` (capped at the parent).
pub fn intermediate(
    td: &TrustDomain,
    parent: &Signer,
    now: SystemTime,
    ttl: Duration,
) -> Result<(KeyPair, CertificateDer<'static>), Error> {
    let key = generate_key()?;
    let not_before = (now - BACKDATE).max(parent.not_before);
    let not_after = (now + ttl).min(parent.not_after);
    let mut params = ca_params(
        td,
        &format!("{td} agent intermediate"),
        not_before,
        not_after,
        Some(0),
    )?;
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, parent.issuer())
        .map_err(Error::Rcgen)?;
    Ok((key, cert.der().clone()))
}

/// 16 random bytes, first bit clear so the INTEGER is positive, never all-zero.
fn random_serial() -> [u8; 16] {
    let mut serial = [0u8; 16];
    // aws-lc's RNG; fall back to a non-cryptographic source only for uniqueness, never for keys.
    if aws_lc_rs::rand::fill(&mut serial).is_err() {
        for b in &mut serial {
            *b = fastrand::u8(..);
        }
    }
    serial[0] = (serial[0] & 0x7f) | 0x01;
    serial
}

fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

/// notBefore, notAfter and serial (hex) of a certificate.
pub fn cert_facts(cert: &[u8]) -> Result<(SystemTime, SystemTime, String), Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| Error::BadCertificate(e.to_string()))?;
    let v = parsed.validity();
    let to_system = |t: &x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            SystemTime::UNIX_EPOCH
        }
    };
    Ok((
        to_system(&v.not_before),
        to_system(&v.not_after),
        crate::encoding::hex(parsed.raw_serial()),
    ))
}
