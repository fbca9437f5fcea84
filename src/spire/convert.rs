//! From the SPIRE server's messages to lanyard's: entries (SPIRE's selector names are lanyard's, so
//! `unix:uid:1000` written for spire-agent means the same here), X.509 and JWT bundles.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rustls_pki_types::CertificateDer;

use super::proto::types;
use crate::ca::X509Bundle;
use crate::ca::jwt::Jwks;
use crate::registry::{Entry, EntryId, Origin};
use crate::selector::Selector;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// `spiffe://td/path` from SPIRE's split form.
pub(super) fn spiffe_id(id: Option<&types::Spiffeid>) -> Result<SpiffeId, String> {
    let id = id.ok_or("no SPIFFE ID")?;
    SpiffeId::parse(&format!("spiffe://{}{}", id.trust_domain, id.path))
        .map_err(|e| format!("{}{}: {e}", id.trust_domain, id.path))
}

/// An authorized entry as a registry entry, or why it cannot be one here (a selector type this
/// agent never produces, a malformed ID). Node entries (a join token's alias, selected by the agent's
/// `spiffe_id`) and downstream entries are not for workloads.
pub(super) fn entry(e: &types::Entry) -> Result<Option<Entry>, String> {
    if e.selectors.is_empty() || e.downstream || e.selectors.iter().any(|s| s.r#type == "spiffe_id")
    {
        return Ok(None);
    }
    let spiffe_id = spiffe_id(e.spiffe_id.as_ref())?;
    let mut selectors = Vec::with_capacity(e.selectors.len());
    for s in &e.selectors {
        let text = format!("{}:{}", s.r#type, s.value);
        selectors.push(Selector::parse(&text).map_err(|err| format!("selector {text:?}: {err}"))?);
    }
    selectors.sort();
    selectors.dedup();
    // Checked here as a local entry's are (lanyard never puts a name it did not check into a
    // request), though the server has checked them too.
    if let Some(bad) = e
        .dns_names
        .iter()
        .find(|n| !crate::registry::valid_dns_name(n))
    {
        return Err(format!("DNS name {bad:?} is not a valid DNS name"));
    }
    let secs = |v: i32| (v > 0).then(|| Duration::from_secs(u64::from(v.unsigned_abs())));
    let mut federates_with = Vec::new();
    for td in &e.federates_with {
        let td = td.strip_prefix("spiffe://").unwrap_or(td);
        federates_with
            .push(TrustDomain::parse(td).map_err(|err| format!("federates_with {td:?}: {err}"))?);
    }
    Ok(Some(Entry {
        id: EntryId::from_string(e.id.clone()),
        spiffe_id,
        selectors,
        x509_ttl: secs(e.x509_svid_ttl),
        jwt_ttl: secs(e.jwt_svid_ttl),
        jwt_audiences: Vec::new(),
        hint: e.hint.clone(),
        dns_names: e.dns_names.clone(),
        federates_with,
        origin: Origin::Server,
    }))
}

/// The X.509 authorities of a bundle.
pub(super) fn x509_bundle(b: &types::Bundle) -> X509Bundle {
    X509Bundle::new(
        b.x509_authorities
            .iter()
            .map(|a| CertificateDer::from(a.asn1.clone()))
            .collect(),
    )
}

/// The JWT authorities of a bundle as a JWK Set. Keys of a type lanyard cannot express (anything
/// but EC P-256/P-384 and RSA) are left out with a warning.
pub(super) fn jwks(b: &types::Bundle) -> Jwks {
    let mut keys = Vec::new();
    for k in &b.jwt_authorities {
        match jwk(&k.public_key) {
            Ok(mut jwk) => {
                jwk["kid"] = k.key_id.clone().into();
                jwk["use"] = "jwt-svid".into();
                keys.push(jwk);
            }
            Err(why) => tracing::warn!(
                trust_domain = %b.trust_domain,
                kid = %k.key_id,
                "JWT authority left out: {why}"
            ),
        }
    }
    let json = serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default();
    Jwks::parse(&json, &format!("JWT bundle of {}", b.trust_domain)).unwrap_or_else(|why| {
        tracing::warn!(trust_domain = %b.trust_domain, "JWT bundle refused: {why}");
        Jwks::default()
    })
}

/// A public key (DER SubjectPublicKeyInfo, as SPIRE sends it) as a JWK.
fn jwk(spki: &[u8]) -> Result<serde_json::Value, String> {
    use x509_parser::prelude::FromDer as _;
    use x509_parser::public_key::PublicKey;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki)
        .map_err(|e| format!("not a public key: {e}"))?;
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    match info.parsed().map_err(|e| e.to_string())? {
        PublicKey::EC(point) => {
            let data = point.data();
            let (crv, len) = match data.len() {
                65 => ("P-256", 32),
                97 => ("P-384", 48),
                n => return Err(format!("EC point of {n} bytes")),
            };
            if data[0] != 4 {
                return Err("compressed EC point".into());
            }
            Ok(serde_json::json!({
                "kty": "EC",
                "crv": crv,
                "x": b64(&data[1..=len]),
                "y": b64(&data[1 + len..]),
            }))
        }
        PublicKey::RSA(rsa) => {
            let trim = |b: &[u8]| {
                let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
                b[start..].to_vec()
            };
            Ok(serde_json::json!({
                "kty": "RSA",
                "n": b64(&trim(rsa.modulus)),
                "e": b64(&trim(rsa.exponent)),
            }))
        }
        _ => Err("unsupported key type".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_entry(dns_names: &[&str]) -> types::Entry {
        types::Entry {
            id: "e1".into(),
            spiffe_id: Some(types::Spiffeid {
                trust_domain: "example.org".into(),
                path: "/web".into(),
            }),
            selectors: vec![types::Selector {
                r#type: "unix".into(),
                value: "uid:1000".into(),
            }],
            dns_names: dns_names.iter().map(|n| (*n).to_owned()).collect(),
            ..Default::default()
        }
    }

    /// A server entry's DNS names meet the same check as a local entry's: a name that is not an
    /// LDH name (non-ASCII, an underscore) keeps the entry off this agent, with the name in the
    /// reason.
    #[test]
    fn a_server_entry_with_a_bad_dns_name_is_not_used() {
        let ok = entry(&server_entry(&["web.example.org", "*.svc.example.org"]))
            .unwrap()
            .unwrap();
        assert_eq!(ok.dns_names, ["web.example.org", "*.svc.example.org"]);
        for bad in ["bücher.example.org", "a_b.example.org", "a..b"] {
            let why = entry(&server_entry(&["web.example.org", bad])).unwrap_err();
            assert!(why.contains(&format!("{bad:?}")), "{why}");
        }
    }
}
