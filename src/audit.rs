//! The audit stream: every issuance, rotation delivery and withdrawal as one JSON line, for a SIEM.
//!
//! Lines are written by the inventory's writer thread right after the commit that made the event
//! durable, so the audit never names a credential the inventory does not hold. A line carries
//! identities and process facts, never key material or tokens (a JWT is named by its `jti`).
//! Destination: stdout, or a file (0600, in a directory the agent owns) rotated by size:
//! `audit.jsonl` → `audit.jsonl.1` → … → `audit.jsonl.<keep>` (the oldest is dropped).

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

/// `[audit]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditConfig {
    Stdout,
    File {
        path: PathBuf,
        max_bytes: u64,
        keep: usize,
    },
}

/// One audit line.
#[derive(Debug, Clone, Serialize)]
pub struct Line<'a> {
    /// RFC 3339, UTC, seconds.
    pub time: String,
    /// `issued`, `rotated` (a new serial delivered in place of an older one) or `withdrawn`.
    pub event: &'static str,
    /// `x509` or `jwt`.
    pub kind: &'a str,
    pub spiffe_id: &'a str,
    /// Certificate serial (hex) for X.509, `jti` for JWT.
    pub serial: &'a str,
    pub entry: &'a str,
    pub pid: u32,
    pub uid: u32,
    pub executable: &'a str,
    /// Why it was withdrawn (`withdrawn` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// RFC 3339 for `t`.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Where audit lines go. Owned by one thread.
pub struct Audit {
    sink: Sink,
    warned: bool,
}

enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: Option<std::fs::File>,
        written: u64,
        max_bytes: u64,
        keep: usize,
    },
}

impl Audit {
    /// Opens the destination (a file is created 0600 in a directory the agent owns).
    pub fn open(config: &AuditConfig) -> std::io::Result<Self> {
        let sink = match config {
            AuditConfig::Stdout => Sink::Stdout,
            AuditConfig::File {
                path,
                max_bytes,
                keep,
            } => {
                if let Some(dir) = path.parent() {
                    crate::atomic_file::ensure_dir(dir, 0o700)?;
                }
                let file = open_append(path)?;
                let written = file.metadata()?.len();
                Sink::File {
                    path: path.clone(),
                    file: Some(file),
                    written,
                    max_bytes: *max_bytes,
                    keep: *keep,
                }
            }
        };
        Ok(Self {
            sink,
            warned: false,
        })
    }

    /// Writes one line (a failure is logged once per streak, never fatal).
    pub fn write(&mut self, line: &Line<'_>) {
        let Ok(mut text) = serde_json::to_vec(line) else {
            return;
        };
        text.push(b'\n');
        let result = match &mut self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&text),
            Sink::File {
                path,
                file,
                written,
                max_bytes,
                keep,
            } => {
                if *written > 0 && *written + text.len() as u64 > *max_bytes {
                    *file = None;
                    rotate(path, *keep);
                    *written = 0;
                }
                if file.is_none() {
                    *file = open_append(path).ok();
                }
                match file {
                    Some(f) => f.write_all(&text).map(|()| *written += text.len() as u64),
                    None => Err(std::io::Error::other("cannot open the audit file")),
                }
            }
        };
        match result {
            Ok(()) => {
                self.warned = false;
                crate::metrics::metrics()
                    .audit_events
                    .get_or_create(&crate::metrics::Event { event: line.event })
                    .inc();
            }
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(error = %e, "cannot write the audit stream; events are in the inventory");
            }
            Err(_) => {}
        }
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// `path.N` → `path.N+1` for N from `keep - 1` down to 1, then `path` → `path.1`.
fn rotate(path: &std::path::Path, keep: usize) {
    let numbered = |n: usize| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    if keep == 0 {
        let _ = std::fs::remove_file(path);
        return;
    }
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let _ = std::fs::rename(numbered(n), numbered(n + 1));
    }
    let _ = std::fs::rename(path, numbered(1));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(event: &'static str) -> Line<'static> {
        Line {
            time: timestamp(SystemTime::UNIX_EPOCH),
            event,
            kind: "x509",
            spiffe_id: "spiffe://example.org/a",
            serial: "0a",
            entry: "ent-1",
            pid: 42,
            uid: 1000,
            executable: "/usr/bin/app",
            reason: None,
        }
    }

    #[test]
    fn rotates_by_size_and_keeps_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit").join("audit.jsonl");
        let mut audit = Audit::open(&AuditConfig::File {
            path: path.clone(),
            max_bytes: 600,
            keep: 2,
        })
        .unwrap();
        for _ in 0..20 {
            audit.write(&line("issued"));
        }
        let first = std::fs::read_to_string(&path).unwrap();
        let v: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00Z");
        assert_eq!(v["event"], "issued");
        assert!(v.get("reason").is_none());
        assert!(std::fs::metadata(&path).unwrap().len() <= 600);
        assert!(path.with_extension("jsonl.1").exists());
        assert!(path.with_extension("jsonl.2").exists());
        assert!(!path.with_extension("jsonl.3").exists(), "keep = 2");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
