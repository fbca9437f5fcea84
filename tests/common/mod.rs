//! Shared test harness: a real agent on a real Unix socket in a temp dir, and real clients.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use lanyard::app::{self, Running};
use lanyard::clock::SystemClock;
use lanyard::config::Config;
use lanyard::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// A running agent with its own socket and data directory.
pub(crate) struct TestAgent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub running: Option<Running>,
}

/// Config text with the socket and data dir placed in `dir` and the health endpoint on a free
/// loopback port, followed by `extra`.
pub(crate) fn config_text(dir: &Path, extra: &str) -> String {
    format!(
        "socket_path = \"{}\"\nadmin_socket_path = \"{}\"\ndata_dir = \"{}\"\nhealth = {{ address = \"127.0.0.1:0\" }}\n{extra}",
        dir.join("workload.sock").display(),
        dir.join("admin").join("admin.sock").display(),
        dir.join("data").display()
    )
}

/// A temp dir that other uids can traverse (tempfile makes them 0700), so child processes under
/// other uids can reach the socket.
pub(crate) fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("lanyard-test")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

impl TestAgent {
    /// Starts an agent in this process with `extra` config (entries, TTLs...).
    pub(crate) async fn start(extra: &str) -> Self {
        Self::start_with_clock(extra, Arc::new(SystemClock)).await
    }

    /// `start` on the given clock (a `ManualClock` lets a test move the agent's wall clock).
    pub(crate) async fn start_with_clock(extra: &str, clock: lanyard::clock::SharedClock) -> Self {
        let dir = open_tempdir();
        let config = Config::from_toml(&config_text(dir.path(), extra)).expect("test config");
        let running = app::start(config, clock).await.expect("agent starts");
        Self {
            socket: running.socket_path.clone(),
            dir,
            running: Some(running),
        }
    }

    /// `unix:///...` for SPIFFE_ENDPOINT_SOCKET.
    pub(crate) fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A client that sends the security header (like every real client).
    pub(crate) async fn client(&self) -> lanyard::client::WorkloadClient {
        lanyard::client::connect(&self.endpoint()).await.unwrap()
    }

    /// A raw tonic client that sends no header unless the test adds one.
    pub(crate) async fn raw_client(&self) -> SpiffeWorkloadApiClient<Channel> {
        SpiffeWorkloadApiClient::new(raw_channel(&self.socket).await)
    }

    /// Replaces the policy with the entries of `extra` config text (as SIGHUP does with the file).
    pub(crate) fn reload(&mut self, extra: &str) {
        let config =
            Config::from_toml(&config_text(self.dir.path(), extra)).expect("reload config");
        self.running
            .as_mut()
            .unwrap()
            .reload(config)
            .expect("reload");
    }

    pub(crate) fn running(&self) -> &Running {
        self.running.as_ref().unwrap()
    }

    pub(crate) async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// A tonic channel over the Unix socket at `path`.
pub(crate) async fn raw_channel(path: &Path) -> Channel {
    let path = path.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .unwrap()
}

/// The effective uid of the test process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// True if the test may run children under other uids. Outside CI a non-root run skips loudly;
/// in CI (CI=true, run as root) a non-root run is a failure, never a silent pass.
pub(crate) fn require_root(test: &str) -> bool {
    if euid() == 0 {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} needs root and CI runs as root: run the suite as root");
    }
    eprintln!(
        "\n*** SKIPPED {test}: needs root (children under other uids). Run as root to check it. ***\n"
    );
    false
}

/// The lanyard binary under test.
pub(crate) fn lanyard_bin() -> &'static str {
    env!("CARGO_BIN_EXE_lanyard")
}

/// Runs `lanyard fetch x509 --json` as `uid` against `endpoint`.
pub(crate) fn fetch_as(uid: u32, gid: u32, endpoint: &str) -> Output {
    fetch_as_with(uid, gid, endpoint, &[])
}

/// Runs `lanyard fetch x509 --json` plus `extra` (such as `--write DIR`) as `uid` against `endpoint`.
pub(crate) fn fetch_as_with(uid: u32, gid: u32, endpoint: &str, extra: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    Command::new(lanyard_bin())
        .args(["fetch", "x509", "--json", "--socket", endpoint])
        .args(extra)
        .uid(uid)
        .gid(gid)
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .unwrap()
}

/// The SPIFFE IDs in `lanyard fetch x509 --json` output.
pub(crate) fn ids_in(output: &Output) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}); stdout={} stderr={}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    v["svids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["spiffe_id"].as_str().unwrap().to_owned())
        .collect()
}

/// `n` open FetchX509SVID streams on `client`, each past its first message.
pub(crate) async fn open_x509_streams(
    client: &mut lanyard::client::WorkloadClient,
    n: usize,
) -> Vec<tonic::Streaming<lanyard::proto::X509svidResponse>> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = client
            .fetch_x509svid(lanyard::proto::X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        next_within(&mut s, 10).await;
        streams.push(s);
    }
    streams
}

/// Waits for a stream's next message, failing the test after `secs`.
pub(crate) async fn next_within<S, T>(stream: &mut S, secs: u64) -> T
where
    S: tokio_stream::Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    use tokio_stream::StreamExt;
    tokio::time::timeout(Duration::from_secs(secs), stream.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("a message, not an error")
}

/// Asserts that a stream sends nothing for `ms` milliseconds.
pub(crate) async fn assert_quiet<S, T: std::fmt::Debug>(stream: &mut S, ms: u64)
where
    S: tokio_stream::Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    use tokio_stream::StreamExt;
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(ms), stream.next()).await {
        panic!("expected no message, got {got:?}");
    }
}

/// Waits for the stream to end with an error status.
pub(crate) async fn end_status<S, T: std::fmt::Debug>(stream: &mut S, secs: u64) -> tonic::Status
where
    S: tokio_stream::Stream<Item = Result<T, tonic::Status>> + Unpin,
{
    use tokio_stream::StreamExt;
    loop {
        match tokio::time::timeout(Duration::from_secs(secs), stream.next())
            .await
            .expect("stream ends in time")
        {
            Some(Err(status)) => return status,
            Some(Ok(_)) => continue,
            None => panic!("stream ended without a status"),
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for a test's own listener).
pub(crate) fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits (without blocking the runtime that serves an in-process agent) until `f` holds.
pub(crate) async fn wait_until(what: &str, secs: u64, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where `tests/interop/setup.sh` prepares the client-matrix programs and where every interop run
/// records what it exercised (`results/`), for `tests/interop/table.py`.
pub(crate) fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("interop")
}

/// Records one interop run (library, version, what it exercised) for the README's client table.
pub(crate) fn record_interop(language: &str, case: &str, report: &serde_json::Value) {
    let dir = interop_dir().join("results");
    std::fs::create_dir_all(&dir).unwrap();
    let mut record = report.clone();
    record["language"] = language.into();
    record["case"] = case.into();
    std::fs::write(
        dir.join(format!("{language}-{case}.json")),
        record.to_string(),
    )
    .unwrap();
}

/// A tonic client over an already connected socket `fd` (one the test inherited or kept).
pub(crate) async fn client_over(
    fd: i32,
) -> lanyard::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient<tonic::transport::Channel>
{
    SpiffeWorkloadApiClient::new(channel_over(fd).await)
}

/// A tonic channel over the connected socket `fd` (which this test owns from now on).
pub(crate) async fn channel_over(fd: i32) -> Channel {
    use std::os::fd::FromRawFd;
    use std::sync::Mutex;
    // SAFETY: `fd` is a connected socket this test owns.
    let s = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    s.set_nonblocking(true).unwrap();
    let slot = Arc::new(Mutex::new(Some(UnixStream::from_std(s).unwrap())));
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let s = slot.lock().unwrap().take();
            async move {
                s.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("used"))
            }
        }))
        .await
        .unwrap()
}

/// A forked child, killed and reaped when dropped (also when a test fails).
pub(crate) struct ForkedChild {
    pub pid: i32,
}

impl Drop for ForkedChild {
    fn drop(&mut self) {
        // SAFETY: killing and reaping our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// Forks a child that (as `uid`, when given: gid and uid dropped before anything else) connects to
/// `socket`, reports that it is connected, waits on a pipe, then execs `argv[0]` with `argv`.
/// Returns the connected socket (whose peer is the child), the pipe's write end and the child. The
/// child closes every other descriptor first, so it holds nothing of the test's; the program it
/// execs reads its standard input from that pipe, which the test never writes again (so `su` waits
/// for a password forever).
pub(crate) fn fork_connect_then_exec(
    socket: &Path,
    uid: Option<u32>,
    argv: &[&str],
) -> (i32, i32, ForkedChild) {
    use std::ffi::CString;
    let exe_c = CString::new(argv[0]).unwrap();
    let args: Vec<CString> = argv.iter().map(|a| CString::new(*a).unwrap()).collect();
    let mut argv_c: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv_c.push(std::ptr::null());
    let exec = |go: i32, _ready: i32| {
        // SAFETY: read, dup2, execv and _exit are async-signal-safe; the pointers were prepared
        // before fork.
        unsafe {
            let mut b = 0u8;
            libc::read(go, (&mut b as *mut u8).cast(), 1);
            libc::dup2(go, 0);
            libc::execv(exe_c.as_ptr(), argv_c.as_ptr());
            libc::_exit(2);
        }
    };
    let (fd, go, ready, child) = fork_connected(socket, uid, &exec);
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(ready) };
    (fd, go, child)
}

/// Forks a child that (as `uid`) connects to `socket`, then, for each byte the test writes to the
/// returned pipe, runs `step(byte)` on itself (async-signal-safe calls only, no exec) and answers
/// one byte on the returned read end: `k` when the step succeeded, `f` when not. Returns the
/// connected socket, the step pipe's write end, the answer pipe's read end and the child.
pub(crate) fn fork_connect_then_steps(
    socket: &Path,
    uid: Option<u32>,
    step: fn(u8) -> bool,
) -> (i32, i32, i32, ForkedChild) {
    let steps = |go: i32, ready: i32| {
        // SAFETY: read, write, pause and _exit are async-signal-safe; `step` promises the same.
        unsafe {
            loop {
                let mut b = 0u8;
                if libc::read(go, (&mut b as *mut u8).cast(), 1) != 1 {
                    loop {
                        libc::pause();
                    }
                }
                let answer = if step(b) { b"k" } else { b"f" };
                libc::write(ready, answer.as_ptr().cast(), 1);
            }
        }
    };
    fork_connected(socket, uid, &steps)
}

/// Sends step `b` to a child of [`fork_connect_then_steps`] and returns whether it succeeded.
pub(crate) fn child_step(go: i32, answers: i32, b: u8) -> bool {
    let mut answer = 0u8;
    // SAFETY: one byte each way on our own pipes.
    unsafe {
        assert_eq!(libc::write(go, [b].as_ptr().cast(), 1), 1);
        assert_eq!(libc::read(answers, (&mut answer as *mut u8).cast(), 1), 1);
    }
    answer == b'k'
}

/// The fork behind [`fork_connect_then_exec`] and [`fork_connect_then_steps`]: the child drops to
/// `uid`, keeps only the socket (3) and its pipe ends (4: from the test, 5: to the test), connects,
/// reports `r`, then runs `then(4, 5)`, which must not return. Returns the socket, the write end of
/// the pipe to the child, the read end of the pipe from it, and the child.
fn fork_connected(
    socket: &Path,
    uid: Option<u32>,
    then: &dyn Fn(i32, i32),
) -> (i32, i32, i32, ForkedChild) {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: plain libc calls on values prepared before fork; the child only calls setgroups,
    // setgid, setuid, dup2, close_range, connect, write and `then` (async-signal-safe).
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
        let mut go = [0i32; 2];
        let mut ready = [0i32; 2];
        assert_eq!(libc::pipe(go.as_mut_ptr()), 0);
        assert_eq!(libc::pipe(ready.as_mut_ptr()), 0);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (i, b) in socket.as_os_str().as_bytes().iter().enumerate() {
            addr.sun_path[i] = *b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        let pid = libc::fork();
        assert!(pid >= 0);
        if pid == 0 {
            if let Some(uid) = uid
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0)
            {
                libc::_exit(3);
            }
            let keep = [fd, go[0], ready[1]];
            for (i, k) in keep.iter().enumerate() {
                libc::dup2(*k, 1000 + i as i32);
            }
            for i in 0..3 {
                libc::dup2(1000 + i, 3 + i);
            }
            libc::syscall(libc::SYS_close_range, 6u32, u32::MAX, 0u32);
            if libc::connect(3, (&addr as *const libc::sockaddr_un).cast(), len) != 0 {
                libc::_exit(1);
            }
            libc::write(5, b"r".as_ptr().cast(), 1);
            then(4, 5);
            libc::_exit(2);
        }
        let child = ForkedChild { pid };
        libc::close(go[0]);
        libc::close(ready[1]);
        let mut b = 0u8;
        assert_eq!(
            libc::read(ready[0], (&mut b as *mut u8).cast(), 1),
            1,
            "the child connected"
        );
        (fd, go[1], ready[0], child)
    }
}

/// A Workload API request with the security header.
pub(crate) fn with_header<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}

/// Stops a child process (SIGTERM, then SIGKILL after 5 s) if the test ends before it does.
pub(crate) struct KillOnDrop(pub Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            // SAFETY: signalling our own child; SIGTERM lets a helper stop its own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Prepares one client language once per test binary. False (after one loud SKIPPED line) when its
/// toolchain is missing outside CI; under CI a missing toolchain or a failed setup fails the test.
pub(crate) fn prepare(lang: &str, tools: &[&str], test: &str) -> bool {
    type Prepared = std::collections::HashMap<String, Result<(), String>>;
    static DONE: std::sync::Mutex<Option<Prepared>> = std::sync::Mutex::new(None);
    let mut done = DONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let map = done.get_or_insert_with(std::collections::HashMap::new);
    let result = map
        .entry(lang.to_owned())
        .or_insert_with(|| {
            for tool in tools {
                let found = Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if !found {
                    return Err(format!("needs {tool}"));
                }
            }
            let out = Command::new("bash")
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/interop/setup.sh"
                ))
                .arg(lang)
                .env("LANYARD_INTEROP_DIR", interop_dir())
                .output()
                .map_err(|e| format!("cannot run setup.sh: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "setup.sh {lang} failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        })
        .clone();
    match result {
        Ok(()) => true,
        Err(why) if in_ci() => panic!("{test}: {why} (CI=true: a missing client fails the run)"),
        Err(why) => {
            eprintln!("\n*** SKIPPED {test}: {why} ***\n");
            false
        }
    }
}

/// The indented block after `key` in a YAML file (a ConfigMap's literal block scalar).
pub(crate) fn embedded_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(key));
    let head = lines.next().expect("key present");
    let key_indent = head.len() - head.trim_start().len();
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = body
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    body.iter()
        .map(|l| if l.len() >= indent { &l[indent..] } else { "" })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One request as a [`TlsStandIn`] hands it to its answerer: the request line and headers, and the
/// whole body.
pub(crate) type StandInRequest = (http::request::Parts, bytes::Bytes);

/// What a [`TlsStandIn`] answers: status, `Content-Type`, body.
pub(crate) type StandInAnswer = (u16, &'static str, String);

/// Answers a [`TlsStandIn`]'s requests; may wait (a slow peer) before it answers.
pub(crate) type Answerer = Arc<
    dyn Fn(StandInRequest) -> std::pin::Pin<Box<dyn Future<Output = StandInAnswer> + Send>>
        + Send
        + Sync,
>;

/// A stand-in for an HTTPS peer that cannot run here (the kubelet, the Kubernetes API server):
/// HTTP/1.1 over TLS on 127.0.0.1, with a certificate for `127.0.0.1` from its own CA (written to
/// `<dir>/<name>-ca.pem`). Every request goes to the answerer; it lives as long as the runtime.
pub(crate) struct TlsStandIn {
    pub(crate) addr: std::net::SocketAddr,
    pub(crate) ca_path: PathBuf,
}

impl TlsStandIn {
    pub(crate) async fn start(dir: &Path, name: &str, answer: Answerer) -> Self {
        use http_body_util::BodyExt as _;
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_path, ca_cert.pem()).unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, answer) = (acceptor.clone(), answer.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let answer = answer.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await?.to_bytes();
                                let (status, content_type, body) = answer((parts, body)).await;
                                let mut resp = hyper::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from(body),
                                ));
                                *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                                resp.headers_mut().insert(
                                    hyper::header::CONTENT_TYPE,
                                    hyper::header::HeaderValue::from_static(content_type),
                                );
                                Ok::<_, hyper::Error>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, ca_path }
    }
}

/// `lanyard`, to be given its arguments; with `names` (a directory with an `nsswitch.conf` and the
/// NSS modules it names), run in a mount namespace of its own where that file is
/// `/etc/nsswitch.conf`, with the directory on its library path: the agent alone resolves user and
/// group names through it.
pub(crate) fn agent_command(names: Option<&Path>) -> Command {
    match names {
        None => Command::new(lanyard_bin()),
        Some(names) => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg("mount --bind \"$0\" /etc/nsswitch.conf && exec \"$@\"")
                .arg(names.join("nsswitch.conf"))
                .arg(lanyard_bin())
                .env("LD_LIBRARY_PATH", names);
            c
        }
    }
}

/// An NSS module whose lookup of a uid or gid for which the C expression `hangs` (on `id`) holds
/// takes 20 s (a directory server that stopped answering); any other id is left to the next
/// source. Built with the machine's C compiler into `dir`, beside an `nsswitch.conf` that asks it
/// first (see [`agent_command`]).
pub(crate) fn hanging_name_service(dir: &Path, hangs: &str) {
    let source = dir.join("hang.c");
    std::fs::write(
        &source,
        format!(
            r#"#include <nss.h>
#include <pwd.h>
#include <grp.h>
#include <stddef.h>
#include <unistd.h>
static int hangs(unsigned id) {{ return {hangs}; }}
enum nss_status _nss_hang_getpwuid_r(uid_t uid, struct passwd *p, char *b, size_t n, int *e) {{
    if (hangs(uid)) sleep(20);
    return NSS_STATUS_NOTFOUND;
}}
enum nss_status _nss_hang_getgrgid_r(gid_t gid, struct group *g, char *b, size_t n, int *e) {{
    if (hangs(gid)) sleep(20);
    return NSS_STATUS_NOTFOUND;
}}
"#
        ),
    )
    .unwrap();
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(dir.join("libnss_hang.so.2"))
        .arg(&source)
        .output()
        .expect("gcc (the machine's C compiler) builds the test's NSS module");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        dir.join("nsswitch.conf"),
        "passwd: hang files\ngroup: hang files\nshadow: files\n",
    )
    .unwrap();
}
