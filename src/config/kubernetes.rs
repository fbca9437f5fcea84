//! Validation of `[kubernetes]`, `[[template]]` and `[health]`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::DEFAULT_HEALTH_ADDR;
use super::raw::{RawEntry, RawHealth, RawKubernetes};
use super::{
    DEFAULT_CGROUP_ROOTS, DEFAULT_CONTAINER_WAIT, DEFAULT_HOST_CGROUP_NS, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SNAPSHOT_TTL,
};
use crate::attest::k8s::cgroup::Root;
use crate::attest::k8s::{KubeletConfig, KubernetesConfig};
use crate::fields::{Collector, duration};
use crate::registry::EntryId;
use crate::registry::entry::entry;
use crate::registry::template::{Pattern, Template};
use crate::spiffe_id::TrustDomain;

/// Where a pod's service account token and cluster CA are mounted.
pub(super) const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
pub(super) const DEFAULT_KUBELET_CA_PATH: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";
/// The environment variable the DaemonSet fills from `spec.nodeName` (downward API).
pub(super) const DEFAULT_NODE_NAME_ENV: &str = "NODE_NAME";

pub(super) fn health(
    errs: &mut Collector,
    raw: &RawHealth,
    field: &str,
) -> Option<std::net::SocketAddr> {
    let text = raw.address.as_deref().unwrap_or(DEFAULT_HEALTH_ADDR);
    match crate::health::parse_addr(text) {
        Ok(addr) => addr,
        Err(e) => {
            errs.push(field, e);
            None
        }
    }
}

pub(super) fn kubernetes(
    errs: &mut Collector,
    raw: Option<&RawKubernetes>,
) -> Option<KubernetesConfig> {
    let k = raw?;
    if k.enabled == Some(false) {
        return None;
    }
    let env_name = k.node_name_env.as_deref().unwrap_or(DEFAULT_NODE_NAME_ENV);
    let node_name = k
        .node_name
        .clone()
        .or_else(|| std::env::var(env_name).ok().filter(|v| !v.is_empty()));
    let url = k
        .kubelet_url
        .clone()
        .unwrap_or_else(|| "https://{node_name}:10250".into());
    let url = if url.contains("{node_name}") {
        match &node_name {
            Some(node) => url.replace("{node_name}", node),
            None => {
                errs.push(
                    "kubernetes.node_name",
                    format!("unknown: not set here and ${env_name} is empty; set {env_name} from the downward API (fieldRef spec.nodeName), or set kubelet_url"),
                );
                return None;
            }
        }
    } else {
        url
    };
    let https = url.starts_with("https://");
    let skip_verify = k.skip_kubelet_verification.unwrap_or(false);
    let kubelet = KubeletConfig {
        url: url.clone(),
        token_path: if https {
            Some(
                k.token_path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_TOKEN_PATH)),
            )
        } else {
            k.token_path.clone()
        },
        ca_path: (https && !skip_verify).then(|| {
            k.kubelet_ca_path
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBELET_CA_PATH))
        }),
        server_name: k.kubelet_server_name.clone(),
        skip_verify,
        request_timeout: duration(
            errs,
            "kubernetes.request_timeout",
            k.request_timeout.as_deref(),
            DEFAULT_REQUEST_TIMEOUT,
        ),
    };
    if let Err(e) = crate::attest::k8s::Kubelet::new(kubelet.clone()) {
        errs.push("kubernetes.kubelet_url", e.to_string());
    }
    if !https && k.kubelet_ca_path.is_some() {
        errs.push(
            "kubernetes.kubelet_ca_path",
            "only used with an https:// kubelet_url",
        );
    }
    let snapshot_ttl = duration(
        errs,
        "kubernetes.snapshot_ttl",
        k.snapshot_ttl.as_deref(),
        DEFAULT_SNAPSHOT_TTL,
    );
    let container_wait = duration(
        errs,
        "kubernetes.container_wait",
        k.container_wait.as_deref(),
        DEFAULT_CONTAINER_WAIT,
    );
    if container_wait > Duration::from_secs(60) {
        errs.push(
            "kubernetes.container_wait",
            "longer than 1m would hold callers for too long; use a few seconds",
        );
    }
    if snapshot_ttl > Duration::from_secs(60) {
        errs.push(
            "kubernetes.snapshot_ttl",
            "longer than 1m would serve stale pod facts (labels); use a few seconds",
        );
    }
    let cgroup_roots = match &k.cgroup_roots {
        None => DEFAULT_CGROUP_ROOTS
            .iter()
            .filter_map(|r| Root::parse(r).ok())
            .collect(),
        Some(list) if list.is_empty() => {
            errs.push(
                "kubernetes.cgroup_roots",
                format!(
                    "empty: no process could be in a pod; leave it out for the defaults {DEFAULT_CGROUP_ROOTS:?}"
                ),
            );
            Vec::new()
        }
        Some(list) => list
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                Root::parse(r)
                    .map_err(|e| errs.push(format!("kubernetes.cgroup_roots[{i}]"), e))
                    .ok()
            })
            .collect(),
    };
    let host_cgroup_ns = match &k.host_cgroup_namespace {
        None => Some(PathBuf::from(DEFAULT_HOST_CGROUP_NS)),
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) if p.is_relative() => {
            errs.push(
                "kubernetes.host_cgroup_namespace",
                format!(
                    "{} is relative; such as \"{DEFAULT_HOST_CGROUP_NS}\", or \"\" to read cgroup paths as the agent's namespace shows them",
                    p.display()
                ),
            );
            None
        }
        Some(p) => Some(p.clone()),
    };
    Some(KubernetesConfig {
        kubelet,
        snapshot_ttl,
        container_wait,
        cgroup_roots,
        host_cgroup_ns,
    })
}

pub(super) fn templates(
    errs: &mut Collector,
    raw: &[RawEntry],
    td: Option<&TrustDomain>,
    federated: &HashSet<TrustDomain>,
) -> Vec<Template> {
    let mut out = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let at = format!("template[{i}]");
        let Some(text) = t.spiffe_id.as_deref() else {
            errs.push(
                format!("{at}.spiffe_id"),
                "missing; such as \"spiffe://{trust_domain}/ns/{k8s:ns}/sa/{k8s:sa}\"",
            );
            continue;
        };
        let pattern = match Pattern::parse(text) {
            Ok(p) => p,
            Err(e) => {
                errs.push(format!("{at}.spiffe_id"), e);
                continue;
            }
        };
        let mut dns = Vec::new();
        for (j, d) in t.dns_names.iter().enumerate() {
            match Pattern::parse(d) {
                Ok(p) => dns.push(p),
                Err(e) => errs.push(format!("{at}.dns_names[{j}]"), e),
            }
        }
        if dns.len() != t.dns_names.len() {
            continue;
        }
        let Some(td) = td else { continue };
        // Everything else is checked as an entry's would be, on the pattern rendered with sample
        // values (a template may have no selectors of its own: its placeholders select).
        let sample = RawEntry {
            spiffe_id: Some(pattern.sample(td)),
            selectors: if t.selectors.is_empty() {
                vec!["unix:uid:0".into()]
            } else {
                t.selectors.clone()
            },
            x509_ttl: t.x509_ttl.clone(),
            jwt_ttl: t.jwt_ttl.clone(),
            jwt_audiences: t.jwt_audiences.clone(),
            hint: t.hint.clone(),
            dns_names: dns.iter().map(|p| p.sample(td)).collect(),
            federates_with: t.federates_with.clone(),
        };
        let before = errs.0.len();
        let Some(checked) = entry(errs, &at, &sample, Some(td), federated) else {
            // Name the pattern, not the sample, where the sample is what was refused.
            for e in &mut errs.0[before..] {
                e.message = e.message.replace(&pattern.sample(td), text);
            }
            continue;
        };
        let mut id_text = text.to_owned();
        for s in &checked.selectors {
            id_text.push('\n');
            id_text.push_str(&s.to_string());
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, id_text.as_bytes());
        out.push(Template {
            id: EntryId::from_string(format!(
                "tmpl-{}",
                &crate::encoding::hex(digest.as_ref())[..16]
            )),
            spiffe_id: pattern,
            selectors: if t.selectors.is_empty() {
                vec![]
            } else {
                checked.selectors
            },
            x509_ttl: checked.x509_ttl,
            jwt_ttl: checked.jwt_ttl,
            jwt_audiences: checked.jwt_audiences,
            hint: checked.hint,
            dns_names: dns,
            federates_with: checked.federates_with,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn errors(text: &str) -> String {
        Config::from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn templates_are_checked_at_load_with_the_pattern_named() {
        let ok = Config::from_toml(
            "[[template]]\nspiffe_id = \"spiffe://{trust_domain}/ns/{k8s:ns}/sa/{k8s:sa}\"\ndns_names = [\"{k8s:pod-name}.{k8s:ns}.svc\"]\n",
        )
        .unwrap();
        assert_eq!(ok.templates.len(), 1);
        assert!(ok.templates[0].id.as_str().starts_with("tmpl-"));
        let err = errors(
            "[[template]]\nspiffe_id = \"spiffe://{trust_domain}/ns/{namespace}\"\n\n[[template]]\nspiffe_id = \"spiffe://other.org/ns/{k8s:ns}\"\n\n[[template]]\ndns_names = [\"x\"]\n\n[[template]]\nspiffe_id = \"spiffe://{trust_domain}/{k8s:sa}\"\nselectors = [\"k8s:bogus:1\"]\n",
        );
        for want in [
            "template[0].spiffe_id",
            "{namespace}",
            "template[1].spiffe_id",
            "spiffe://other.org/ns/{k8s:ns}",
            "template[2].spiffe_id: missing",
            "template[3].selectors[0]",
            "4 problems",
        ] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
    }

    #[test]
    fn kubernetes_settings_are_checked() {
        let ok =
            Config::from_toml("[kubernetes]\nnode_name = \"node-a\"\ncontainer_wait = \"3s\"\n")
                .unwrap();
        let k = ok.kubernetes.unwrap();
        assert_eq!(k.kubelet.url, "https://node-a:10250");
        assert_eq!(k.container_wait, std::time::Duration::from_secs(3));
        assert!(k.kubelet.token_path.is_some() && k.kubelet.ca_path.is_some());
        let ro = Config::from_toml("[kubernetes]\nkubelet_url = \"http://127.0.0.1:10255\"\n")
            .unwrap()
            .kubernetes
            .unwrap();
        assert_eq!(ro.kubelet.token_path, None);
        let off = Config::from_toml("[kubernetes]\nenabled = false\n").unwrap();
        assert!(off.kubernetes.is_none());
        let err = errors("[kubernetes]\nnode_name_env = \"LANYARD_TEST_UNSET_NODE\"\n");
        assert!(
            err.contains("LANYARD_TEST_UNSET_NODE") && err.contains("downward API"),
            "{err}"
        );
        let err = errors(
            "[kubernetes]\nkubelet_url = \"ftp://x\"\ncontainer_wait = \"10m\"\nsnapshot_ttl = \"soon\"\n",
        );
        for want in ["ftp://x", "kubernetes.container_wait", "\"soon\""] {
            assert!(err.contains(want), "missing {want:?} in {err}");
        }
    }
}
