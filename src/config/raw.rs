//! The file format: what `lanyard.toml` may say, before any value is checked.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Errors, FieldError};
pub use crate::registry::RawEntry;

/// `lanyard.toml` as written. Every field is optional; unknown fields are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub trust_domain: Option<String>,
    pub socket_path: Option<PathBuf>,
    pub admin_socket_path: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub authority: RawAuthority,
    #[serde(default)]
    pub inventory: RawInventory,
    #[serde(default)]
    pub svid: RawSvid,
    #[serde(default)]
    pub attestation: RawAttestation,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default, rename = "entry")]
    pub entries: Vec<RawEntry>,
    #[serde(default)]
    pub federation: Vec<RawFederation>,
    /// `[[template]]`: an entry's fields, where `spiffe_id` and `dns_names` are patterns and
    /// `selectors` may be empty.
    #[serde(default, rename = "template")]
    pub templates: Vec<RawEntry>,
    pub kubernetes: Option<RawKubernetes>,
    #[serde(default)]
    pub health: RawHealth,
    pub audit: Option<RawAudit>,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub sds: RawSds,
    pub oidc: Option<RawOidc>,
    pub policy: Option<RawPolicy>,
}

/// `[policy]`: Cedar policy files.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    pub schema_path: Option<PathBuf>,
    #[serde(default)]
    pub environment: std::collections::BTreeMap<String, String>,
}

/// `[oidc]`: OpenID Connect discovery for JWT-SVIDs.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    pub address: Option<String>,
    pub issuer: Option<String>,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
}

/// `[sds]`: Envoy's Secret Discovery Service on the Workload API socket.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSds {
    pub enabled: Option<bool>,
    pub disable_spiffe_cert_validation: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `"stdout"` or an absolute file path.
    pub path: Option<String>,
    pub max_bytes: Option<usize>,
    pub keep: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub spiffe_id_labels: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    pub enabled: Option<bool>,
    pub kubelet_url: Option<String>,
    pub node_name: Option<String>,
    pub node_name_env: Option<String>,
    pub token_path: Option<PathBuf>,
    pub kubelet_ca_path: Option<PathBuf>,
    pub kubelet_server_name: Option<String>,
    pub skip_kubelet_verification: Option<bool>,
    pub snapshot_ttl: Option<String>,
    pub container_wait: Option<String>,
    pub request_timeout: Option<String>,
    pub cgroup_roots: Option<Vec<String>>,
    pub host_cgroup_namespace: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthority {
    pub mode: Option<String>,
    pub ca_ttl: Option<String>,
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    pub intermediate_ttl: Option<String>,
    pub jwt_key_ttl: Option<String>,
    pub jwt_key_type: Option<String>,
    // mode = "spire"
    pub server_address: Option<String>,
    pub server_id: Option<String>,
    pub trust_bundle_path: Option<PathBuf>,
    pub insecure_bootstrap: Option<bool>,
    pub join_token: Option<Redacted>,
    pub x509pop_cert_path: Option<PathBuf>,
    pub x509pop_key_path: Option<PathBuf>,
    pub k8s_psat_cluster: Option<String>,
    pub k8s_psat_token_path: Option<PathBuf>,
    pub sync_interval: Option<String>,
}

/// A secret read from the file (a join token): never shown by `Debug`.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSvid {
    pub x509_ttl: Option<String>,
    pub jwt_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAttestation {
    pub hash_max_bytes: Option<u64>,
    pub exec_events: Option<bool>,
    pub peer_pidfd: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    pub retention: Option<String>,
    pub jwt_revocation: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_streams: Option<usize>,
    pub max_streams_per_uid: Option<usize>,
    pub max_connections: Option<usize>,
    pub max_connections_per_uid: Option<usize>,
    pub connection_idle: Option<String>,
    pub max_concurrent_streams: Option<usize>,
    pub new_credentials_per_second: Option<f64>,
    pub new_credentials_burst: Option<usize>,
    pub new_connections_per_second: Option<f64>,
    pub new_connections_burst: Option<usize>,
    pub jwt_cache_size: Option<usize>,
    pub jwt_cache_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFederation {
    pub trust_domain: Option<String>,
    pub bundle_path: Option<PathBuf>,
    pub jwks_path: Option<PathBuf>,
}

impl RawConfig {
    /// Reads and parses a file.
    pub fn read(path: &Path) -> Result<Self, Errors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Errors(vec![FieldError {
                field: "--config".into(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, Errors> {
        toml::from_str(text).map_err(|e| {
            Errors(vec![FieldError {
                field: origin.into(),
                message: toml_error(text, &e),
            }])
        })
    }
}

/// A TOML parse error as a message naming the line it is on.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let at = e
        .span()
        .map(|span| {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default();
    format!("{}{at}", e.message())
}
