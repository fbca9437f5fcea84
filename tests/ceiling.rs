//! A connection never carries more than its connecting process was at connect. Each test runs the
//! attack for real against a live agent: an unprivileged process (uid 65534) connects, then the
//! process that connected changes — a setuid exec of `su`, an exec of a program that has an entry of
//! its own — while the socket stays with someone else (here the test, standing in for the forked
//! child that inherited it). Whoever holds the socket must get nothing. Also: `unix:path` is not
//! trusted in another mount namespace, and the path of kernels without `SO_PEERPIDFD` holds the same
//! line.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lanyard::proto::{JwtsvidRequest, X509svidRequest};
use tonic::Code;

const NOBODY: u32 = 65534;

fn entry(path: &str, selector: &str) -> String {
    format!("[[entry]]\nspiffe_id = \"spiffe://example.org{path}\"\nselectors = [\"{selector}\"]\n")
}

/// Waits until `pid` runs `exe` (its exec happened).
fn wait_for_exe(pid: i32, exe: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        if now.as_os_str() == exe {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never ran {exe} (runs {now:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lets the forked child exec, and waits until it did.
fn let_it_exec(go: i32, pid: i32, exe: &str) {
    // SAFETY: one byte into our own pipe lets the child exec.
    assert_eq!(unsafe { libc::write(go, b"x".as_ptr().cast(), 1) }, 1);
    wait_for_exe(pid, exe);
}

/// FetchX509SVID and FetchJWTSVID over the held socket: both must be refused, and no SVID of
/// `forbidden` may come back.
async fn holder_gets_nothing_on(
    client: &mut lanyard::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient<
        tonic::transport::Channel,
    >,
    forbidden: &str,
) {
    match client.fetch_x509svid(with_header(X509svidRequest {})).await {
        Ok(resp) => {
            let mut stream = resp.into_inner();
            let status = end_status(&mut stream, 10).await;
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        }
        Err(status) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
    }
    let jwt = client
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["db.example".into()],
            spiffe_id: String::new(),
        }))
        .await;
    match jwt {
        Ok(resp) => panic!(
            "the socket holder got JWT-SVIDs {:?} (must never get {forbidden})",
            resp.into_inner()
                .svids
                .iter()
                .map(|s| s.spiffe_id.clone())
                .collect::<Vec<_>>()
        ),
        Err(status) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
    }
}

/// The SPIFFE IDs in the first message of a new X.509 stream over `client`.
async fn first_ids(
    client: &mut lanyard::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient<
        tonic::transport::Channel,
    >,
) -> Vec<String> {
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut stream, 10).await;
    first.svids.into_iter().map(|s| s.spiffe_id).collect()
}

/// The reported attack: uid 65534 connects, the connecting process execs setuid-root `su` (which
/// waits for a password nobody types), and the holder of the socket asks for SVIDs. Before the fix
/// it received root's X.509-SVID with its key, and root's JWT-SVID.
async fn setuid_exec_attack(extra_config: &str, call_before_exec: bool) {
    let cfg = format!(
        "{extra_config}{}{}",
        entry("/root", "unix:uid:0"),
        entry("/nobody", &format!("unix:uid:{NOBODY}"))
    );
    let agent = TestAgent::start(&cfg).await;
    let (fd, go, child) =
        fork_connect_then_exec(&agent.socket, Some(NOBODY), &["/usr/bin/su", "root"]);
    let mut client = client_over(fd).await;
    if call_before_exec {
        // The agent has accepted (and recorded the ceiling) before the exec: uid 65534's identity.
        let mut stream = client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let first = next_within(&mut stream, 5).await;
        assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/nobody");
    }
    // Without a call first, the exec usually happens before the agent accepts: then the
    // credentials at connect (SO_PEERCRED) and those in /proc disagree at accept.
    let_it_exec(go, child.pid, "/usr/bin/su");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid)).unwrap();
    let euid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        euid.split_whitespace().nth(2) == Some("0"),
        "su runs as root now: {euid}"
    );
    holder_gets_nothing_on(&mut client, "spiffe://example.org/root").await;
    drop(child);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn setuid_exec_after_connect_gives_the_socket_holder_nothing() {
    if !require_root("setuid_exec_after_connect_gives_the_socket_holder_nothing") {
        return;
    }
    setuid_exec_attack("", false).await;
    setuid_exec_attack("", true).await;
}

/// The same attack on the path of kernels without `SO_PEERPIDFD` (pidfd opened by PID, start time
/// and sock_diag checks), forced on this kernel by `attestation.peer_pidfd = false`.
#[tokio::test(flavor = "multi_thread")]
async fn setuid_exec_attack_fails_on_the_old_kernel_path_too() {
    if !require_root("setuid_exec_attack_fails_on_the_old_kernel_path_too") {
        return;
    }
    setuid_exec_attack("[attestation]\npeer_pidfd = false\n", false).await;
    setuid_exec_attack("[attestation]\npeer_pidfd = false\n", true).await;
}

/// The old-kernel path still serves honest callers (sock_diag finds the caller holding its socket).
#[tokio::test(flavor = "multi_thread")]
async fn old_kernel_path_serves_a_process_that_holds_its_socket() {
    if !require_root("old_kernel_path_serves_a_process_that_holds_its_socket") {
        return;
    }
    let cfg = format!(
        "[attestation]\npeer_pidfd = false\n{}",
        entry("/nobody", &format!("unix:uid:{NOBODY}"))
    );
    let agent = TestAgent::start(&cfg).await;
    let endpoint = agent.endpoint();
    let out = tokio::task::spawn_blocking(move || fetch_as(NOBODY, NOBODY, &endpoint))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ids_in(&out), ["spiffe://example.org/nobody"]);
    agent.shutdown().await;
}

/// Exec of a program that has an entry of its own (`unix:path:/usr/bin/sleep`) after connecting:
/// the holder of the socket does not get the sleeper's identity, on a new call or on an open
/// stream.
#[tokio::test(flavor = "multi_thread")]
async fn exec_of_an_entitled_program_after_connect_gives_the_holder_nothing() {
    if !require_root("exec_of_an_entitled_program_after_connect_gives_the_holder_nothing") {
        return;
    }
    let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
    let sleep = sleep.to_str().unwrap();
    let cfg = entry("/sleeper", &format!("unix:path:{sleep}"));
    let agent = TestAgent::start(&cfg).await;

    // A new call after the exec. The first call (refused: uid 65534 has no entry) makes sure the
    // agent accepted the connection, and so recorded its ceiling, before the exec. (An exec between
    // connect() and accept() by a process of the same uid is not visible to the agent: the kernel
    // records the credentials at connect, not the program; see README, "Threat model".)
    let (fd, go, child) = fork_connect_then_exec(&agent.socket, Some(NOBODY), &[sleep, "60"]);
    let mut client = client_over(fd).await;
    let before = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .expect_err("uid 65534 running the test binary has no entry");
    assert_eq!(before.code(), Code::PermissionDenied);
    let_it_exec(go, child.pid, sleep);
    holder_gets_nothing_on(&mut client, "spiffe://example.org/sleeper").await;
    drop(child);
    agent.shutdown().await;

    // An open stream across the exec: entitled as uid 65534 before, cut off after.
    let cfg = format!(
        "{}{}",
        entry("/sleeper", &format!("unix:path:{sleep}")),
        entry("/nobody", &format!("unix:uid:{NOBODY}"))
    );
    let agent2 = TestAgent::start(&cfg).await;
    let (fd, go, child) = fork_connect_then_exec(&agent2.socket, Some(NOBODY), &[sleep, "60"]);
    let mut client = client_over(fd).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut stream, 5).await;
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/nobody");
    let_it_exec(go, child.pid, sleep);
    // Exec events (root) end the stream at once; without them the next push would.
    let status = end_status(&mut stream, 10).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("changed its program"),
        "{status:?}"
    );
    drop(child);
    agent2.shutdown().await;
}

/// Several open streams on one connection whose process then execs another program, with exec
/// events off (so only the re-attestation before a push can catch it): the rotation that follows
/// reaches none of them. A rotation attests a connection's process once for all its streams, but
/// only with an attestation begun after the rotation's publication — never one from before the
/// exec (one is kept from an entry change just before it) — so every stream is cut off.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotation_after_an_exec_reaches_none_of_the_connections_streams() {
    if !require_root("a_rotation_after_an_exec_reaches_none_of_the_connections_streams") {
        return;
    }
    let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
    let sleep = sleep.to_str().unwrap();
    let cfg = format!(
        "[attestation]\nexec_events = false\n[svid]\nx509_ttl = \"1m\"\n{}",
        entry("/nobody", &format!("unix:uid:{NOBODY}"))
    );
    let mut agent = TestAgent::start(&cfg).await;
    let (fd, go, child) = fork_connect_then_exec(&agent.socket, Some(NOBODY), &[sleep, "120"]);
    let mut client = client_over(fd).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut stream = client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let first = next_within(&mut stream, 5).await;
        assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/nobody");
        streams.push(stream);
    }
    // An entry change that changes nothing for them: each stream attests the process again (and
    // sends nothing), and the connection keeps that attestation.
    agent.reload(&format!("{cfg}{}", entry("/other", "unix:uid:4242")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let_it_exec(go, child.pid, sleep);
    // The rotation comes at about half of the 1-minute life.
    for (i, stream) in streams.iter_mut().enumerate() {
        let next = tokio::time::timeout(
            Duration::from_secs(60),
            tokio_stream::StreamExt::next(stream),
        )
        .await
        .unwrap_or_else(|_| panic!("stream {i}: neither cut off nor rotated in 60 s"));
        let status = match next {
            Some(Err(status)) => status,
            Some(Ok(msg)) => panic!(
                "stream {i}: the process that exec'd got the rotated SVID of {:?}",
                msg.svids.iter().map(|s| &s.spiffe_id).collect::<Vec<_>>()
            ),
            None => panic!("stream {i} ended without a status"),
        };
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "stream {i}: {status:?}"
        );
        assert!(
            status.message().contains("changed its program"),
            "stream {i}: {status:?}"
        );
    }
    drop(child);
    agent.shutdown().await;
}

/// A program bind-mounted over `/usr/bin/sleep` in a private mount namespace (what any container
/// can do) runs as "/usr/bin/sleep" there. It must not get the `unix:path:/usr/bin/sleep` identity;
/// `unix:sha256` (read through the pinned exe link) still identifies what really runs.
#[tokio::test(flavor = "multi_thread")]
async fn unix_path_is_not_trusted_in_another_mount_namespace() {
    if !require_root("unix_path_is_not_trusted_in_another_mount_namespace") {
        return;
    }
    let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
    let sleep = sleep.to_str().unwrap().to_owned();
    let lanyard = lanyard_bin();
    let digest = std::process::Command::new("sha256sum")
        .arg(lanyard)
        .output()
        .unwrap();
    let digest = String::from_utf8(digest.stdout).unwrap();
    let digest = digest.split_whitespace().next().unwrap().to_owned();
    let run_as_sleep = |agent: &TestAgent| {
        let script = format!(
            "mount --bind {lanyard} {sleep} && exec {sleep} fetch x509 --json --socket {}",
            agent.endpoint()
        );
        std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .env_remove("SPIFFE_ENDPOINT_SOCKET")
            .output()
            .unwrap()
    };

    let agent = TestAgent::start(&entry("/sleeper", &format!("unix:path:{sleep}"))).await;
    let out = tokio::task::block_in_place(|| run_as_sleep(&agent));
    assert!(
        !out.status.success(),
        "an impostor at {sleep} got {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionDenied")
            || String::from_utf8_lossy(&out.stderr).contains("no identity"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.shutdown().await;

    let agent = TestAgent::start(&entry("/lanyard-binary", &format!("unix:sha256:{digest}"))).await;
    let out = tokio::task::block_in_place(|| run_as_sleep(&agent));
    assert!(
        out.status.success(),
        "unix:sha256 works in any mount namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ids_in(&out), ["spiffe://example.org/lanyard-binary"]);
    agent.shutdown().await;
}

/// The setuid attack on Envoy SDS (same socket): uid 65534 connects and opens a StreamSecrets
/// stream (it gets its own certificate), then the connecting process execs setuid-root `su`. The
/// open stream ends with PermissionDenied instead of pushing root's certificate, and a new
/// FetchSecrets over the held socket is refused.
#[cfg(feature = "sds")]
#[tokio::test(flavor = "multi_thread")]
async fn setuid_exec_after_connect_gives_the_sds_holder_nothing() {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use tokio_stream::StreamExt;
    if !require_root("setuid_exec_after_connect_gives_the_sds_holder_nothing") {
        return;
    }
    let cfg = format!(
        "{}{}",
        entry("/root", "unix:uid:0"),
        entry("/nobody", &format!("unix:uid:{NOBODY}"))
    );
    let agent = TestAgent::start(&cfg).await;
    let (fd, go, child) =
        fork_connect_then_exec(&agent.socket, Some(NOBODY), &["/usr/bin/su", "root"]);
    let mut sds = SecretDiscoveryServiceClient::new(channel_over(fd).await);
    let ask = |names: &[&str]| DiscoveryRequest {
        type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret".into(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ask(&["default"])).await.unwrap();
    let mut stream = sds
        .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a first response")
        .unwrap()
        .unwrap();
    assert_eq!(first.resources.len(), 1, "uid 65534's own certificate");
    let_it_exec(go, child.pid, "/usr/bin/su");
    let status = end_status(&mut stream, 10).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let refused = sds.fetch_secrets(ask(&["default"])).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    drop(tx);
    drop(child);
    agent.shutdown().await;
}

/// Step 1 of [`groups_change_after_connect_cuts_the_connection_off`]: setgroups (the child runs as
/// root, so it has CAP_SETGID) while every uid and gid stays as it was.
fn add_group_4242(_: u8) -> bool {
    // SAFETY: setgroups is async-signal-safe.
    unsafe { libc::setgroups(1, [4242 as libc::gid_t].as_ptr()) == 0 }
}

/// A process that can change its supplementary groups (root: CAP_SETGID) connects, is served, then
/// changes only its groups — no exec, same uids and gids. The connection is cut off: its groups are
/// part of the credentials it connected with, and such a process has `/proc/<pid>/status` read on
/// every call (not only the cheap uid/gid check).
#[tokio::test(flavor = "multi_thread")]
async fn groups_change_after_connect_cuts_the_connection_off() {
    if !require_root("groups_change_after_connect_cuts_the_connection_off") {
        return;
    }
    let cfg = format!(
        "{}{}",
        entry("/root", "unix:uid:0"),
        entry("/staff", "unix:supplementary_gid:4242")
    );
    let agent = TestAgent::start(&cfg).await;
    let (fd, go, answers, child) = fork_connect_then_steps(&agent.socket, None, add_group_4242);
    let mut client = client_over(fd).await;
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut stream, 5).await;
    assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/root");
    assert!(child_step(go, answers, 1), "setgroups in the child");
    holder_gets_nothing_on(&mut client, "spiffe://example.org/staff").await;
    drop(child);
    agent.shutdown().await;
}

/// The steps of [`groups_change_in_a_new_user_namespace_cuts_the_connection_off`]: 1 enters a new
/// user namespace, 2 (once the test has mapped ids) sets the groups inside it.
fn userns_then_setgroups(step: u8) -> bool {
    // SAFETY: unshare and setgroups are async-signal-safe.
    unsafe {
        match step {
            1 => libc::unshare(libc::CLONE_NEWUSER) == 0,
            // Namespace gid 1 is gid 4242 outside.
            _ => libc::setgroups(1, [1 as libc::gid_t].as_ptr()) == 0,
        }
    }
}

/// An unprivileged process (uid 65534: no CAP_SETGID, so its groups cannot change and the agent
/// checks only its uids and gids, one ioctl, plus its user namespace) connects, then enters a new
/// user namespace, where it has every capability. Entering it changes nothing it is attested by:
/// still served. Then, with ids mapped and setgroups allowed (what `newuidmap`/`newgidmap` do for a
/// user with subordinate ids; here the test, as root, writes the maps), it adds gid 4242 to its
/// groups without an exec and without changing a uid or gid. The connection is cut off and gets no
/// `unix:supplementary_gid:4242` identity: a new user namespace sends the agent back to
/// `/proc/<pid>/status`.
#[tokio::test(flavor = "multi_thread")]
async fn groups_change_in_a_new_user_namespace_cuts_the_connection_off() {
    if !require_root("groups_change_in_a_new_user_namespace_cuts_the_connection_off") {
        return;
    }
    let cfg = format!(
        "{}{}",
        entry("/nobody", &format!("unix:uid:{NOBODY}")),
        entry("/staff", "unix:supplementary_gid:4242")
    );
    let agent = TestAgent::start(&cfg).await;
    let (fd, go, answers, child) =
        fork_connect_then_steps(&agent.socket, Some(NOBODY), userns_then_setgroups);
    let mut client = client_over(fd).await;
    assert_eq!(
        first_ids(&mut client).await,
        ["spiffe://example.org/nobody"]
    );
    assert!(
        child_step(go, answers, 1),
        "unshare(CLONE_NEWUSER) in the child"
    );
    assert_eq!(
        first_ids(&mut client).await,
        ["spiffe://example.org/nobody"]
    );
    std::fs::write(
        format!("/proc/{}/uid_map", child.pid),
        format!("0 {NOBODY} 1\n"),
    )
    .unwrap();
    std::fs::write(
        format!("/proc/{}/gid_map", child.pid),
        format!("0 {NOBODY} 1\n1 4242 1\n"),
    )
    .unwrap();
    assert!(child_step(go, answers, 2), "setgroups in the new namespace");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.pid)).unwrap();
    let groups = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(groups.split_whitespace().nth(1), Some("4242"), "{groups}");
    holder_gets_nothing_on(&mut client, "spiffe://example.org/staff").await;
    drop(child);
    agent.shutdown().await;
}

/// Where the processes of [`connect_as_uids_of_a_new_namespace`] connect: set before the fork (a
/// step may not allocate), read with `try_lock` after it; the tests that use it take turns
/// ([`NAMESPACE_TESTS`]).
static AGENT_ADDR: std::sync::Mutex<Option<libc::sockaddr_un>> = std::sync::Mutex::new(None);
static NAMESPACE_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The steps of [`subordinate_uids_count_against_the_share_of_the_user_who_mapped_them`]: 1 enters
/// a new user namespace; `100 + n` forks a process that becomes uid `n` of that namespace and
/// connects and closes [`CHURN`] times, and answers once it has exited (a second later); any other `n` (once the
/// test has mapped ids) forks a process that becomes uid `n` of that namespace, connects to the
/// agent on descriptor 3 and waits (killed with its parent).
fn userns_then_connect_as(step: u8) -> bool {
    // SAFETY: unshare, fork, prctl, setuid, close_range, socket, connect and pause are
    // async-signal-safe; the address was prepared before the test forked.
    unsafe {
        if step == 1 {
            return libc::unshare(libc::CLONE_NEWUSER) == 0;
        }
        let Some(addr) = AGENT_ADDR.try_lock().ok().and_then(|a| *a) else {
            return false;
        };
        let churn = step >= 100;
        let uid = if churn { step - 100 } else { step };
        let pid = libc::fork();
        if pid != 0 {
            if pid < 0 || !churn {
                return pid > 0;
            }
            let mut status = 0;
            return libc::waitpid(pid, &mut status, 0) == pid
                && libc::WIFEXITED(status)
                && libc::WEXITSTATUS(status) == 0;
        }
        // After the setuid, which clears the parent-death signal.
        if libc::setuid(libc::uid_t::from(uid)) != 0 {
            libc::_exit(3);
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        if churn {
            for _ in 0..CHURN {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len);
                libc::close(fd);
            }
            // Alive while the agent takes them in, so each can be identified.
            libc::sleep(1);
            libc::_exit(0);
        }
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        if fd != 3 || libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
            libc::_exit(4);
        }
        loop {
            libc::pause();
        }
    }
}

/// Where the processes of [`userns_then_connect_as`] connect: `socket`.
fn set_agent_addr(socket: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: an all-zero `sockaddr_un` is valid; the path is shorter than `sun_path`.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (i, b) in socket.as_os_str().as_bytes().iter().enumerate() {
        addr.sun_path[i] = *b as libc::c_char;
    }
    *AGENT_ADDR.lock().unwrap() = Some(addr);
}

/// A copy of descriptor 3 of process `pid` once that is a connected socket other than `inherited`
/// (the `socket:[inode]` its parent passed on, which it closes first) (`pidfd_getfd`, as root).
async fn connected_socket_of(pid: i32, inherited: &std::path::Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/3")).unwrap_or_default();
        if link.as_os_str().is_empty() || link == inherited {
            assert!(Instant::now() < deadline, "process {pid} made no socket");
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        // SAFETY: pidfd_open and pidfd_getfd on a process of this test; getpeername into a
        // zeroed address of the size passed.
        unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
            if pidfd >= 0 {
                let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd, 3, 0) as i32;
                libc::close(pidfd);
                if fd >= 0 {
                    let mut addr: libc::sockaddr_un = std::mem::zeroed();
                    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                    if libc::getpeername(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len)
                        == 0
                    {
                        return fd;
                    }
                    libc::close(fd);
                }
            }
        }
        assert!(Instant::now() < deadline, "process {pid} did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client over the connection of a process that `child` (running [`userns_then_connect_as`])
/// forks as uid `inner_uid` of its namespace (`inherited`: the socket `child` itself holds).
async fn connect_as_inner_uid(
    child: &ForkedChild,
    go: i32,
    answers: i32,
    inner_uid: u8,
    inherited: &std::path::Path,
) -> lanyard::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient<tonic::transport::Channel>
{
    assert!(
        child_step(go, answers, inner_uid),
        "fork as uid {inner_uid}"
    );
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.pid)).unwrap();
    let grandchild: i32 = children.split_whitespace().last().unwrap().parse().unwrap();
    client_over(connected_socket_of(grandchild, inherited).await).await
}

/// Forks a child (as `maker`, or root) that connects to `agent`, enters a new user namespace (so
/// `maker` made it) where the test maps uids 0..16 to `first_uid`.., and then forks processes that
/// connect as its uids 2, 3, 4 and 5 one after the other and stay connected; each asks for a
/// JWT-SVID. Returns the SPIFFE IDs served and the messages of the refusals.
async fn connect_as_uids_of_a_new_namespace(
    agent: &TestAgent,
    maker: Option<u32>,
    first_uid: u32,
) -> (Vec<String>, Vec<String>) {
    set_agent_addr(&agent.socket);
    let (fd, go, answers, child) =
        fork_connect_then_steps(&agent.socket, maker, userns_then_connect_as);
    let mut own = client_over(fd).await;
    assert_eq!(first_ids(&mut own).await.len(), 1, "the maker is served");
    assert!(
        child_step(go, answers, 1),
        "unshare(CLONE_NEWUSER) in the child"
    );
    std::fs::write(
        format!("/proc/{}/uid_map", child.pid),
        format!("0 {first_uid} 16\n"),
    )
    .unwrap();
    let inherited = std::fs::read_link(format!("/proc/{}/fd/3", child.pid)).unwrap();
    let (mut served, mut refused) = (Vec::new(), Vec::new());
    for inner_uid in 2..=5u8 {
        let mut client = connect_as_inner_uid(&child, go, answers, inner_uid, &inherited).await;
        let reply = client
            .fetch_jwtsvid(with_header(JwtsvidRequest {
                audience: vec!["share".into()],
                spiffe_id: String::new(),
            }))
            .await;
        match reply {
            Ok(reply) => served.push(reply.into_inner().svids[0].spiffe_id.clone()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                refused.push(status.message().to_owned());
            }
        }
        // Each connection stays open (its process waits), so the next one finds it counted.
        std::mem::forget(client);
    }
    drop(child);
    (served, refused)
}

/// A user with subordinate uids (what `newuidmap` maps for a user listed in `/etc/subuid`; here the
/// test, as root, writes the map) runs processes as several of them inside a user namespace it made.
/// To the kernel each is another user, with a share of its own; to the agent they all count against
/// the share of the user who made the namespace (uid 65534, whose own connection is already one of
/// its three): two more are served, the other two are refused naming that uid and the limit.
#[tokio::test(flavor = "multi_thread")]
async fn subordinate_uids_count_against_the_share_of_the_user_who_mapped_them() {
    if !require_root("subordinate_uids_count_against_the_share_of_the_user_who_mapped_them") {
        return;
    }
    let cfg = format!(
        "[limits]\nmax_connections_per_uid = 3\n{}",
        entry("/nogroup", &format!("unix:gid:{NOBODY}"))
    );
    let _turn = NAMESPACE_TESTS.lock().await;
    let agent = TestAgent::start(&cfg).await;
    let (served, refused) = connect_as_uids_of_a_new_namespace(&agent, Some(NOBODY), 300_000).await;
    assert_eq!(
        served, ["spiffe://example.org/nogroup"; 2],
        "refused: {refused:?}"
    );
    assert_eq!(refused.len(), 2);
    for message in &refused {
        assert!(
            message.contains(&format!("uid {NOBODY} has 3 open connections"))
                && message.contains("limits.max_connections_per_uid"),
            "{message}"
        );
    }
    agent.shutdown().await;
}

/// A `lanyard agent` process of its own (config `extra`, names resolved through `names`, see
/// [`agent_command`]), with its directory open to every uid; stopped when dropped.
struct AgentProcess {
    dir: tempfile::TempDir,
    socket: std::path::PathBuf,
    child: KillOnDrop,
}

impl AgentProcess {
    async fn start(extra: &str, names: Option<&std::path::Path>) -> Self {
        let dir = open_tempdir();
        let config = dir.path().join("lanyard.toml");
        std::fs::write(&config, config_text(dir.path(), extra)).unwrap();
        let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
        let child = KillOnDrop(Some(
            agent_command(names)
                .args(["agent", "--config", config.to_str().unwrap()])
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        ));
        let socket = dir.path().join("workload.sock");
        let s = socket.clone();
        wait_until("the agent's socket", 20, move || s.exists()).await;
        // Other uids reach the agent's directory.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Self { dir, socket, child }
    }

    fn pid(&self) -> u32 {
        self.child.0.as_ref().unwrap().id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap()
    }
}

/// Connections each churning process of [`userns_then_connect_as`] makes.
const CHURN: usize = 300;

/// The `read` calls process `pid` has made (`/proc/<pid>/io`).
fn read_calls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("syscr: "))
        .unwrap()
        .parse()
        .unwrap()
}

/// A user flooding the agent from its subordinate uids, each of which has a fresh bucket of its
/// own (`limits.new_connections_per_second`), is turned away as cheaply as one flooding from its
/// own uid: once a connection from its namespace has been identified, the agent knows the host
/// uids that namespace maps are that user's, and a connection from any of them is charged to that
/// user right after `accept`. Here uid 3 of the namespace spends uid 65534's bucket; then uid 4,
/// never seen before, connects and closes 300 times: none of them is read about (before, each
/// cost the agent its `/proc` reads first), and the agent warns naming uid 65534. Against a real
/// agent process, whose own `read` calls are counted.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_from_subordinate_uids_is_charged_to_their_user_before_anything_is_read() {
    if !require_root(
        "a_flood_from_subordinate_uids_is_charged_to_their_user_before_anything_is_read",
    ) {
        return;
    }
    let _turn = NAMESPACE_TESTS.lock().await;
    let extra = format!(
        "[limits]\nnew_connections_per_second = 1.0\nnew_connections_burst = {CHURN}\n{}",
        entry("/nogroup", &format!("unix:gid:{NOBODY}"))
    );
    let agent = AgentProcess::start(&extra, None).await;
    let (pid, socket) = (agent.pid(), agent.socket.clone());
    set_agent_addr(&socket);
    let (fd, go, answers, child) =
        fork_connect_then_steps(&socket, Some(NOBODY), userns_then_connect_as);
    let mut own = client_over(fd).await;
    assert_eq!(first_ids(&mut own).await.len(), 1, "the maker is served");
    assert!(child_step(go, answers, 1), "unshare(CLONE_NEWUSER)");
    std::fs::write(format!("/proc/{}/uid_map", child.pid), "0 320000 16\n").unwrap();
    // Uid 3 of the namespace: identified on its first connection, it spends uid 65534's bucket.
    assert!(child_step(go, answers, 103), "uid 3 connects and closes");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = read_calls(pid);
    assert!(child_step(go, answers, 104), "uid 4 connects and closes");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let reads = read_calls(pid) - before;
    assert!(
        reads < (CHURN / 3) as u64,
        "the agent made {reads} reads for {CHURN} connections from a subordinate uid whose user is over its rate"
    );
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("connections closed unanswered")
                && l.contains(&format!("uid={NOBODY}"))
                && l.contains("limits.new_connections_per_second")),
        "{log}"
    );
    // The agent still answers the user's own connection.
    assert_eq!(first_ids(&mut own).await.len(), 1);
    drop(child);
}

/// A name service that does not answer for a user's subordinate uids (a directory server that
/// stopped answering; here an NSS module that sleeps 20 s for host ids 330,000–330,099, loaded by
/// the agent alone), and that user (uid 65534) running processes as 20 of them in a namespace it
/// made, each asking for an SVID: each attestation needs its uid's name. The user's callers start
/// at most 4 lookups; the others wait for one of those to end, and none does within 10 s:
/// `Unavailable`, naming the user and the limit. Meanwhile another user's first fetch, whose names
/// are not known yet either, is served at once. Before, the user's lookups took all 16 the agent
/// runs at once, and that fetch waited for them.
#[tokio::test(flavor = "multi_thread")]
async fn a_users_subordinate_uids_the_name_service_does_not_answer_take_only_its_share_of_lookups()
{
    if !require_root(
        "a_users_subordinate_uids_the_name_service_does_not_answer_take_only_its_share_of_lookups",
    ) {
        return;
    }
    let _turn = NAMESPACE_TESTS.lock().await;
    let names = open_tempdir();
    hanging_name_service(names.path(), "id >= 330000 && id < 330100");
    let extra = format!(
        "{}{}",
        entry("/nogroup", &format!("unix:gid:{NOBODY}")),
        entry("/other", "unix:uid:4242")
    );
    let agent = AgentProcess::start(&extra, Some(names.path())).await;
    let socket = agent.socket.clone();
    set_agent_addr(&socket);
    let (fd, go, answers, child) =
        fork_connect_then_steps(&socket, Some(NOBODY), userns_then_connect_as);
    let mut own = client_over(fd).await;
    assert_eq!(first_ids(&mut own).await.len(), 1, "the maker is served");
    assert!(child_step(go, answers, 1), "unshare(CLONE_NEWUSER)");
    std::fs::write(format!("/proc/{}/uid_map", child.pid), "0 330000 64\n").unwrap();
    let inherited = std::fs::read_link(format!("/proc/{}/fd/3", child.pid)).unwrap();
    let mut asks = Vec::new();
    for inner_uid in 10..30u8 {
        let mut client = connect_as_inner_uid(&child, go, answers, inner_uid, &inherited).await;
        asks.push(tokio::spawn(async move {
            client
                .fetch_jwtsvid(with_header(JwtsvidRequest {
                    audience: vec!["names".into()],
                    spiffe_id: String::new(),
                }))
                .await
                .map(|_| ())
        }));
    }
    // Every one of them is waiting for the name service (or for its user's share of it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let endpoint = format!("unix://{}", socket.display());
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || fetch_as(4242, 4242, &endpoint))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "uid 4242 was refused after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ids_in(&out), ["spiffe://example.org/other"]);
    assert!(
        took < Duration::from_secs(5),
        "uid 4242's first fetch waited {took:?} behind uid {NOBODY}'s lookups"
    );
    let (mut no_answer, mut over_share) = (0, 0);
    for ask in asks {
        let status = ask.await.unwrap().expect_err("no name, no identity");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let message = status.message();
        if message.contains("the name service did not answer for uid 3300") {
            no_answer += 1;
        } else if message.contains(&format!(
            "the name service has not answered 4 lookups for callers of user {NOBODY} (at most 4 per user)"
        )) {
            over_share += 1;
        } else {
            panic!("{message}");
        }
    }
    assert_eq!((no_answer, over_share), (4, 16));
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("name-service lookups are all under way")
                && l.contains(&format!("user={NOBODY}"))),
        "{log}"
    );
    drop(child);
}

/// The threads of process `pid` (`/proc/<pid>/task`).
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Distinct executables a user runs in [`a_users_many_big_executables_take_only_its_turn_at_hashing`].
const BIG_EXECUTABLES: usize = 40;

/// A user (uid 65534) runs 40 programs, each a distinct file of 240 MB (a small C program with a
/// sparse tail: no disk, but every byte is read for `unix:sha256`), each connected and asking for
/// an SVID at once. Its callers read one executable at a time, waiting for their turn on the
/// agent's runtime, not on a blocking thread each: the agent's thread count hardly moves (before,
/// every waiting attestation held a thread: about 40 more). Another user's first fetch, whose
/// executable (`lanyard`, 138 MB) is not hashed yet either, takes the other turn at once, and
/// every one of uid 65534's programs is served too, in turn. Against a real agent process.
#[tokio::test(flavor = "multi_thread")]
async fn a_users_many_big_executables_take_only_its_turn_at_hashing() {
    if !require_root("a_users_many_big_executables_take_only_its_turn_at_hashing") {
        return;
    }
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let programs = open_tempdir();
    let source = programs.path().join("connect.c");
    std::fs::write(
        &source,
        r#"#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    if (fd != 3 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) return 1;
    write(1, "connected\n", 10);
    for (;;) pause();
}
"#,
    )
    .unwrap();
    let built = programs.path().join("connect");
    let out = std::process::Command::new("gcc")
        .arg("-o")
        .arg(&built)
        .arg(&source)
        .output()
        .expect("gcc (the machine's C compiler) builds the test's program");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut executables = Vec::new();
    for i in 0..BIG_EXECUTABLES {
        let exe = programs.path().join(format!("connect-{i}"));
        std::fs::copy(&built, &exe).unwrap();
        // Trailing zeros the loader never maps: a distinct, sparse 240 MB executable.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&exe)
            .unwrap()
            .set_len(240 << 20)
            .unwrap();
        executables.push(exe);
    }
    let open = |p: &std::path::Path| {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    };
    open(programs.path());
    let extra = format!(
        "{}{}",
        entry("/nobody", &format!("unix:uid:{NOBODY}")),
        entry("/other", "unix:uid:4242")
    );
    let agent = AgentProcess::start(&extra, None).await;
    let (pid, socket) = (agent.pid(), agent.socket.clone());
    // Connected, each from its own executable, before any asks.
    let mut running = Vec::new();
    let mut clients = Vec::new();
    for exe in &executables {
        let mut child = std::process::Command::new(exe)
            .arg(&socket)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "connected\n", "{}", exe.display());
        let fd = connected_socket_of(child.id() as i32, std::path::Path::new("")).await;
        clients.push(client_over(fd).await);
        running.push(KillOnDrop(Some(child)));
    }
    let threads_before = threads_of(pid);
    let started = Instant::now();
    let asks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                client
                    .fetch_jwtsvid(with_header(JwtsvidRequest {
                        audience: vec!["hashing".into()],
                        spiffe_id: String::new(),
                    }))
                    .await
                    .map(|r| r.into_inner().svids[0].spiffe_id.clone())
            })
        })
        .collect();
    // Every one of them is waiting for its turn by now, or being read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let threads_during = threads_of(pid);
    let endpoint = format!("unix://{}", socket.display());
    let other = Instant::now();
    let out = tokio::task::spawn_blocking(move || fetch_as(4242, 4242, &endpoint))
        .await
        .unwrap();
    let took = other.elapsed();
    println!(
        "hashing: agent threads {threads_before} before uid {NOBODY}'s {BIG_EXECUTABLES} asks, \
         {threads_during} while they wait; uid 4242's first fetch took {took:?}"
    );
    assert!(
        out.status.success(),
        "uid 4242 was refused after {took:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ids_in(&out), ["spiffe://example.org/other"]);
    assert!(
        threads_during < threads_before + 8,
        "{BIG_EXECUTABLES} attestations waiting to hash took {} threads",
        threads_during - threads_before
    );
    assert!(
        took < Duration::from_secs(5),
        "uid 4242's first fetch waited {took:?} behind uid {NOBODY}'s executables"
    );
    for ask in asks {
        assert_eq!(
            ask.await.unwrap().expect("served in turn"),
            "spiffe://example.org/nobody"
        );
    }
    println!(
        "hashing: uid {NOBODY}'s {BIG_EXECUTABLES} programs served within {:?}",
        started.elapsed()
    );
    drop(running);
}

/// A user namespace root made (as a container runtime makes one per container, mapping each to
/// uids of its own) leaves each uid in it its own share: all four are served.
#[tokio::test(flavor = "multi_thread")]
async fn uids_of_a_namespace_root_made_keep_their_own_shares() {
    if !require_root("uids_of_a_namespace_root_made_keep_their_own_shares") {
        return;
    }
    let cfg = format!(
        "[limits]\nmax_connections_per_uid = 3\n{}",
        entry("/rootgroup", "unix:gid:0")
    );
    let _turn = NAMESPACE_TESTS.lock().await;
    let agent = TestAgent::start(&cfg).await;
    let (served, refused) = connect_as_uids_of_a_new_namespace(&agent, None, 310_000).await;
    assert_eq!(
        served, ["spiffe://example.org/rootgroup"; 4],
        "refused: {refused:?}"
    );
    agent.shutdown().await;
}

/// Step 1 of [`a_mount_namespace_entered_after_connect_changes_no_answer_and_no_path_is_read_there`]:
/// a private mount namespace (the child runs as root, so it may), no exec.
fn enter_mount_namespace(_: u8) -> bool {
    // SAFETY: unshare is async-signal-safe.
    unsafe { libc::unshare(libc::CLONE_NEWNS) == 0 }
}

/// The executable's path is read where it means what it says and kept for the connection with the
/// stamps of the file it named: a later call reads neither the path nor the mount namespace. A
/// process that enters another mount namespace after connecting (no exec, same ids) keeps the answer
/// it had, `unix:path` as read in the agent's namespace, since nothing it is attested by changed.
/// Once its executable's stamps change the path must be read again, and that read is checked
/// against the mount namespace of the connect: cut off, `PermissionDenied`.
#[tokio::test(flavor = "multi_thread")]
async fn a_mount_namespace_entered_after_connect_changes_no_answer_and_no_path_is_read_there() {
    if !require_root(
        "a_mount_namespace_entered_after_connect_changes_no_answer_and_no_path_is_read_there",
    ) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let me = std::fs::canonicalize("/proc/self/exe").unwrap();
    let cfg = entry("/tester", &format!("unix:path:{}", me.display()));
    let agent = TestAgent::start(&cfg).await;
    let (fd, go, answers, child) =
        fork_connect_then_steps(&agent.socket, None, enter_mount_namespace);
    let mut client = client_over(fd).await;
    assert_eq!(
        first_ids(&mut client).await,
        ["spiffe://example.org/tester"]
    );
    assert_eq!(
        first_ids(&mut client).await,
        ["spiffe://example.org/tester"]
    );
    assert!(
        child_step(go, answers, 1),
        "unshare(CLONE_NEWNS) in the child"
    );
    let theirs = std::fs::read_link(format!("/proc/{}/ns/mnt", child.pid)).unwrap();
    assert_ne!(theirs, std::fs::read_link("/proc/self/ns/mnt").unwrap());
    assert_eq!(
        first_ids(&mut client).await,
        ["spiffe://example.org/tester"]
    );
    // The same mode again: only the change time moves, as a rename or a link would move it.
    let mode = std::fs::metadata(&me).unwrap().permissions().mode();
    std::fs::set_permissions(&me, std::fs::Permissions::from_mode(mode)).unwrap();
    holder_gets_nothing_on(&mut client, "spiffe://example.org/tester").await;
    drop(child);
    agent.shutdown().await;
}

/// Renaming the executable a connection runs changes the file's stamps (its change time), so the
/// next attestation reads its path again, though the connection kept the path it read before. An
/// open stream is re-attested on each entry change: the first (a second identity for uid 0) keeps
/// the path read then; after the rename, the next moves the stream from the old name's identity to
/// the new name's.
#[tokio::test(flavor = "multi_thread")]
async fn a_renamed_executable_is_read_again_on_the_next_attestation() {
    use tokio::io::AsyncBufReadExt;
    let dir = open_tempdir();
    let (old, new) = (dir.path().join("app-old"), dir.path().join("app-new"));
    std::fs::copy(lanyard_bin(), &old).unwrap();
    let cfg = format!(
        "{}{}",
        entry("/app-old", &format!("unix:path:{}", old.display())),
        entry("/app-new", &format!("unix:path:{}", new.display()))
    );
    let mut agent = TestAgent::start(&cfg).await;
    let mut watch = tokio::process::Command::new(&old)
        .args(["watch", "--socket", &agent.endpoint()])
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(watch.stdout.take().unwrap()).lines();
    // The SPIFFE IDs of the next update (`lanyard watch` prints one line per SVID).
    let mut next_update = async || {
        let mut ids = Vec::new();
        let mut update = None;
        loop {
            let wait = Duration::from_secs(if update.is_none() { 20 } else { 1 });
            let Ok(line) = tokio::time::timeout(wait, lines.next_line()).await else {
                assert!(update.is_some(), "an update within 20 s");
                break;
            };
            let line = line.unwrap().expect("the watch is still running");
            let field = |name: &str| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                    .to_owned()
            };
            let n = field("update=");
            if update.get_or_insert_with(|| n.clone()) != &n {
                panic!("update {n} began before update {update:?} was read in full");
            }
            ids.push(field("spiffe_id="));
            if ids.len() == 2 {
                break;
            }
        }
        ids.sort();
        ids
    };
    assert_eq!(next_update().await, ["spiffe://example.org/app-old"]);
    agent.reload(&format!("{cfg}{}", entry("/root", "unix:uid:0")));
    assert_eq!(
        next_update().await,
        ["spiffe://example.org/app-old", "spiffe://example.org/root"]
    );
    std::fs::rename(&old, &new).unwrap();
    agent.reload(&cfg);
    assert_eq!(next_update().await, ["spiffe://example.org/app-new"]);
    drop(watch);
    agent.shutdown().await;
}
