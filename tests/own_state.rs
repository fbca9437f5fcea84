//! The agent only uses state it owns. A data directory, authority directory, key file or (dev
//! mode) runtime directory that another user created or can write is refused with a clear error
//! and exit 1, never adopted: otherwise the agent would sign with whatever CA that user left there.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

/// Runs `lanyard agent --config` on `dir`'s config and expects a refusal naming `needle`.
fn refused(dir: &Path, needle: &str) {
    let config = dir.join("lanyard.toml");
    std::fs::write(&config, config_text(dir, "")).unwrap();
    let out = Command::new(lanyard_bin())
        .args(["agent", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "expected exit 1: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!dir.join("workload.sock").exists(), "nothing may be served");
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

/// A data directory pre-created by another user, with a root of that user's choosing in it.
#[test]
fn foreign_data_dir_is_refused() {
    if !require_root("foreign_data_dir_is_refused") {
        return;
    }
    let dir = open_tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("authority")).unwrap();
    std::fs::write(data.join("authority/root.pem"), "attacker's CA").unwrap();
    for p in [
        &data,
        &data.join("authority"),
        &data.join("authority/root.pem"),
    ] {
        chown(p, 65534);
    }
    refused(dir.path(), "owned by uid 65534, not by the agent's uid 0");
}

#[test]
fn group_writable_data_dir_is_refused() {
    let dir = open_tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o770)).unwrap();
    refused(dir.path(), "writable by group or others");
}

/// An authority directory owned by someone else inside the agent's own data directory.
#[test]
fn foreign_authority_dir_is_refused() {
    if !require_root("foreign_authority_dir_is_refused") {
        return;
    }
    let dir = open_tempdir();
    let authority = dir.path().join("data/authority");
    std::fs::create_dir_all(&authority).unwrap();
    std::fs::set_permissions(
        dir.path().join("data"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    chown(&authority, 65534);
    refused(dir.path(), "owned by uid 65534");
}

/// A key file readable by others (or swapped for a symlink) is refused, not used.
#[test]
fn loose_or_linked_key_files_are_refused() {
    let dir = open_tempdir();
    // First start creates the root; then loosen its mode.
    let config = dir.path().join("lanyard.toml");
    std::fs::write(&config, config_text(dir.path(), "")).unwrap();
    let mut agent = Command::new(lanyard_bin())
        .args(["agent", "--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let root = dir.path().join("data/authority/root.pem");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !dir.path().join("workload.sock").exists() {
        assert!(std::time::Instant::now() < deadline, "agent did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o777, 0o600);
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    agent.wait().unwrap();

    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(dir.path(), "readable or writable by others");

    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o600)).unwrap();
    let elsewhere = dir.path().join("elsewhere.pem");
    std::fs::rename(&root, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &root).unwrap();
    refused(dir.path(), "is a symbolic link");
}

/// `agent --dev` without XDG_RUNTIME_DIR uses /tmp/lanyard-<uid>. One pre-created by another user
/// (here uid 4242, for a dev agent of uid 65534) is refused.
#[test]
fn dev_mode_refuses_a_precreated_runtime_dir() {
    if !require_root("dev_mode_refuses_a_precreated_runtime_dir") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let runtime = Path::new("/tmp/lanyard-65534");
    let _ = std::fs::remove_dir_all(runtime);
    std::fs::create_dir(runtime).unwrap();
    chown(runtime, 4242);
    let out = Command::new(lanyard_bin())
        .args(["agent", "--dev"])
        .env_remove("XDG_RUNTIME_DIR")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(runtime);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("owned by uid 4242, not by the agent's uid 65534"),
        "{err}"
    );
}
