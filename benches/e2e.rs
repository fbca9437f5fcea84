//! `cargo bench --bench e2e`: the agent measured as users run it.
//!
//! - the agent: a separate `lanyard agent` process on its default configuration (exec events and
//!   inventory on) plus one entry for this uid;
//! - the floor: a bare tonic server serving the same response bytes, in its own process (this
//!   binary re-executed in floor mode), on its own runtime;
//! - spire-agent, side by side, when `SPIRE_AGENT_SOCKET` names the socket of a running spire-agent
//!   with an entry for this uid (otherwise one loud SKIPPED line);
//! - a client in this process opens a new stream per fetch on a persistent connection, interleaving
//!   the servers call by call so they share the machine's noise. Run as root, the client first drops
//!   `CAP_SETGID` (as every non-root workload lacks it, and a container under a restricted profile):
//!   such a caller cannot change its groups, so the agent checks its credentials with one ioctl. A
//!   caller that keeps `CAP_SETGID` has `/proc/<pid>/status` read on every call instead:
//!   `LANYARD_BENCH_CLIENT_SETGID=1` measures that.
//!
//! - placement: measured twice, first as the kernel places the processes (as users run them),
//!   then pinned: the client on one CPU, every server on the others (`LANYARD_BENCH_PIN=0` skips
//!   the pinned half). Unpinned on 2 cores, three busy threads share two CPUs and the kernel
//!   settles, for a whole run, on one server sharing the client's CPU and the other having one of
//!   its own; which one moves the ratios from run to run (JWT between 1.1× and 1.4×). Pinned,
//!   every server meets the same conditions.
//!
//! Printed: p50/p99 of the first message (X.509) and of FetchJWTSVID (cached), server CPU per call
//! (time on a CPU, in nanoseconds, of every thread of the server), context switches per call (of
//! them, involuntary: the server preempted with work to do),
//! and the agent's RSS idle and with 1,000 open streams; then, on an agent with the per-uid limits
//! raised, 10,000 open streams (RSS, a rotation's fan-out, an entry change's), from this process and
//! then from 1,000 child processes, each followed by the floor's fan-out to the same streams (see
//! [`scale`]); `LANYARD_BENCH_SCALE_ONLY=1` runs only that part.

#[path = "support/agent.rs"]
mod agent;
#[path = "support/floor.rs"]
mod floor;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agent::{Agent, Proc, wait_for};
use std::time::{Duration, Instant, SystemTime};

use lanyard::client::WorkloadClient;
use lanyard::proto::*;
use prost::Message;
use tokio_stream::StreamExt;

/// Measured rounds (`LANYARD_BENCH_ROUNDS` to change, e.g. to profile a longer run).
fn rounds() -> usize {
    std::env::var("LANYARD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn main() {
    if std::env::var_os("LANYARD_BENCH_CLIENT_SETGID").is_none() {
        drop_cap_setgid();
    }
    // Decided before any thread is pinned (it reads the CPUs this process may use).
    if std::env::var_os("LANYARD_FLOOR_SOCKET").is_none() {
        let _ = placement();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    if let Ok(socket) = std::env::var("LANYARD_FLOOR_SOCKET") {
        return rt.block_on(floor_mode(PathBuf::from(socket)));
    }
    rt.block_on(run());
}

/// Drops `CAP_SETGID` from this thread's capability sets, before any other thread exists (they
/// inherit it; processes this one execs as root get their capabilities anew).
fn drop_cap_setgid() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_SETGID: u32 = 1 << 6;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a version-3 header and two data structs, as the kernel expects.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        // Capabilities 0..31 are in the first struct.
        data[0].effective &= !CAP_SETGID;
        data[0].permitted &= !CAP_SETGID;
        data[0].inheritable &= !CAP_SETGID;
        assert_eq!(libc::syscall(libc::SYS_capset, &header, data.as_ptr()), 0);
    }
}

/// Where the client and the servers run: `None` when placement is left to the kernel
/// (`LANYARD_BENCH_PIN=0`, or a single CPU).
struct Placement {
    /// Every CPU this process may use (unpinned).
    all: libc::cpu_set_t,
    client: libc::cpu_set_t,
    servers: libc::cpu_set_t,
    client_cpu: usize,
    server_cpus: Vec<usize>,
}

/// The placement, decided once (before the client is pinned: it reads this process's CPUs).
fn placement() -> Option<&'static Placement> {
    static PLACEMENT: std::sync::OnceLock<Option<Placement>> = std::sync::OnceLock::new();
    PLACEMENT.get_or_init(decide_placement).as_ref()
}

fn decide_placement() -> Option<Placement> {
    if std::env::var("LANYARD_BENCH_PIN").as_deref() == Ok("0") {
        return None;
    }
    // SAFETY: an all-zero `cpu_set_t` is the empty set; `sched_getaffinity` fills it for this thread.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `allowed` is a writable `cpu_set_t` of the size passed.
    let ret =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) };
    if ret != 0 {
        return None;
    }
    // SAFETY: `CPU_ISSET` reads a valid set for indexes below `CPU_SETSIZE`.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &allowed) })
        .collect();
    let (&client_cpu, server_cpus) = cpus.split_first()?;
    if server_cpus.is_empty() {
        return None;
    }
    // SAFETY: as above; `CPU_SET` writes bits of a valid set for indexes below `CPU_SETSIZE`.
    let (mut client, mut servers): (libc::cpu_set_t, libc::cpu_set_t) =
        unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    unsafe { libc::CPU_SET(client_cpu, &mut client) };
    for &c in server_cpus {
        unsafe { libc::CPU_SET(c, &mut servers) };
    }
    Some(Placement {
        all: allowed,
        client,
        servers,
        client_cpu,
        server_cpus: server_cpus.to_vec(),
    })
}

/// Sets the CPUs thread `tid` may run on (0: the calling thread).
fn set_affinity(tid: i32, set: &libc::cpu_set_t) {
    // SAFETY: `set` is a valid `cpu_set_t` of the size passed.
    let ret = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
    assert_eq!(
        ret,
        0,
        "sched_setaffinity({tid}): {}",
        std::io::Error::last_os_error()
    );
}

/// Every thread of process `pid` onto `set` (threads it starts later inherit it from theirs).
fn set_process_affinity(pid: u32, set: &libc::cpu_set_t) {
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) {
                set_affinity(tid, set);
            }
        }
    }
}

/// Pinned: this process (the client) on its CPU and `servers` on theirs; otherwise everything
/// back on every CPU.
fn place(pinned: bool, servers: &[u32]) {
    let Some(p) = placement() else { return };
    let (client, server) = if pinned {
        (&p.client, &p.servers)
    } else {
        (&p.all, &p.all)
    };
    set_process_affinity(std::process::id(), client);
    for &pid in servers {
        set_process_affinity(pid, server);
    }
}

/// Floor mode: serve the messages in the files next to the socket (`jwt.bin` when present); on
/// each SIGUSR1, send the X.509 message again on every open stream.
async fn floor_mode(socket: PathBuf) {
    let dir = socket.parent().unwrap();
    let x509 = X509svidResponse::decode(&std::fs::read(dir.join("x509.bin")).unwrap()[..]).unwrap();
    let jwt = std::fs::read(dir.join("jwt.bin"))
        .ok()
        .map(|b| JwtsvidResponse::decode(&b[..]).unwrap());
    let (push, pushes) = tokio::sync::watch::channel(0u64);
    let mut usr1 =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).unwrap();
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            push.send_modify(|n| *n += 1);
        }
    });
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    floor::serve(listener, x509, jwt, pushes).await;
}

/// Starts the floor in its own process (this binary in floor mode) on a socket in `dir`, serving
/// `x509` (and `jwt`); returns once its socket exists.
async fn start_floor(
    dir: &Path,
    x509: &X509svidResponse,
    jwt: Option<&JwtsvidResponse>,
) -> (Proc, PathBuf) {
    std::fs::write(dir.join("x509.bin"), x509.encode_to_vec()).unwrap();
    if let Some(jwt) = jwt {
        std::fs::write(dir.join("jwt.bin"), jwt.encode_to_vec()).unwrap();
    }
    let socket = dir.join("floor.sock");
    let floor = Proc(
        Command::new(std::env::current_exe().unwrap())
            .env("LANYARD_FLOOR_SOCKET", &socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&socket).await;
    (floor, socket)
}

/// CPU time (utime + stime, in ticks of USER_HZ) of `pid`, threads that ended included.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// One thread's time on a CPU (ns, `schedstat`) and its voluntary and involuntary context switches.
#[derive(Clone, Copy, Default)]
struct ThreadUsage {
    tid: u32,
    cpu_ns: u64,
    voluntary: u64,
    involuntary: u64,
}

/// Every thread of `pid`: time on a CPU in nanoseconds (`/proc/<pid>/task/<tid>/schedstat`: clock
/// ticks of `/proc/<pid>/stat` are 10 ms, one tick per ~80 calls, too coarse for a per-call figure
/// from 2,000 calls) and context switches (`status`).
fn usage(pid: u32) -> Vec<ThreadUsage> {
    let mut threads = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for t in tasks.flatten() {
        let Some(tid) = t.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let mut u = ThreadUsage {
            tid,
            ..ThreadUsage::default()
        };
        let sched = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        u.cpu_ns = sched
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        for l in status.lines() {
            let num = |v: &str| v.trim().parse::<u64>().unwrap_or(0);
            if let Some(v) = l.strip_prefix("voluntary_ctxt_switches:") {
                u.voluntary = num(v);
            } else if let Some(v) = l.strip_prefix("nonvoluntary_ctxt_switches:") {
                u.involuntary = num(v);
            }
        }
        threads.push(u);
    }
    threads
}

/// What the threads of `after` used since `before` (a thread new in `after` counts from zero; one
/// gone by `after` loses the part of the round it ran, rare: a blocking thread retiring).
fn used(before: &[ThreadUsage], after: &[ThreadUsage]) -> ThreadUsage {
    let mut sum = ThreadUsage::default();
    for a in after {
        let b = before
            .iter()
            .find(|b| b.tid == a.tid)
            .copied()
            .unwrap_or_default();
        sum.cpu_ns += a.cpu_ns.saturating_sub(b.cpu_ns);
        sum.voluntary += a.voluntary.saturating_sub(b.voluntary);
        sum.involuntary += a.involuntary.saturating_sub(b.involuntary);
    }
    sum
}

/// When the agent whose log is `log` last published a new X.509-SVID at or before `by` (its
/// `svid minted` debug line, logged as the SVID is handed to the streams that follow it).
fn published_before(log: &Path, by: SystemTime) -> Option<SystemTime> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter(|l| l.contains("svid minted"))
        .filter_map(|l| humantime::parse_rfc3339(l.split_whitespace().next()?).ok())
        .filter(|t| *t <= by)
        .max()
}

/// The SVIDs the agent had minted before the fan-out began: the serials of its `svid minted ...
/// serial=HEX` lines (lowercase hex of the serial's bytes, `lanyard::encoding::hex`). Each
/// distinct chain a stream receives is parsed once, not once per stream: the check sits on the
/// clients' side of a timed fan-out.
struct MintedBefore {
    serials: std::collections::HashSet<String>,
    /// Chains seen so far, and whether each carries one of `serials`.
    seen: std::sync::Mutex<Vec<(bytes::Bytes, bool)>>,
}

impl MintedBefore {
    /// None: every message counts (the floor's push).
    fn none() -> Self {
        Self {
            serials: Default::default(),
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn read(log: &Path) -> Self {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let serials = text
            .lines()
            .filter(|l| l.contains("svid minted"))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("serial=")))
            .map(str::to_owned)
            .collect();
        Self {
            serials,
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Whether the default SVID of `msg` is one of them.
    fn carries(&self, msg: &X509svidResponse) -> bool {
        let Some(chain) = msg.svids.first().map(|s| &s.x509_svid) else {
            return false;
        };
        let mut seen = self.seen.lock().unwrap();
        if let Some((_, old)) = seen.iter().find(|(c, _)| c == chain) {
            return *old;
        }
        let old = x509_parser::parse_x509_certificate(chain).is_ok_and(|(_, leaf)| {
            self.serials
                .contains(&lanyard::encoding::hex(leaf.tbs_certificate.raw_serial()))
        });
        seen.push((chain.clone(), old));
        old
    }
}

/// `n streams ended`, with the first reason.
fn ended_text(ended: &[String]) -> String {
    let first = ended
        .first()
        .map_or(String::new(), |e| format!(" (first: {e})"));
    format!("{} streams ended{first}", ended.len())
}

fn ms_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64() * 1e3
}

/// Write system calls `pid` has made (`syscw` of `/proc/<pid>/io`).
fn write_calls(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

/// A `kB` field of `/proc/<pid>/status`, in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Above this much resident machine code idle (on its own, not joined to a server), the code layout
/// list no longer matches the build: with a current list it is about 3 MB, with none about 10 MB.
const STALE_LAYOUT_MB: f64 = 4.0;

/// Resident pages of the executable mappings of `pid`'s own binary (its machine code), in MB:
/// what layout/text-order.txt keeps small (build.rs).
fn code_mb(pid: u32) -> f64 {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let exe = exe.to_string_lossy();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut ours = false;
    let mut kb = 0.0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some(rss) = line.strip_prefix("Rss:") {
            if ours {
                kb += rss
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<f64>()
                    .unwrap_or(0.0);
            }
        } else if !first.ends_with(':') {
            // A mapping: "start-end perms offset dev inode path".
            let f: Vec<&str> = line.split_whitespace().collect();
            ours = f.len() > 5 && f[1].contains('x') && f[5..].join(" ") == exe;
        }
    }
    kb / 1024.0
}

/// The shared objects `pid` has mapped, by file name, in load order (libc, ...): `libm` among them
/// means a dependency calls a math function src/main.rs does not define.
fn shared_objects(pid: u32) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut names: Vec<String> = Vec::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.contains(".so") && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// One server under test: a client on a persistent connection, and the process to measure.
struct Target {
    name: &'static str,
    pid: Option<u32>,
    client: WorkloadClient,
    x509: Vec<Duration>,
    jwt: Vec<Duration>,
    /// Summed over the measured rounds: CPU time (ns) and context switches.
    used: ThreadUsage,
}

impl Target {
    async fn new(name: &'static str, socket: &Path, pid: Option<u32>) -> Self {
        let client = lanyard::client::connect(&format!("unix://{}", socket.display()))
            .await
            .unwrap();
        Self {
            name,
            pid,
            client,
            x509: Vec::new(),
            jwt: Vec::new(),
            used: ThreadUsage::default(),
        }
    }

    async fn x509_once(&mut self) -> Duration {
        let t = Instant::now();
        let mut s = self
            .client
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        let m = s.next().await.unwrap().unwrap();
        let took = t.elapsed();
        assert!(!m.svids.is_empty());
        took
    }

    async fn jwt_once(&mut self) -> Duration {
        let t = Instant::now();
        let r = self
            .client
            .fetch_jwtsvid(JwtsvidRequest {
                audience: vec!["bench".into()],
                spiffe_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let took = t.elapsed();
        assert!(!r.svids.is_empty());
        took
    }

    /// One measured round: X.509 then JWT, with the server's CPU and switches around it.
    async fn round(&mut self) {
        let before = self.pid.map(usage);
        let x = self.x509_once().await;
        let j = self.jwt_once().await;
        if let (Some(pid), Some(before)) = (self.pid, before) {
            let u = used(&before, &usage(pid));
            self.used.cpu_ns += u.cpu_ns;
            self.used.voluntary += u.voluntary;
            self.used.involuntary += u.involuntary;
        }
        self.x509.push(x);
        self.jwt.push(j);
    }
}

fn pct(d: &mut [Duration], q: f64) -> f64 {
    d.sort();
    d[((d.len() as f64 * q) as usize).min(d.len() - 1)].as_secs_f64() * 1e6
}

/// A measured row: name, X.509 p50 and p99, JWT p50 and p99 (µs), CPU per call (µs), switches per
/// call, of them involuntary (the server preempted while it had work).
type Row = (&'static str, f64, f64, f64, f64, f64, f64, f64);

/// 200 warm-up rounds per target, then `rounds()` interleaved rounds, each begun by the next
/// target in turn; one row per target.
async fn measure(targets: &mut [Target]) -> Vec<Row> {
    for t in targets.iter_mut() {
        for _ in 0..200 {
            t.round().await;
        }
        t.x509.clear();
        t.jwt.clear();
        t.used = ThreadUsage::default();
    }
    let calls = rounds();
    // The first target of a round moves on each round: every target follows every other as
    // often (a server's leftover work after its call — a Go runtime's, say — slows whichever
    // call comes next; in a fixed order it would always be the same target's).
    let n = targets.len();
    for i in 0..calls {
        for k in 0..n {
            targets[(i + k) % n].round().await;
        }
    }
    let mut rows = Vec::new();
    for t in targets.iter_mut() {
        let per_call = |v: u64| v as f64 / (2.0 * calls as f64);
        let cpu_us = per_call(t.used.cpu_ns) / 1e3;
        let sw = per_call(t.used.voluntary + t.used.involuntary);
        let involuntary = per_call(t.used.involuntary);
        rows.push((
            t.name,
            pct(&mut t.x509, 0.5),
            pct(&mut t.x509, 0.99),
            pct(&mut t.jwt, 0.5),
            pct(&mut t.jwt, 0.99),
            cpu_us,
            sw,
            involuntary,
        ));
    }
    rows
}

/// The table and the ratios to the floor (and to spire-agent when it ran).
fn print_rows(rows: &[Row]) {
    println!(
        "\n| server | X.509 first message p50 / p99 | JWT (cached) p50 / p99 | server CPU per call | context switches per call (involuntary) |"
    );
    println!("|---|---|---|---|---|");
    for (name, x50, x99, j50, j99, cpu, sw, inv) in rows {
        println!(
            "| {name} | {x50:.0} / {x99:.0} µs | {j50:.0} / {j99:.0} µs | {cpu:.1} µs | {sw:.2} ({inv:.2}) |"
        );
    }
    let ratio = |l: &Row, f: &Row, what: &str| {
        println!(
            "{what}: X.509 p50 {:.2}×, p99 {:.2}×; JWT p50 {:.2}×, p99 {:.2}×; CPU per call {:.2}×",
            l.1 / f.1,
            l.2 / f.2,
            l.3 / f.3,
            l.4 / f.4,
            l.5 / f.5.max(1e-9)
        );
    };
    println!();
    ratio(&rows[1], &rows[0], "lanyard / floor");
    if rows.get(2).is_some_and(|r| r.0 == "spire-agent") {
        ratio(&rows[1], &rows[2], "lanyard / spire-agent");
    }
}

async fn run() {
    let uid = lanyard::sys::euid();
    // Only the 10,000-stream part (e.g. to compare fan-out changes run after run).
    if std::env::var_os("LANYARD_BENCH_SCALE_ONLY").is_some() {
        return scale(uid).await;
    }
    let dir = tempfile::tempdir().unwrap();
    // Joined to a SPIRE server (benches/with-spire.sh) or signing locally with one entry.
    let authority = std::env::var("LANYARD_BENCH_AUTHORITY").ok();
    let entries = match &authority {
        Some(section) => section.clone(),
        None => format!(
            "[[entry]]\nspiffe_id = \"spiffe://example.org/bench\"\nselectors = [\"unix:uid:{uid}\"]\n"
        ),
    };
    let agent = Agent::start(dir.path(), &entries, "warn").await;
    let agent_socket = agent.socket.clone();
    let agent_pid = agent.pid();
    println!(
        "lanyard end-to-end bench ({} cores): agent pid {agent_pid}, {} interleaved rounds, client {}",
        // SAFETY: `sysconf` has no preconditions.
        unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
        rounds(),
        if std::env::var_os("LANYARD_BENCH_CLIENT_SETGID").is_none() {
            "without CAP_SETGID (its groups cannot change: credentials checked with one ioctl)"
        } else {
            "with CAP_SETGID if root (its groups may change: /proc/<pid>/status read on every call)"
        }
    );
    match placement() {
        Some(p) => println!(
            "placement: the client on CPU {}, every server on CPU {:?} (LANYARD_BENCH_PIN=0 leaves it to the kernel)",
            p.client_cpu, p.server_cpus
        ),
        None => println!("placement: left to the kernel (LANYARD_BENCH_PIN=0 or one CPU)"),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_mb(agent_pid);
    let code = code_mb(agent_pid);
    println!(
        "lanyard idle: RSS {idle:.1} MB, of which its own machine code {code:.1} MB and anonymous memory {:.1} MB; shared objects: {}",
        status_mb(agent_pid, "RssAnon:"),
        shared_objects(agent_pid).join(", ")
    );
    if code > STALE_LAYOUT_MB && authority.is_none() {
        println!(
            "\n*** the agent's resident machine code is {code:.1} MB (about 3 MB with a current code layout): layout/text-order.release.txt names functions this build no longer has; run `bash layout/generate.sh` ***\n"
        );
    }

    // The floor serves what the agent sends, byte for byte.
    let name = if authority.is_some() {
        "lanyard (joined to the SPIRE server)"
    } else {
        "lanyard"
    };
    let mut lanyard = Target::new(name, &agent_socket, Some(agent_pid)).await;
    // Joined to a server, the entry arrives with the first sync.
    let deadline = Instant::now() + Duration::from_secs(60);
    let sample = loop {
        let first = match lanyard.client.fetch_x509svid(X509svidRequest {}).await {
            Ok(r) => r.into_inner().next().await.and_then(Result::ok),
            Err(_) => None,
        };
        match first {
            Some(m) => break m,
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            None => panic!("lanyard never served an X.509-SVID for this uid"),
        }
    };
    let jwt_sample = lanyard
        .client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["bench".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let floor_dir = dir.path().join("floor");
    std::fs::create_dir(&floor_dir).unwrap();
    let (floor, floor_socket) = start_floor(&floor_dir, &sample, Some(&jwt_sample)).await;
    let mut targets = vec![
        Target::new(
            "floor (bare tonic, own process)",
            &floor_socket,
            Some(floor.0.id()),
        )
        .await,
    ];
    targets.push(lanyard);
    match std::env::var("SPIRE_AGENT_SOCKET") {
        Ok(path) => {
            let pid = std::env::var("SPIRE_AGENT_PID")
                .ok()
                .and_then(|p| p.parse().ok());
            targets.push(Target::new("spire-agent", Path::new(&path), pid).await);
        }
        Err(_) => println!(
            "\n*** SKIPPED spire-agent side by side: set SPIRE_AGENT_SOCKET (and SPIRE_AGENT_PID) to a running spire-agent with an entry for uid {uid} ***\n"
        ),
    }
    // Each placement in turn (see the module documentation): warm-up, then interleave call by call.
    let servers: Vec<u32> = targets.iter().filter_map(|t| t.pid).collect();
    let phases: &[bool] = if placement().is_some() {
        &[false, true]
    } else {
        &[false]
    };
    let mut spire = false;
    for &pinned in phases {
        place(pinned, &servers);
        let rows = measure(&mut targets).await;
        println!(
            "\n{}",
            if pinned {
                let p =
                    placement().map_or((0, Vec::new()), |p| (p.client_cpu, p.server_cpus.clone()));
                format!(
                    "Pinned: the client on CPU {}, every server on CPU {:?} (same conditions for each server):",
                    p.0, p.1
                )
            } else {
                "As the kernel places them (as users run it; on 2 cores one server shares the client's CPU, which one is the kernel's choice for the run):".to_owned()
            }
        );
        print_rows(&rows);
        spire = rows.get(2).is_some_and(|r| r.0 == "spire-agent");
    }
    place(false, &servers);
    // Memory: idle, then with 1,000 open streams on 10 connections.
    let mut memory = vec![(name, agent_socket.clone(), agent_pid, idle)];
    if spire && let Some(pid) = targets[2].pid {
        let socket = PathBuf::from(std::env::var("SPIRE_AGENT_SOCKET").unwrap_or_default());
        memory.push(("spire-agent", socket, pid, rss_mb(pid)));
    }
    drop(targets);
    for (who, socket, pid, idle) in &memory {
        let streams = open_streams(socket, 1000, 100).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        println!(
            "{who} RSS: idle {idle:.1} MB, with 1,000 open streams {:.1} MB",
            rss_mb(*pid)
        );
        drop(streams);
    }
    if let Some(changes) = entry_changes() {
        for (who, socket, _, _) in &memory {
            let Some(entry) = changes
                .entries
                .iter()
                .find(|e| e.agent == *who || (e.agent == "lanyard" && who.starts_with("lanyard")))
            else {
                continue;
            };
            let mut took = Vec::new();
            for round in 0..5 {
                took.push(changes.time_one(entry, socket, uid, round).await);
            }
            took.sort();
            println!(
                "{who}: entry change (server command returned) to the new message on an open stream: p50 {:.0} ms, max {:.0} ms (5 changes)",
                took[2].as_secs_f64() * 1e3,
                took[4].as_secs_f64() * 1e3
            );
        }
    } else if spire {
        println!(
            "(entry-change latency: set SPIRE_SERVER_BIN, SPIRE_SERVER_SOCKET and SPIRE_ENTRIES, as benches/with-spire.sh does)"
        );
    }
    drop(floor);
    drop(agent);
    scale(uid).await;
}

/// 10,000 open streams on one agent (limits raised for one uid to hold them): RSS; how long an SVID
/// rotation (a 1-minute TTL, rotated at about half-life) takes from its publication to its last
/// delivery; and an entry change (SIGHUP with a new DNS name: a new SVID for every stream), from
/// the signal. First with every stream from this process (one holder in the inventory: a rotation
/// records one row), then spread over 1,000 processes of 10 streams each (1,000 holders: a rotation
/// records 1,000 rows and marks 1,000 superseded, each process re-attested). After each, the floor
/// (its own process) with the same streams, pushing the agent's last message once to all of them:
/// what the same fan-out costs with nothing but tonic, on the same cores.
async fn scale(uid: u32) {
    let entry = |dns: &str| {
        format!(
            "[limits]\nmax_connections_per_uid = 2000\nmax_streams = 20000\nmax_streams_per_uid = 20000\n\
             new_credentials_per_second = 100000\nnew_credentials_burst = 100000\n\
             new_connections_per_second = 100000\nnew_connections_burst = 100000\n\
             [[entry]]\nspiffe_id = \"spiffe://example.org/bench\"\nselectors = [\"unix:uid:{uid}\"]\nx509_ttl = \"1m\"\ndns_names = [\"{dns}\"]\n"
        )
    };
    for processes in [1, PROCESSES] {
        let dir = tempfile::tempdir().unwrap();
        // Its mints are logged (with their time) to a file: a rotation is timed from the moment the
        // agent published the new SVID, not only from what the first client saw.
        let log = dir.path().join("agent.log");
        let agent = Agent::start_logging(
            dir.path(),
            &entry("before.bench.example.org"),
            "error,lanyard::issuer=debug",
            std::fs::File::create(&log).unwrap().into(),
        )
        .await;
        let from = if processes == 1 {
            "from this process".to_owned()
        } else {
            format!("from {processes} processes, {} each", STREAMS / processes)
        };
        let mut holders = Holders(Vec::new());
        let (clients, streams, conns) = open_layout(&agent.socket, &mut holders, processes).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!(
            "\nlanyard RSS with {STREAMS} open streams {from}: {:.1} MB",
            rss_mb(agent.pid())
        );
        fan_out(
            streams,
            &conns,
            Push::Agent {
                agent: &agent,
                changed: &entry("after.bench.example.org"),
                log: &log,
            },
        )
        .await;
        // What the agent sends now, for the floor to push.
        let sample = lanyard::client::connect(&agent.endpoint())
            .await
            .unwrap()
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner()
            .next()
            .await
            .unwrap()
            .unwrap();
        drop(clients);
        drop(holders);
        drop(agent);

        let floor_dir = dir.path().join("floor");
        std::fs::create_dir(&floor_dir).unwrap();
        let (floor, socket) = start_floor(&floor_dir, &sample, None).await;
        let mut holders = Holders(Vec::new());
        let (clients, streams, conns) = open_layout(&socket, &mut holders, processes).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!(
            "floor RSS with {STREAMS} open streams {from}: {:.1} MB",
            rss_mb(floor.0.id())
        );
        fan_out(streams, &conns, Push::Floor { pid: floor.0.id() }).await;
        drop(clients);
        drop(holders);
        drop(floor);
    }
}

/// Streams in [`scale`]: 10,000, from this process or spread over `PROCESSES` child processes.
const STREAMS: usize = 10_000;
const PROCESSES: usize = 1_000;

/// [`STREAMS`] open FetchX509SVID streams to `socket`, each past its first message: from this
/// process on 100 connections (`processes` 1), or on one connection from each of `processes`
/// children (held by `holders`).
async fn open_layout(
    socket: &Path,
    holders: &mut Holders,
    processes: usize,
) -> (
    Vec<WorkloadClient>,
    Vec<tonic::Streaming<X509svidResponse>>,
    Conns,
) {
    if processes == 1 {
        let (c, s) = open_streams(socket, STREAMS, 100).await;
        // The bench's ends of these connections are tonic's: not read on a missed rotation.
        (
            c,
            s,
            Conns {
                per: 100,
                fds: Vec::new(),
            },
        )
    } else {
        let per = STREAMS / processes;
        let (c, s, fds) = open_streams_from(socket, holders, processes, per).await;
        (c, s, Conns { per, fds })
    }
}

/// How the streams given to [`fan_out`] sit on connections: `per` consecutive streams share one,
/// whose descriptor at the bench's end is `fds[i]` when the bench made it (empty otherwise).
struct Conns {
    per: usize,
    fds: Vec<std::os::fd::RawFd>,
}

/// What one stream's reader saw: its index, the round, and when — or how it ended instead.
type Seen = (usize, u8, Result<(Instant, SystemTime), String>);

/// What sends the message [`fan_out`] times to every stream.
enum Push<'a> {
    /// The agent's next rotation, published on its own (its mints logged in `log`); then an entry
    /// change, made by rewriting its config with `changed` and sending SIGHUP.
    Agent {
        agent: &'a Agent,
        changed: &'a str,
        log: &'a Path,
    },
    /// The floor, told by the bench (SIGUSR1) to send its message again on every stream.
    Floor { pid: u32 },
}

/// Times the next message of every stream in `streams` (the rotation, or the floor's push), and on
/// the agent the one after it (the entry change).
///
/// The rotation timed is the first one published after this starts. On a slow host, opening 10,000
/// streams from 1,000 processes can take longer than the SVID's half-life, so a rotation may come
/// while they are being opened: the streams open then hold it unread, and those opened after it
/// got that SVID as their first message and have nothing pending. A message carrying an SVID the
/// agent had minted before this started (its `svid minted` lines in `log`) is therefore read and
/// set aside, not counted as the rotation.
async fn fan_out(streams: Vec<tonic::Streaming<X509svidResponse>>, conns: &Conns, push: Push<'_>) {
    let n = streams.len();
    let (pid, rounds, who, what) = match push {
        Push::Agent { agent, .. } => (agent.pid(), 2, "agent", "rotation"),
        Push::Floor { pid } => (pid, 1, "floor", "floor's push"),
    };
    let minted_before = std::sync::Arc::new(match push {
        Push::Agent { log, .. } => MintedBefore::read(log),
        Push::Floor { .. } => MintedBefore::none(),
    });
    let earlier = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Seen>();
    for (i, mut s) in streams.into_iter().enumerate() {
        let tx = tx.clone();
        let (minted_before, earlier) = (minted_before.clone(), earlier.clone());
        tokio::spawn(async move {
            let mut round = 0;
            while round < rounds {
                let next = s.next().await;
                // When it arrived, before anything is checked.
                let at = (Instant::now(), SystemTime::now());
                let seen = match next {
                    Some(Ok(msg)) if round == 0 && minted_before.carries(&msg) => {
                        // A rotation from before the fan-out began, held unread: set aside.
                        earlier.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        continue;
                    }
                    Some(Ok(_)) => Ok(at),
                    Some(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                    None => Err("ended by the server".to_owned()),
                };
                let ended = seen.is_err();
                let _ = tx.send((i, round, seen));
                if ended {
                    return;
                }
                round += 1;
            }
            // Read to its end (the server going away), not dropped: dropping it would reset the
            // stream while others are still being timed.
            while s.next().await.is_some() {}
        });
    }
    drop(tx);
    let mut ended: Vec<String> = Vec::new();
    // The server's CPU time and write calls, and the clients' CPU time (every stream is read in
    // this process), sampled every 10 ms (three small reads) until the rotation has arrived: the
    // rotation's cost is read from the second before its first delivery to its last.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let sampling = sampling.clone();
        move || {
            let mut samples = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                samples.push((
                    Instant::now(),
                    cpu_ticks(pid),
                    write_calls(pid),
                    cpu_ticks(std::process::id()),
                ));
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        }
    });
    // The floor pushes when told, once the sampler has a second to look back on.
    let signalled = match push {
        Push::Floor { pid } => {
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let at = SystemTime::now();
            // SAFETY: signalling the floor, our own child.
            assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
            Some(at)
        }
        Push::Agent { .. } => None,
    };
    let mut rotation = Vec::with_capacity(n);
    let mut got = vec![false; n];
    let mut early = 0usize;
    while rotation.len() + ended.len() < n {
        match tokio::time::timeout(Duration::from_secs(90), rx.recv()).await {
            Ok(Some((i, 0, Ok((t, at))))) => {
                got[i] = true;
                rotation.push((t, at));
            }
            Ok(Some((_, _, Err(why)))) => ended.push(why),
            // A second new message before the entry change: not expected; counted.
            Ok(Some((_, _, Ok(_)))) => early += 1,
            Ok(None) | Err(_) => break,
        }
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let earlier = earlier.load(std::sync::atomic::Ordering::Relaxed);
    if earlier > 0 || early > 0 {
        println!(
            "({earlier} streams first held a rotation published while the streams were being opened, set aside; {early} got a second new message before the entry change)"
        );
    }
    let samples = sampler.join().unwrap();
    rotation.sort();
    if rotation.len() == n {
        let (first, first_at) = rotation[0];
        let (last, last_at) = rotation[n - 1];
        let before = samples
            .iter()
            .rev()
            .find(|s| s.0 + Duration::from_secs(1) <= first)
            .unwrap_or(&samples[0]);
        let after = samples.last().unwrap();
        // Ticks of USER_HZ (100 a second), as in `report`.
        let cpu_ms = (after.1 - before.1) as f64 * 10.0;
        let clients_ms = (after.3 - before.3) as f64 * 10.0;
        let published = match (&push, signalled) {
            (Push::Agent { log, .. }, _) => match published_before(log, first_at) {
                Some(p) => format!(
                    "from its publication in the agent: first {:.0} ms, last {:.0} ms; ",
                    ms_between(p, first_at),
                    ms_between(p, last_at)
                ),
                None => "(its publication was not found in the agent's log); ".to_owned(),
            },
            (Push::Floor { .. }, Some(at)) => format!(
                "from the signal: first {:.0} ms, last {:.0} ms; ",
                ms_between(at, first_at),
                ms_between(at, last_at)
            ),
            (Push::Floor { .. }, None) => unreachable!("the floor is always signalled"),
        };
        // The clients share the machine's cores with the server: on a busy fan-out the two together
        // bound how soon the last delivery can come (their CPU time over the cores there are).
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        println!(
            "{what} on all {n} open streams, {published}from its first delivery: p50 {:.0} ms, last {:.0} ms; {who} CPU {cpu_ms:.0} ms ({:.1} µs a stream), {} write calls; clients' CPU {clients_ms:.0} ms ({who} and clients over {cores} cores: {:.0} ms)",
            (rotation[n / 2].0 - first).as_secs_f64() * 1e3,
            (last - first).as_secs_f64() * 1e3,
            cpu_ms * 1e3 / n as f64,
            after.2 - before.2,
            (cpu_ms + clients_ms) / cores as f64
        );
    } else {
        println!(
            "{what}: only {} of {n} streams got it within 90 s; {}",
            rotation.len(),
            missed(&got, conns, &ended)
        );
    }
    let Push::Agent { agent, changed, .. } = push else {
        return;
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = agent.config.parent().unwrap();
    std::fs::write(&agent.config, agent::config_text(dir, changed)).unwrap();
    let t0 = Instant::now();
    let _ = Command::new("kill")
        .args(["-HUP", &agent.pid().to_string()])
        .status();
    let mut change = Vec::with_capacity(n);
    while change.len() + ended.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some((_, 1, Ok((t, _))))) => change.push(t - t0),
            Ok(Some((_, _, Err(why)))) => ended.push(why),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    change.sort();
    if change.len() == n {
        println!(
            "entry change (SIGHUP) to the new SVID on all {n} open streams: first {:.0} ms, p50 {:.0} ms, last {:.0} ms",
            change[0].as_secs_f64() * 1e3,
            change[n / 2].as_secs_f64() * 1e3,
            change[n - 1].as_secs_f64() * 1e3
        );
    } else {
        println!(
            "entry change: only {} of {n} streams got the new SVID within 60 s; {}",
            change.len(),
            ended_text(&ended)
        );
    }
}

/// Where a rotation that did not reach every stream was held up: the streams that missed it, by
/// connection, and — on connections the bench made itself — the bytes the agent had sent that
/// were waiting unread at the bench's end (not zero: the client did not read them; zero: the agent
/// had not sent them).
fn missed(got: &[bool], conns: &Conns, ended: &[String]) -> String {
    let mut by_conn: std::collections::BTreeMap<usize, usize> = Default::default();
    for (i, _) in got.iter().enumerate().filter(|(_, g)| !**g) {
        *by_conn.entry(i / conns.per).or_default() += 1;
    }
    let whole = by_conn.values().filter(|&&k| k == conns.per).count();
    let mut text = format!(
        "missed on {} connections ({whole} of them whole); {}",
        by_conn.len(),
        ended_text(ended)
    );
    if !conns.fds.is_empty() {
        let unread: Vec<i32> = by_conn
            .keys()
            .filter_map(|&c| conns.fds.get(c))
            .map(|&fd| {
                let mut queued: libc::c_int = 0;
                // SAFETY: FIONREAD on a descriptor this process holds, into a c_int.
                match unsafe { libc::ioctl(fd, libc::FIONREAD, &raw mut queued) } {
                    0 => queued,
                    _ => -1,
                }
            })
            .collect();
        let waiting = unread.iter().filter(|&&b| b > 0).count();
        text += &format!(
            "; bytes waiting unread at the bench's end of those connections: {waiting} of {} connections hold some (total {} bytes)",
            unread.len(),
            unread.iter().filter(|&&b| b > 0).sum::<i32>()
        );
    }
    text
}

/// Child processes that each made one connection to the agent (so the agent sees each as its own
/// caller) and then wait, holding their copy of it; killed and reaped when dropped.
struct Holders(Vec<i32>);

impl Drop for Holders {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: killing and reaping our own children.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// A connection to `socket` made by a new child process: the socket is created here, the child
/// connects it (the kernel records the child as the peer), keeps only it and waits to be killed.
fn connect_from_child(socket: &Path, holders: &mut Holders) -> std::os::unix::net::UnixStream {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    // Everything the child uses is made before the fork: it only makes system calls.
    // SAFETY: plain system calls on values owned here; the child calls only async-signal-safe
    // functions and never returns.
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let path = socket.as_os_str().as_bytes();
        assert!(path.len() < addr.sun_path.len(), "socket path too long");
        for (d, s) in addr.sun_path.iter_mut().zip(path) {
            *d = *s as libc::c_char;
        }
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut pipe = [0; 2];
        assert_eq!(libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC), 0);
        let pid = libc::fork();
        if pid == 0 {
            let ok: u8 = (libc::connect(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) == 0)
                .into();
            libc::write(pipe[1], (&raw const ok).cast(), 1);
            // Only the connection stays open (as descriptor 3).
            if fd != 3 {
                libc::dup2(fd, 3);
            }
            libc::close_range(4, u32::MAX, 0);
            loop {
                libc::pause();
            }
        }
        assert!(pid > 0, "fork: {}", std::io::Error::last_os_error());
        holders.0.push(pid);
        libc::close(pipe[1]);
        let mut ok = 0u8;
        let n = libc::read(pipe[0], (&raw mut ok).cast(), 1);
        libc::close(pipe[0]);
        assert!(
            n == 1 && ok == 1,
            "a child could not connect to {}",
            socket.display()
        );
        std::os::unix::net::UnixStream::from_raw_fd(fd)
    }
}

/// Adds the Workload API's security header, as `lanyard::client::connect` does on the channels it
/// makes (this one is made over a child's connection).
fn workload_header(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    Ok(req)
}

/// `per_process` open FetchX509SVID streams on each of `processes` connections, each connection
/// made by its own child process (see [`connect_from_child`]), each stream past its first message;
/// with the bench's end of each connection (valid while its client lives).
async fn open_streams_from(
    socket: &Path,
    holders: &mut Holders,
    processes: usize,
    per_process: usize,
) -> (
    Vec<WorkloadClient>,
    Vec<tonic::Streaming<X509svidResponse>>,
    Vec<std::os::fd::RawFd>,
) {
    use std::os::fd::AsRawFd;
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    let mut fds = Vec::new();
    for _ in 0..processes {
        let conn = connect_from_child(socket, holders);
        fds.push(conn.as_raw_fd());
        conn.set_nonblocking(true).unwrap();
        let slot = std::sync::Mutex::new(Some(tokio::net::UnixStream::from_std(conn).unwrap()));
        let slot = std::sync::Arc::new(slot);
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let s = slot.lock().unwrap().take();
                async move {
                    s.map(hyper_util::rt::TokioIo::new)
                        .ok_or_else(|| std::io::Error::other("the child's connection was used"))
                }
            }))
            .await
            .unwrap();
        let mut c: WorkloadClient =
            spiffe_workload_api_client::SpiffeWorkloadApiClient::with_interceptor(
                channel,
                workload_header
                    as fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
            );
        open_on(&mut c, per_process, &mut streams).await;
        clients.push(c);
    }
    (clients, streams, fds)
}

/// `n` open FetchX509SVID streams to `socket`, `per_connection` on each connection, each past its
/// first message.
async fn open_streams(
    socket: &Path,
    n: usize,
    per_connection: usize,
) -> (Vec<WorkloadClient>, Vec<tonic::Streaming<X509svidResponse>>) {
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..n.div_ceil(per_connection) {
        let mut c = lanyard::client::connect(&format!("unix://{}", socket.display()))
            .await
            .unwrap();
        let k = per_connection.min(n - streams.len());
        open_on(&mut c, k, &mut streams).await;
        clients.push(c);
    }
    (clients, streams)
}

/// Opens `k` FetchX509SVID streams on `c` into `streams`, each past its first message.
async fn open_on(
    c: &mut WorkloadClient,
    k: usize,
    streams: &mut Vec<tonic::Streaming<X509svidResponse>>,
) {
    for _ in 0..k {
        let mut s = c
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        s.next().await.unwrap().unwrap();
        streams.push(s);
    }
}

/// The SPIRE server's CLI and the registration entry behind each agent's identity.
struct EntryChanges {
    server: PathBuf,
    socket: PathBuf,
    entries: Vec<BenchEntry>,
}

struct BenchEntry {
    agent: String,
    id: String,
    parent: String,
}

/// From SPIRE_SERVER_BIN, SPIRE_SERVER_SOCKET and SPIRE_ENTRIES (`agent=entryID:parentID,...`).
fn entry_changes() -> Option<EntryChanges> {
    let server = std::env::var_os("SPIRE_SERVER_BIN")?;
    let socket = std::env::var_os("SPIRE_SERVER_SOCKET")?;
    let entries = std::env::var("SPIRE_ENTRIES")
        .ok()?
        .split(',')
        .filter_map(|e| {
            let (agent, rest) = e.split_once('=')?;
            let (id, parent) = rest.split_once(':')?;
            Some(BenchEntry {
                agent: agent.into(),
                id: id.into(),
                parent: parent.into(),
            })
        })
        .collect();
    Some(EntryChanges {
        server: server.into(),
        socket: socket.into(),
        entries,
    })
}

impl EntryChanges {
    /// Changes `entry` (a new DNS name) while a stream is open on `socket`; the time from the
    /// server's command returning to the stream's next message.
    async fn time_one(
        &self,
        entry: &BenchEntry,
        socket: &Path,
        uid: u32,
        round: usize,
    ) -> Duration {
        let (_client, mut streams) = open_streams(socket, 1, 1).await;
        let mut s = streams.pop().unwrap();
        let out = Command::new(&self.server)
            .args([
                "entry",
                "update",
                "-entryID",
                &entry.id,
                "-parentID",
                &entry.parent,
            ])
            .args(["-spiffeID", "spiffe://example.org/bench"])
            .args(["-selector", &format!("unix:uid:{uid}")])
            .args([
                "-dns",
                &format!("r{round}-{}.bench.example.org", entry.agent),
            ])
            .arg("-socketPath")
            .arg(&self.socket)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "spire-server entry update: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let t = Instant::now();
        tokio::time::timeout(Duration::from_secs(60), s.next())
            .await
            .expect("no new message within 60 s of the entry change")
            .unwrap()
            .unwrap();
        t.elapsed()
    }
}
