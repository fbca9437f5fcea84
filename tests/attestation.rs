//! Attestation against the real kernel: real child processes under real uids, a caller that exits
//! right after connecting, and the executable hash compared with `sha256sum`.

mod common;

use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use hyper_util::rt::TokioIo;
use lanyard::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use lanyard::proto::{JwtsvidRequest, X509svidRequest};
use tonic::Code;
use tonic::transport::Endpoint;

fn entry(path: &str, selectors: &[&str]) -> String {
    let sels: Vec<String> = selectors.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org{path}\"\nselectors = [{}]\n",
        sels.join(", ")
    )
}

fn denied(out: &std::process::Output) -> bool {
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("PermissionDenied")
}

#[tokio::test]
async fn children_under_different_uids_get_their_own_identity_or_denied() {
    if !require_root("children_under_different_uids_get_their_own_identity_or_denied") {
        return;
    }
    let cfg = format!(
        "{}{}{}",
        entry("/alice", &["unix:uid:1000"]),
        entry("/bob", &["unix:uid:1001"]),
        entry("/bob-in-group", &["unix:uid:1001", "unix:gid:1001"]),
    );
    let agent = TestAgent::start(&cfg).await;
    let ep = agent.endpoint();
    let outs = tokio::task::spawn_blocking(move || {
        (
            fetch_as(1000, 1000, &ep),
            fetch_as(1001, 1001, &ep),
            fetch_as(1001, 50, &ep),
            fetch_as(1002, 1002, &ep),
        )
    })
    .await
    .unwrap();
    assert_eq!(ids_in(&outs.0), vec!["spiffe://example.org/alice"]);
    assert_eq!(
        ids_in(&outs.1),
        vec![
            "spiffe://example.org/bob",
            "spiffe://example.org/bob-in-group"
        ]
    );
    assert_eq!(
        ids_in(&outs.2),
        vec!["spiffe://example.org/bob"],
        "gid selector must match the effective gid"
    );
    assert!(denied(&outs.3), "uid 1002 has no entry: {:?}", outs.3);
    agent.shutdown().await;
}

/// unix:sha256 is the SHA-256 of the executable, as `sha256sum` prints it; unix:path its path.
#[tokio::test]
async fn sha256_and_path_selectors_match_the_executable() {
    if !require_root("sha256_and_path_selectors_match_the_executable") {
        return;
    }
    let bin = std::fs::canonicalize(lanyard_bin()).unwrap();
    let sum = Command::new("sha256sum")
        .arg(&bin)
        .output()
        .expect("sha256sum runs");
    let hash = String::from_utf8(sum.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(hash.len(), 64);
    let wrong: String = hash.chars().rev().collect();
    let cfg = format!(
        "{}{}{}",
        entry(
            "/hashed",
            &["unix:uid:1003", &format!("unix:sha256:{hash}")]
        ),
        entry(
            "/wrong-hash",
            &["unix:uid:1003", &format!("unix:sha256:{wrong}")]
        ),
        entry(
            "/by-path",
            &["unix:uid:1003", &format!("unix:path:{}", bin.display())]
        ),
    );
    let agent = TestAgent::start(&cfg).await;
    let ep = agent.endpoint();
    let out = tokio::task::spawn_blocking(move || fetch_as(1003, 1003, &ep))
        .await
        .unwrap();
    assert_eq!(
        ids_in(&out),
        vec![
            "spiffe://example.org/hashed",
            "spiffe://example.org/by-path"
        ]
    );
    agent.shutdown().await;
}

/// unix:user, unix:group and unix:supplementary_gid come from the process's real credentials.
#[tokio::test]
async fn user_group_and_supplementary_gid_selectors() {
    if !require_root("user_group_and_supplementary_gid_selectors") {
        return;
    }
    let Some(user) = lanyard::sys::users::user_name(65534) else {
        panic!("this machine has no user 65534 (nobody); the test needs one");
    };
    let group = lanyard::sys::users::group_name(65534).expect("group 65534");
    let cfg = format!(
        "{}{}",
        entry(
            "/named",
            &[&format!("unix:user:{user}"), &format!("unix:group:{group}")]
        ),
        entry(
            "/extra-group",
            &["unix:uid:65534", "unix:supplementary_gid:4242"]
        ),
    );
    let agent = TestAgent::start(&cfg).await;
    let ep = agent.endpoint();
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(lanyard_bin());
        cmd.args(["fetch", "x509", "--json", "--socket", &ep]);
        // SAFETY: setgroups, setgid and setuid are async-signal-safe; they run in the child before
        // exec. All three are done here because std drops supplementary groups when `uid()` is used.
        unsafe {
            cmd.pre_exec(|| {
                let groups = [4242 as libc::gid_t];
                if libc::setgroups(1, groups.as_ptr()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        ids_in(&out),
        vec![
            "spiffe://example.org/named",
            "spiffe://example.org/extra-group"
        ]
    );
    agent.shutdown().await;
}

/// A process that connects and exits at once gets no identity, even though a live process with the
/// same uid does: the connection is pinned to the process that made it, not to its PID or uid.
#[tokio::test]
async fn a_caller_that_exits_right_after_connecting_gets_nothing() {
    let agent = TestAgent::start(&entry("/me", &[&format!("unix:uid:{}", euid())])).await;
    let fd = connect_from_short_lived_child(&agent.socket);
    let mut client = client_over(fd).await;
    let mut req = tonic::Request::new(X509svidRequest {});
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let err = client
        .fetch_x509svid(req)
        .await
        .expect_err("a dead caller must get nothing");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

    // The same uid, alive, on its own connection, is served.
    let mut live = agent.client().await;
    assert!(live.fetch_x509svid(X509svidRequest {}).await.is_ok());
    agent.shutdown().await;
}

/// A Workload API client over the already connected socket `fd` (owned by the caller).
async fn client_over(fd: i32) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    // SAFETY: `fd` is a connected socket the caller owns and hands over here.
    let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    std_stream.set_nonblocking(true).unwrap();
    let slot = Arc::new(Mutex::new(Some(
        tokio::net::UnixStream::from_std(std_stream).unwrap(),
    )));
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let stream = slot.lock().unwrap().take();
            async move {
                stream
                    .map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("the inherited connection is used once"))
            }
        }))
        .await
        .unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

/// A new Unix stream socket and the address of `path`, for a forked child to `connect()`.
fn socket_for(path: &std::path::Path) -> (i32, libc::sockaddr_un, libc::socklen_t) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: socket(2) with constant arguments; `sockaddr_un` is plain data, valid when zeroed.
    let (fd, mut addr) = unsafe {
        (
            libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0),
            std::mem::zeroed::<libc::sockaddr_un>(),
        )
    };
    assert!(fd >= 0);
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len());
    for (i, b) in bytes.iter().enumerate() {
        addr.sun_path[i] = *b as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    (fd, addr, len)
}

/// Creates a socket, lets a forked child `connect()` it and exit, reaps the child, and returns the
/// connected socket: its peer credentials name a process that no longer exists.
fn connect_from_short_lived_child(path: &std::path::Path) -> i32 {
    let (fd, addr, len) = socket_for(path);
    // SAFETY: plain libc calls on values owned here; the child only calls connect and _exit, which
    // are async-signal-safe.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            let rc = libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len);
            libc::_exit(if rc == 0 { 0 } else { 1 });
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child connected"
        );
        fd
    }
}

/// The connection keeps its caller's `/proc` directory once an attestation through it was
/// confirmed (no `open` per call). A caller that was served and then exits leaves that directory
/// reading nothing: whoever still holds the socket gets nothing on the next call, on the same
/// connection, as on a new stream.
#[tokio::test]
async fn a_served_caller_that_exits_leaves_its_connection_nothing() {
    let agent = TestAgent::start(&entry("/me", &[&format!("unix:uid:{}", euid())])).await;
    let (fd, child) = connect_from_child_that_waits(&agent.socket);
    let mut client = client_over(fd).await;
    let request = || {
        let mut req = tonic::Request::new(X509svidRequest {});
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        req
    };
    let jwt_request = || {
        let mut req = tonic::Request::new(JwtsvidRequest {
            audience: vec!["db.example".into()],
            spiffe_id: String::new(),
        });
        req.metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
        req
    };
    // The child that connected is alive: served, twice (the second call through the kept directory).
    for _ in 0..2 {
        let mut stream = client.fetch_x509svid(request()).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/me");
        let jwt = client
            .fetch_jwtsvid(jwt_request())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(jwt.svids[0].spiffe_id, "spiffe://example.org/me");
    }
    // Killed but not yet reaped (a zombie: its PID is still its own), then reaped. The second call
    // above took the path whose last read, the executable's `stat`, is also its liveness check:
    // neither state may pass it.
    // SAFETY: kill on the child forked here.
    assert_eq!(unsafe { libc::kill(child, libc::SIGKILL) }, 0);
    wait_until("the child is a zombie", 10, || {
        std::fs::read_to_string(format!("/proc/{child}/stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
    })
    .await;
    for state in ["a zombie", "reaped"] {
        if state == "reaped" {
            let mut status = 0;
            // SAFETY: waitpid on the child forked here.
            assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        }
        let err = client
            .fetch_x509svid(request())
            .await
            .expect_err("the caller is gone: nothing for whoever holds its socket");
        assert_eq!(err.code(), Code::PermissionDenied, "{state}: {err:?}");
        let err = client
            .fetch_jwtsvid(jwt_request())
            .await
            .expect_err("the caller is gone: no JWT-SVID either");
        assert_eq!(err.code(), Code::PermissionDenied, "{state}: {err:?}");
    }
    agent.shutdown().await;
}

/// Like [`connect_from_short_lived_child`], but the child stays alive (blocked) until killed;
/// returns the connected socket and the child's PID.
fn connect_from_child_that_waits(path: &std::path::Path) -> (i32, i32) {
    let (fd, addr, len) = socket_for(path);
    // SAFETY: plain libc calls on values owned here; the child only calls connect, write, pause and
    // _exit, which are async-signal-safe.
    unsafe {
        let mut ready = [0i32; 2];
        assert_eq!(libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC), 0);
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            let rc = libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len);
            let byte = [u8::from(rc == 0)];
            libc::write(ready[1], byte.as_ptr().cast(), 1);
            loop {
                libc::pause();
            }
        }
        libc::close(ready[1]);
        let mut byte = [0u8];
        assert_eq!(libc::read(ready[0], byte.as_mut_ptr().cast(), 1), 1);
        libc::close(ready[0]);
        assert_eq!(byte[0], 1, "child connected");
        (fd, pid)
    }
}
