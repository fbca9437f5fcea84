//! `[authority]`: where the signing authority comes from (self-signed root or upstream files).

use std::time::Duration;

use super::raw::RawConfig;
use super::{DEFAULT_CA_TTL, DEFAULT_INTERMEDIATE_TTL};
use crate::ca::{AuthorityConfig, NodeAttestation, SpireConfig};
use crate::fields::{Collector, duration};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// How often a SPIRE agent asks its server for entries and bundles, unless configured.
pub(super) const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

pub(super) fn authority(
    errs: &mut Collector,
    raw: &RawConfig,
    td: Option<&TrustDomain>,
) -> Option<AuthorityConfig> {
    let a = &raw.authority;
    let mode = a.mode.as_deref().unwrap_or("self-signed");
    if mode != "spire" {
        for (set, name) in [
            (a.server_address.is_some(), "authority.server_address"),
            (a.server_id.is_some(), "authority.server_id"),
            (a.trust_bundle_path.is_some(), "authority.trust_bundle_path"),
            (
                a.insecure_bootstrap.is_some(),
                "authority.insecure_bootstrap",
            ),
            (a.join_token.is_some(), "authority.join_token"),
            (a.x509pop_cert_path.is_some(), "authority.x509pop_cert_path"),
            (a.x509pop_key_path.is_some(), "authority.x509pop_key_path"),
            (a.k8s_psat_cluster.is_some(), "authority.k8s_psat_cluster"),
            (
                a.k8s_psat_token_path.is_some(),
                "authority.k8s_psat_token_path",
            ),
            (a.sync_interval.is_some(), "authority.sync_interval"),
        ] {
            if set {
                errs.push(
                    name,
                    "only used with mode = \"spire\"; remove it or set the mode",
                );
            }
        }
    }
    match mode {
        "spire" => spire(errs, raw, td),
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
                format!("unknown mode {other:?}; use \"self-signed\", \"upstream\" or \"spire\""),
            );
            None
        }
    }
}

/// `mode = "spire"`: the SPIRE server signs; this agent attests to it as a node.
fn spire(
    errs: &mut Collector,
    raw: &RawConfig,
    td: Option<&TrustDomain>,
) -> Option<AuthorityConfig> {
    let a = &raw.authority;
    for (set, name) in [
        (a.ca_ttl.is_some(), "authority.ca_ttl"),
        (a.cert_path.is_some(), "authority.cert_path"),
        (a.key_path.is_some(), "authority.key_path"),
        (a.intermediate_ttl.is_some(), "authority.intermediate_ttl"),
        (a.jwt_key_ttl.is_some(), "authority.jwt_key_ttl"),
    ] {
        if set {
            errs.push(
                name,
                "not used with mode = \"spire\": the SPIRE server keeps the keys; remove it",
            );
        }
    }
    let managed_there = "in mode \"spire\" the SPIRE server holds the registration entries and federated bundles; manage them there (spire-server entry create, spire-controller-manager) and remove this from the file";
    if !raw.entries.is_empty() {
        errs.push("entry", managed_there);
    }
    if !raw.templates.is_empty() {
        errs.push("template", managed_there);
    }
    if !raw.federation.is_empty() {
        errs.push("federation", managed_there);
    }
    let server_address = match a.server_address.as_deref() {
        None | Some("") => {
            errs.push(
                "authority.server_address",
                "missing; set the SPIRE server's agent API as host:port (e.g. \"spire-server.spire:8081\")",
            );
            None
        }
        Some(s) => match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
                Some(s.to_owned())
            }
            _ => {
                errs.push(
                    "authority.server_address",
                    format!("{s:?} is not host:port (e.g. \"spire-server.spire:8081\")"),
                );
                None
            }
        },
    };
    let server_id = match (a.server_id.as_deref(), td) {
        (Some(text), _) => match SpiffeId::parse(text) {
            Ok(id) => Some(id),
            Err(e) => {
                errs.push(
                    "authority.server_id",
                    format!("invalid SPIFFE ID {text:?}: {e}"),
                );
                None
            }
        },
        (None, Some(td)) => SpiffeId::parse(&format!("spiffe://{td}/spire/server")).ok(),
        (None, None) => None,
    };
    let insecure_bootstrap = a.insecure_bootstrap.unwrap_or(false);
    match (&a.trust_bundle_path, insecure_bootstrap) {
        (Some(_), true) => errs.push(
            "authority.insecure_bootstrap",
            "set together with trust_bundle_path; keep one (the bundle is the safe choice)",
        ),
        (None, false) => errs.push(
            "authority.trust_bundle_path",
            "missing; set the PEM bundle that verifies the SPIRE server on first contact (spire-server bundle show), or insecure_bootstrap = true to trust whatever answers at server_address",
        ),
        _ => {}
    }
    let attestation = node_attestation(errs, a);
    let sync_interval = duration(
        errs,
        "authority.sync_interval",
        a.sync_interval.as_deref(),
        DEFAULT_SYNC_INTERVAL,
    );
    if sync_interval < Duration::from_millis(100) || sync_interval > Duration::from_secs(300) {
        errs.push(
            "authority.sync_interval",
            format!(
                "{} is out of range; use 100ms to 5m",
                humantime::format_duration(sync_interval)
            ),
        );
    }
    Some(AuthorityConfig::Spire(SpireConfig {
        server_address: server_address?,
        server_id: server_id?,
        trust_bundle_path: a.trust_bundle_path.clone(),
        insecure_bootstrap,
        attestation: attestation?,
        sync_interval,
    }))
}

/// Default path of the projected service account token for `k8s_psat` (as SPIRE's agent uses).
const DEFAULT_PSAT_TOKEN_PATH: &str = "/var/run/secrets/tokens/spire-agent";

/// Exactly one node attestor: `join_token`, `x509pop_*` or `k8s_psat_*`.
fn node_attestation(errs: &mut Collector, a: &super::raw::RawAuthority) -> Option<NodeAttestation> {
    let x509pop = a.x509pop_cert_path.is_some() || a.x509pop_key_path.is_some();
    let psat = a.k8s_psat_cluster.is_some() || a.k8s_psat_token_path.is_some();
    let chosen = usize::from(a.join_token.is_some()) + usize::from(x509pop) + usize::from(psat);
    if chosen == 0 {
        errs.push(
            "authority.join_token",
            "no node attestation configured; set join_token (spire-server token generate), x509pop_cert_path and x509pop_key_path, or k8s_psat_cluster",
        );
        return None;
    }
    if chosen > 1 {
        errs.push(
            "authority",
            "more than one node attestor configured (join_token, x509pop_*, k8s_psat_*); keep one",
        );
        return None;
    }
    if let Some(t) = &a.join_token {
        if t.0.trim().is_empty() {
            errs.push(
                "authority.join_token",
                "is empty; paste the token from spire-server token generate",
            );
            return None;
        }
        return Some(NodeAttestation::JoinToken(t.0.trim().to_owned()));
    }
    if x509pop {
        let (Some(cert), Some(key)) = (&a.x509pop_cert_path, &a.x509pop_key_path) else {
            let missing = if a.x509pop_cert_path.is_none() {
                "authority.x509pop_cert_path"
            } else {
                "authority.x509pop_key_path"
            };
            errs.push(
                missing,
                "missing; x509pop needs the node certificate (PEM chain, leaf first) and its private key",
            );
            return None;
        };
        return Some(NodeAttestation::X509Pop {
            cert_path: cert.clone(),
            key_path: key.clone(),
        });
    }
    let Some(cluster) = a.k8s_psat_cluster.clone().filter(|c| !c.is_empty()) else {
        errs.push(
            "authority.k8s_psat_cluster",
            "missing; set the cluster name the server's k8s_psat attestor knows",
        );
        return None;
    };
    Some(NodeAttestation::K8sPsat {
        cluster,
        token_path: a
            .k8s_psat_token_path
            .clone()
            .unwrap_or_else(|| DEFAULT_PSAT_TOKEN_PATH.into()),
    })
}
