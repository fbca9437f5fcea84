//! Lifecycle control: entries through the admin API and CLI, the credential inventory, withdrawal on
//! exit, re-attestation after exec, crash safety, and the admin socket's access rules.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lanyard::proto::X509svidRequest;
use lanyard::proto::admin::*;
use tonic::Code;

fn lanyard(args: &[&str]) -> std::process::Output {
    Command::new(lanyard_bin()).args(args).output().unwrap()
}

fn spawn_agent(config: &Path) -> Child {
    let mut child = Command::new(lanyard_bin())
        .args(["agent", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("export SPIFFE_ENDPOINT_SOCKET=") => break,
            Some(_) => continue,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("agent did not start");
            }
        }
    }
    child
}

fn stop(child: &mut Child, sig: i32) {
    // SAFETY: signalling a child we own.
    unsafe { libc::kill(child.id() as i32, sig) };
    let _ = child.wait();
}

fn entry(path: &str, selector: &str) -> String {
    format!("[[entry]]\nspiffe_id = \"spiffe://example.org{path}\"\nselectors = [\"{selector}\"]\n")
}

fn spec(path: &str, selectors: &[&str]) -> EntrySpec {
    EntrySpec {
        spiffe_id: format!("spiffe://example.org{path}"),
        selectors: selectors
            .iter()
            .map(std::string::ToString::to_string)
            .collect(),
        ..EntrySpec::default()
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Entry CRUD end to end through the CLI; bad input names the field; managed entries survive a
/// restart while declared ones follow the config file.
#[test]
fn entry_crud_through_the_cli_survives_restart() {
    let dir = open_tempdir();
    let config = dir.path().join("lanyard.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), &entry("/declared", "unix:uid:4001")),
    )
    .unwrap();
    let admin = dir.path().join("admin/admin.sock");
    let a = admin.to_str().unwrap();
    let mut agent = spawn_agent(&config);

    let out = lanyard(&[
        "entry",
        "create",
        "--admin-socket",
        a,
        "--spiffe-id",
        "spiffe://example.org/managed",
        "--selector",
        "unix:uid:4002",
        "--selector",
        "unix:gid:4002",
        "--hint",
        "m",
        "--x509-ttl",
        "10m",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let created: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ent-"));
    assert_eq!(created["origin"], "managed");
    assert_eq!(
        created["selectors"],
        serde_json::json!(["unix:uid:4002", "unix:gid:4002"])
    );

    let table = stdout(&lanyard(&["entry", "list", "--admin-socket", a]));
    assert!(
        table.contains("declared") && table.contains("spiffe://example.org/declared"),
        "{table}"
    );
    assert!(
        table.contains(&id) && table.contains("spiffe://example.org/managed"),
        "{table}"
    );
    let filtered = stdout(&lanyard(&[
        "entry",
        "list",
        "--admin-socket",
        a,
        "--selector",
        "unix:uid:4002",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&filtered).unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    let by_id = stdout(&lanyard(&[
        "entry",
        "list",
        "--admin-socket",
        a,
        "--spiffe-id",
        "spiffe://example.org/declared",
        "--json",
    ]));
    let v: serde_json::Value = serde_json::from_str(&by_id).unwrap();
    assert_eq!(v["entries"][0]["origin"], "declared");

    let out = lanyard(&[
        "entry",
        "update",
        "--admin-socket",
        a,
        &id,
        "--hint",
        "changed",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let updated: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(updated["hint"], "changed");
    assert_eq!(
        updated["x509_ttl"], "10m",
        "fields not given keep their values"
    );
    let show = stdout(&lanyard(&["entry", "show", "--admin-socket", a, &id]));
    assert!(show.contains("Hint:           changed"), "{show}");

    // Bad input, with the field and value named.
    let out = lanyard(&[
        "entry",
        "create",
        "--admin-socket",
        a,
        "--spiffe-id",
        "spiffe://example.org/a//b",
        "--selector",
        "unix:uid:1",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("entry.spiffe_id: invalid SPIFFE ID \"spiffe://example.org/a//b\": empty path segment (ID-3)"), "{}", stderr(&out));
    let out = lanyard(&[
        "entry",
        "create",
        "--admin-socket",
        a,
        "--spiffe-id",
        "spiffe://example.org/x",
        "--selector",
        "unix:uid:abc",
    ]);
    assert!(
        stderr(&out).contains("entry.selectors[0]: invalid selector \"unix:uid:abc\""),
        "{}",
        stderr(&out)
    );
    let out = lanyard(&[
        "entry",
        "create",
        "--admin-socket",
        a,
        "--spiffe-id",
        "spiffe://example.org/managed",
        "--selector",
        "unix:uid:4002",
        "--selector",
        "unix:gid:4002",
    ]);
    assert!(stderr(&out).contains("AlreadyExists"), "{}", stderr(&out));
    let declared_id = v["entries"][0]["id"].as_str().unwrap().to_owned();
    let out = lanyard(&["entry", "delete", "--admin-socket", a, &declared_id]);
    assert!(
        stderr(&out).contains("declared in the config file"),
        "{}",
        stderr(&out)
    );
    let out = lanyard(&["entry", "show", "--admin-socket", a, "ent-nope"]);
    assert!(stderr(&out).contains("NotFound"), "{}", stderr(&out));

    // Restart with a changed config: the managed entry stays, declared entries follow the file.
    stop(&mut agent, libc::SIGTERM);
    std::fs::write(
        &config,
        config_text(dir.path(), &entry("/declared-2", "unix:uid:4003")),
    )
    .unwrap();
    let mut agent = spawn_agent(&config);
    let v: serde_json::Value = serde_json::from_str(&stdout(&lanyard(&[
        "entry",
        "list",
        "--admin-socket",
        a,
        "--json",
    ])))
    .unwrap();
    let ids: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["spiffe_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        vec![
            "spiffe://example.org/declared-2",
            "spiffe://example.org/managed"
        ]
    );

    let out = lanyard(&["entry", "delete", "--admin-socket", a, &id]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&lanyard(&[
        "entry",
        "list",
        "--admin-socket",
        a,
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    stop(&mut agent, libc::SIGTERM);
}

/// An admin change reaches an open stream at once: a new message on create, PermissionDenied when
/// the last entry is deleted.
#[tokio::test]
async fn open_stream_follows_entry_changes() {
    let agent = TestAgent::start("").await;
    let mut admin = lanyard::client::connect_admin(&agent.running().admin_socket_path)
        .await
        .unwrap();
    let me = format!("unix:uid:{}", euid());
    let a = admin
        .create_entry(CreateEntryRequest {
            spec: Some(spec("/a", &[&me])),
        })
        .await
        .unwrap()
        .into_inner();
    let mut c = agent.client().await;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut stream, 5).await;
    assert_eq!(first.svids.len(), 1);

    let t = Instant::now();
    let b = admin
        .create_entry(CreateEntryRequest {
            spec: Some(spec("/b", &[&me])),
        })
        .await
        .unwrap()
        .into_inner();
    let second = next_within(&mut stream, 5).await;
    eprintln!("entry create to stream message: {:?}", t.elapsed());
    let ids: Vec<&str> = second.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["spiffe://example.org/a", "spiffe://example.org/b"]
    );

    admin
        .delete_entry(DeleteEntryRequest { id: a.id })
        .await
        .unwrap();
    let third = next_within(&mut stream, 5).await;
    assert_eq!(third.svids.len(), 1);
    admin
        .delete_entry(DeleteEntryRequest { id: b.id })
        .await
        .unwrap();
    assert_eq!(
        end_status(&mut stream, 5).await.code(),
        Code::PermissionDenied
    );

    // The withdrawals are on record.
    let creds = admin
        .list_credentials(ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .credentials;
    assert!(
        creds
            .iter()
            .all(|c| c.withdraw_reason == "entitlement removed"),
        "{creds:?}"
    );
    agent.shutdown().await;
}

async fn wait_for_credentials<F>(admin: &mut lanyard::client::AdminClient, f: F) -> Vec<Credential>
where
    F: Fn(&[Credential]) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let creds = admin
            .list_credentials(ListCredentialsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .credentials;
        if f(&creds) {
            return creds;
        }
        assert!(
            Instant::now() < deadline,
            "inventory never matched: {creds:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A killed workload's credentials are withdrawn with reason "process exited", event-driven.
#[tokio::test]
async fn killed_workload_is_withdrawn_as_process_exited() {
    let agent = TestAgent::start(&entry("/w", &format!("unix:uid:{}", euid()))).await;
    let mut admin = lanyard::client::connect_admin(&agent.running().admin_socket_path)
        .await
        .unwrap();
    let mut child = Command::new(lanyard_bin())
        .args(["watch", "--socket", &agent.endpoint()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap())
        .await
        .unwrap();
    let serial = line
        .split("serial=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let live = wait_for_credentials(&mut admin, |c| c.iter().any(|c| c.pid == pid)).await;
    let row = live.iter().find(|c| c.pid == pid).unwrap();
    assert_eq!(row.serial, serial, "the delivered serial is on record");
    assert_eq!(row.withdrawn_at, 0);
    assert_eq!(row.kind, "x509");
    assert!(row.executable.ends_with("/lanyard"), "{}", row.executable);

    child.kill().unwrap();
    let killed = Instant::now();
    child.wait().unwrap();
    let rows = wait_for_credentials(&mut admin, |c| {
        c.iter().any(|c| c.pid == pid && c.withdrawn_at > 0)
    })
    .await;
    eprintln!("kill to withdrawal on record: {:?}", killed.elapsed());
    let row = rows.iter().find(|c| c.pid == pid).unwrap();
    assert_eq!(row.withdraw_reason, "process exited");
    let live = admin
        .list_credentials(ListCredentialsRequest {
            live: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .credentials;
    assert!(!live.iter().any(|c| c.pid == pid));
    agent.shutdown().await;
}

/// Runs one exec scenario: a child running this test binary connects and receives the test-binary
/// identity, then execs /bin/sleep. With exec events the kernel's notice re-attests it at once;
/// without, the next push (the rotation of a 1-minute SVID) does.
async fn exec_scenario(
    sleeper_has_entry: bool,
    exec_events: bool,
) -> Result<Vec<String>, tonic::Status> {
    let me = std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap();
    let sleep = std::fs::canonicalize("/bin/sleep").unwrap();
    let mut cfg = format!(
        "[attestation]\nexec_events = {exec_events}\n[svid]\nx509_ttl = \"1m\"\n{}",
        entry("/test-binary", &format!("unix:path:{}", me.display()))
    );
    if sleeper_has_entry {
        cfg.push_str(&entry(
            "/sleeper",
            &format!("unix:path:{}", sleep.display()),
        ));
    }
    let agent = TestAgent::start(&cfg).await;
    let (fd, go, child) =
        fork_connect_then_exec(&agent.socket, None, &[sleep.to_str().unwrap(), "120"]);
    let mut c = client_over(fd).await;
    let mut s = c
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut s, 5).await;
    let ids: Vec<&str> = first.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["spiffe://example.org/test-binary"],
        "before exec the child runs the test binary"
    );
    // SAFETY: one byte into our own pipe lets the child exec.
    unsafe { libc::write(go, b"x".as_ptr().cast(), 1) };
    use tokio_stream::StreamExt;
    let next = tokio::time::timeout(Duration::from_secs(75), s.next())
        .await
        .expect("a push within the SVID's lifetime")
        .expect("the stream ends with a message or a status");
    drop(child);
    agent.shutdown().await;
    next.map(|m| m.svids.iter().map(|s| s.spiffe_id.clone()).collect())
}

/// Re-attestation before each rotation push (exec events off): after exec into a program no entry
/// matches, the stream ends with PermissionDenied.
#[tokio::test]
async fn exec_into_an_unentitled_program_ends_the_stream_at_the_next_rotation() {
    let outcome = exec_scenario(false, false).await;
    let status = outcome.expect_err("the stream must end");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// After exec into a program that has an entry of its own, the connection does not get that
/// identity: it was opened by another program, so the stream ends (rotation-triggered
/// re-attestation, exec events off). The new program gets its identity by connecting itself.
#[tokio::test]
async fn exec_into_an_entitled_program_is_cut_off_not_followed() {
    let status = exec_scenario(true, false)
        .await
        .expect_err("identity never follows an exec");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("changed its program"),
        "{status:?}"
    );
}

/// With the kernel's exec events (root), the cut-off is immediate, long before the rotation,
/// whether or not the new program has an entry.
#[tokio::test]
async fn exec_event_re_attests_at_once() {
    if !require_root("exec_event_re_attests_at_once") {
        return;
    }
    let started = Instant::now();
    let outcome = exec_scenario(false, true).await;
    assert_eq!(
        outcome.expect_err("the stream must end").code(),
        Code::PermissionDenied
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}: the exec event was not used",
        started.elapsed()
    );
    let started = Instant::now();
    let status = exec_scenario(true, true)
        .await
        .expect_err("identity never follows an exec");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// `kill -9` of the agent while many workloads fetch: after a restart every serial any client
/// received is in the inventory, and the CA and entries are unchanged.
#[test]
fn agent_killed_mid_fetch_loses_no_record() {
    if !require_root("agent_killed_mid_fetch_loses_no_record") {
        return;
    }
    let dir = open_tempdir();
    let config = dir.path().join("lanyard.toml");
    let mut extra = String::new();
    for uid in 5001..5005 {
        extra.push_str(&entry(&format!("/w{uid}"), &format!("unix:uid:{uid}")));
    }
    std::fs::write(&config, config_text(dir.path(), &extra)).unwrap();
    let endpoint = format!("unix://{}", dir.path().join("workload.sock").display());
    let admin = dir.path().join("admin/admin.sock");
    let mut agent = spawn_agent(&config);
    let bundle_before = std::fs::read(dir.path().join("data/authority/root.pem")).unwrap();
    let entries_before = stdout(&lanyard(&[
        "entry",
        "list",
        "--admin-socket",
        admin.to_str().unwrap(),
        "--json",
    ]));

    let stop_at = Instant::now() + Duration::from_millis(1500);
    let workers: Vec<_> = (5001..5005u32)
        .map(|uid| {
            let ep = endpoint.clone();
            std::thread::spawn(move || {
                let mut serials = Vec::new();
                while Instant::now() < stop_at + Duration::from_millis(500) {
                    let out = fetch_as(uid, uid, &ep);
                    if out.status.success() {
                        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                        serials.push(v["svids"][0]["serial"].as_str().unwrap().to_owned());
                    }
                }
                serials
            })
        })
        .collect();
    std::thread::sleep(stop_at - Instant::now());
    // SAFETY: SIGKILL to our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGKILL) };
    agent.wait().unwrap();
    let received: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(
        !received.is_empty(),
        "some fetches succeeded before the kill"
    );

    let mut agent = spawn_agent(&config);
    let out = lanyard(&[
        "inventory",
        "--admin-socket",
        admin.to_str().unwrap(),
        "--json",
        "--limit",
        "100000",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let recorded: std::collections::HashSet<&str> = v["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["serial"].as_str().unwrap())
        .collect();
    for serial in &received {
        assert!(
            recorded.contains(serial.as_str()),
            "serial {serial} was delivered but not recorded"
        );
    }
    assert_eq!(
        std::fs::read(dir.path().join("data/authority/root.pem")).unwrap(),
        bundle_before,
        "CA unchanged"
    );
    let entries_after = stdout(&lanyard(&[
        "entry",
        "list",
        "--admin-socket",
        admin.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(entries_after, entries_before, "entries unchanged");
    stop(&mut agent, libc::SIGTERM);
}

/// The admin socket refuses a non-root caller, and the Workload API socket has no admin service.
#[tokio::test]
async fn admin_socket_is_root_only_and_separate() {
    let agent = TestAgent::start(&entry("/a", &format!("unix:uid:{}", euid()))).await;
    let admin_path = agent.running().admin_socket_path.clone();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&admin_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin socket mode");
    let dir_mode = std::fs::metadata(admin_path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "admin directory mode");

    // The public socket does not serve the admin API.
    let mut wrong = lanyard::client::connect_admin(&agent.socket).await.unwrap();
    let err = wrong
        .list_entries(ListEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    if require_root("admin_socket_is_root_only_and_separate (non-root part)") {
        let out = tokio::task::spawn_blocking(move || {
            use std::os::unix::process::CommandExt;
            Command::new(lanyard_bin())
                .args([
                    "entry",
                    "list",
                    "--admin-socket",
                    admin_path.to_str().unwrap(),
                ])
                .uid(1000)
                .gid(1000)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(!out.status.success(), "a non-root caller must be refused");
        let err = stderr(&out);
        assert!(
            err.contains("Permission denied") || err.contains("PermissionDenied"),
            "{err}"
        );
    }
    agent.shutdown().await;
}
