//! `cargo bench --bench spire`: lanyard as the agent of a real SPIRE server (mode "spire").
//!
//! Starts `spire-server` v1.13.3 (built by `tests/interop/setup.sh spire` into `target/spire/bin`;
//! without it, one loud SKIPPED line) on loopback with its entry cache reloaded every 500 ms, and a
//! separate `lanyard agent` process joined to it (sync interval 200 ms), then prints:
//!
//! - entry change on the server → open stream updated: p50/p99 over create/delete pairs, measured
//!   from the moment `spire-server entry create|delete` returns (the entry is committed) to the
//!   stream's next message — this includes the server's cache reload (≤ 500 ms here, 5 s by default);
//! - first fetch of a pre-fetched entry: a new connection and FetchX509SVID, first message, p50/p99;
//! - SVIDs through BatchNewX509SVID: 1,000 entries created at once on the server, time until lanyard
//!   has all 1,000 X.509-SVIDs pre-fetched (its `lanyard_svid_mints` counter), and SVIDs/s.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lanyard::proto::X509svidRequest;
use lanyard::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use tokio_stream::StreamExt;

const TD: &str = "example.org";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spire/bin");
    if !bin.join("spire-server").exists() {
        eprintln!(
            "\n*** SKIPPED spire bench: no target/spire/bin/spire-server; run `bash tests/interop/setup.sh spire` ***\n"
        );
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(&bin));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn server_cmd(bin: &Path, dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin.join("spire-server"))
        .args(args)
        .arg("-socketPath")
        .arg(dir.join("server.sock"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "spire-server {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn entry_id(out: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix("Entry ID"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn minted(health: u16) -> u64 {
    let Ok(out) = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{health}/metrics")])
        .output()
    else {
        return 0;
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("lanyard_svid_mints_total{") && l.contains("kind=\"x509\""))
        .filter(|l| !l.contains("outcome=\"failed\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn run(bin: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    std::fs::write(
        d.join("server.conf"),
        format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{s}/server.sock"
  trust_domain = "{TD}"
  data_dir = "{s}/data"
  log_level = "WARN"
  experimental {{ cache_reload_interval = "500ms" }}
}}
plugins {{
  DataStore "sql" {{ plugin_data {{ database_type = "sqlite3" connection_string = "{s}/data/datastore.sqlite3" }} }}
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "memory" {{ plugin_data {{}} }}
}}
"#,
            s = d.display()
        ),
    )
    .unwrap();
    let _server = Proc(
        Command::new(bin.join("spire-server"))
            .args(["run", "-config"])
            .arg(d.join("server.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Command::new(bin.join("spire-server"))
        .args(["healthcheck", "-socketPath"])
        .arg(d.join("server.sock"))
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(Instant::now() < deadline, "spire-server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    let uid = unsafe { libc::geteuid() };
    server_cmd(
        bin,
        d,
        &[
            "entry",
            "create",
            "-parentID",
            &format!("spiffe://{TD}/node"),
            "-spiffeID",
            &format!("spiffe://{TD}/bench"),
            "-selector",
            &format!("unix:uid:{uid}"),
        ],
    );
    let token = server_cmd(
        bin,
        d,
        &[
            "token",
            "generate",
            "-spiffeID",
            &format!("spiffe://{TD}/node"),
        ],
    )
    .split_whitespace()
    .nth(1)
    .unwrap()
    .to_owned();
    std::fs::write(
        d.join("bundle.pem"),
        server_cmd(bin, d, &["bundle", "show"]),
    )
    .unwrap();
    let health = free_port();
    let socket = d.join("agent/workload.sock");
    std::fs::write(
        d.join("agent.toml"),
        format!(
            "trust_domain = \"{TD}\"\nsocket_path = \"{a}/workload.sock\"\nadmin_socket_path = \"{a}/admin/admin.sock\"\ndata_dir = \"{a}/data\"\nhealth = {{ address = \"127.0.0.1:{health}\" }}\n[authority]\nmode = \"spire\"\nserver_address = \"127.0.0.1:{port}\"\ntrust_bundle_path = \"{s}/bundle.pem\"\njoin_token = \"{token}\"\nsync_interval = \"200ms\"\n",
            a = d.join("agent").display(),
            s = d.display()
        ),
    )
    .unwrap();
    let _agent = Proc(
        Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(["agent", "--config"])
            .arg(d.join("agent.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stream = loop {
        if socket.exists()
            && let Ok(mut client) = client(&socket).await
            && let Ok(s) = client.fetch_x509svid(header(X509svidRequest {})).await
        {
            let mut s = s.into_inner();
            if let Some(Ok(_)) = s.next().await {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "lanyard served nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "lanyard in mode \"spire\" against spire-server v1.13.3 (sync 200 ms, server cache 500 ms)"
    );

    // Entry change → open stream.
    let mut changes = Vec::new();
    for i in 0..10 {
        let out = server_cmd(
            bin,
            d,
            &[
                "entry",
                "create",
                "-parentID",
                &format!("spiffe://{TD}/node"),
                "-spiffeID",
                &format!("spiffe://{TD}/change/{i}"),
                "-selector",
                &format!("unix:uid:{uid}"),
            ],
        );
        let t = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
        changes.push(t.elapsed());
        server_cmd(bin, d, &["entry", "delete", "-entryID", &entry_id(&out)]);
        let t = Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.next()).await;
        changes.push(t.elapsed());
    }
    println!(
        "  entry change -> open stream:   p50 {:>8.1?}  p99 {:>8.1?}  ({} changes)",
        percentile(&mut changes, 0.5),
        percentile(&mut changes, 0.99),
        changes.len()
    );

    // First fetch of a pre-fetched entry: a new connection each time.
    let mut firsts = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let mut client = client(&socket).await.unwrap();
        let mut s = client
            .fetch_x509svid(header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        s.next().await.unwrap().unwrap();
        firsts.push(t.elapsed());
    }
    println!(
        "  first fetch (new connection):  p50 {:>8.1?}  p99 {:>8.1?}  (200 fetches, served from the pre-fetched cache)",
        percentile(&mut firsts, 0.5),
        percentile(&mut firsts, 0.99)
    );

    // 1,000 entries at once: pre-fetched through BatchNewX509SVID.
    let before = minted(health);
    let entries: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            serde_json::json!({
                "spiffe_id": format!("spiffe://{TD}/bulk/{i}"),
                "parent_id": format!("spiffe://{TD}/node"),
                "selectors": [{"type": "unix", "value": format!("uid:{}", 100_000 + i)}],
            })
        })
        .collect();
    std::fs::write(
        d.join("bulk.json"),
        serde_json::json!({ "entries": entries }).to_string(),
    )
    .unwrap();
    let data = d.join("bulk.json").display().to_string();
    server_cmd(bin, d, &["entry", "create", "-data", &data]);
    let t = Instant::now();
    let mut first_seen = None;
    while minted(health) < before + 1000 {
        if first_seen.is_none() && minted(health) > before {
            first_seen = Some(t.elapsed());
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "1,000 SVIDs not pre-fetched in 2 min"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = t.elapsed();
    let first = first_seen.unwrap_or(all);
    let signing = all.saturating_sub(first).max(Duration::from_millis(1));
    println!(
        "  1,000 new entries pre-fetched: {all:>8.1?} after creation (first SVID after {first:.1?}); {:.0} SVIDs/s from the first to the last",
        1000.0 / signing.as_secs_f64()
    );
    drop(stream);
}

async fn client(
    socket: &Path,
) -> Result<SpiffeWorkloadApiClient<tonic::transport::Channel>, tonic::transport::Error> {
    let socket: PathBuf = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

fn header<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    r
}
