//! The `lanyard` binary as a user runs it: config errors, the agent's lifecycle and signals, and the
//! client subcommands.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn lanyard(args: &[&str]) -> std::process::Output {
    run(lanyard_bin().as_ref(), args)
}

/// Runs `program` with `args` (no `SPIFFE_ENDPOINT_SOCKET` from the test's environment).
fn run(program: &Path, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap()
}

/// Starts `lanyard agent` and waits for its `export SPIFFE_ENDPOINT_SOCKET=` line.
fn spawn_agent(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(lanyard_bin())
        .arg("agent")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(ep) = line.strip_prefix("export SPIFFE_ENDPOINT_SOCKET=") {
            return (child, ep.to_owned());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the agent printed no export line");
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill with a pid we own.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

fn wait_exit(child: &mut Child, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not exit within {secs}s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("lanyard.toml");
    std::fs::write(&path, config_text(dir, extra)).unwrap();
    path
}

fn entry(path: &str, uid: u32) -> String {
    format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org{path}\"\nselectors = [\"unix:uid:{uid}\"]\n"
    )
}

/// Values that once panicked the agent (or wrapped and pruned the whole inventory) exit 64 with
/// the field named, before anything starts.
#[test]
fn huge_durations_and_counts_exit_64_naming_the_field() {
    let dir = open_tempdir();
    let path = dir.path().join("huge.toml");
    for (text, field) in [
        ("[authority]\nca_ttl = \"8000y\"\n", "authority.ca_ttl"),
        (
            "[authority]\njwt_key_ttl = \"500000000000y\"\n",
            "authority.jwt_key_ttl",
        ),
        (
            "[inventory]\nretention = \"300000000000y\"\n",
            "inventory.retention",
        ),
        (
            "[limits]\nmax_streams = 9223372036854775807\n",
            "limits.max_streams",
        ),
        (
            "[limits]\nmax_streams = 18446744073709551615\n",
            "max_streams",
        ),
    ] {
        std::fs::write(&path, config_text(dir.path(), text)).unwrap();
        let out = lanyard(&["agent", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text}: {err}");
        assert!(err.contains(field), "{text}: {err}");
        assert!(!err.contains("panicked"), "{text}: {err}");
    }
}

#[test]
fn invalid_config_reports_every_error_and_exits_64() {
    let dir = open_tempdir();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "trust_domain = \"Bad.Domain\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/a/../b\"\nselectors = [\"unix:uid:x\"]\n",
    )
    .unwrap();
    let out = lanyard(&["agent", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("trust_domain: invalid trust domain \"Bad.Domain\""),
        "{err}"
    );
    assert!(
        err.contains("entry[0].spiffe_id: invalid SPIFFE ID \"spiffe://example.org/a/../b\""),
        "{err}"
    );
    assert!(err.contains("(ID-3)"), "{err}");
    assert!(
        err.contains("entry[0].selectors[0]: invalid selector \"unix:uid:x\""),
        "{err}"
    );

    let out = lanyard(&["agent", "--config", "/nonexistent/lanyard.toml"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/lanyard.toml"));

    let out = lanyard(&["agent", "--x509-ttl", "5s", "--socket", "relative.sock"]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--x509-ttl: 5s is shorter than the minimum"),
        "{err}"
    );
    assert!(
        err.contains("socket_path: \"relative.sock\" is not an absolute path"),
        "{err}"
    );
}

#[test]
fn help_names_every_subcommand() {
    let out = lanyard(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["agent", "fetch", "watch", "healthcheck"] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = lanyard(&["agent", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--dev",
        "--socket",
        "--trust-domain",
        "--data-dir",
        "--x509-ttl",
        "--log-format",
    ] {
        assert!(text.contains(flag), "agent --help lacks {flag}: {text}");
    }
}

/// The whole lifecycle of the real binary: serve, write files, reload on SIGHUP (and refuse a bad
/// reload), refuse a second agent on the same socket, stop on SIGTERM removing the socket.
#[test]
fn agent_lifecycle_fetch_reload_and_signals() {
    let dir = open_tempdir();
    let me = euid();
    let config = write_config(dir.path(), &entry("/one", me));
    let (mut agent, endpoint) = spawn_agent(&["--config", config.to_str().unwrap()]);
    assert_eq!(
        endpoint,
        format!("unix://{}", dir.path().join("workload.sock").display())
    );

    let out = lanyard(&["healthcheck", "--socket", &endpoint]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // fetch --write: key 0600, chain and bundle verify with openssl.
    let files = dir.path().join("files");
    let out = lanyard(&[
        "fetch",
        "x509",
        "--socket",
        &endpoint,
        "--write",
        files.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/one"));
    let mode = |p: &str| {
        std::fs::metadata(files.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("svid_key.pem"), 0o600);
    assert_eq!(mode("svid.pem"), 0o644);
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(files.join("bundle.pem"))
        .arg(files.join("svid.pem"))
        .output()
        .expect("openssl runs");
    assert!(
        verify.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let pubkey = |args: &[&str], file: &str| {
        let out = Command::new("openssl")
            .args(args)
            .arg(files.join(file))
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(
        pubkey(&["pkey", "-pubout", "-in"], "svid_key.pem"),
        pubkey(&["x509", "-noout", "-pubkey", "-in"], "svid.pem"),
        "the key file matches the certificate"
    );

    // SIGHUP with a bad file keeps the running policy.
    std::fs::write(&config, "trust_domain = \"Nope!\"\n").unwrap();
    signal(&agent, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let out = lanyard(&["fetch", "x509", "--json", "--socket", &endpoint]);
    assert_eq!(ids_in(&out), vec!["spiffe://example.org/one"]);

    // SIGHUP with a good file applies the new entries.
    write_config(
        dir.path(),
        &format!("{}{}", entry("/one", me), entry("/two", me)),
    );
    signal(&agent, libc::SIGHUP);
    let mut ids = vec![];
    for _ in 0..50 {
        ids = ids_in(&lanyard(&[
            "fetch", "x509", "--json", "--socket", &endpoint,
        ]));
        if ids.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        ids,
        vec!["spiffe://example.org/one", "spiffe://example.org/two"]
    );

    // A second agent on the same socket is refused; the first keeps serving.
    let second = lanyard(&["agent", "--config", config.to_str().unwrap()]);
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another agent is serving"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert!(
        lanyard(&["healthcheck", "--socket", &endpoint])
            .status
            .success()
    );

    signal(&agent, libc::SIGTERM);
    let status = wait_exit(&mut agent, 10);
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    assert!(!dir.path().join("workload.sock").exists(), "socket removed");
    let out = lanyard(&["healthcheck", "--socket", &endpoint, "--timeout", "2s"]);
    assert!(
        !out.status.success(),
        "healthcheck fails when the agent is down"
    );
}

/// A socket file nobody listens on is replaced; a regular file at the socket path is an error.
#[test]
fn stale_socket_is_replaced_but_other_files_are_not() {
    let dir = open_tempdir();
    let sock = dir.path().join("workload.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists(), "stale socket file left behind");
    let config = write_config(dir.path(), &entry("/one", euid()));
    let (mut agent, endpoint) = spawn_agent(&["--config", config.to_str().unwrap()]);
    assert!(
        lanyard(&["healthcheck", "--socket", &endpoint])
            .status
            .success()
    );
    signal(&agent, libc::SIGINT);
    assert!(wait_exit(&mut agent, 10).success(), "SIGINT exits 0");

    std::fs::write(&sock, "not a socket").unwrap();
    let out = lanyard(&["agent", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a socket"));
    assert_eq!(
        std::fs::read_to_string(&sock).unwrap(),
        "not a socket",
        "never deleted"
    );
}

/// `lanyard agent --dev` runs on embedded defaults in a per-user runtime directory and gives the
/// invoking user spiffe://example.org/user/<name>.
#[test]
fn dev_mode_serves_the_invoking_user() {
    let runtime = open_tempdir();
    let mut child = Command::new(lanyard_bin())
        .args(["agent", "--dev"])
        .env("XDG_RUNTIME_DIR", runtime.path())
        .env_remove("LANYARD_CONFIG")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let export = lines.next().unwrap().unwrap();
    let user = lanyard::sys::users::user_name(euid()).unwrap();
    assert!(
        first.contains(&format!("spiffe://example.org/user/{user}")),
        "{first}"
    );
    let want = format!(
        "export SPIFFE_ENDPOINT_SOCKET=unix://{}/lanyard/workload.sock",
        runtime.path().display()
    );
    assert_eq!(export, want);
    let endpoint = export.trim_start_matches("export SPIFFE_ENDPOINT_SOCKET=");
    let out = Command::new(lanyard_bin())
        .args(["fetch", "x509", "--json"])
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .output()
        .unwrap();
    assert_eq!(
        ids_in(&out),
        vec![format!("spiffe://example.org/user/{user}")]
    );
    let mode = std::fs::metadata(runtime.path().join("lanyard"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "the dev runtime directory is private");
    signal(&child, libc::SIGTERM);
    assert!(wait_exit(&mut child, 10).success());
}

/// `lanyard watch` prints a line per update.
#[test]
fn watch_prints_one_line_per_update() {
    let dir = open_tempdir();
    let config = write_config(dir.path(), &entry("/w", euid()));
    let (mut agent, endpoint) = spawn_agent(&["--config", config.to_str().unwrap()]);
    let mut watch = Command::new(lanyard_bin())
        .args(["watch", "--socket", &endpoint])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    assert!(
        line.contains("update=1 spiffe_id=spiffe://example.org/w serial="),
        "{line}"
    );
    assert!(line.contains("expires="), "{line}");
    write_config(
        dir.path(),
        &format!("{}{}", entry("/w", euid()), entry("/w2", euid())),
    );
    signal(&agent, libc::SIGHUP);
    let a = lines.next().unwrap().unwrap();
    let b = lines.next().unwrap().unwrap();
    assert!(
        a.contains("update=2 spiffe_id=spiffe://example.org/w "),
        "{a}"
    );
    assert!(
        b.contains("update=2 spiffe_id=spiffe://example.org/w2 "),
        "{b}"
    );
    let _ = watch.kill();
    let _ = watch.wait();
    signal(&agent, libc::SIGTERM);
    assert!(wait_exit(&mut agent, 10).success());
}

/// `lanyard fetch jwt`, `fetch jwt-bundles` and `validate jwt` as a user runs them.
#[test]
fn jwt_commands() {
    let dir = open_tempdir();
    let config = write_config(dir.path(), &entry("/j", euid()));
    let (mut agent, endpoint) = spawn_agent(&["--config", config.to_str().unwrap()]);
    let out = lanyard(&[
        "fetch",
        "jwt",
        "--socket",
        &endpoint,
        "--audience",
        "db",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["svids"][0]["spiffe_id"], "spiffe://example.org/j");
    let token = v["svids"][0]["token"].as_str().unwrap().to_owned();

    let ok = lanyard(&[
        "validate",
        "jwt",
        "--socket",
        &endpoint,
        "--audience",
        "db",
        &token,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("valid: spiffe://example.org/j"));
    let bad = lanyard(&[
        "validate",
        "jwt",
        "--socket",
        &endpoint,
        "--audience",
        "other",
        &token,
    ]);
    assert!(!bad.status.success(), "wrong audience must fail");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("InvalidAudience"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let out = lanyard(&["fetch", "jwt-bundles", "--socket", &endpoint]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("spiffe://example.org: 1 key(s): "));
    let out = lanyard(&["fetch", "jwt", "--socket", &endpoint]);
    assert!(!out.status.success(), "--audience is required");

    // The executable defines the two C math functions it calls (src/main.rs): after serving, the
    // agent has not loaded the C math library (its mapping was ~0.5 MB of resident memory).
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", agent.id())).unwrap();
    let libm: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains("/libm.so") || l.contains("/libm-"))
        .collect();
    assert!(
        libm.is_empty(),
        "the agent maps libm (a dependency calls a math function src/main.rs does not define?):\n{}",
        libm.join("\n")
    );
    signal(&agent, libc::SIGTERM);
    assert!(wait_exit(&mut agent, 10).success());
}

#[test]
fn bad_kubelet_cgroup_roots_exit_64_naming_the_root() {
    let dir = open_tempdir();
    let path = dir.path().join("roots.toml");
    for (roots, field, says) in [
        ("[]", "kubernetes.cgroup_roots", "empty"),
        (
            "[\"kubepods\"]",
            "kubernetes.cgroup_roots[0]",
            "not an absolute",
        ),
        (
            "[\"/kubepods\", \"/a/../b\"]",
            "kubernetes.cgroup_roots[1]",
            "\"..\"",
        ),
        ("[\"/\"]", "kubernetes.cgroup_roots[0]", "whole hierarchy"),
    ] {
        let text = format!(
            "[kubernetes]\nkubelet_url = \"http://127.0.0.1:10255\"\ncgroup_roots = {roots}\n"
        );
        std::fs::write(&path, config_text(dir.path(), &text)).unwrap();
        let out = lanyard(&["agent", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{roots}: {err}");
        assert!(err.contains(field) && err.contains(says), "{roots}: {err}");
    }
}

#[test]
fn bad_audit_and_metrics_settings_exit_64_naming_the_field() {
    let dir = open_tempdir();
    let path = dir.path().join("audit.toml");
    for (text, field) in [
        ("[audit]\n", "audit.path"),
        ("[audit]\npath = \"relative.jsonl\"\n", "audit.path"),
        ("[audit]\npath = \"stdout\"\nkeep = 3\n", "audit.keep"),
        (
            "[audit]\npath = \"/var/log/lanyard/a.jsonl\"\nmax_bytes = 10\n",
            "audit.max_bytes",
        ),
        (
            "[metrics]\nspiffe_id_labels = 1000000\n",
            "metrics.spiffe_id_labels",
        ),
    ] {
        std::fs::write(&path, config_text(dir.path(), text)).unwrap();
        let out = lanyard(&["agent", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{text}: {err}");
        assert!(err.contains(field), "{text}: {err}");
    }
}

/// A bad `TOKIO_WORKER_THREADS` is refused by name before anything starts (tokio itself would panic).
#[test]
fn a_bad_worker_thread_count_is_refused_by_name() {
    for bad in ["zero", "0", "-1"] {
        let out = Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(["agent", "--config", "/nonexistent/lanyard.toml"])
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("TOKIO_WORKER_THREADS=\"{bad}\"")) && err.contains("unset it"),
            "{err}"
        );
    }
}

/// The kernel keeps 15 bytes of a program's name (`comm`) and may cut a multi-byte character in
/// two: `/proc/<pid>/status` and `stat` then hold bytes that are not UTF-8. Such a caller is
/// attested like any other (it once got no identity: its `status` was read as a UTF-8 string).
#[test]
fn a_program_name_cut_mid_character_gets_its_identity() {
    let dir = open_tempdir();
    let me = euid();
    let config = write_config(dir.path(), &entry("/named", me));
    let (mut agent, endpoint) = spawn_agent(&["--config", config.to_str().unwrap()]);
    // Nine two-byte characters: 18 bytes, cut after the first byte of the eighth.
    let client = dir.path().join("ééééééééé");
    std::fs::copy(lanyard_bin(), &client).unwrap();
    let out = run(&client, &["fetch", "x509", "--socket", &endpoint]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("spiffe://example.org/named"));
    signal(&agent, libc::SIGTERM);
    assert!(wait_exit(&mut agent, 10).success());
}
