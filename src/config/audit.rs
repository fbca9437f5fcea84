//! `[audit]` and `[metrics]`.

use std::path::PathBuf;

use super::raw::{RawAudit, RawMetrics};
use super::{DEFAULT_AUDIT_KEEP, DEFAULT_AUDIT_MAX_BYTES};
use crate::audit::AuditConfig;
use crate::fields::Collector;

pub(super) fn audit(errs: &mut Collector, raw: Option<&RawAudit>) -> Option<AuditConfig> {
    let a = raw?;
    let Some(path) = a.path.as_deref() else {
        errs.push(
            "audit.path",
            "missing; \"stdout\" or an absolute file path such as \"/var/log/lanyard/audit.jsonl\"",
        );
        return None;
    };
    if path == "stdout" {
        for (set, field) in [
            (a.max_bytes.is_some(), "audit.max_bytes"),
            (a.keep.is_some(), "audit.keep"),
        ] {
            if set {
                errs.push(field, "only used with a file path; remove it");
            }
        }
        return Some(AuditConfig::Stdout);
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() || path.file_name().is_none() {
        errs.push(
            "audit.path",
            format!(
                "{:?} is neither \"stdout\" nor an absolute file path",
                path.display().to_string()
            ),
        );
        return None;
    }
    let max_bytes = a.max_bytes.unwrap_or(DEFAULT_AUDIT_MAX_BYTES);
    if !(4096..=(1usize << 40)).contains(&max_bytes) {
        errs.push(
            "audit.max_bytes",
            format!("{max_bytes} is outside 4096 to 1 TiB; such as 104857600 (100 MiB)"),
        );
    }
    let keep = a.keep.unwrap_or(DEFAULT_AUDIT_KEEP);
    if keep > 1000 {
        errs.push("audit.keep", format!("{keep} is more than 1000 files"));
    }
    Some(AuditConfig::File {
        path,
        max_bytes: max_bytes as u64,
        keep,
    })
}

pub(super) fn metrics(errs: &mut Collector, raw: &RawMetrics) -> usize {
    let n = raw.spiffe_id_labels.unwrap_or(0);
    if n > 10_000 {
        errs.push(
            "metrics.spiffe_id_labels",
            format!("{n} distinct label values would swamp Prometheus; at most 10000"),
        );
    }
    n
}
