//! lanyard as the agent of a real SPIRE server (v1.13.3, built from the Go module proxy by
//! tests/interop/setup.sh): node attestation with join tokens, entries and SVIDs from the server,
//! two nodes in one trust domain, outages, restarts, renewal, eviction, and SPIRE's own agent beside
//! lanyard on the same server. Every lanyard agent here is a separate `lanyard agent` process.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lanyard::proto::{X509svidRequest, X509svidResponse};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio_stream::StreamExt as _;

const TD: &str = "example.org";

/// The SPIRE binaries, built (once) by setup.sh; `None` after a SKIPPED line outside CI.
fn spire_bin(test: &str) -> Option<PathBuf> {
    if !prepare("spire", &["go"], test) {
        return None;
    }
    Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spire/bin"))
}

/// A real `spire-server` on loopback: SQLite datastore, disk key manager (keys survive a restart),
/// join_token node attestation.
struct SpireServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: KillOnDrop,
}

impl SpireServer {
    fn start(bin: &Path, agent_ttl: &str) -> Self {
        Self::start_with(bin, agent_ttl, "")
    }

    /// As [`SpireServer::start`], with more plugins (`extra`, HCL lines inside `plugins`).
    fn start_with(bin: &Path, agent_ttl: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        pop_ca(&dir.path().join("pop"));
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("server.conf"),
            format!(
                r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{d}/server.sock"
  trust_domain = "{TD}"
  data_dir = "{d}/data"
  log_level = "INFO"
  agent_ttl = "{agent_ttl}"
  default_x509_svid_ttl = "10m"
  experimental {{ cache_reload_interval = "500ms" }}
}}
plugins {{
  DataStore "sql" {{ plugin_data {{ database_type = "sqlite3" connection_string = "{d}/data/datastore.sqlite3" }} }}
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  NodeAttestor "x509pop" {{ plugin_data {{ ca_bundle_path = "{d}/pop/ca.pem" }} }}
  KeyManager "disk" {{ plugin_data {{ keys_path = "{d}/data/keys.json" }} }}
{extra}}}
"#
            ),
        )
        .unwrap();
        let mut server = Self {
            bin: bin.to_owned(),
            dir,
            port,
            child: KillOnDrop(None),
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(self.bin.join("spire-server"))
            .args(["run", "-config"])
            .arg(self.dir.path().join("server.conf"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = KillOnDrop(Some(child));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.try_cmd(&["healthcheck"]).is_ok_and(|_| true) {
            assert!(
                Instant::now() < deadline,
                "spire-server did not become healthy: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop(&mut self) {
        self.child = KillOnDrop(None);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn try_cmd(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(self.bin.join("spire-server"))
            .args(args)
            .arg("-socketPath")
            .arg(self.dir.path().join("server.sock"))
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "spire-server {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A join token for the node `spiffe://example.org/<node>`.
    fn token(&self, node: &str) -> String {
        let out = self.cmd(&[
            "token",
            "generate",
            "-spiffeID",
            &format!("spiffe://{TD}/{node}"),
        ]);
        out.split_whitespace().nth(1).unwrap().to_owned()
    }

    /// Creates an entry for workloads of uid `uid` under `parent`; returns its ID.
    fn entry(&self, parent: &str, id: &str, uid: u32, extra: &[&str]) -> String {
        let mut args = vec![
            "entry".to_owned(),
            "create".into(),
            "-parentID".into(),
            format!("spiffe://{TD}/{parent}"),
            "-spiffeID".into(),
            format!("spiffe://{TD}/{id}"),
            "-selector".into(),
            format!("unix:uid:{uid}"),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.cmd(&args);
        out.lines()
            .find_map(|l| l.strip_prefix("Entry ID"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|| panic!("no entry ID in {out}"))
    }

    /// The trust domain's X.509 authorities, DER.
    fn bundle(&self) -> Vec<CertificateDer<'static>> {
        use rustls_pki_types::pem::PemObject;
        let pem = self.cmd(&["bundle", "show"]);
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    }

    fn bundle_path(&self) -> PathBuf {
        let path = self.dir.path().join("bundle.pem");
        std::fs::write(&path, self.cmd(&["bundle", "show"])).unwrap();
        path
    }
}

/// An x509pop CA (`<dir>/ca.pem`) and two node certificates signed by it: `ec` (P-256, SEC1 key)
/// and `rsa` (RSA-2048, PKCS#8 key), each `<name>.pem` and `<name>.key` (0600).
fn pop_ca(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let script = r#"set -e
openssl ecparam -name prime256v1 -genkey -noout -out ca.key 2>/dev/null
openssl req -x509 -new -key ca.key -subj /CN=pop-ca -days 2 -out ca.pem \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
printf 'keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n' > leaf.ext
openssl ecparam -name prime256v1 -genkey -noout -out ec.key 2>/dev/null
openssl genrsa -out rsa.key 2048 2>/dev/null
for n in ec rsa; do
  openssl req -new -key $n.key -subj /CN=node-$n -out $n.csr 2>/dev/null
  openssl x509 -req -in $n.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile leaf.ext -out $n.pem 2>/dev/null
  chmod 600 $n.key
done
"#;
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SPIRE's x509pop agent ID for a node certificate: its SHA-1 fingerprint.
fn pop_agent_id(cert_pem: &Path) -> String {
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(cert_pem).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    format!(
        "spiffe://{TD}/spire/agent/x509pop/{}",
        lanyard::encoding::hex(digest.as_ref())
    )
}

/// A `lanyard agent` process in mode "spire": one "node".
struct Node {
    dir: tempfile::TempDir,
    health: u16,
    child: KillOnDrop,
}

impl Node {
    fn start(server: &SpireServer, token: &str, extra: &str) -> Self {
        let attestor = format!("join_token = \"{token}\"");
        Self::start_with(server, &attestor, extra)
    }

    fn start_with(server: &SpireServer, attestor: &str, extra: &str) -> Self {
        let mut node = Self::configure(server, attestor, extra);
        node.run();
        node
    }

    /// A node whose agent is configured, not started.
    fn configure(server: &SpireServer, attestor: &str, extra: &str) -> Self {
        let dir = open_tempdir();
        let health = free_port();
        let text = format!(
            "trust_domain = \"{TD}\"\nsocket_path = \"{d}/workload.sock\"\nadmin_socket_path = \"{d}/admin/admin.sock\"\ndata_dir = \"{d}/data\"\nhealth = {{ address = \"127.0.0.1:{health}\" }}\n[authority]\nmode = \"spire\"\nserver_address = \"{addr}\"\n{trust}{attestor}\nsync_interval = \"200ms\"\n{extra}",
            d = dir.path().display(),
            addr = server.address(),
            trust = if attestor.contains("insecure_bootstrap") {
                String::new()
            } else {
                format!(
                    "trust_bundle_path = \"{}\"\n",
                    server.bundle_path().display()
                )
            },
        );
        std::fs::write(dir.path().join("agent.toml"), text).unwrap();
        Self {
            dir,
            health,
            child: KillOnDrop(None),
        }
    }

    /// Runs an agent that must not start: waits for it to exit with a failure, and returns its log.
    fn refused(server: &SpireServer, attestor: &str) -> String {
        let mut node = Self::configure(server, attestor, "");
        node.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = node.child.0.as_mut().unwrap().try_wait().unwrap() {
                break status;
            }
            // Dropping the node kills the agent.
            assert!(
                Instant::now() < deadline,
                "the agent kept running: {}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(!status.success(), "{}", node.log());
        assert!(node.ready().is_none());
        node.log()
    }

    /// Starts the agent (its log appended to `agent.log`); does not wait for it.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(lanyard_bin())
            .args(["agent", "--config"])
            .arg(self.dir.path().join("agent.toml"))
            .env("RUST_LOG", "info,lanyard::spire=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = KillOnDrop(Some(child));
    }

    fn run(&mut self) {
        self.spawn();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.ready().is_none() {
            if let Some(Ok(Some(status))) = self.child.0.as_mut().map(std::process::Child::try_wait)
            {
                panic!("lanyard agent exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "agent not ready: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&mut self) {
        self.child = KillOnDrop(None);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("workload.sock")
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// `/ready`'s body if it answers 200.
    fn ready(&self) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{}/ready", self.health)])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The agent's SPIFFE ID and serial from its persisted SVID.
    fn agent_svid(&self) -> (String, String) {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(self.dir.path().join("data/spire/agent.pem")).unwrap();
        let leaf = CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        let id = lanyard::encoding::uri_sans(&leaf).unwrap().remove(0);
        let (_, serial) = serial_of(&leaf);
        (id, serial)
    }
}

fn serial_of(der: &[u8]) -> (String, String) {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    let id = lanyard::encoding::uri_sans(der).unwrap().join(",");
    (id, lanyard::encoding::hex(c.raw_serial()))
}

/// The IDs root's processes get from the agent at `endpoint`, or the error.
fn ids_of(endpoint: &str) -> Result<Vec<String>, String> {
    let out = fetch_as(0, 0, endpoint);
    if out.status.success() {
        Ok(ids_in(&out))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn x509_stream(socket: &Path) -> tonic::Streaming<X509svidResponse> {
    let mut client = lanyard::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
        raw_channel(socket).await,
    );
    client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner()
}

fn chain_of(svid: &lanyard::proto::X509svid) -> Vec<CertificateDer<'static>> {
    lanyard::encoding::split_der(&svid.x509_svid).unwrap()
}

/// The chain validates to `roots` for client and server use (X5-10).
fn assert_chains_to(chain: &[CertificateDer<'static>], roots: &[CertificateDer<'static>]) {
    let anchors: Vec<_> = roots
        .iter()
        .map(|c| webpki::anchor_from_trusted_cert(c).unwrap())
        .collect();
    let ee = webpki::EndEntityCert::try_from(&chain[0]).unwrap();
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .expect("the SVID chains to the SPIRE server's bundle");
}

async fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two lanyard nodes join one SPIRE server with their own tokens; each serves only the entries
/// parented to it, signed by the server; workloads on the two nodes complete mutual TLS; an entry
/// created or deleted on the server reaches an open stream within the sync interval; local entry
/// management is refused; SPIRE's own agent on the same server serves the same identity the same way.
#[tokio::test(flavor = "multi_thread")]
async fn two_nodes_one_trust_domain() {
    let test = "two_nodes_one_trust_domain";
    if !require_root(test) {
        return;
    }
    let Some(bin) = spire_bin(test) else {
        return;
    };
    let server = SpireServer::start(&bin, "1h");
    server.entry("node-a", "web", 0, &[]);
    server.entry("node-b", "db", 0, &[]);
    let a = Node::start(&server, &server.token("node-a"), "");
    let b = Node::start(&server, &server.token("node-b"), "");

    // Each node: only its own entries (the other node's entry has the same selector). The server
    // serves new entries from its cache, reloaded every 500 ms here (SPIRE's default: 5 s).
    wait_for("node A's entry", 20, || ids_of(&a.endpoint()).is_ok()).await;
    wait_for("node B's entry", 20, || ids_of(&b.endpoint()).is_ok()).await;
    assert_eq!(
        ids_of(&a.endpoint()).unwrap(),
        [format!("spiffe://{TD}/web")]
    );
    assert_eq!(
        ids_of(&b.endpoint()).unwrap(),
        [format!("spiffe://{TD}/db")]
    );

    // Signed by the server: the chain validates to the server's bundle, which is what is served.
    let roots = server.bundle();
    let mut stream = x509_stream(&a.socket()).await;
    let first = next_within(&mut stream, 10).await;
    assert_eq!(first.svids.len(), 1);
    assert_chains_to(&chain_of(&first.svids[0]), &roots);
    let served = lanyard::encoding::split_der(&first.svids[0].bundle).unwrap();
    assert_eq!(served, roots, "the bundle served is the server's");

    // mTLS between a workload on node A and one on node B (examples/mtls_peer.rs).
    let peer = mtls_peer_bin();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _server_peer = KillOnDrop(Some(
        Command::new(&peer)
            .args(["server", &addr, &format!("spiffe://{TD}/db")])
            .env("SPIFFE_ENDPOINT_SOCKET", a.endpoint())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    ));
    let mut client_ok = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let out = Command::new(&peer)
            .args(["client", &addr, &format!("spiffe://{TD}/web")])
            .env("SPIFFE_ENDPOINT_SOCKET", b.endpoint())
            .output()
            .unwrap();
        if out.status.success() {
            client_ok = Some(String::from_utf8_lossy(&out.stdout).into_owned());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let answer = client_ok.expect("mTLS between node A's web and node B's db");
    assert!(answer.contains("pong"), "{answer}");

    // An entry created on the server reaches the open stream within the interval (200 ms here;
    // the test allows 5 s for a loaded machine); deleted, it leaves it.
    let t0 = Instant::now();
    let api = server.entry("node-a", "api", 0, &[]);
    let update = next_within(&mut stream, 5).await;
    let mut ids: Vec<_> = update.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [format!("spiffe://{TD}/api"), format!("spiffe://{TD}/web")]
    );
    eprintln!("entry create -> open stream: {:?}", t0.elapsed());
    server.cmd(&["entry", "delete", "-entryID", &api]);
    let update = next_within(&mut stream, 5).await;
    assert_eq!(update.svids.len(), 1);
    assert_eq!(update.svids[0].spiffe_id, format!("spiffe://{TD}/web"));

    // Federation: a bundle the server holds for partner.org reaches the holders of an entry that
    // federates with it.
    let partner = server.dir.path().join("pop/ca.pem");
    server.cmd(&[
        "bundle",
        "set",
        "-format",
        "pem",
        "-id",
        "spiffe://partner.org",
        "-path",
        &partner.display().to_string(),
    ]);
    let fed = server.entry(
        "node-a",
        "fed",
        0,
        &["-federatesWith", "spiffe://partner.org"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let msg = next_within(&mut stream, 10).await;
        if let Some(bundle) = msg.federated_bundles.get("spiffe://partner.org") {
            use rustls_pki_types::pem::PemObject;
            let want = CertificateDer::from_pem_file(&partner).unwrap();
            assert_eq!(lanyard::encoding::split_der(bundle).unwrap(), [want]);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the federated bundle never arrived"
        );
    }
    server.cmd(&["entry", "delete", "-entryID", &fed]);

    // Node B's entry is never served on node A, even asked for by name through JWT.
    let mut client = lanyard::client::connect(&a.endpoint()).await.unwrap();
    let denied = client
        .fetch_jwtsvid(lanyard::proto::JwtsvidRequest {
            audience: vec!["x".into()],
            spiffe_id: format!("spiffe://{TD}/db"),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    // JWT-SVIDs come from the server (NewJWTSVID) and validate against the served JWT bundle.
    let jwt = client
        .fetch_jwtsvid(lanyard::proto::JwtsvidRequest {
            audience: vec!["audience-1".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt.svids[0].spiffe_id, format!("spiffe://{TD}/web"));
    let valid = client
        .validate_jwtsvid(lanyard::proto::ValidateJwtsvidRequest {
            audience: "audience-1".into(),
            svid: jwt.svids[0].svid.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(valid.spiffe_id, format!("spiffe://{TD}/web"));

    // Entries are the server's: the admin API refuses local writes and says where to go.
    let out = Command::new(lanyard_bin())
        .args(["entry", "create", "--admin-socket"])
        .arg(a.dir.path().join("admin/admin.sock"))
        .args([
            "--spiffe-id",
            &format!("spiffe://{TD}/local"),
            "--selector",
            "unix:uid:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SPIRE server") && err.contains("spire-server entry create"),
        "{err}"
    );

    // SPIRE's own agent, on the same server, serving the same ID under its own node.
    server.entry("node-c", "web", 0, &[]);
    let spire_agent = SpireAgentProc::start(&bin, &server, &server.token("node-c"));
    let theirs = spire_agent.first_x509().await;
    let ours = first;
    let (their_svid, our_svid) = (&theirs.svids[0], &ours.svids[0]);
    assert_eq!(their_svid.spiffe_id, our_svid.spiffe_id, "same SPIFFE ID");
    let (their_chain, our_chain) = (chain_of(their_svid), chain_of(our_svid));
    assert_eq!(their_chain.len(), our_chain.len(), "same chain shape");
    assert_eq!(
        lanyard::encoding::split_der(&their_svid.bundle).unwrap(),
        lanyard::encoding::split_der(&our_svid.bundle).unwrap(),
        "same bundle"
    );
    assert_chains_to(&their_chain, &roots);
    let (their_id, their_serial) = serial_of(&their_chain[0]);
    let (our_id, our_serial) = serial_of(&our_chain[0]);
    assert_eq!(their_id, our_id);
    // Different keys and serials: each agent generates its own key per SVID.
    assert_ne!(their_serial, our_serial);
    assert_ne!(their_svid.x509_svid_key, our_svid.x509_svid_key);
}

/// The server goes away and comes back; lanyard restarts without attesting again; its agent SVID
/// is renewed; evicted, it stops serving.
#[tokio::test(flavor = "multi_thread")]
async fn outages_restarts_renewal_and_eviction() {
    let test = "outages_restarts_renewal_and_eviction";
    if !require_root(test) {
        return;
    }
    let Some(bin) = spire_bin(test) else {
        return;
    };
    // Agent SVIDs of 20 s: renewed at half life, within the test.
    let mut server = SpireServer::start(&bin, "20s");
    // SVIDs of 20 s: rotated every ~10 s.
    server.entry("node-a", "web", 0, &["-x509SVIDTTL", "20"]);
    let token = server.token("node-a");
    let mut a = Node::start(&server, &token, "");
    wait_for("node A's entry", 20, || ids_of(&a.endpoint()).is_ok()).await;
    let mut stream = x509_stream(&a.socket()).await;
    let first = next_within(&mut stream, 10).await;
    let (_, first_serial) = serial_of(&chain_of(&first.svids[0])[0]);

    // Server down: cached SVIDs are still served; /ready stays ready and says why.
    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        ids_of(&a.endpoint()).unwrap(),
        [format!("spiffe://{TD}/web")]
    );
    let ready = a.ready().expect("ready while cached SVIDs are valid");
    assert!(ready.contains("SPIRE server unreachable since"), "{ready}");
    // Back: rotation resumes (a new SVID on the open stream, from the server).
    server.run();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let msg = next_within(&mut stream, 40).await;
        let (_, serial) = serial_of(&chain_of(&msg.svids[0])[0]);
        if serial != first_serial {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no rotation after the server came back"
        );
    }
    wait_for("ready without the outage note", 10, || {
        a.ready().is_some_and(|r| r == "ready\n")
    })
    .await;

    eprintln!("rotation resumed after the outage");
    // Restart: the persisted agent SVID is used; the (single-use, spent) token is not needed.
    let (agent_id, agent_serial) = a.agent_svid();
    a.stop();
    a.run();
    assert_eq!(
        ids_of(&a.endpoint()).unwrap(),
        [format!("spiffe://{TD}/web")]
    );
    assert!(
        a.log().contains("resuming with the persisted agent SVID"),
        "{}",
        a.log()
    );
    assert_eq!(a.agent_svid().0, agent_id, "same agent, not attested again");

    // Renewal at half life (10 s of 20 s).
    wait_for("agent SVID renewal", 30, || {
        a.agent_svid().1 != agent_serial
    })
    .await;
    assert_eq!(a.agent_svid().0, agent_id);
    assert!(a.log().contains("agent SVID renewed"));

    eprintln!("agent SVID renewed: {agent_serial} -> {}", a.agent_svid().1);
    // Evicted: no more identities; /ready says the server refuses the node.
    server.cmd(&["agent", "evict", "-spiffeID", &agent_id]);
    wait_for("eviction to take effect", 20, || {
        ids_of(&a.endpoint()).is_err()
    })
    .await;
    let err = ids_of(&a.endpoint()).unwrap_err();
    assert!(
        err.contains("no identity")
            || err.contains("PermissionDenied")
            || err.contains("permission"),
        "{err}"
    );
    assert!(
        a.ready().is_none(),
        "not ready once the server refuses the node"
    );
    eprintln!("evicted: {err}");
    drop(stream);
    server.stop();
}

/// Local entries, templates and federation are refused in mode "spire" with a message that says
/// where entries are managed; a missing token or bundle is named.
#[test]
fn spire_mode_config_is_checked() {
    let base = "[authority]\nmode = \"spire\"\nserver_address = \"spire-server:8081\"\n";
    let err = lanyard::config::Config::from_toml(&format!(
        "{base}trust_bundle_path = \"/b.pem\"\njoin_token = \"t\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/x\"\nselectors = [\"unix:uid:1\"]\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("entry") && err.contains("spire-server entry create"),
        "{err}"
    );
    let err = lanyard::config::Config::from_toml(base)
        .unwrap_err()
        .to_string();
    assert!(err.contains("authority.join_token"), "{err}");
    assert!(err.contains("authority.trust_bundle_path"), "{err}");
    let err = lanyard::config::Config::from_toml(&format!(
        "{base}insecure_bootstrap = true\njoin_token = \"t\"\nca_ttl = \"1h\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("authority.ca_ttl") && err.contains("keeps the keys"),
        "{err}"
    );
    let err = lanyard::config::Config::from_toml(
        "[authority]\nmode = \"spire\"\nserver_address = \"nohost\"\ninsecure_bootstrap = true\njoin_token = \"t\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("\"nohost\" is not host:port"), "{err}");
    let ok = lanyard::config::Config::from_toml(&format!(
        "{base}insecure_bootstrap = true\njoin_token = \"secret-token\"\n"
    ))
    .unwrap();
    assert!(
        !format!("{ok:?}").contains("secret-token"),
        "the token is never shown"
    );
}

/// SPIRE's own agent (unix workload attestor) joined to the same server.
struct SpireAgentProc {
    dir: tempfile::TempDir,
    _child: KillOnDrop,
}

impl SpireAgentProc {
    fn start(bin: &Path, server: &SpireServer, token: &str) -> Self {
        let dir = open_tempdir();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("agent.conf"),
            format!(
                r#"agent {{
  data_dir = "{d}/data"
  log_level = "WARN"
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{d}/agent.sock"
  trust_domain = "{TD}"
  trust_bundle_path = "{bundle}"
}}
plugins {{
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "memory" {{ plugin_data {{}} }}
  WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
"#,
                port = server.port,
                bundle = server.bundle_path().display(),
            ),
        )
        .unwrap();
        let child = Command::new(bin.join("spire-agent"))
            .args(["run", "-config"])
            .arg(dir.path().join("agent.conf"))
            .args(["-joinToken", token])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            dir,
            _child: KillOnDrop(Some(child)),
        }
    }

    async fn first_x509(&self) -> X509svidResponse {
        let socket = self.dir.path().join("agent.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if socket.exists() {
                let mut client =
                    lanyard::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(
                        raw_channel(&socket).await,
                    );
                // "no identity issued" until the server's entry cache has the new entry.
                if let Ok(stream) = client.fetch_x509svid(with_header(X509svidRequest {})).await {
                    let mut stream = stream.into_inner();
                    if let Ok(Some(Ok(msg))) =
                        tokio::time::timeout(Duration::from_secs(5), stream.next()).await
                        && !msg.svids.is_empty()
                    {
                        return msg;
                    }
                }
            }
            assert!(Instant::now() < deadline, "spire-agent served no SVID");
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// The example workload binary (built by `cargo test` with the other examples).
fn mtls_peer_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/mtls_peer")
}

/// x509pop: nodes with an EC and an RSA certificate prove possession of their keys to the real
/// server's challenge, get the entries parented to their fingerprint IDs, and — unlike a spent join
/// token — attest again by themselves after an eviction.
#[tokio::test(flavor = "multi_thread")]
async fn x509pop_nodes_attest_and_reattest_after_eviction() {
    let test = "x509pop_nodes_attest_and_reattest_after_eviction";
    if !require_root(test) {
        return;
    }
    let Some(bin) = spire_bin(test) else {
        return;
    };
    let server = SpireServer::start(&bin, "1h");
    let pop = server.dir.path().join("pop");
    let mut nodes = Vec::new();
    for kind in ["ec", "rsa"] {
        let agent_id = pop_agent_id(&pop.join(format!("{kind}.pem")));
        let parent = agent_id.strip_prefix(&format!("spiffe://{TD}/")).unwrap();
        server.entry(parent, &format!("pop-{kind}"), 0, &[]);
        // The RSA node bootstraps without a bundle (insecure_bootstrap): it takes the server's.
        let bootstrap = if kind == "rsa" {
            "insecure_bootstrap = true\n"
        } else {
            ""
        };
        let attestor = format!(
            "{bootstrap}x509pop_cert_path = \"{}\"\nx509pop_key_path = \"{}\"",
            pop.join(format!("{kind}.pem")).display(),
            pop.join(format!("{kind}.key")).display()
        );
        let node = Node::start_with(&server, &attestor, "");
        assert_eq!(
            node.agent_svid().0,
            agent_id,
            "{kind}: the x509pop agent ID"
        );
        wait_for("the x509pop node's entry", 20, || {
            ids_of(&node.endpoint()).is_ok()
        })
        .await;
        assert_eq!(
            ids_of(&node.endpoint()).unwrap(),
            [format!("spiffe://{TD}/pop-{kind}")]
        );
        nodes.push((node, agent_id));
    }
    // Evicted, the EC node attests again on its own and keeps serving its workloads.
    let (node, agent_id) = &nodes[0];
    let (_, serial) = node.agent_svid();
    server.cmd(&["agent", "evict", "-spiffeID", agent_id]);
    wait_for("attestation after the eviction", 30, || {
        node.agent_svid().1 != serial
    })
    .await;
    assert!(node.log().contains("node attested again"), "{}", node.log());
    wait_for("the entry again", 20, || ids_of(&node.endpoint()).is_ok()).await;
    assert_eq!(
        ids_of(&node.endpoint()).unwrap(),
        [format!("spiffe://{TD}/pop-ec")]
    );
}

/// More authorized entries than the server's page (500): SyncAuthorizedEntries sends revisions, the
/// agent asks only for the entries it lacks or that changed, and an update on the server (a new
/// revision) reaches the open stream as a new SVID carrying the change.
#[tokio::test(flavor = "multi_thread")]
async fn many_entries_sync_by_revision() {
    let test = "many_entries_sync_by_revision";
    if !require_root(test) {
        return;
    }
    let Some(bin) = spire_bin(test) else {
        return;
    };
    let server = SpireServer::start(&bin, "1h");
    let entries: Vec<serde_json::Value> = (0..600)
        .map(|i| {
            serde_json::json!({
                "spiffe_id": format!("spiffe://{TD}/bulk/{i}"),
                "parent_id": format!("spiffe://{TD}/node-a"),
                "selectors": [{"type": "unix", "value": format!("uid:{}", 100_000 + i)}],
            })
        })
        .collect();
    let data = server.dir.path().join("bulk.json");
    std::fs::write(&data, serde_json::json!({ "entries": entries }).to_string()).unwrap();
    server.cmd(&["entry", "create", "-data", &data.display().to_string()]);
    let web = server.entry("node-a", "web", 0, &[]);
    let a = Node::start(&server, &server.token("node-a"), "");
    wait_for("node A's entry", 30, || ids_of(&a.endpoint()).is_ok()).await;
    let mut stream = x509_stream(&a.socket()).await;
    let first = next_within(&mut stream, 10).await;
    assert_eq!(first.svids[0].spiffe_id, format!("spiffe://{TD}/web"));
    server.cmd(&[
        "entry",
        "update",
        "-entryID",
        &web,
        "-parentID",
        &format!("spiffe://{TD}/node-a"),
        "-spiffeID",
        &format!("spiffe://{TD}/web"),
        "-selector",
        "unix:uid:0",
        "-dns",
        "web.example.org",
    ]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let msg = next_within(&mut stream, 15).await;
        let leaf = &chain_of(&msg.svids[0])[0];
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let dns: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        if dns == ["web.example.org"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the updated entry never reached the stream"
        );
    }
    assert!(
        !a.log().contains("using GetAuthorizedEntries"),
        "SyncAuthorizedEntries was used: {}",
        a.log()
    );
}

/// SDS (tests/interop/go/sds, Envoy's own Go types): a stream from lanyard joined to the server sees
/// a rotation, ACKs, NACKs once without a resend loop and follows new names; the same requests to a
/// real spire-agent on the same server and to lanyard give the same resources field by field — what
/// differs is only each agent's own key and serial.
#[tokio::test(flavor = "multi_thread")]
async fn sds_compared_with_spire_agent() {
    let test = "sds_compared_with_spire_agent";
    if !require_root(test) || !prepare("go", &["go"], test) {
        return;
    }
    let Some(bin) = spire_bin(test) else {
        return;
    };
    let server = SpireServer::start(&bin, "1h");
    server.entry("node-a", "web", 0, &["-x509SVIDTTL", "20"]);
    server.entry("node-c", "web", 0, &["-x509SVIDTTL", "20"]);
    let a = Node::start(&server, &server.token("node-a"), "");
    let spire_agent = SpireAgentProc::start(&bin, &server, &server.token("node-c"));
    wait_for("node A's entry", 20, || ids_of(&a.endpoint()).is_ok()).await;
    spire_agent.first_x509().await;
    let sds = interop_dir().join("bin/interop-sds");

    // The stream: rotation (20 s SVIDs rotate at about 10 s), ACK, one NACK, new names.
    let out = tokio::task::spawn_blocking({
        let (sds, socket) = (sds.clone(), a.socket());
        move || {
            Command::new(sds)
                .arg("stream")
                .arg(socket)
                .args([&format!("spiffe://{TD}/web"), "40"])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "SDS stream: {}{}",
        String::from_utf8_lossy(&out.stderr),
        a.log()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["nack_quiet"], true);
    assert!(
        a.log().contains("Envoy rejected the secrets (NACK)"),
        "the NACK is logged"
    );
    assert!(a.log().contains("interop-sds-node"), "with the node ID");

    // Field by field against spire-agent.
    let fetch = |socket: PathBuf, names: &[&str]| {
        let out = Command::new(&sds)
            .arg("fetch")
            .arg(socket)
            .arg("{}")
            .args(names)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v
    };
    let theirs_socket = spire_agent.dir.path().join("agent.sock");
    let web = format!("spiffe://{TD}/web");
    let td = format!("spiffe://{TD}");
    for names in [
        vec!["default", "ROOTCA"],
        vec!["default", "ALL"],
        vec![web.as_str(), td.as_str()],
        vec![],
    ] {
        let ours = fetch(a.socket(), &names);
        let theirs = fetch(theirs_socket.clone(), &names);
        let strip = |v: &serde_json::Value| {
            let mut v = v.clone();
            for r in v["resources"].as_array_mut().into_iter().flatten() {
                r.as_object_mut().unwrap().remove("serial");
            }
            v
        };
        assert_eq!(
            strip(&ours),
            strip(&theirs),
            "SDS answers for {names:?} differ beyond serials:\nlanyard:     {ours}\nspire-agent: {theirs}"
        );
    }
    // The one difference, on purpose: spire-agent serves at most one of the own trust domain ID,
    // ROOTCA and ALL per request (a switch) and calls the others unauthorized; lanyard serves every
    // bundle name asked for.
    let ours = fetch(a.socket(), &["ROOTCA", "ALL"]);
    let theirs = fetch(theirs_socket, &["ROOTCA", "ALL"]);
    assert_eq!(
        ours["resources"].as_array().map(Vec::len),
        Some(2),
        "{ours}"
    );
    assert!(
        theirs["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"ALL\"")),
        "{theirs}"
    );
}

/// The Kubernetes API server, which cannot run here: a stand-in that answers what SPIRE's
/// `k8s_psat` attestor asks of it, in the API's own JSON, over TLS with its own CA, and only to the
/// server's bearer credential from the kubeconfig: `TokenReview` (authentication.k8s.io/v1), one
/// `Pod` and one `Node`. It is also the token issuer: it signs projected service account tokens
/// (ES256 JWTs with the claims the kubelet's tokens carry) and a review checks the signature, the
/// expiry and the audience, and refuses a token it has invalidated, as the real API server does.
struct FakeApiServer {
    kubeconfig: PathBuf,
    signing: jsonwebtoken::EncodingKey,
    state: Arc<Mutex<ApiState>>,
}

#[derive(Default)]
struct ApiState {
    /// Every request as "METHOD path".
    requests: Vec<String>,
    /// Every TokenReview: the token and the audiences asked for.
    reviews: Vec<(String, Vec<String>)>,
    /// `jti`s of tokens invalidated (their pod was deleted).
    invalidated: Vec<String>,
}

const API_CREDENTIAL: &str = "spire-server-kubeconfig-credential";
const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const POD: &str = "lanyard-x7k2p";
const POD_UID: &str = "6d1c4f52-0a7e-4b1f-9a53-2c9e1d7b8f10";
const NODE: &str = "node-a";
const NODE_UID: &str = "b8e2a3c4-51f0-4d6e-8c27-9f4a0e6d3b21";

impl FakeApiServer {
    async fn start(dir: &Path) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let signing = jsonwebtoken::EncodingKey::from_ec_der(&key.serialize_der());
        let verifying = jsonwebtoken::DecodingKey::from_ec_der(key.public_key_raw());
        let state = Arc::new(Mutex::new(ApiState::default()));
        let answerer: Answerer = {
            let state = state.clone();
            Arc::new(move |(parts, body): StandInRequest| {
                let answer = Self::answer(&state, &verifying, &parts, &body);
                Box::pin(async move { answer })
            })
        };
        let tls = TlsStandIn::start(dir, "apiserver", answerer).await;
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: demo\n  cluster:\n    server: https://{}\n    certificate-authority: {}\nusers:\n- name: spire-server\n  user:\n    token: {API_CREDENTIAL}\ncontexts:\n- name: demo\n  context:\n    cluster: demo\n    user: spire-server\ncurrent-context: demo\n",
                tls.addr,
                tls.ca_path.display()
            ),
        )
        .unwrap();
        Self {
            kubeconfig,
            signing,
            state,
        }
    }

    fn answer(
        state: &Mutex<ApiState>,
        verifying: &jsonwebtoken::DecodingKey,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> StandInAnswer {
        use serde_json::json;
        let json = |code: u16, v: serde_json::Value| (code, "application/json", v.to_string());
        let status = |code: u16, reason: &str, message: &str| {
            json(
                code,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}),
            )
        };
        let mut state = state.lock().unwrap();
        let path = parts.uri.path();
        state.requests.push(format!("{} {path}", parts.method));
        if parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            != Some(&format!("Bearer {API_CREDENTIAL}"))
        {
            return status(401, "Unauthorized", "Unauthorized");
        }
        match (parts.method.as_str(), path) {
            ("POST", "/apis/authentication.k8s.io/v1/tokenreviews") => {
                let (token, audiences) = match TokenReviewSpec::decode(parts, body) {
                    Ok(spec) => (spec.token, spec.audiences),
                    Err(why) => return status(400, "BadRequest", &why),
                };
                state.reviews.push((token.clone(), audiences.clone()));
                let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
                validation.set_issuer(&[ISSUER]);
                validation.set_audience(&audiences);
                let verdict =
                    match jsonwebtoken::decode::<serde_json::Value>(&token, verifying, &validation)
                    {
                        Err(e) => Err(e.to_string()),
                        Ok(t) if state.invalidated.iter().any(|j| t.claims["jti"] == **j) => {
                            Err("token has been invalidated".to_owned())
                        }
                        Ok(t) => Ok(t.claims),
                    };
                let status = match verdict {
                    Err(why) => {
                        json!({"user": {}, "error": format!("[invalid bearer token, {why}]")})
                    }
                    Ok(c) => {
                        let k = &c["kubernetes.io"];
                        let (ns, sa) = (&k["namespace"], &k["serviceaccount"]["name"]);
                        let theirs: Vec<&serde_json::Value> =
                            c["aud"].as_array().into_iter().flatten().collect();
                        let granted: Vec<&String> = audiences
                            .iter()
                            .filter(|a| theirs.iter().any(|t| t.as_str() == Some(a.as_str())))
                            .collect();
                        json!({
                            "authenticated": true,
                            "user": {
                                "username": format!("system:serviceaccount:{}:{}", ns.as_str().unwrap(), sa.as_str().unwrap()),
                                "uid": k["serviceaccount"]["uid"],
                                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", ns.as_str().unwrap()), "system:authenticated"],
                                "extra": {
                                    "authentication.kubernetes.io/credential-id": [format!("JTI={}", c["jti"].as_str().unwrap())],
                                    "authentication.kubernetes.io/node-name": [k["node"]["name"]],
                                    "authentication.kubernetes.io/node-uid": [k["node"]["uid"]],
                                    "authentication.kubernetes.io/pod-name": [k["pod"]["name"]],
                                    "authentication.kubernetes.io/pod-uid": [k["pod"]["uid"]],
                                },
                            },
                            "audiences": granted,
                        })
                    }
                };
                json(
                    201,
                    json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                           "metadata": {"creationTimestamp": null},
                           "spec": {"token": token, "audiences": audiences}, "status": status}),
                )
            }
            ("GET", p) if p == format!("/api/v1/namespaces/lanyard/pods/{POD}") => json(
                200,
                json!({"kind": "Pod", "apiVersion": "v1",
                       "metadata": {"name": POD, "namespace": "lanyard", "uid": POD_UID,
                                    "labels": {"app": "lanyard"}},
                       "spec": {"nodeName": NODE, "serviceAccountName": "lanyard",
                                "containers": [{"name": "lanyard", "image": "lanyard:latest"}]},
                       "status": {"phase": "Running", "hostIP": "10.0.0.7", "podIP": "10.0.0.7"}}),
            ),
            ("GET", p) if p == format!("/api/v1/nodes/{NODE}") => json(
                200,
                json!({"kind": "Node", "apiVersion": "v1",
                       "metadata": {"name": NODE, "uid": NODE_UID,
                                    "labels": {"kubernetes.io/hostname": NODE}},
                       "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.7"}]}}),
            ),
            (_, p) => status(404, "NotFound", &format!("{p} not found")),
        }
    }

    /// A projected service account token of `namespace:account` for `audience`, bound to the pod
    /// (as the kubelet requests them): returns the token and its `jti`.
    fn token(&self, namespace: &str, account: &str, audience: &str) -> (String, String) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let jti = lanyard::encoding::hex(&fastrand::u128(..).to_be_bytes());
        let claims = serde_json::json!({
            "aud": [audience], "exp": now + 3600, "iat": now, "nbf": now, "iss": ISSUER,
            "jti": jti, "sub": format!("system:serviceaccount:{namespace}:{account}"),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": NODE, "uid": NODE_UID},
                "pod": {"name": POD, "uid": POD_UID},
                "serviceaccount": {"name": account, "uid": "3f9a1c2e-7b4d-4e8a-a1f0-5c6d7e8f9a0b"},
            },
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("sa-key-1".into());
        (
            jsonwebtoken::encode(&header, &claims, &self.signing).unwrap(),
            jti,
        )
    }

    fn invalidate(&self, jti: &str) {
        self.state.lock().unwrap().invalidated.push(jti.to_owned());
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    fn reviews(&self) -> Vec<(String, Vec<String>)> {
        self.state.lock().unwrap().reviews.clone()
    }
}

/// The part of a `TokenReview` the stand-in reads: its spec. client-go sends the review as
/// Kubernetes protobuf (`application/vnd.kubernetes.protobuf`: the `k8s\0` magic, then a
/// `runtime.Unknown` whose `raw` is the `TokenReview`), as it does to a real API server; JSON is
/// read too.
#[derive(Clone, PartialEq, prost::Message)]
struct TokenReviewSpec {
    #[prost(string, tag = "1")]
    token: String,
    #[prost(string, repeated, tag = "2")]
    audiences: Vec<String>,
}

/// `k8s.io/apimachinery` `runtime.Unknown`: field 2 is the object's bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct K8sUnknown {
    #[prost(bytes = "vec", tag = "2")]
    raw: Vec<u8>,
}

/// `k8s.io/api/authentication/v1` `TokenReview`: field 2 is the spec.
#[derive(Clone, PartialEq, prost::Message)]
struct TokenReviewProto {
    #[prost(message, optional, tag = "2")]
    spec: Option<TokenReviewSpec>,
}

impl TokenReviewSpec {
    fn decode(parts: &http::request::Parts, body: &[u8]) -> Result<Self, String> {
        use prost::Message as _;
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if content_type == "application/vnd.kubernetes.protobuf" {
            let unknown = body
                .strip_prefix(b"k8s\0")
                .ok_or("protobuf body without the k8s magic")?;
            let unknown = K8sUnknown::decode(unknown).map_err(|e| e.to_string())?;
            let review = TokenReviewProto::decode(&unknown.raw[..]).map_err(|e| e.to_string())?;
            return review
                .spec
                .ok_or_else(|| "TokenReview without a spec".to_owned());
        }
        let review: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        Ok(Self {
            token: review["spec"]["token"].as_str().unwrap_or("").to_owned(),
            audiences: review["spec"]["audiences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
        })
    }
}

/// Writes a token file as the kubelet does: the new token in place at once (a rename).
fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// k8s_psat: the agent sends its projected service account token; the real server reviews it with
/// the (stand-in) Kubernetes API, looks up the pod and its node, and names the agent after the
/// node's UID. The node gets the entries parented to that ID and to a node alias the server matched
/// by its `k8s_psat` selectors; the token is read afresh for each attestation (a rotated token
/// works after an eviction); tokens the server must refuse — another service account, another
/// audience, an invalidated token, an unknown cluster — leave the agent without a start and say why.
#[tokio::test(flavor = "multi_thread")]
async fn k8s_psat_nodes_attest_with_a_projected_token() {
    let test = "k8s_psat_nodes_attest_with_a_projected_token";
    if !require_root(test) {
        return;
    }
    let Some(bin) = spire_bin(test) else {
        return;
    };
    let api_dir = tempfile::tempdir().unwrap();
    let api = FakeApiServer::start(api_dir.path()).await;
    let server = SpireServer::start_with(
        &bin,
        "1h",
        &format!(
            "  NodeAttestor \"k8s_psat\" {{ plugin_data {{ clusters = {{ \"demo-cluster\" = {{ service_account_allow_list = [\"lanyard:lanyard\"] kube_config_file = \"{}\" }} }} }} }}\n",
            api.kubeconfig.display()
        ),
    );
    let agent_id = format!("spiffe://{TD}/spire/agent/k8s_psat/demo-cluster/{NODE_UID}");
    let parent = agent_id.strip_prefix(&format!("spiffe://{TD}/")).unwrap();
    server.entry(parent, "psat-node", 0, &[]);
    // A node alias: every node the server attested in this cluster.
    server.cmd(&[
        "entry",
        "create",
        "-node",
        "-spiffeID",
        &format!("spiffe://{TD}/cluster/demo"),
        "-selector",
        "k8s_psat:cluster:demo-cluster",
    ]);
    server.entry("cluster/demo", "psat-cluster", 0, &[]);

    let tokens = tempfile::tempdir().unwrap();
    let token_path = tokens.path().join("spire-agent");
    let (first, first_jti) = api.token("lanyard", "lanyard", "spire-server");
    write_token(&token_path, &first);
    let attestor = |cluster: &str, path: &Path| {
        format!(
            "k8s_psat_cluster = \"{cluster}\"\nk8s_psat_token_path = \"{}\"",
            path.display()
        )
    };
    let node = Node::start_with(&server, &attestor("demo-cluster", &token_path), "");
    assert_eq!(node.agent_svid().0, agent_id, "the k8s_psat agent ID");
    let reviews = api.reviews();
    assert_eq!(
        reviews,
        [(first.clone(), vec!["spire-server".to_owned()])],
        "one TokenReview of the agent's token for SPIRE's audience"
    );
    let requests = api.requests();
    for expected in [
        "POST /apis/authentication.k8s.io/v1/tokenreviews".to_owned(),
        format!("GET /api/v1/namespaces/lanyard/pods/{POD}"),
        format!("GET /api/v1/nodes/{NODE}"),
    ] {
        assert!(requests.contains(&expected), "{expected} in {requests:?}");
    }
    wait_for("the k8s_psat node's entries", 20, || {
        ids_of(&node.endpoint()).is_ok_and(|ids| ids.len() == 2)
    })
    .await;
    let mut ids = ids_of(&node.endpoint()).unwrap();
    ids.sort();
    assert_eq!(
        ids,
        [
            format!("spiffe://{TD}/psat-cluster"),
            format!("spiffe://{TD}/psat-node")
        ]
    );

    // The kubelet rotates the token; the pod's old token is invalidated. Evicted, the agent attests
    // again by itself with the token it reads now.
    let (second, _) = api.token("lanyard", "lanyard", "spire-server");
    write_token(&token_path, &second);
    api.invalidate(&first_jti);
    let (_, serial) = node.agent_svid();
    server.cmd(&["agent", "evict", "-spiffeID", &agent_id]);
    wait_for("attestation after the eviction", 30, || {
        node.agent_svid().1 != serial
    })
    .await;
    assert!(node.log().contains("node attested again"), "{}", node.log());
    assert_eq!(
        api.reviews().last().map(|(t, _)| t.clone()),
        Some(second.clone()),
        "the second attestation sent the rotated token"
    );
    wait_for("the entries again", 20, || {
        ids_of(&node.endpoint()).is_ok_and(|ids| ids.len() == 2)
    })
    .await;
    // A token is a credential: it is never logged.
    for t in [&first, &second] {
        assert!(
            !node.log().contains(t.as_str()),
            "a token in the agent's log"
        );
    }

    // What the server refuses, the agent reports and does not start on.
    let refusals = [
        (
            api.token("default", "default", "spire-server").0,
            "demo-cluster",
            "\"default:default\" is not an allowed service account",
        ),
        (
            api.token("lanyard", "lanyard", "vault").0,
            "demo-cluster",
            "invalid bearer token",
        ),
        (first.clone(), "demo-cluster", "token has been invalidated"),
        (
            second.clone(),
            "other-cluster",
            "not configured for cluster \"other-cluster\"",
        ),
    ];
    for (i, (token, cluster, why)) in refusals.into_iter().enumerate() {
        let path = tokens.path().join(format!("refused-{i}"));
        write_token(&path, &token);
        let log = Node::refused(&server, &attestor(cluster, &path));
        assert!(log.contains(why), "refusal {i}: {why:?} in {log}");
        assert!(!log.contains(token.as_str()), "a token in the agent's log");
    }
}
