//! Every X.509 rule of SPEC.md §5 checked on what a running agent actually delivers, by parsing with
//! x509-parser and path-validating with rustls-webpki; in self-signed and upstream modes.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use lanyard::encoding::{pem_block, pem_cert, split_der};
use lanyard::proto::*;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

fn entry(uid: u32) -> String {
    format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/billing\"\nselectors = [\"unix:uid:{uid}\"]\ndns_names = [\"billing.internal\"]\nx509_ttl = \"10m\"\n"
    )
}

async fn fetch(agent: &TestAgent) -> X509svidResponse {
    let mut c = agent.client().await;
    let mut s = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    next_within(&mut s, 5).await
}

/// X5-8, X5-9: what every signing certificate must be.
fn check_signing_cert(cert: &X509Certificate<'_>, what: &str) {
    let bc = cert.basic_constraints().unwrap().expect("BasicConstraints");
    assert!(bc.value.ca, "X5-8 {what}: cA=true");
    let ku = cert.key_usage().unwrap().expect("KeyUsage");
    assert!(ku.critical, "X5-8 {what}: KeyUsage critical");
    assert!(ku.value.key_cert_sign(), "X5-8 {what}: keyCertSign");
    assert!(
        !ku.value.digital_signature(),
        "X5-8 {what}: no digitalSignature"
    );
    let uris: Vec<&str> = uri_sans(cert);
    assert_eq!(
        uris,
        vec!["spiffe://example.org"],
        "X5-9 {what}: URI SAN of the trust domain"
    );
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn check_svid(svid: &X509svid, expect_chain_len: usize) {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let chain = split_der(&svid.x509_svid).expect("chain is concatenated DER");
    assert_eq!(chain.len(), expect_chain_len, "leaf + intermediates");
    let (_, leaf) = parse_x509_certificate(&chain[0]).unwrap();

    // X5-1: exactly one URI SAN, byte for byte the spiffe_id, non-empty path; DNS SANs may follow.
    assert_eq!(uri_sans(&leaf), vec![svid.spiffe_id.as_str()], "X5-1");
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    let dns: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(
        dns,
        vec!["billing.internal"],
        "X5-1: DNS SAN from the entry"
    );
    // X5-2
    let bc = leaf
        .basic_constraints()
        .unwrap()
        .expect("X5-2: BasicConstraints present");
    assert!(!bc.value.ca, "X5-2: cA=false");
    // X5-3
    let ku = leaf.key_usage().unwrap().expect("X5-3: KeyUsage present");
    assert!(ku.critical, "X5-3: KeyUsage critical");
    assert!(ku.value.digital_signature(), "X5-3: digitalSignature");
    assert!(
        !ku.value.key_cert_sign() && !ku.value.crl_sign(),
        "X5-3: no keyCertSign/cRLSign"
    );
    // X5-4
    let eku = leaf
        .extended_key_usage()
        .unwrap()
        .expect("X5-4: EKU present");
    assert!(eku.value.server_auth && eku.value.client_auth, "X5-4");
    // X5-5
    if leaf.subject().iter_attributes().next().is_none() {
        assert!(san.critical, "X5-5: empty subject needs a critical SAN");
    }
    // X5-6
    let nb = leaf.validity().not_before.timestamp();
    let na = leaf.validity().not_after.timestamp();
    assert!(nb <= now && now < na, "X5-6: valid now");
    assert!(
        na - nb <= 600 + 10,
        "entry TTL (10m) honoured, with a small backdate"
    );
    for der in &chain[1..] {
        let (_, ca) = parse_x509_certificate(der).unwrap();
        check_signing_cert(&ca, "intermediate");
        assert!(
            na <= ca.validity().not_after.timestamp(),
            "X5-6: not past the issuing CA"
        );
    }
    // X5-7: unencrypted PKCS#8 matching the leaf's public key.
    let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &svid.x509_svid_key,
    )
    .expect("X5-7: PKCS#8 P-256 key");
    use aws_lc_rs::signature::KeyPair;
    assert_eq!(
        key.public_key().as_ref(),
        leaf.public_key().subject_public_key.data.as_ref(),
        "X5-7: key matches the leaf"
    );
    // X5-11 + X5-8/9 for every bundle certificate.
    let bundle = split_der(&svid.bundle).expect("X5-11: bundle is concatenated DER, not PEM");
    assert!(!bundle.is_empty(), "TB-1: bundle not empty");
    assert!(!svid.bundle.starts_with(b"-----"), "X5-11: never PEM");
    for der in &bundle {
        let (_, ca) = parse_x509_certificate(der).unwrap();
        check_signing_cert(&ca, "bundle certificate");
    }
    // X5-10: leaf + intermediates path-validate to the bundle, with rustls-webpki.
    let anchors: Vec<_> = bundle
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).unwrap().to_owned())
        .collect();
    let leaf_der = CertificateDer::from(chain[0].to_vec());
    let ee = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    let intermediates: Vec<CertificateDer<'_>> = chain[1..].to_vec();
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(
            &[webpki::aws_lc_rs::ECDSA_P256_SHA256],
            &anchors,
            &intermediates,
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .expect("X5-10: chain validates to the bundle");
    }
}

#[tokio::test]
async fn x5_self_signed_mode_svid_follows_every_rule() {
    let agent = TestAgent::start(&entry(euid())).await;
    let msg = fetch(&agent).await;
    assert_eq!(msg.svids.len(), 1);
    assert_eq!(msg.svids[0].spiffe_id, "spiffe://example.org/billing");
    check_svid(&msg.svids[0], 1);
    agent.shutdown().await;
}

#[tokio::test]
async fn x5_upstream_mode_chain_is_leaf_plus_intermediate() {
    let dir = open_tempdir();
    let td = lanyard::spiffe_id::TrustDomain::parse("example.org").unwrap();
    let (key, root) = lanyard::ca::mint::self_signed_root(
        &td,
        SystemTime::now(),
        Duration::from_secs(30 * 86400),
    )
    .unwrap();
    let cert_path = dir.path().join("root.crt");
    let key_path = dir.path().join("root.key");
    std::fs::write(&cert_path, pem_cert(&root)).unwrap();
    std::fs::write(&key_path, pem_block("PRIVATE KEY", &key.serialize_der())).unwrap();
    // An operator's key file must be 0600 (the agent refuses one others can read).
    std::fs::set_permissions(
        &key_path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let cfg = format!(
        "[authority]\nmode = \"upstream\"\ncert_path = \"{}\"\nkey_path = \"{}\"\nintermediate_ttl = \"2h\"\n{}",
        cert_path.display(),
        key_path.display(),
        entry(euid())
    );
    let agent = TestAgent::start(&cfg).await;
    let msg = fetch(&agent).await;
    check_svid(&msg.svids[0], 2);
    // The bundle is exactly the upstream root; the intermediate travels in the chain only.
    assert_eq!(msg.svids[0].bundle, root.to_vec());
    agent.shutdown().await;
}

/// The self-signed root is created once, 0600, and reused: a restarted agent serves the same bundle.
#[tokio::test]
async fn self_signed_root_survives_restart() {
    use std::os::unix::fs::PermissionsExt;
    let dir = open_tempdir();
    let cfg = lanyard::config::Config::from_toml(&config_text(dir.path(), &entry(euid()))).unwrap();
    let a = lanyard::app::start(
        cfg.clone(),
        std::sync::Arc::new(lanyard::clock::SystemClock),
    )
    .await
    .unwrap();
    let first = a.ca().bundle.concat_der();
    a.shutdown().await;
    let root = dir.path().join("data/authority/root.pem");
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let b = lanyard::app::start(cfg, std::sync::Arc::new(lanyard::clock::SystemClock))
        .await
        .unwrap();
    assert_eq!(b.ca().bundle.concat_der(), first);
    b.shutdown().await;
}
