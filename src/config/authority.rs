//! `[authority]`: where the signing authority comes from (self-signed root or upstream files).

use std::time::Duration;

use super::raw::RawConfig;
use super::{DEFAULT_CA_TTL, DEFAULT_INTERMEDIATE_TTL};
use crate::ca::AuthorityConfig;
use crate::fields::{Collector, duration};

pub(super) fn authority(errs: &mut Collector, raw: &RawConfig) -> Option<AuthorityConfig> {
    let a = &raw.authority;
    match a.mode.as_deref().unwrap_or("self-signed") {
        "self-signed" => {
            for (set, name) in [
                (a.cert_path.is_some(), "authority.cert_path"),
                (a.key_path.is_some(), "authority.key_path"),
                (a.intermediate_ttl.is_some(), "authority.intermediate_ttl"),
            ] {
                if set {
                    errs.push(
                        name,
                        "only used with mode = \"upstream\"; remove it or set the mode",
                    );
                }
            }
            let ca_ttl = duration(
                errs,
                "authority.ca_ttl",
                a.ca_ttl.as_deref(),
                DEFAULT_CA_TTL,
            );
            if ca_ttl < Duration::from_secs(3600) {
                errs.push(
                    "authority.ca_ttl",
                    format!(
                        "{} is too short for a root; use at least 1h",
                        humantime::format_duration(ca_ttl)
                    ),
                );
            }
            Some(AuthorityConfig::SelfSigned { ca_ttl })
        }
        "upstream" => {
            if a.ca_ttl.is_some() {
                errs.push("authority.ca_ttl", "only used with mode = \"self-signed\"; the upstream root's own validity applies");
            }
            let cert_path = a.cert_path.clone();
            let key_path = a.key_path.clone();
            if cert_path.is_none() {
                errs.push(
                    "authority.cert_path",
                    "missing; upstream mode needs the root certificate (PEM)",
                );
            }
            if key_path.is_none() {
                errs.push(
                    "authority.key_path",
                    "missing; upstream mode needs the root's private key (PEM, PKCS#8)",
                );
            }
            let intermediate_ttl = duration(
                errs,
                "authority.intermediate_ttl",
                a.intermediate_ttl.as_deref(),
                DEFAULT_INTERMEDIATE_TTL,
            );
            if intermediate_ttl < Duration::from_secs(600) {
                errs.push(
                    "authority.intermediate_ttl",
                    format!(
                        "{} is too short; use at least 10m",
                        humantime::format_duration(intermediate_ttl)
                    ),
                );
            }
            Some(AuthorityConfig::Upstream {
                cert_path: cert_path?,
                key_path: key_path?,
                intermediate_ttl,
            })
        }
        other => {
            errs.push(
                "authority.mode",
                format!("unknown mode {other:?}; use \"self-signed\" or \"upstream\""),
            );
            None
        }
    }
}
