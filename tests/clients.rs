//! The client matrix: the SPIFFE ecosystem's own libraries, in their own languages and with their
//! default settings (only SPIFFE_ENDPOINT_SOCKET set), against a live agent.
//!
//! - Python: PyPI `spiffe` on grpcio (gRPC C core, which percent-encodes the socket path into
//!   `:authority`);
//! - Go: `github.com/spiffe/go-spiffe/v2` (grpc-go), including a watched rotation and mutual TLS
//!   between two workloads of different uids;
//! - Java: `io.spiffe:java-spiffe-core` (grpc-java on netty epoll);
//! - each library's own watch, held open while the agent's entries change under it.
//!
//! The programs live under `tests/interop/<language>/` and are prepared by `tests/interop/setup.sh`
//! (venv, Go modules, Maven artifacts, all cached under the target directory). Each run writes what
//! it exercised to `target/interop/results/`, from which `tests/interop/table.py` renders the
//! README's "Clients known to work" table. A missing toolchain fails the run under `CI=true`;
//! elsewhere it prints one loud SKIPPED line.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn entry(path: &str, uid: u32) -> String {
    format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org{path}\"\nselectors = [\"unix:uid:{uid}\"]\n"
    )
}

/// How long one client program may take before the test fails (clients retry failed calls forever).
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// Starts a prepared client with only SPIFFE_ENDPOINT_SOCKET pointing at the agent (and PATH),
/// its output piped.
fn spawn_against(cmd: &mut Command, agent: &TestAgent) -> std::process::Child {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPIFFE_ENDPOINT_SOCKET", agent.endpoint())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs a prepared client against the agent ([`spawn_against`]); a client still running at the
/// deadline is killed and what it printed is returned with a failed status.
fn run(mut cmd: Command, agent: &TestAgent) -> Output {
    let child = spawn_against(&mut cmd, agent);
    let pid = child.id();
    let deadline = std::thread::spawn(move || {
        let until = Instant::now() + CLIENT_DEADLINE;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: kill(pid, 0) only probes whether our child still exists.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return;
            }
        }
        eprintln!("client {pid} still running after {CLIENT_DEADLINE:?}: killing it");
        // SAFETY: our own child, not yet reaped (wait_with_output below reaps it).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let out = child.wait_with_output().unwrap();
    let _ = deadline.join();
    out
}

/// Checks a client's exit and its one JSON line, records it for the README table, returns it.
fn accept(lang: &str, case: &str, out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{lang} {case} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with('{'))
        .unwrap_or_else(|| {
            panic!("{lang} {case}: no JSON line in {stdout}");
        });
    let report: serde_json::Value = serde_json::from_str(line).unwrap();
    record_interop(lang, case, &report);
    report
}

fn exercised(report: &serde_json::Value) -> Vec<&str> {
    report["exercised"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

/// A client program of the matrix.
#[derive(Clone, Copy)]
enum Lang {
    Python,
    Go,
    Java,
}

impl Lang {
    fn name(self) -> &'static str {
        match self {
            Lang::Python => "python",
            Lang::Go => "go",
            Lang::Java => "java",
        }
    }

    fn tools(self) -> &'static [&'static str] {
        match self {
            Lang::Python => &["python3"],
            Lang::Go => &["go"],
            Lang::Java => &["java", "mvn"],
        }
    }

    /// The language's interop program with `args`, not yet started.
    fn command(self, args: &[&str]) -> Command {
        let mut cmd = match self {
            Lang::Python => {
                let mut cmd = Command::new(interop_dir().join("venv/bin/python"));
                cmd.arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/interop/python/client.py"
                ));
                cmd
            }
            Lang::Go => Command::new(go_bin()),
            Lang::Java => {
                let classpath =
                    std::fs::read_to_string(interop_dir().join("java.classpath")).unwrap();
                let mut cmd = Command::new("java");
                cmd.arg("-cp")
                    .arg(format!(
                        "{}:{}",
                        interop_dir().join("java/classes").display(),
                        classpath.trim()
                    ))
                    .arg("interop.Main");
                cmd
            }
        };
        cmd.args(args);
        cmd
    }

    /// Runs the language's interop program with `args` against `agent`.
    fn run(self, args: &[&str], agent: &TestAgent) -> Output {
        let cmd = self.command(args);
        tokio::task::block_in_place(|| run(cmd, agent))
    }
}

/// One case of the matrix: `lang`'s program run with `args` against an agent on `config` (with
/// one of its connections held by uid 65534 when `hold`), recorded as `case`; it must exercise
/// exactly `want`. `test` names the case in a SKIPPED line.
async fn client_case(
    lang: Lang,
    test: &str,
    config: &str,
    args: &[&str],
    (case, hold): (&str, bool),
    want: &[&str],
) {
    if !prepare(lang.name(), lang.tools(), test) {
        return;
    }
    let agent = TestAgent::start(config).await;
    let held = hold.then(|| hold_connection_as_nobody(&agent));
    let out = lang.run(args, &agent);
    drop(held);
    let report = accept(lang.name(), case, &out);
    assert_eq!(exercised(&report), want);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_spiffe_library_with_default_options() {
    if !prepare(
        "python",
        &["python3"],
        "python_spiffe_library_with_default_options",
    ) {
        return;
    }
    let agent = TestAgent::start(&entry("/python", euid())).await;
    let out = Lang::Python.run(&["spiffe://example.org/python", "db.example"], &agent);
    let report = accept("python", "sources", &out);
    assert_eq!(
        exercised(&report),
        [
            "X509Source",
            "JwtSource",
            "fetch_x509_bundles",
            "fetch_jwt_bundles",
            "validate_jwt_svid"
        ]
    );
    agent.shutdown().await;
}

/// The same library, for a process no entry matches: each call fails at once with
/// PERMISSION_DENIED and the agent's reason, as the library shows it to its user (not a hang, not
/// a retry loop, not an empty answer).
#[tokio::test(flavor = "multi_thread")]
async fn python_spiffe_library_is_told_why_it_is_refused() {
    client_case(
        Lang::Python,
        "python_spiffe_library_is_told_why_it_is_refused",
        &entry("/python", euid().wrapping_add(7)),
        &["--refused", "db.example"],
        ("refused", false),
        &["fetch_x509_svid refused", "fetch_jwt_svid refused"],
    )
    .await;
}

/// A uid's share of new credentials (first mints, JWT cache misses) set to one, refilled once in
/// 1,000 s: the second new credential is over its share.
fn one_new_credential(path: &str) -> String {
    format!(
        "[limits]\nnew_credentials_per_second = 0.001\nnew_credentials_burst = 1\n{}",
        entry(path, euid())
    )
}

/// The same library, for a uid over its share of new credentials: its first is given, the next
/// JWT-SVID and X.509-SVID fail at once with RESOURCE_EXHAUSTED naming the limit, as the library
/// shows it (a client can tell "retry later" from "no identity").
#[tokio::test(flavor = "multi_thread")]
async fn python_spiffe_library_is_told_it_is_over_its_share() {
    client_case(
        Lang::Python,
        "python_spiffe_library_is_told_it_is_over_its_share",
        &one_new_credential("/python"),
        &["--limited", "db.example"],
        ("limited", false),
        &[
            "fetch_jwt_svid over its share refused",
            "fetch_x509_svid over its share refused",
        ],
    )
    .await;
}

/// A uid whose share of connections is one.
fn one_connection(path: &str) -> String {
    format!(
        "[limits]\nmax_connections_per_uid = 1\n{}",
        entry(path, euid())
    )
}

/// An agent that takes two connections in all, either of them from one uid; an idle connection is
/// kept a minute (the one [`hold_connection_as_nobody`] holds).
fn two_connections_in_all(path: &str) -> String {
    format!(
        "[limits]\nmax_connections = 2\nmax_connections_per_uid = 2\nconnection_idle = \"60s\"\n{}",
        entry(path, euid())
    )
}

/// A connection to an agent from a process of uid 65534 ([`fork_connect_then_steps`]), held while
/// this lives; the process is killed when it is dropped, also when a test fails.
struct HeldConnection {
    _conn: std::os::unix::net::UnixStream,
    _child: ForkedChild,
    pipes: [i32; 2],
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        for fd in self.pipes {
            // SAFETY: closing descriptors this value owns.
            unsafe { libc::close(fd) };
        }
    }
}

/// Opens HTTP/2 on a connection of uid 65534 and reads the agent's SETTINGS back, so the agent has
/// accepted and counted it before this returns.
fn hold_connection_as_nobody(agent: &TestAgent) -> HeldConnection {
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;
    let (fd, go, answers, child) = fork_connect_then_steps(&agent.socket, Some(65534), |_| true);
    // SAFETY: `fd` is the connected socket the fork left this test, owned from here on.
    let mut conn = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut settings = [0u8; 9];
    conn.read_exact(&mut settings)
        .expect("the agent answers uid 65534's connection with its SETTINGS");
    assert_eq!(settings[3], 0x4, "a SETTINGS frame");
    HeldConnection {
        _conn: conn,
        _child: child,
        pipes: [go, answers],
    }
}

/// A uid whose share of open streams is one.
fn one_stream(path: &str) -> String {
    format!("[limits]\nmax_streams_per_uid = 1\n{}", entry(path, euid()))
}

/// The same library, for a uid whose share of open streams is one: an X509Source holds it,
/// another stream is refused at once with RESOURCE_EXHAUSTED naming `limits.max_streams_per_uid`,
/// a unary call is still answered, and the slot comes back when the source is closed.
#[tokio::test(flavor = "multi_thread")]
async fn python_spiffe_library_is_told_it_is_over_its_streams() {
    client_case(
        Lang::Python,
        "python_spiffe_library_is_told_it_is_over_its_streams",
        &one_stream("/python"),
        &["--streams", "db.example"],
        ("streams", false),
        &[
            "fetch_x509_svid beyond the uid's streams refused",
            "fetch_jwt_svid beside the held stream",
            "fetch_x509_svid after the source closed",
        ],
    )
    .await;
}

/// The same library, for a uid whose share of connections is one: grpcio (C core) shares one
/// connection among a process's channels to the same socket, so an X509Source and a second client
/// in one process are served on it; another Python process is refused at once with
/// RESOURCE_EXHAUSTED naming `limits.max_connections_per_uid`, and served once the source closed.
#[tokio::test(flavor = "multi_thread")]
async fn python_spiffe_library_is_told_it_is_over_its_connections() {
    client_case(
        Lang::Python,
        "python_spiffe_library_is_told_it_is_over_its_connections",
        &one_connection("/python"),
        &["--connections", "db.example"],
        ("connections", false),
        &[
            "second client in the same process served on its one connection",
            "fetch_x509_svid from another process beyond the uid's connections refused",
            "fetch_x509_svid from another process after the source closed",
        ],
    )
    .await;
}

/// The same library, against an agent whose two connections in all are taken (one by another
/// uid, one by the X509Source's process): another Python process is refused at once with
/// UNAVAILABLE naming `limits.max_connections`, and served once the source closed.
#[tokio::test(flavor = "multi_thread")]
async fn python_spiffe_library_is_told_the_agent_is_over_its_connections() {
    client_case(
        Lang::Python,
        "python_spiffe_library_is_told_the_agent_is_over_its_connections",
        &two_connections_in_all("/python"),
        &["--connections", "db.example", "agent"],
        ("agent-connections", true),
        &[
            "second client in the same process served on its one connection",
            "fetch_x509_svid from another process beyond the agent's connections refused",
            "fetch_x509_svid from another process after the source closed",
        ],
    )
    .await;
}

fn go_bin() -> PathBuf {
    interop_dir().join("bin/interop-go")
}

#[tokio::test(flavor = "multi_thread")]
async fn go_spiffe_sources_and_jwt_validation() {
    if !prepare("go", &["go"], "go_spiffe_sources_and_jwt_validation") {
        return;
    }
    let agent = TestAgent::start(&entry("/go", euid())).await;
    let mut cmd = Command::new(go_bin());
    cmd.args(["sources", "spiffe://example.org/go", "db.example"]);
    let out = tokio::task::block_in_place(|| run(cmd, &agent));
    let report = accept("go", "sources", &out);
    assert_eq!(report["validated"], "spiffe://example.org/go");
    assert!(exercised(&report).contains(&"jwtsvid.ParseAndValidate"));
    agent.shutdown().await;
}

/// go-spiffe, for a process no entry matches: each fetch fails at once with PermissionDenied and
/// the agent's reason, as go-spiffe hands it to its caller.
#[tokio::test(flavor = "multi_thread")]
async fn go_spiffe_is_told_why_it_is_refused() {
    client_case(
        Lang::Go,
        "go_spiffe_is_told_why_it_is_refused",
        &entry("/go", euid().wrapping_add(7)),
        &["refused", "db.example"],
        ("refused", false),
        &["FetchX509SVID refused", "FetchJWTSVID refused"],
    )
    .await;
}

/// go-spiffe, for a uid over its share of new credentials: its first is given, the next
/// JWT-SVID and X.509-SVID fail at once with ResourceExhausted naming the limit.
#[tokio::test(flavor = "multi_thread")]
async fn go_spiffe_is_told_it_is_over_its_share() {
    client_case(
        Lang::Go,
        "go_spiffe_is_told_it_is_over_its_share",
        &one_new_credential("/go"),
        &["limited", "db.example"],
        ("limited", false),
        &[
            "FetchJWTSVID over its share refused",
            "FetchX509SVID over its share refused",
        ],
    )
    .await;
}

/// go-spiffe, for a uid whose share of open streams is one: an X509Source holds it, another
/// FetchX509SVID fails at once with ResourceExhausted naming `limits.max_streams_per_uid`, a unary
/// FetchJWTSVID is still answered, and the slot comes back when the source is closed.
#[tokio::test(flavor = "multi_thread")]
async fn go_spiffe_is_told_it_is_over_its_streams() {
    client_case(
        Lang::Go,
        "go_spiffe_is_told_it_is_over_its_streams",
        &one_stream("/go"),
        &["streams", "db.example"],
        ("streams", false),
        &[
            "FetchX509SVID beyond the uid's streams refused",
            "FetchJWTSVID beside the held stream",
            "FetchX509SVID after the source closed",
        ],
    )
    .await;
}

/// go-spiffe, for a uid whose share of connections is one: an X509Source holds it, a second
/// client's calls (its own connection) fail at once with ResourceExhausted naming
/// `limits.max_connections_per_uid`, and that same client is served once the source is closed.
#[tokio::test(flavor = "multi_thread")]
async fn go_spiffe_is_told_it_is_over_its_connections() {
    client_case(
        Lang::Go,
        "go_spiffe_is_told_it_is_over_its_connections",
        &one_connection("/go"),
        &["connections", "db.example"],
        ("connections", false),
        &[
            "FetchX509SVID beyond the uid's connections refused",
            "FetchJWTSVID beyond the uid's connections refused",
            "FetchJWTSVID after the source closed",
        ],
    )
    .await;
}

/// go-spiffe, against an agent whose two connections in all are taken (one by another uid, one by
/// its X509Source): a second client's calls fail at once with Unavailable (the status clients
/// retry) naming `limits.max_connections`, and it is served once the source is closed.
#[tokio::test(flavor = "multi_thread")]
async fn go_spiffe_is_told_the_agent_is_over_its_connections() {
    client_case(
        Lang::Go,
        "go_spiffe_is_told_the_agent_is_over_its_connections",
        &two_connections_in_all("/go"),
        &["connections", "db.example", "agent"],
        ("agent-connections", true),
        &[
            "FetchX509SVID beyond the agent's connections refused",
            "FetchJWTSVID beyond the agent's connections refused",
            "FetchJWTSVID after the source closed",
        ],
    )
    .await;
}

/// go-spiffe's watcher sees a 1-minute SVID rotate on its open stream (at about half-life).
#[tokio::test(flavor = "multi_thread")]
async fn go_spiffe_watch_follows_a_rotation() {
    if !prepare("go", &["go"], "go_spiffe_watch_follows_a_rotation") {
        return;
    }
    let cfg = format!("[svid]\nx509_ttl = \"1m\"\n{}", entry("/rotating", euid()));
    let agent = TestAgent::start(&cfg).await;
    let mut cmd = Command::new(go_bin());
    cmd.args(["watch", "spiffe://example.org/rotating", "2", "75"]);
    let out = tokio::task::block_in_place(|| run(cmd, &agent));
    let report = accept("go", "watch", &out);
    let serials = report["serials"].as_array().unwrap();
    assert_eq!(serials.len(), 2, "two distinct SVIDs: {report}");
    assert_ne!(serials[0], serials[1]);
    agent.shutdown().await;
}

/// Two go-spiffe workloads of different uids complete mutual TLS with `spiffetls`, each
/// authorizing the other's SPIFFE ID.
#[tokio::test(flavor = "multi_thread")]
async fn go_spiffe_mtls_between_two_uids() {
    if !require_root("go_spiffe_mtls_between_two_uids")
        || !prepare("go", &["go"], "go_spiffe_mtls_between_two_uids")
    {
        return;
    }
    let cfg = format!("{}{}", entry("/server", 0), entry("/client", 65534));
    let agent = TestAgent::start(&cfg).await;
    let addr = format!("127.0.0.1:{}", free_port());
    let server = Command::new(go_bin())
        .args(["mtls-server", &addr, "spiffe://example.org/client"])
        .env_clear()
        .env("SPIFFE_ENDPOINT_SOCKET", agent.endpoint())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(Some(server));
    let stdout = server.0.as_mut().unwrap().stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::task::block_in_place(|| lines.next());
    assert_eq!(
        first.and_then(Result::ok).as_deref(),
        Some("listening"),
        "server did not start"
    );
    let mut client = Command::new(go_bin());
    client
        .args(["mtls-client", &addr, "spiffe://example.org/server"])
        .uid(65534)
        .gid(65534);
    let out = tokio::task::block_in_place(|| run(client, &agent));
    let mut report = accept("go", "mtls", &out);
    assert_eq!(
        report["reply"],
        "hello spiffe://example.org/client, you said ping\n"
    );
    let server_line = tokio::task::block_in_place(|| lines.next())
        .and_then(Result::ok)
        .unwrap_or_default();
    let server: serde_json::Value = serde_json::from_str(&server_line)
        .unwrap_or_else(|e| panic!("server report {server_line:?}: {e}"));
    assert_eq!(server["peer"], "spiffe://example.org/client");
    report["exercised"] = serde_json::json!(["spiffetls.Listen", "spiffetls.Dial"]);
    record_interop("go", "mtls", &report);
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn java_spiffe_sources_with_default_options() {
    if !prepare(
        "java",
        &["java", "mvn"],
        "java_spiffe_sources_with_default_options",
    ) {
        return;
    }
    let agent = TestAgent::start(&entry("/java", euid())).await;
    let out = Lang::Java.run(&["spiffe://example.org/java", "db.example"], &agent);
    let report = accept("java", "sources", &out);
    assert!(exercised(&report).contains(&"DefaultX509Source"));
    assert!(exercised(&report).contains(&"DefaultJwtSource"));
    agent.shutdown().await;
}

/// java-spiffe, for a process no entry matches: each fetch fails at once with PERMISSION_DENIED
/// and the agent's reason in what the library throws (its own exception, with gRPC's status as
/// the cause).
#[tokio::test(flavor = "multi_thread")]
async fn java_spiffe_is_told_why_it_is_refused() {
    client_case(
        Lang::Java,
        "java_spiffe_is_told_why_it_is_refused",
        &entry("/java", euid().wrapping_add(7)),
        &["--refused", "db.example"],
        ("refused", false),
        &["fetchX509Context refused", "fetchJwtSvid refused"],
    )
    .await;
}

/// java-spiffe, for a uid over its share of new credentials: its first is given, the next
/// JWT-SVID and X.509-SVID fail at once with RESOURCE_EXHAUSTED naming the limit, found along the
/// cause chain of what the library throws.
#[tokio::test(flavor = "multi_thread")]
async fn java_spiffe_is_told_it_is_over_its_share() {
    client_case(
        Lang::Java,
        "java_spiffe_is_told_it_is_over_its_share",
        &one_new_credential("/java"),
        &["--limited", "db.example"],
        ("limited", false),
        &[
            "fetchJwtSvid over its share refused",
            "fetchX509Context over its share refused",
        ],
    )
    .await;
}

/// Runs the compiled `interop.Main` with `args` against `agent`.
/// java-spiffe, for a uid whose share of open streams is one: a DefaultX509Source holds it,
/// another stream is refused at once with RESOURCE_EXHAUSTED naming `limits.max_streams_per_uid`,
/// a unary call is still answered, and the slot comes back when the source is closed.
#[tokio::test(flavor = "multi_thread")]
async fn java_spiffe_is_told_it_is_over_its_streams() {
    client_case(
        Lang::Java,
        "java_spiffe_is_told_it_is_over_its_streams",
        &one_stream("/java"),
        &["--streams", "db.example"],
        ("streams", false),
        &[
            "fetchX509Context beyond the uid's streams refused",
            "fetchJwtSvid beside the held stream",
            "fetchX509Context after the source closed",
        ],
    )
    .await;
}

/// java-spiffe, for a uid whose share of connections is one: a DefaultX509Source holds it, a
/// second client's calls (its own channel) fail at once with RESOURCE_EXHAUSTED naming
/// `limits.max_connections_per_uid`, and that same client is served once the source is closed.
#[tokio::test(flavor = "multi_thread")]
async fn java_spiffe_is_told_it_is_over_its_connections() {
    client_case(
        Lang::Java,
        "java_spiffe_is_told_it_is_over_its_connections",
        &one_connection("/java"),
        &["--connections", "db.example"],
        ("connections", false),
        &[
            "fetchX509Context beyond the uid's connections refused",
            "fetchJwtSvid beyond the uid's connections refused",
            "fetchJwtSvid after the source closed",
        ],
    )
    .await;
}

/// java-spiffe, against an agent whose two connections in all are taken (one by another uid, one
/// by its DefaultX509Source): a second client's calls fail at once with UNAVAILABLE naming
/// `limits.max_connections`, and it is served once the source is closed.
#[tokio::test(flavor = "multi_thread")]
async fn java_spiffe_is_told_the_agent_is_over_its_connections() {
    client_case(
        Lang::Java,
        "java_spiffe_is_told_the_agent_is_over_its_connections",
        &two_connections_in_all("/java"),
        &["--connections", "db.example", "agent"],
        ("agent-connections", true),
        &[
            "fetchX509Context beyond the agent's connections refused",
            "fetchJwtSvid beyond the agent's connections refused",
            "fetchJwtSvid after the source closed",
        ],
    )
    .await;
}

/// A client program that prints one JSON line per event of its library's watch and runs until its
/// standard input is closed (`follow` in Go, `--follow` in Python and Java).
struct Follower {
    child: KillOnDrop,
    events: std::sync::mpsc::Receiver<String>,
    lines: Vec<String>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Follower {
    fn start(lang: Lang, args: &[&str], agent: &TestAgent) -> Self {
        let mut child = spawn_against(lang.command(args).stdin(Stdio::piped()), agent);
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut all = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stderr, &mut all);
            all
        });
        Follower {
            child: KillOnDrop(Some(child)),
            events,
            lines: Vec::new(),
            stderr: Some(stderr),
        }
    }

    /// The next event the library reported, within `secs`.
    fn next(&mut self, secs: u64) -> serde_json::Value {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = tokio::task::block_in_place(|| self.events.recv_timeout(left))
                .unwrap_or_else(|e| {
                    panic!("no event within {secs} s ({e}); so far: {:?}", self.lines)
                });
            self.lines.push(line.clone());
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                return event;
            }
        }
    }

    /// The next event, which must be an update: its SPIFFE IDs and serials.
    fn update(&mut self, secs: u64) -> (Vec<String>, Vec<String>) {
        let event = self.next(secs);
        assert_eq!(event["event"], "update", "an update was due: {event}");
        ids_and_serials(&event)
    }

    /// The next update, passing over the errors the library reports while it retries.
    fn update_after_errors(&mut self, secs: u64) -> (Vec<String>, Vec<String>) {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = until.saturating_duration_since(Instant::now()).as_secs() + 1;
            let event = self.next(left);
            if event["event"] == "update" {
                return ids_and_serials(&event);
            }
            assert_eq!(event["event"], "error", "{event}");
        }
    }

    /// No event for `ms`.
    fn quiet(&mut self, ms: u64) {
        let got =
            tokio::task::block_in_place(|| self.events.recv_timeout(Duration::from_millis(ms)));
        assert!(got.is_err(), "an event where none was due: {got:?}");
    }

    /// Closes the program's standard input and returns all it printed, once it has exited.
    fn finish(mut self) -> Output {
        let mut child = self.child.0.take().unwrap();
        drop(child.stdin.take());
        let status = tokio::task::block_in_place(|| {
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return status;
                }
                if Instant::now() > until {
                    let _ = child.kill();
                    return child.wait().unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        self.lines.extend(self.events.try_iter());
        let stderr = self.stderr.take().unwrap().join().unwrap_or_default();
        Output {
            status,
            stdout: self.lines.join("\n").into_bytes(),
            stderr,
        }
    }
}

/// An update's SPIFFE IDs and serials, in the order the library listed them.
fn ids_and_serials(update: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let strings = |key: &str| -> Vec<String> {
        update[key]
            .as_array()
            .unwrap_or_else(|| panic!("no list of {key}: {update}"))
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    (strings("ids"), strings("serials"))
}

/// A library's own watch follows the agent's entries on its open stream, with its default
/// settings: an identity added and one removed arrive as updates (the unchanged SVID not
/// re-minted); losing every identity ends the stream with PermissionDenied (go-spiffe reports it
/// to its watcher; py-spiffe and java-spiffe retry without telling theirs) and the
/// library's retries are refused; once an entry matches again, a retry is served the new identity.
async fn watch_follows_entry_changes(lang: Lang, test: &str, args: &[&str]) {
    if !prepare(lang.name(), lang.tools(), test) {
        return;
    }
    let me = euid();
    let id = |path: &str| format!("spiffe://example.org{path}");
    let mut agent = TestAgent::start(&entry("/a", me)).await;
    let mut follower = Follower::start(lang, args, &agent);
    let (ids, first) = follower.update(30);
    assert_eq!(ids, [id("/a")]);

    agent.reload(&format!("{}{}", entry("/a", me), entry("/b", me)));
    let (ids, both) = follower.update(10);
    assert_eq!(ids, [id("/a"), id("/b")]);
    assert_eq!(both[0], first[0], "the unchanged SVID is not re-minted");

    agent.reload(&entry("/b", me));
    let (ids, only_b) = follower.update(10);
    assert_eq!(ids, [id("/b")]);
    assert_eq!(only_b[0], both[1]);

    // No entry for this uid any more.
    agent.reload(&entry("/c", me.wrapping_add(1)));
    match lang {
        Lang::Go => {
            // The open stream ends, naming why; go-spiffe retries after 1 s and that new stream
            // is refused at once, naming why.
            for why in ["no longer entitled", "no registration entry matches"] {
                let refused = follower.next(10);
                assert_eq!(refused["event"], "error", "{refused}");
                assert_eq!(refused["code"], "PermissionDenied", "{refused}");
                let message = refused["message"].as_str().unwrap_or_default();
                assert!(message.contains(why), "{refused}");
            }
        }
        // py-spiffe and java-spiffe hand retryable errors to no one: nothing shows while they retry.
        _ => follower.quiet(1500),
    }

    agent.reload(&entry("/c", me));
    let (ids, regained) = follower.update_after_errors(30);
    assert_eq!(ids, [id("/c")]);
    assert!(!only_b.contains(&regained[0]));

    let out = follower.finish();
    let report = accept(lang.name(), "follow", &out);
    assert_eq!(exercised(&report).len(), 1, "{report}");
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn go_spiffe_watch_follows_entry_changes() {
    watch_follows_entry_changes(
        Lang::Go,
        "go_spiffe_watch_follows_entry_changes",
        &["follow"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_spiffe_library_watch_follows_entry_changes() {
    watch_follows_entry_changes(
        Lang::Python,
        "python_spiffe_library_watch_follows_entry_changes",
        &["--follow", "-"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn java_spiffe_watch_follows_entry_changes() {
    watch_follows_entry_changes(
        Lang::Java,
        "java_spiffe_watch_follows_entry_changes",
        &["--follow", "-"],
    )
    .await;
}
