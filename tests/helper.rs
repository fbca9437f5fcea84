//! `lanyard helper`: files for software that cannot speak SPIFFE.

mod common;

use std::os::unix::process::CommandExt;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::*;
use lanyard::proto::admin::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn once_writes_valid_files_and_exits_0() {
    let agent = TestAgent::start(&format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/legacy\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ))
    .await;
    let dir = agent.dir.path().join("certs");
    let ep = agent.endpoint();
    let d = dir.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(lanyard_bin())
            .args([
                "helper",
                "--once",
                "--socket",
                &ep,
                "--cert-dir",
                d.to_str().unwrap(),
                "--jwt-audience",
                "db.internal",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&dir.join("svid_key.pem")), 0o600);
    assert_eq!(mode(&dir.join("svid.pem")), 0o644);
    assert_eq!(mode(&dir.join("bundle.pem")), 0o644);
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("bundle.pem"))
        .arg(dir.join("svid.pem"))
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let pubkey = |args: &[&str], f: &str| {
        Command::new("openssl")
            .args(args)
            .arg(dir.join(f))
            .output()
            .unwrap()
            .stdout
    };
    assert_eq!(
        pubkey(&["pkey", "-pubout", "-in"], "svid_key.pem"),
        pubkey(&["x509", "-noout", "-pubkey", "-in"], "svid.pem")
    );
    let ready = std::fs::read_to_string(dir.join("ready")).unwrap();
    assert!(ready.starts_with("spiffe://example.org/legacy "), "{ready}");

    // The JWT-SVID file validates for its audience; the JWT bundle is a JWK Set per trust domain.
    assert_eq!(mode(&dir.join("jwt_db.internal.token")), 0o600);
    let token = std::fs::read_to_string(dir.join("jwt_db.internal.token")).unwrap();
    let ep = agent.endpoint();
    let ok = tokio::task::spawn_blocking(move || {
        Command::new(lanyard_bin())
            .args([
                "validate",
                "jwt",
                "--socket",
                &ep,
                "--audience",
                "db.internal",
                &token,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bundle: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("jwt_bundle.json")).unwrap()).unwrap();
    assert!(
        bundle["spiffe://example.org"]["keys"]
            .as_array()
            .is_some_and(|k| !k.is_empty())
    );
    agent.shutdown().await;
}

#[test]
fn once_against_a_stopped_agent_fails_clearly_and_writes_nothing() {
    let dir = open_tempdir();
    let certs = dir.path().join("certs");
    let out = Command::new(lanyard_bin())
        .args([
            "helper",
            "--once",
            "--socket",
            &format!("unix://{}/none.sock", dir.path().display()),
        ])
        .args(["--cert-dir", certs.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to the agent"), "{err}");
    let written = std::fs::read_dir(&certs)
        .map(std::iter::Iterator::count)
        .unwrap_or(0);
    assert_eq!(written, 0, "nothing written");
}

/// The entry `spiffe://example.org/legacy` for this uid, created through the admin API; a new
/// lifetime mints a new SVID (an update the helper must write and signal).
struct Legacy {
    admin: lanyard::client::AdminClient,
    id: String,
}

impl Legacy {
    fn spec(ttl: &str) -> EntrySpec {
        EntrySpec {
            spiffe_id: "spiffe://example.org/legacy".into(),
            selectors: vec![format!("unix:uid:{}", euid())],
            x509_ttl: ttl.into(),
            ..EntrySpec::default()
        }
    }

    async fn create(agent: &TestAgent) -> Self {
        let mut admin = lanyard::client::connect_admin(&agent.running().admin_socket_path)
            .await
            .unwrap();
        let id = admin
            .create_entry(CreateEntryRequest {
                spec: Some(Self::spec("30m")),
            })
            .await
            .unwrap()
            .into_inner()
            .id;
        Self { admin, id }
    }

    async fn set_ttl(&mut self, ttl: &str) {
        self.admin
            .update_entry(UpdateEntryRequest {
                id: self.id.clone(),
                spec: Some(Self::spec(ttl)),
            })
            .await
            .unwrap();
    }
}

/// Child mode: the child starts after the first files, gets SIGHUP after each update (counted), is
/// restarted when it dies, and gets SIGTERM when the helper stops.
#[tokio::test]
async fn child_mode_signals_restarts_and_forwards_sigterm() {
    let agent = TestAgent::start("").await;
    let mut legacy = Legacy::create(&agent).await;
    let dir = agent.dir.path().join("certs");
    let script = format!(
        "test -s {d}/svid.pem || exit 7; trap 'echo hup >> {d}/hups' HUP; trap 'echo term >> {d}/terms; exit 0' TERM; echo $$ >> {d}/pids; while :; do sleep 0.05; done",
        d = dir.display()
    );
    let mut helper = Command::new(lanyard_bin());
    helper
        .args([
            "helper",
            "--socket",
            &agent.endpoint(),
            "--cert-dir",
            dir.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Started as under `nohup`: SIGHUP ignored. The helper's child must still get its default
    // action back, or its `trap ... HUP` (and any consumer's reload) would never run.
    // SAFETY: only `signal`, async-signal-safe, between fork and exec.
    unsafe {
        helper.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let helper = helper.spawn().unwrap();
    let mut helper = KillOnDrop(Some(helper));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    wait_until("the child", 10, || read("pids").lines().count() == 1).await;

    // Three updates (a new lifetime mints a new SVID each time): a SIGHUP after each.
    for (i, ttl) in ["31m", "32m", "33m"].into_iter().enumerate() {
        let before = read("ready");
        legacy.set_ttl(ttl).await;
        wait_until("new files", 10, || read("ready") != before).await;
        wait_until("a SIGHUP for this update", 10, || {
            read("hups").lines().count() == i + 1
        })
        .await;
    }

    // The child dies: it is restarted.
    let first: i32 = read("pids").lines().next().unwrap().parse().unwrap();
    // SAFETY: killing the helper's child, which this test started.
    unsafe { libc::kill(first, libc::SIGKILL) };
    wait_until("a restarted child", 10, || {
        read("pids").lines().count() == 2
    })
    .await;

    // SIGTERM to the helper reaches the child.
    let mut helper = helper.0.take().unwrap();
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(helper.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || helper.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(read("terms").lines().count(), 1, "SIGTERM forwarded");
    agent.shutdown().await;
}

/// Sets `path`'s modification time to `secs_ago` seconds before now.
fn age_file(path: &std::path::Path, secs_ago: i64) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer; CLOCK_REALTIME always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    let t = libc::timespec {
        tv_sec: now.tv_sec - secs_ago,
        tv_nsec: 0,
    };
    // SAFETY: a valid path and two valid timespecs.
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) },
        0
    );
}

/// `--pid-file` (issue 11): the helper signals only a process the file vouches for — a file root or
/// the helper's uid wrote, not writable by others, naming a process that started before the file
/// was written (else the PID was reused) — through a pidfd, and re-reads the file only when it
/// changes. Each refusal is logged with what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_file_signals_only_a_process_the_file_vouches_for() {
    if !require_root("pid_file_signals_only_a_process_the_file_vouches_for") {
        return;
    }
    let agent = TestAgent::start("").await;
    let mut legacy = Legacy::create(&agent).await;
    let work = agent.dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let dir = agent.dir.path().join("certs");
    let mut target = Command::new("sh");
    target.args([
        "-c",
        &format!(
            "trap 'echo hup >> {w}/hups' HUP; while :; do sleep 0.05; done",
            w = work.display()
        ),
    ]);
    // A shell cannot trap a signal it was started with ignored (a test run under `nohup`).
    // SAFETY: only `signal`, async-signal-safe, between fork and exec.
    unsafe {
        target.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_DFL);
            Ok(())
        });
    }
    let target = target.spawn().unwrap();
    let target_pid = target.id();
    let _target = KillOnDrop(Some(target));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let pid_file = work.join("target.pid");
    std::fs::write(&pid_file, format!("{target_pid}\n")).unwrap();
    std::fs::set_permissions(&pid_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = work.join("helper.log");
    let helper = Command::new(lanyard_bin())
        .args([
            "helper",
            "--socket",
            &agent.endpoint(),
            "--cert-dir",
            dir.to_str().unwrap(),
            "--signal",
            "HUP",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _helper = KillOnDrop(Some(helper));
    let read = |f: &str| std::fs::read_to_string(work.join(f)).unwrap_or_default();
    let hups = || read("hups").lines().count();
    wait_until("the first SIGHUP", 10, || hups() == 1).await;

    let mut ttl = 31;
    let mut update = async || {
        let before = std::fs::read_to_string(dir.join("ready")).unwrap_or_default();
        legacy.set_ttl(&format!("{ttl}m")).await;
        ttl += 1;
        wait_until("new files", 10, || {
            std::fs::read_to_string(dir.join("ready")).unwrap_or_default() != before
        })
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    // Writable by others: anyone could aim the signal.
    std::fs::set_permissions(&pid_file, std::fs::Permissions::from_mode(0o666)).unwrap();
    update().await;
    assert_eq!(hups(), 1);
    assert!(
        read("helper.log").contains("writable by group or others"),
        "{}",
        read("helper.log")
    );
    // Owned by another user.
    std::fs::set_permissions(&pid_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&pid_file, Some(65534), Some(65534)).unwrap();
    update().await;
    assert_eq!(hups(), 1);
    assert!(
        read("helper.log").contains("owned by uid 65534"),
        "{}",
        read("helper.log")
    );
    // Written before its process started: the PID the file meant was reused.
    std::os::unix::fs::chown(&pid_file, Some(0), Some(0)).unwrap();
    age_file(&pid_file, 3600);
    update().await;
    assert_eq!(hups(), 1);
    assert!(
        read("helper.log").contains("the PID was reused"),
        "{}",
        read("helper.log")
    );
    // A file that vouches for its process again: signalled.
    age_file(&pid_file, 0);
    update().await;
    assert_eq!(hups(), 2);
    // Unchanged file: the pinned process keeps getting the signal without a re-read.
    update().await;
    assert_eq!(hups(), 3);
    agent.shutdown().await;
}
