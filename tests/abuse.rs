//! Abuse suite: an unprivileged local user (uid 65534) attacks a real agent — a separate `lanyard
//! agent` process on its default limits — while a well-behaved root workload keeps fetching. Each
//! test asserts the victim's fetch *succeeds* (generous timeout: not a latency test) and that the
//! agent's memory and file descriptors stay bounded. The attacker is Python on grpcio
//! (`tests/abuse/attacker.py`, the interop venv); latencies under attack are printed, not asserted.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ENTRIES: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/root"
selectors = ["unix:uid:0"]

[[entry]]
spiffe_id = "spiffe://example.org/nobody"
selectors = ["unix:uid:65534"]
"#;

/// The agent as users run it: its own process, default limits.
struct Agent {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: KillOnDrop,
}

impl Agent {
    async fn start(extra: &str) -> Self {
        Self::start_with_names(extra, None).await
    }

    /// [`Agent::start`], resolving user and group names through `names` (a directory with an
    /// `nsswitch.conf` and the NSS modules it names): the agent runs in a mount namespace of its
    /// own where that file is `/etc/nsswitch.conf`, with the directory on its library path.
    async fn start_with_names(extra: &str, names: Option<&Path>) -> Self {
        let dir = open_tempdir();
        let config = dir.path().join("lanyard.toml");
        std::fs::write(
            &config,
            config_text(dir.path(), &format!("{ENTRIES}{extra}")),
        )
        .unwrap();
        let log = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(dir.path().join("agent.log"))
                .unwrap()
        };
        let child = agent_command(names)
            .args(["agent", "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let socket = dir.path().join("workload.sock");
        let s = socket.clone();
        wait_until("the agent's socket", 20, move || s.exists()).await;
        Self {
            dir,
            socket,
            child: KillOnDrop(Some(child)),
        }
    }

    /// Rewrites the configuration with `entries` and signals the agent to reload it (SIGHUP), as
    /// an operator would.
    fn reload(&self, entries: &str) {
        std::fs::write(
            self.dir.path().join("lanyard.toml"),
            config_text(self.dir.path(), entries),
        )
        .unwrap();
        // SAFETY: a signal to the agent this test started.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, libc::SIGHUP) }, 0);
    }

    fn pid(&self) -> u32 {
        self.child.0.as_ref().unwrap().id()
    }

    /// What the agent has logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Resident memory in MB.
    fn rss_mb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(Iterator::count)
            .unwrap_or(0)
    }

    /// The root workload: `lanyard fetch x509` must succeed; returns how long it took.
    async fn victim(&self) -> Duration {
        let endpoint = self.endpoint();
        let start = Instant::now();
        let out = tokio::task::spawn_blocking(move || fetch_as(0, 0, &endpoint))
            .await
            .unwrap();
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "the root workload's fetch failed under attack: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(ids_in(&out), ["spiffe://example.org/root"]);
        assert!(took < Duration::from_secs(30), "victim took {took:?}");
        took
    }
}

/// A running attacker: its report, its stdin (closing it ends the attack) and its stdout.
struct Attack {
    report: serde_json::Value,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    child: KillOnDrop,
}

impl Attack {
    /// Runs `attacker.py SOCKET MODE ARGS` as uid 65534 and waits for its report.
    fn start(python: &Attacker, socket: &Path, mode: &str, args: &[&str]) -> Self {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&python.interpreter)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/abuse/attacker.py"
            ))
            .arg(socket)
            .arg(mode)
            .args(args)
            .uid(65534)
            .gid(65534)
            .env("GRPC_VERBOSITY", "NONE")
            .env("PYTHONPATH", &python.site)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let report = next_report(&mut stdout, mode);
        Self {
            report,
            stdin,
            stdout,
            child: KillOnDrop(Some(child)),
        }
    }

    /// Sends the attacker one line and returns the report it prints next.
    fn ask(&mut self, line: &str) -> serde_json::Value {
        use std::io::Write;
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        next_report(&mut self.stdout, line)
    }

    /// How many calls were refused with ResourceExhausted; their message must name `limit`.
    fn refusals(&self, limit: &str) -> u64 {
        let refused = self.report["codes"]["RESOURCE_EXHAUSTED"]
            .as_u64()
            .unwrap_or(0);
        let sample = self.report["sample"].as_str().unwrap_or("");
        assert!(
            refused == 0 || sample.contains(limit),
            "the refusal names {limit}: {sample:?}"
        );
        refused
    }

    /// Ends the attack: stdin closes (the attacker exits), then it is signalled for good measure.
    fn stop(mut self) {
        drop(self.stdin.take());
        drop(self.child);
    }
}

/// The attacker's next report line (`what` names it in messages).
fn next_report(stdout: &mut BufReader<ChildStdout>, what: &str) -> serde_json::Value {
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let report: serde_json::Value = serde_json::from_str(&line)
        .unwrap_or_else(|e| panic!("attacker {what} reported {line:?}: {e}"));
    eprintln!("attack {what}: {report}");
    report
}

/// A Python uid 65534 can run, with the interop venv's packages (grpcio and the SPIFFE library's
/// generated stubs): the venv's own interpreter may live under a private home directory, so the
/// system's `/usr/bin/python3` (same minor version) runs with the venv's `site-packages`. `None`
/// after a loud SKIPPED line where it cannot be prepared (outside CI).
fn python(test: &str) -> Option<Attacker> {
    if !require_root(test) || !prepare("python", &["python3"], test) {
        return None;
    }
    let lib = interop_dir().join("venv/lib");
    let site = std::fs::read_dir(&lib)
        .ok()
        .and_then(|mut d| d.find_map(Result::ok))
        .map(|e| e.path().join("site-packages"));
    let interpreter = PathBuf::from("/usr/bin/python3");
    match site {
        Some(site) if site.is_dir() && interpreter.exists() => Some(Attacker { interpreter, site }),
        _ if in_ci() => panic!(
            "{test}: no /usr/bin/python3 or venv site-packages under {}",
            lib.display()
        ),
        _ => {
            eprintln!("\n*** SKIPPED {test}: no /usr/bin/python3 or venv site-packages ***\n");
            None
        }
    }
}

/// How to run the attacker.
struct Attacker {
    interpreter: PathBuf,
    site: PathBuf,
}

/// A default agent with the attacker running `mode` against it (and reporting), or `None` after a
/// loud SKIPPED line.
async fn under_attack(test: &str, mode: &str, args: &[&str]) -> Option<(Agent, Attack)> {
    under_attack_with(test, "", mode, args).await
}

/// [`under_attack`] with `extra` configuration for the agent.
async fn under_attack_with(
    test: &str,
    extra: &str,
    mode: &str,
    args: &[&str],
) -> Option<(Agent, Attack)> {
    let py = python(test)?;
    let agent = Agent::start(extra).await;
    open_to_all(agent.socket.parent().unwrap());
    let attack = Attack::start(&py, &agent.socket, mode, args);
    Some((agent, attack))
}

/// The temp dir and socket must be reachable for uid 65534.
fn open_to_all(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn report_latency(attack: &str, took: Duration) {
    println!("abuse: victim FetchX509SVID during {attack}: {took:?}");
}

/// 1,500 idle connections (preface, then nothing) from one uid: its share (512, a socket and a pidfd
/// each) holds, the rest are refused (64 at most kept to be answered, the others closed at once;
/// these send no request, so each is closed unanswered after 1 s); the agent keeps fds for the
/// victim, and the idle ones are closed after `connection_idle` (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connection_flood_does_not_starve_another_uid() {
    let Some(py) = python("idle_connection_flood_does_not_starve_another_uid") else {
        return;
    };
    let agent = Agent::start("").await;
    open_to_all(agent.socket.parent().unwrap());
    let before = agent.fds();
    let attack = Attack::start(&py, &agent.socket, "idle", &["1500"]);
    report_latency("1500 idle connections", agent.victim().await);
    let fds = agent.fds();
    assert!(
        fds < before + 2 * 512 + 64 + 64,
        "the agent holds {fds} fds (was {before}): more than one uid's share"
    );
    // Past the idle timeout every idle connection is closed, whether or not the attacker holds on.
    let pid = agent.pid();
    let fd_count = move || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(Iterator::count)
            .unwrap_or(0)
    };
    wait_until("idle connections closed", 20, move || {
        fd_count() < before + 32
    })
    .await;
    report_latency("after the idle timeout", agent.victim().await);
    assert!(agent.rss_mb() < 200, "RSS {} MB", agent.rss_mb());
    attack.stop();
}

/// Two processes of one uid connecting and closing in a loop, as fast as they can: the uid's rate
/// of new connections (`new_connections_per_second`) turns most of them away right after `accept`,
/// for a few system calls each (no pidfd, no HTTP/2), and the agent says so naming the uid and the
/// setting; it holds no more descriptors than one uid's share, and the root workload's fetches keep
/// succeeding — its client waits out a full listen queue (`EAGAIN`), which the flood can keep full
/// at moments and which no server can sort by uid before accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_close_churn_is_turned_away_at_accept() {
    let Some((agent, attack)) = under_attack(
        "connect_and_close_churn_is_turned_away_at_accept",
        "churn",
        &["2"],
    )
    .await
    else {
        return;
    };
    let before = agent.fds();
    let mut most = 0;
    for _ in 0..5 {
        report_latency("a connect/close flood", agent.victim().await);
        most = most.max(agent.fds());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        most < before + 2 * 512 + 64 + 64,
        "the agent held {most} fds (was {before}): more than one uid's share"
    );
    let log = agent.log();
    let warned = log
        .lines()
        .find(|l| l.contains("connections closed unanswered"))
        .unwrap_or_else(|| panic!("the agent did not say it turned connections away:\n{log}"));
    assert!(
        warned.contains("uid=65534") && warned.contains("limits.new_connections_per_second"),
        "{warned}"
    );
    attack.stop();
    assert!(agent.rss_mb() < 200, "RSS {} MB", agent.rss_mb());
}

/// 700 connections from one uid that are each served once and then idle: served connections are not
/// closed for idling, so the uid's share (512) is what bounds them; each holds its socket, the
/// caller's pidfd and the `/proc` directory its first call proved (three descriptors), the rest are
/// refused naming the limit, and the agent keeps descriptors and answers for another uid. A refused
/// connection is closed as soon as its refusal is sent, giving back its place among the 64 kept to be
/// answered: a client connecting one at a time has every refusal answered, none closed unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_then_idle_connections_are_held_to_the_uids_share() {
    let Some(py) = python("served_then_idle_connections_are_held_to_the_uids_share") else {
        return;
    };
    let agent = Agent::start("").await;
    open_to_all(agent.socket.parent().unwrap());
    let before = agent.fds();
    let attack = Attack::start(&py, &agent.socket, "served", &["700"]);
    let ok = attack.report["codes"]["OK"].as_u64().unwrap_or(0);
    assert!(ok >= 500, "the uid's share is served: {}", attack.report);
    let refused = attack.refusals("limits.max_connections_per_uid");
    assert_eq!(
        ok + refused,
        700,
        "every connection beyond the uid's share is answered with the refusal: {}",
        attack.report
    );
    // Three per served connection, one per refused connection being answered (at most 64 at once),
    // and the holder's exit watch (one per process).
    let fds = agent.fds();
    assert!(
        fds <= before + 3 * 512 + 64 + 4,
        "the agent holds {fds} fds (was {before}): more than three per connection of one uid's share"
    );
    report_latency("700 served-then-idle connections", agent.victim().await);
    assert!(agent.rss_mb() < 200, "RSS {} MB", agent.rss_mb());
    attack.stop();
}

/// Streams nobody reads: one connection gets at most 100 at once (HTTP/2 MAX_CONCURRENT_STREAMS),
/// one uid at most its share (1000) across connections, refused with ResourceExhausted naming the
/// limit; the victim still gets its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_stream_flood_is_held_to_the_uids_share() {
    let Some((agent, attack)) = under_attack(
        "unread_stream_flood_is_held_to_the_uids_share",
        "streams",
        &["12", "100"],
    )
    .await
    else {
        return;
    };
    let refused = attack.refusals("limits.max_streams_per_uid");
    assert!(
        refused >= 150,
        "streams beyond the uid's share are refused: {}",
        attack.report
    );
    report_latency("1200 unread streams", agent.victim().await);
    assert!(agent.rss_mb() < 200, "RSS {} MB", agent.rss_mb());
    attack.stop();
}

/// A connection that stops reading: 100 X.509 streams with every flow-control window open (so h2
/// sends all it has), then two entry changes push a new SVID to each — more than the socket holds.
/// The agent's writes wait for the socket (it was full), it keeps serving the victim with no
/// descriptor added and memory bounded, and once the attacker reads, the agent writes the rest:
/// every stream gets all three messages, none ended, no byte lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_reading_holds_its_answers_and_loses_none() {
    let Some((agent, mut attack)) = under_attack(
        "a_connection_that_stops_reading_holds_its_answers_and_loses_none",
        "stalled",
        &["100"],
    )
    .await
    else {
        return;
    };
    assert_eq!(attack.report["streams"], 100, "{}", attack.report);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds = agent.fds();
    for dns in ["a.example", "b.example"] {
        agent.reload(&ENTRIES.replace(
            "selectors = [\"unix:uid:65534\"]",
            &format!("selectors = [\"unix:uid:65534\"]\ndns_names = [\"{dns}\"]"),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // Writes waiting for the socket hold no descriptor (counted before the victim connects).
    assert!(agent.fds() <= fds, "descriptors {} > {fds}", agent.fds());
    assert!(agent.rss_mb() < 100, "RSS {} MB", agent.rss_mb());
    report_latency("a connection that stopped reading", agent.victim().await);
    let report = tokio::task::block_in_place(|| attack.ask("drain 3"));
    let number = |key: &str| {
        report[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key}: {report}"))
    };
    // The socket held less than the agent had to send (it was full), and the rest came once the
    // attacker read: three messages for 100 streams are about 340 KB.
    assert!(number("queued") > 0, "{report}");
    assert!(
        number("read") > number("queued") + 100_000,
        "the agent wrote the rest once the socket drained: {report}"
    );
    assert!(
        number("min_messages") >= 3,
        "every stream got all three: {report}"
    );
    assert_eq!(number("ended"), 0, "{report}");
    attack.stop();
}

/// New credentials as fast as one uid can ask (a new audience per call): its token bucket serves
/// the burst, then no more than its rate over however long the flood took (so the test holds on a
/// loaded machine too), and refuses the rest with ResourceExhausted naming the limit; other uids
/// are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_credential_flood_is_rate_limited_per_uid() {
    let Some((agent, attack)) = under_attack(
        "new_credential_flood_is_rate_limited_per_uid",
        "jwt",
        &["600"],
    )
    .await
    else {
        return;
    };
    let ok = attack.report["codes"]["OK"].as_u64().unwrap_or(0);
    let refused = attack.refusals("limits.new_credentials_per_second");
    let seconds = attack.report["seconds"].as_f64().unwrap();
    // The default bucket: a burst of 200, then 50 per second. However long the flood took on a
    // loaded machine, the uid got no more than that (a few calls of slack for the clock edges),
    // and everything beyond it was refused.
    let allowed = 200.0 + 50.0 * seconds;
    assert!(ok >= 200, "the burst is served: {}", attack.report);
    assert!(
        ok as f64 <= allowed + 5.0,
        "at most the burst and the rate over {seconds:.1} s: {}",
        attack.report
    );
    assert!(
        refused as f64 >= 600.0 - allowed - 5.0,
        "the excess is refused: {}",
        attack.report
    );
    report_latency("a new-credential flood", agent.victim().await);
    attack.stop();
}

/// Oversized audiences and tokens are refused before anything is signed or cached
/// (InvalidArgument), and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_audiences_are_refused_and_memory_stays_bounded() {
    let Some((agent, attack)) = under_attack(
        "oversized_audiences_are_refused_and_memory_stays_bounded",
        "audiences",
        &[],
    )
    .await
    else {
        return;
    };
    let r = &attack.report;
    assert_eq!(r["one_mib"], "INVALID_ARGUMENT", "{r}");
    assert_eq!(r["seventeen"], "INVALID_ARGUMENT", "{r}");
    assert_eq!(r["big_jwt"], "INVALID_ARGUMENT", "{r}");
    assert!(
        r["one_mib_details"]
            .as_str()
            .unwrap_or("")
            .contains("at most 256 bytes"),
        "{r}"
    );
    report_latency("oversized audiences", agent.victim().await);
    assert!(agent.rss_mb() < 200, "RSS {} MB", agent.rss_mb());
    attack.stop();
}

/// A well-behaved client is unaffected by the limits: 50 sequential fetches on one connection and
/// 50 connections of its own, well inside every share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_leave_ordinary_use_alone() {
    if !require_root("the_limits_leave_ordinary_use_alone") {
        return;
    }
    let agent = Agent::start("").await;
    for _ in 0..5 {
        agent.victim().await;
    }
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(lanyard::client::connect(&agent.endpoint()).await.unwrap());
    }
    for c in &mut clients {
        let mut s = c
            .fetch_x509svid(lanyard::proto::X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        let first = next_within(&mut s, 10).await;
        assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/root");
    }
}

/// A full disk: the data directory on a 2 MiB tmpfs, filled up. A new credential cannot be
/// recorded, so it is not delivered (`Unavailable`); `/ready` fails naming the inventory; a
/// credential already recorded for the same process keeps being served; freeing space recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_credentials_and_keeps_serving_recorded_ones() {
    if !require_root("a_full_disk_refuses_new_credentials_and_keeps_serving_recorded_ones") {
        return;
    }
    let dir = open_tempdir();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
        .arg(&data)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        assert!(!in_ci(), "CI=true: cannot mount a tmpfs as root");
        eprintln!("\n*** SKIPPED a_full_disk_...: cannot mount a tmpfs ***\n");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(data.clone());
    let config = lanyard::config::Config::from_toml(&format!(
        "socket_path = \"{}\"\nadmin_socket_path = \"{}\"\ndata_dir = \"{}\"\nhealth = {{ address = \"127.0.0.1:0\" }}\n{ENTRIES}",
        dir.path().join("workload.sock").display(),
        dir.path().join("admin/admin.sock").display(),
        data.display()
    ))
    .unwrap();
    let running = lanyard::app::start(config, std::sync::Arc::new(lanyard::clock::SystemClock))
        .await
        .unwrap();
    let health = running.health_addr.unwrap();
    let endpoint = format!("unix://{}", running.socket_path.display());
    // Recorded before the disk fills: this connection's X.509-SVID.
    let mut client = lanyard::client::connect(&endpoint).await.unwrap();
    let first = client
        .fetch_jwtsvid(lanyard::proto::JwtsvidRequest {
            audience: vec!["before".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.svids.len(), 1);
    // Fill the disk.
    let filler = data.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    // A new credential (a new audience) cannot be recorded: refused, retryable.
    let mut refused = None;
    for i in 0..20 {
        match client
            .fetch_jwtsvid(lanyard::proto::JwtsvidRequest {
                audience: vec![format!("after-{i}")],
                spiffe_id: String::new(),
            })
            .await
        {
            Err(status) => {
                refused = Some(status);
                break;
            }
            Ok(_) => continue, // the WAL may still have had room for a few
        }
    }
    let status = refused.expect("a new credential is refused once nothing can be written");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let (code, body) = lanyard::health::probe(health, "/ready").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("inventory cannot write"), "{body}");
    // The token recorded before is served again (nothing new to record).
    let again = client
        .fetch_jwtsvid(lanyard::proto::JwtsvidRequest {
            audience: vec!["before".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.svids[0].svid, first.svids[0].svid);
    // Space again: new credentials flow, and /ready recovers after the next write.
    std::fs::remove_file(&filler).unwrap();
    client
        .fetch_jwtsvid(lanyard::proto::JwtsvidRequest {
            audience: vec!["recovered".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        lanyard::health::probe(health, "/ready").await.unwrap().0,
        200
    );
    running.shutdown().await;
}

/// A peer's default behaviour around the idle timeout: grpcio (C core, default options) connects,
/// stays idle past `connection_idle` (the agent closes the connection), then calls on the same
/// channel — it reconnects by itself and the call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_grpc_client_survives_the_idle_timeout() {
    let Some((_agent, attack)) = under_attack_with(
        "a_default_grpc_client_survives_the_idle_timeout",
        "[limits]\nconnection_idle = \"1s\"\n",
        "late",
        &["3"],
    )
    .await
    else {
        return;
    };
    assert_eq!(attack.report["code"], "OK", "{}", attack.report);
    attack.stop();
}

/// The name service hangs for uid 65534 (a directory server that stopped answering), and uid 65534
/// opens 500 connections, each asking for an X.509-SVID: every attestation of it needs its user
/// name. However many of its calls wait for that answer, the agent keeps attesting others: root's
/// first fetch (whose names are not known yet either) is served at once (before the change, 37 s:
/// every blocking thread waited on the name service). Uid 65534's own fetch gets no identity,
/// `Unavailable` naming the name service, after the wait (10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_name_service_for_one_uid_does_not_starve_other_users() {
    let Some(py) = python("a_hung_name_service_for_one_uid_does_not_starve_other_users") else {
        return;
    };
    let names = open_tempdir();
    hanging_name_service(names.path(), "id == 65534");
    open_to_all(names.path());
    let agent = Agent::start_with_names("", Some(names.path())).await;
    open_to_all(agent.socket.parent().unwrap());
    let attack = Attack::start(&py, &agent.socket, "streams", &["100", "10"]);
    let took = agent.victim().await;
    report_latency("a hung name service for the attacker's uid", took);
    assert!(
        took < Duration::from_secs(5),
        "root's fetch waited {took:?} behind uid 65534's name lookups"
    );
    // Uid 65534 itself is told why it gets nothing, once the wait for the name service is over.
    let endpoint = agent.endpoint();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || fetch_as(65534, 65534, &endpoint))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "uid 65534 was served: {stderr}");
    assert!(
        stderr.contains("the name service did not answer for uid 65534"),
        "after {:?}: {stderr}",
        started.elapsed()
    );
    attack.stop();
}
