//! Shared rendering for the client subcommands: summaries, JSON and PEM files.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use serde::Serialize;

use crate::ca::mint::cert_facts;
use crate::encoding::{pem_block, pem_cert, split_der};
use crate::proto::X509svid;

/// What is printed about one X.509-SVID (never its key).
#[derive(Debug, Serialize)]
pub(super) struct SvidSummary {
    pub spiffe_id: String,
    pub hint: String,
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    pub chain_length: usize,
    pub bundle_certificates: usize,
}

/// Summarises an SVID from the wire.
pub(super) fn summarize(svid: &X509svid) -> anyhow::Result<SvidSummary> {
    let chain = split_der(&svid.x509_svid).context("the SVID chain is not DER certificates")?;
    let leaf = chain.first().context("the SVID chain is empty")?;
    let (not_before, not_after, serial) = cert_facts(leaf)?;
    let bundle = split_der(&svid.bundle).context("the bundle is not DER certificates")?;
    Ok(SvidSummary {
        spiffe_id: svid.spiffe_id.clone(),
        hint: svid.hint.clone(),
        serial,
        not_before: rfc3339(not_before),
        not_after: rfc3339(not_after),
        chain_length: chain.len(),
        bundle_certificates: bundle.len(),
    })
}

/// RFC 3339 UTC, whole seconds.
pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// PEM text of concatenated DER certificates.
pub(super) fn pem_chain(der: &[u8]) -> anyhow::Result<String> {
    let certs = split_der(der).context("not DER certificates")?;
    Ok(certs.iter().map(|c| pem_cert(c)).collect())
}

/// Writes one SVID as PEM files in `dir`: key first (0600), then certificate chain and bundle (0644),
/// each replaced atomically, so a reader never pairs a new certificate with an old key.
pub(super) fn write_svid_files(dir: &Path, suffix: &str, svid: &X509svid) -> anyhow::Result<()> {
    let key = zeroize::Zeroizing::new(pem_block("PRIVATE KEY", &svid.x509_svid_key));
    let key_path = dir.join(format!("svid_key{suffix}.pem"));
    crate::atomic_file::write(&key_path, key.as_bytes(), 0o600)
        .with_context(|| format!("writing {}", key_path.display()))?;
    for (name, der) in [("svid", &svid.x509_svid), ("bundle", &svid.bundle)] {
        let path = dir.join(format!("{name}{suffix}.pem"));
        crate::atomic_file::write(&path, pem_chain(der)?.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A file name for a trust domain's bundle: `spiffe://partner.org` → `partner.org.pem`.
pub(super) fn bundle_file_name(trust_domain_id: &str) -> String {
    format!("{}.pem", trust_domain_id.trim_start_matches("spiffe://"))
}
