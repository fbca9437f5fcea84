//! Certificate minting: roots and intermediates with rcgen, X.509-SVID leaves written directly
//! (`leaf.rs`) when the signer's key is P-256 and with rcgen otherwise (SPEC.md §5).

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
use super::leaf::{LeafFields, LeafTemplate};
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
    /// What its leaves share, written once (`None` when its key is not P-256: rcgen writes them).
    leaf: Option<LeafTemplate>,
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
        let (not_before, not_after, serial) = cert_facts(&cert)?;
        let leaf = {
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
                .map_err(|e| Error::BadCertificate(e.to_string()))?;
            let key_id = parsed
                .iter_extensions()
                .find_map(|ext| match ext.parsed_extension() {
                    x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(id) => {
                        Some(id.0)
                    }
                    _ => None,
                });
            LeafTemplate::new(&key, parsed.subject().as_raw(), key_id)
        };
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(Error::Rcgen)?;
        Ok(Self {
            issuer,
            cert,
            chain,
            not_before,
            not_after,
            serial,
            leaf,
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
    let serial = random_serial();
    // Whole seconds, as the certificate carries them.
    let not_before = truncate_to_seconds(not_before);
    let not_after = truncate_to_seconds(not_after);
    let leaf = match &signer.leaf {
        Some(template) => {
            let tbs = template.tbs(&leaf_fields(
                req,
                &serial,
                not_before,
                not_after,
                &key.public,
            ))?;
            CertificateDer::from(LeafTemplate::sign(tbs, signer.issuer().key())?)
        }
        None => leaf_params(req, &serial, not_before, not_after)?
            .signed_by(&key, signer.issuer())
            .map_err(Error::Rcgen)?
            .der()
            .clone(),
    };
    let mut chain = Vec::with_capacity(1 + signer.chain.len());
    chain.push(leaf);
    chain.extend(signer.chain.iter().cloned());
    let chain_der = concat(&chain);
    Ok(X509Svid {
        spiffe_id: req.spiffe_id.clone(),
        chain,
        chain_der,
        key_pkcs8: Bytes::from_owner(key.pkcs8),
        serial: crate::encoding::hex(&serial),
        not_before,
        not_after,
    })
}

/// What the direct encoder writes for `req`: the same fields [`leaf_params`] gives rcgen.
fn leaf_fields<'a>(
    req: &'a SvidRequest,
    serial: &'a [u8; 16],
    not_before: SystemTime,
    not_after: SystemTime,
    public_point: &'a [u8],
) -> LeafFields<'a> {
    LeafFields {
        serial,
        not_before,
        not_after,
        uri: req.spiffe_id.as_str(),
        dns_names: &req.dns_names,
        public_point,
    }
}

/// A leaf's parameters for rcgen, for a signer whose key is not P-256 (X5-1 to X5-6).
fn leaf_params(
    req: &SvidRequest,
    serial: &[u8; 16],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, Error> {
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
    params.serial_number = Some(SerialNumber::from_slice(serial));
    params.use_authority_key_identifier_extension = true;
    Ok(params)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The leaf `leaf.rs` writes and the one rcgen writes from the same inputs have the same
    /// to-be-signed bytes (the signatures differ: ECDSA draws a fresh nonce).
    fn assert_same_tbs(
        signer: &Signer,
        rcgen_issuer: &Issuer<'_, KeyPair>,
        req: &SvidRequest,
        now: SystemTime,
    ) {
        let key = LeafKey::generate().unwrap();
        let serial = random_serial();
        let not_before = truncate_to_seconds(now - BACKDATE);
        let not_after = truncate_to_seconds(now + req.ttl);
        let ours = signer
            .leaf
            .as_ref()
            .expect("a P-256 signer has a leaf template")
            .tbs(&leaf_fields(
                req,
                &serial,
                not_before,
                not_after,
                &key.public,
            ))
            .unwrap();
        let theirs = leaf_params(req, &serial, not_before, not_after)
            .unwrap()
            .signed_by(&key, rcgen_issuer)
            .unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(theirs.der()).unwrap();
        assert_eq!(
            ours,
            parsed.tbs_certificate.as_ref(),
            "TBS differs from rcgen's for {req:?}"
        );
    }

    fn requests() -> Vec<SvidRequest> {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        vec![
            SvidRequest {
                spiffe_id: id("spiffe://example.org/a"),
                ttl: Duration::from_secs(3600),
                dns_names: vec![],
            },
            SvidRequest {
                spiffe_id: id(&format!("spiffe://example.org/{}x", "long/".repeat(60))),
                ttl: Duration::from_secs(3600),
                dns_names: (0..20)
                    .map(|i| format!("svc-{i}.ns.svc.cluster.local"))
                    .collect(),
            },
        ]
    }

    #[test]
    fn leaves_written_directly_match_rcgen_below_a_root_and_an_intermediate() {
        let td = TrustDomain::parse("example.org").unwrap();
        let now = SystemTime::now();
        let (key, cert) = self_signed_root(&td, now, Duration::from_secs(86400)).unwrap();
        let root = Signer::new(key, cert.clone(), vec![]).unwrap();
        let (ikey, icert) = intermediate(&td, &root, now, Duration::from_secs(3600)).unwrap();
        let inter = Signer::new(ikey, icert.clone(), vec![icert.clone()]).unwrap();
        for req in requests() {
            assert_same_tbs(&root, root.issuer(), &req, now);
            assert_same_tbs(&inter, inter.issuer(), &req, now);
        }
        // A leaf valid past 2049 is written with GeneralizedTime, as rcgen does.
        let late = SystemTime::UNIX_EPOCH + Duration::from_secs(2_524_600_000);
        let (key, cert) = self_signed_root(&td, late, Duration::from_secs(86400)).unwrap();
        let root = Signer::new(key, cert, vec![]).unwrap();
        assert_same_tbs(&root, root.issuer(), &requests()[0], late);
    }

    /// A CA's parameters valid for an hour from `now`.
    fn an_hours_ca_params(td: &TrustDomain, name: &str, now: SystemTime) -> CertificateParams {
        ca_params(
            td,
            name,
            now - BACKDATE,
            now + Duration::from_secs(3600),
            None,
        )
        .unwrap()
    }

    #[test]
    fn a_signer_without_a_subject_key_identifier_gets_one_derived_as_rcgen_does() {
        let td = TrustDomain::parse("example.org").unwrap();
        let now = SystemTime::now();
        let params = an_hours_ca_params(&td, "no ski", now);
        let key = generate_key().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        let template = LeafTemplate::new(&key, parsed.subject().as_raw(), None).unwrap();
        let mut signer = Signer::new(key, cert.der().clone(), vec![]).unwrap();
        signer.leaf = Some(template);
        // rcgen's issuer from parameters derives the key id from the key (SHA-256, 20 bytes).
        let issuer = Issuer::from_params(&params, signer.issuer().key());
        let req = &requests()[0];
        let key = LeafKey::generate().unwrap();
        let serial = random_serial();
        let (nb, na) = (truncate_to_seconds(now), truncate_to_seconds(now + req.ttl));
        let ours =
            signer
                .leaf
                .as_ref()
                .unwrap()
                .tbs(&leaf_fields(req, &serial, nb, na, &key.public));
        let theirs = leaf_params(req, &serial, nb, na)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(theirs.der()).unwrap();
        assert_eq!(ours.unwrap(), parsed.tbs_certificate.as_ref());
    }

    #[test]
    fn a_signer_whose_key_is_not_p256_mints_through_rcgen() {
        let td = TrustDomain::parse("example.org").unwrap();
        let now = SystemTime::now();
        let params = an_hours_ca_params(&td, "p384", now);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let signer = Signer::new(key, cert.der().clone(), vec![]).unwrap();
        assert!(signer.leaf.is_none());
        let svid = mint_svid(&signer, &requests()[1], now).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&svid.chain[0]).unwrap();
        assert_eq!(
            leaf.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.3"
        );
    }

    #[test]
    fn a_leaf_written_directly_is_signed_by_its_signer() {
        let td = TrustDomain::parse("example.org").unwrap();
        let now = SystemTime::now();
        let (key, cert) = self_signed_root(&td, now, Duration::from_secs(86400)).unwrap();
        let root = Signer::new(key, cert.clone(), vec![]).unwrap();
        let svid = mint_svid(&root, &requests()[1], now).unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&svid.chain[0]).unwrap();
        let (_, ca) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            ca.public_key().subject_public_key.data.as_ref(),
        );
        public
            .verify(
                leaf.tbs_certificate.as_ref(),
                leaf.signature_value.data.as_ref(),
            )
            .expect("the signature verifies under the signer's key");
        assert_eq!(crate::encoding::hex(leaf.raw_serial()), svid.serial);
    }
}
