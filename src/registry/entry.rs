//! Registration entries from their text form (`[[entry]]` in the file, `EntrySpec` in the admin
//! API): one parser, so both report the same problems the same way.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::{Entry, EntryId, Origin};
use crate::ca::{MAX_JWT_TTL, MIN_JWT_TTL, MIN_X509_TTL};
use crate::fields::{Collector, FieldError, duration};
use crate::selector::Selector;
use crate::spiffe_id::{SpiffeId, TrustDomain};

impl Entry {
    /// An entry from its text form, validated as the file's `[[entry]]` is (the admin API's
    /// entries come through here too); `at` names it in messages.
    pub fn from_raw(
        at: &str,
        raw: &RawEntry,
        own: &TrustDomain,
        federated: &HashSet<TrustDomain>,
    ) -> Result<Entry, Vec<FieldError>> {
        validate_entry(at, raw, own, federated)
    }
}

/// An entry as written, before validation.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEntry {
    pub spiffe_id: Option<String>,
    #[serde(default)]
    pub selectors: Vec<String>,
    pub x509_ttl: Option<String>,
    pub jwt_ttl: Option<String>,
    #[serde(default)]
    pub jwt_audiences: Vec<String>,
    pub hint: Option<String>,
    #[serde(default)]
    pub dns_names: Vec<String>,
    #[serde(default)]
    pub federates_with: Vec<String>,
}

/// Validates one entry as the config file's `[[entry]]` is validated (for the admin API), with
/// `at` naming it in messages.
pub fn validate_entry(
    at: &str,
    raw: &RawEntry,
    own: &TrustDomain,
    federated: &HashSet<TrustDomain>,
) -> Result<Entry, Vec<FieldError>> {
    let mut errs = Collector::new();
    match entry(&mut errs, at, raw, Some(own), federated) {
        Some(e) if errs.0.is_empty() => Ok(e),
        _ => Err(errs.0),
    }
}

pub fn entry(
    errs: &mut Collector,
    at: &str,
    e: &RawEntry,
    own: Option<&TrustDomain>,
    federated: &HashSet<TrustDomain>,
) -> Option<Entry> {
    let before = errs.0.len();
    let spiffe_id = match e.spiffe_id.as_deref() {
        None => {
            errs.push(format!("{at}.spiffe_id"), "missing");
            None
        }
        Some(text) => match SpiffeId::parse(text) {
            Err(err) => {
                errs.push(
                    format!("{at}.spiffe_id"),
                    format!("invalid SPIFFE ID {text:?}: {err}"),
                );
                None
            }
            Ok(id) if id.path().is_empty() => {
                errs.push(
                    format!("{at}.spiffe_id"),
                    format!("invalid SPIFFE ID {text:?}: an SVID's ID needs a path, such as {text}/service (X5-1)"),
                );
                None
            }
            Ok(id) if own.is_some_and(|td| id.trust_domain_str() != td.as_str()) => {
                errs.push(
                    format!("{at}.spiffe_id"),
                    format!(
                        "{text:?} is not in this agent's trust domain {:?}; the agent only issues its own trust domain's IDs",
                        own.map(super::super::spiffe_id::TrustDomain::as_str).unwrap_or_default()
                    ),
                );
                None
            }
            Ok(id) => Some(id),
        },
    };
    let mut selectors = Vec::new();
    if e.selectors.is_empty() {
        errs.push(
            format!("{at}.selectors"),
            "empty; an entry without selectors would match every process. Add at least one, such as \"unix:uid:1000\"",
        );
    }
    for (j, s) in e.selectors.iter().enumerate() {
        match Selector::parse(s) {
            Ok(sel) => selectors.push(sel),
            Err(err) => errs.push(format!("{at}.selectors[{j}]"), err.to_string()),
        }
    }
    selectors.sort();
    selectors.dedup();
    let x509_ttl = e.x509_ttl.as_deref().map(|t| {
        let d = duration(errs, &format!("{at}.x509_ttl"), Some(t), MIN_X509_TTL);
        check_svid_ttl(errs, &format!("{at}.x509_ttl"), d);
        d
    });
    let jwt_ttl = e.jwt_ttl.as_deref().map(|t| {
        let d = duration(errs, &format!("{at}.jwt_ttl"), Some(t), MIN_JWT_TTL);
        check_jwt_ttl(errs, &format!("{at}.jwt_ttl"), d);
        d
    });
    for (j, aud) in e.jwt_audiences.iter().enumerate() {
        if aud.is_empty() {
            errs.push(
                format!("{at}.jwt_audiences[{j}]"),
                "empty audience; remove it",
            );
        }
    }
    for (j, name) in e.dns_names.iter().enumerate() {
        if !valid_dns_name(name) {
            errs.push(
                format!("{at}.dns_names[{j}]"),
                format!("{name:?} is not a valid DNS name (letters, digits, '-' and '.', labels of 1 to 63 characters, an optional leading \"*.\")"),
            );
        }
    }
    let mut federates_with = Vec::new();
    for (j, text) in e.federates_with.iter().enumerate() {
        match TrustDomain::parse(text) {
            Ok(td) if federated.contains(&td) => federates_with.push(td),
            Ok(_) => errs.push(
                format!("{at}.federates_with[{j}]"),
                format!("{text:?} has no [[federation]] block with its bundle; add one or remove it here"),
            ),
            Err(err) => errs.push(
                format!("{at}.federates_with[{j}]"),
                format!("invalid trust domain {text:?}: {err}"),
            ),
        }
    }
    if errs.0.len() != before {
        return None;
    }
    let spiffe_id = spiffe_id?;
    Some(Entry {
        id: EntryId::declared(&spiffe_id, &selectors),
        spiffe_id,
        selectors,
        x509_ttl,
        jwt_ttl,
        jwt_audiences: e.jwt_audiences.clone(),
        hint: e.hint.clone().unwrap_or_default(),
        dns_names: e.dns_names.clone(),
        federates_with,
        origin: Origin::Declared,
    })
}

/// A DNS name as it may appear in a certificate SAN: LDH labels, optional leading wildcard.
pub fn valid_dns_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub(crate) fn check_svid_ttl(errs: &mut Collector, field: &str, ttl: Duration) {
    if ttl < MIN_X509_TTL {
        errs.push(
            field,
            format!(
                "{} is shorter than the minimum X.509-SVID lifetime of 1m",
                humantime::format_duration(ttl)
            ),
        );
    }
}

pub(crate) fn check_jwt_ttl(errs: &mut Collector, field: &str, ttl: Duration) {
    let max = MAX_JWT_TTL;
    if ttl < MIN_JWT_TTL || ttl > max {
        errs.push(
            field,
            format!(
                "{} is outside the JWT-SVID lifetime range of 30s to {}",
                humantime::format_duration(ttl),
                humantime::format_duration(max)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names() {
        for ok in ["a", "billing.internal", "*.svc.cluster.local", "x-1.y"] {
            assert!(valid_dns_name(ok), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a",
            "a_b",
            "*.",
            "a b",
            "bücher.example",
            "*.ünï",
        ] {
            assert!(!valid_dns_name(bad), "{bad}");
        }
    }
}
