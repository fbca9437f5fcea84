//! `lanyard helper` with real consumers: nginx serving mTLS from the helper's files across a
//! rotation, a reader hammering the files during many rotations, the settings file and `/ready`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use lanyard::proto::admin::*;
use rcgen::PublicKeyData;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn nginx() -> Option<PathBuf> {
    for p in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(p).exists() {
            return Some(p.into());
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("nginx is missing; .ci/run installs it (apt-get install nginx)");
    }
    eprintln!("\n*** SKIPPED the nginx test: nginx is not installed (apt-get install nginx) ***\n");
    None
}

/// A managed entry whose lifetime the test changes to force a new SVID (a rotation) at once.
struct Forcer {
    admin: lanyard::client::AdminClient,
    id: String,
    spec: EntrySpec,
    n: u32,
}

impl Forcer {
    async fn new(
        agent: &TestAgent,
        spiffe_id: &str,
        selector: String,
        dns: &[&str],
        ttl: &str,
    ) -> Self {
        let mut admin = lanyard::client::connect_admin(&agent.running().admin_socket_path)
            .await
            .unwrap();
        let spec = EntrySpec {
            spiffe_id: spiffe_id.into(),
            selectors: vec![selector],
            x509_ttl: ttl.into(),
            dns_names: dns.iter().map(std::string::ToString::to_string).collect(),
            ..EntrySpec::default()
        };
        let id = admin
            .create_entry(CreateEntryRequest {
                spec: Some(spec.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .id;
        Self {
            admin,
            id,
            spec,
            n: 0,
        }
    }

    /// A new lifetime: the agent mints and pushes a new SVID.
    async fn rotate(&mut self) {
        self.n += 1;
        self.spec.x509_ttl = format!("{}m", 60 + self.n);
        self.admin
            .update_entry(UpdateEntryRequest {
                id: self.id.clone(),
                spec: Some(self.spec.clone()),
            })
            .await
            .unwrap();
    }
}

fn serial_in_ready(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("ready"))
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// TLS client configuration: trusts `bundle`, presents `cert`+`key`.
fn tls_client(bundle: &Path, cert: &Path, key: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(bundle).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// One HTTPS request to nginx: (serial of the server certificate, HTTP status line).
fn https_get(config: &Arc<rustls::ClientConfig>, port: u16) -> Result<(String, String), String> {
    let name = ServerName::try_from("legacy.test").unwrap();
    let mut conn =
        rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    tls.write_all(b"GET / HTTP/1.0\r\nHost: legacy.test\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    let _ = tls.read_to_string(&mut text);
    let status = text.lines().next().unwrap_or_default().to_owned();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no server certificate")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| e.to_string())?;
    Ok((cert.raw_serial_as_string().replace(':', ""), status))
}

/// nginx serves mTLS from the helper's files: a client with an SVID for another identity gets
/// through, the rotation of a short-lived (1 min) SVID is picked up (the served serial changes)
/// without a failed request, and a client whose certificate is not from the bundle is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_serves_mtls_from_helper_files_across_a_rotation() {
    let Some(nginx) = nginx() else { return };
    if !require_root("nginx_serves_mtls_from_helper_files_across_a_rotation") {
        return;
    }
    let agent = TestAgent::start(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/client\"\nselectors = [\"unix:uid:65534\"]\n",
    )
    .await;
    // A one-minute SVID: the agent rotates it by itself at about half its life.
    let _server_entry = Forcer::new(
        &agent,
        "spiffe://example.org/nginx",
        "unix:uid:0".into(),
        &["legacy.test"],
        "1m",
    )
    .await;
    let work = agent.dir.path().join("nginx");
    let certs = work.join("certs");
    std::fs::create_dir_all(work.join("logs")).unwrap();
    let port = free_port();
    let conf = work.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            r#"daemon off;
master_process on;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/logs/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {w}/logs/access.log;
    client_body_temp_path {w}/tmp_body;
    proxy_temp_path {w}/tmp_proxy;
    fastcgi_temp_path {w}/tmp_fastcgi;
    uwsgi_temp_path {w}/tmp_uwsgi;
    scgi_temp_path {w}/tmp_scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name legacy.test;
        ssl_certificate {c}/svid.pem;
        ssl_certificate_key {c}/svid_key.pem;
        ssl_client_certificate {c}/bundle.pem;
        ssl_verify_client on;
        ssl_verify_depth 3;
        location / {{ return 200 "hello\n"; }}
    }}
}}
"#,
            w = work.display(),
            c = certs.display()
        ),
    )
    .unwrap();

    // The helper runs nginx as its child once the files exist and sends it SIGHUP on every update.
    let helper = Command::new(lanyard_bin())
        .args(["helper", "--socket", &agent.endpoint(), "--cert-dir"])
        .arg(&certs)
        .arg("--cmd")
        .arg(&nginx)
        .args(["--", "-e"])
        .arg(work.join("logs/startup.log"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _helper = KillOnDrop(Some(helper));

    // The client: an SVID for another identity, fetched from the agent as uid 65534.
    let client_dir = agent.dir.path().join("client");
    std::fs::create_dir_all(&client_dir).unwrap();
    std::fs::set_permissions(
        &client_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let (ep, cd) = (agent.endpoint(), client_dir.display().to_string());
    let out =
        tokio::task::spawn_blocking(move || fetch_as_with(65534, 65534, &ep, &["--write", &cd]))
            .await
            .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client = tls_client(
        &client_dir.join("bundle.pem"),
        &client_dir.join("svid.pem"),
        &client_dir.join("svid_key.pem"),
    );
    let get = {
        let client = client.clone();
        move || https_get(&client, port)
    };
    wait_until("nginx to serve", 15, || get().is_ok()).await;

    // curl, as an operator would, with the client SVID.
    let curl = |cert: &Path, key: &Path| {
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(client_dir.join("bundle.pem"))
            .arg("--cert")
            .arg(cert)
            .arg("--key")
            .arg(key)
            .args(["--resolve", &format!("legacy.test:{port}:127.0.0.1")])
            .arg(format!("https://legacy.test:{port}/"))
            .output()
            .unwrap()
    };
    let ok = curl(
        &client_dir.join("svid.pem"),
        &client_dir.join("svid_key.pem"),
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let (served, status) = get().unwrap();
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        served,
        serial_in_ready(&certs),
        "nginx serves the helper's certificate"
    );

    // The rotation (short TTL) while requests keep flowing: none fails, and nginx serves the new
    // serial.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok_count, failures) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let load = {
        let (stop, ok_count, failures, get) = (
            stop.clone(),
            ok_count.clone(),
            failures.clone(),
            get.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match get() {
                    Ok((_, s)) if s.contains("200") => ok_count.fetch_add(1, Ordering::SeqCst),
                    Ok((_, s)) => {
                        failures.lock().unwrap().push(s);
                        0
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(e);
                        0
                    }
                };
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let old = serial_in_ready(&certs);
    wait_until("the rotation of the 1-minute SVID", 50, || {
        serial_in_ready(&certs) != old
    })
    .await;
    let new = serial_in_ready(&certs);
    wait_until("nginx to serve the new certificate", 10, || {
        get().is_ok_and(|(s, _)| s == new)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    load.join().unwrap();
    assert_ne!(old, new);
    assert!(
        failures.lock().unwrap().is_empty(),
        "requests failed during rotation: {:?}",
        failures.lock().unwrap()
    );
    assert!(ok_count.load(Ordering::SeqCst) > 0);

    // A client certificate from outside the bundle is refused.
    let key = rcgen::KeyPair::generate().unwrap();
    let foreign = rcgen::CertificateParams::new(vec!["intruder.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(agent.dir.path().join("foreign.pem"), foreign.pem()).unwrap();
    std::fs::write(
        agent.dir.path().join("foreign_key.pem"),
        key.serialize_pem(),
    )
    .unwrap();
    let refused = curl(
        &agent.dir.path().join("foreign.pem"),
        &agent.dir.path().join("foreign_key.pem"),
    );
    let code = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert!(code == "400" || code == "000", "foreign client got {code}");
    agent.shutdown().await;
}

/// The SubjectPublicKeyInfo of a PEM private key.
fn key_spki(pem: &str) -> Option<Vec<u8>> {
    rcgen::KeyPair::from_pem(pem)
        .ok()
        .map(|k| k.subject_public_key_info())
}

/// The SubjectPublicKeyInfo of the first certificate in PEM text.
fn cert_spki(pem: &[u8]) -> Option<Vec<u8>> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.tbs_certificate.subject_pki.raw.to_vec())
}

/// Reads a file through one open descriptor: (contents, mode of that very file).
fn read_with_mode(path: &Path) -> Option<(Vec<u8>, u32)> {
    let mut f = std::fs::File::open(path).ok()?;
    let mode = f.metadata().ok()?.mode() & 0o777;
    let mut data = Vec::new();
    f.read_to_end(&mut data).ok()?;
    Some((data, mode))
}

/// A reader hammering the helper's files during many rotations never sees a truncated file, a wrong
/// mode, a combined file whose key does not match its certificate, or a certificate paired with an
/// older key (key first, certificate second: a cert-then-key reader can only see a key that is
/// newer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_hammering_the_files_during_rotations_never_sees_a_bad_pair() {
    let agent = TestAgent::start("").await;
    let mut entry = Forcer::new(
        &agent,
        "spiffe://example.org/legacy",
        format!("unix:uid:{}", euid()),
        &[],
        "30m",
    )
    .await;
    let certs = agent.dir.path().join("certs");
    let helper = Command::new(lanyard_bin())
        .args([
            "helper",
            "--combined",
            "--socket",
            &agent.endpoint(),
            "--cert-dir",
        ])
        .arg(&certs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _helper = KillOnDrop(Some(helper));
    wait_until("first files", 10, || certs.join("ready").exists()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, dir) = (stop.clone(), certs.clone());
        std::thread::spawn(move || {
            // Public keys of certificates in the order the reader first saw them.
            let mut seen: Vec<Vec<u8>> = Vec::new();
            let (mut reads, mut straddles) = (0usize, 0usize);
            let mut problems = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                reads += 1;
                // One file: key and chain always from the same update.
                let (combined, mode) = read_with_mode(&dir.join("svid_combined.pem")).unwrap();
                let text = String::from_utf8(combined).unwrap();
                if mode != 0o600 {
                    problems.push(format!("svid_combined.pem mode {mode:o}"));
                }
                match (key_spki(&text), cert_spki(text.as_bytes())) {
                    (Some(k), Some(c)) if k == c => {}
                    (Some(_), Some(_)) => problems.push("combined file: key does not match".into()),
                    _ => problems.push(format!(
                        "combined file truncated or unreadable ({} bytes)",
                        text.len()
                    )),
                }
                // Two files, certificate first, then key.
                let (cert, cmode) = read_with_mode(&dir.join("svid.pem")).unwrap();
                let (key, kmode) = read_with_mode(&dir.join("svid_key.pem")).unwrap();
                if cmode != 0o644 || kmode != 0o600 {
                    problems.push(format!("modes svid.pem {cmode:o} svid_key.pem {kmode:o}"));
                }
                let (Some(c), Some(k)) =
                    (cert_spki(&cert), key_spki(&String::from_utf8_lossy(&key)))
                else {
                    problems.push("svid.pem or svid_key.pem truncated or unreadable".into());
                    continue;
                };
                if !seen.contains(&c) {
                    seen.push(c.clone());
                }
                if c != k {
                    let cert_at = seen.iter().position(|s| *s == c).unwrap();
                    if seen[..cert_at].contains(&k) {
                        problems.push("a certificate with an OLDER key".into());
                    } else {
                        straddles += 1; // an update landed between the two reads: the key is newer
                    }
                }
                if problems.len() > 5 {
                    break;
                }
            }
            (reads, straddles, seen.len(), problems)
        })
    };
    let rotations = 25;
    for _ in 0..rotations {
        let before = serial_in_ready(&certs);
        entry.rotate().await;
        wait_until("new files", 10, || serial_in_ready(&certs) != before).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (reads, straddles, distinct, problems) = reader.join().unwrap();
    eprintln!(
        "hammer: {reads} reads, {distinct} certificates seen, {straddles} reads straddled an update"
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert!(
        distinct > rotations / 2,
        "the reader saw {distinct} of {rotations} rotations"
    );
    assert!(reads > 100, "only {reads} reads");
    agent.shutdown().await;
}

/// `--config helper.toml` carries the same settings as the flags (a flag wins), problems are all
/// reported with exit 64, and `/ready` turns 200 once the files are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_file_and_ready_endpoint() {
    let agent = TestAgent::start(&format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/legacy\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ))
    .await;
    let dir = agent.dir.path();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "signal = \"BOGUS\"\nowner = \"root\"\nhealth_address = \"nowhere\"\n",
    )
    .unwrap();
    let out = Command::new(lanyard_bin())
        .args(["helper", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "cert_dir: missing",
        "BOGUS",
        "\"root\"",
        "nowhere",
        "4 problems",
    ] {
        assert!(err.contains(want), "missing {want:?} in: {err}");
    }
    let unknown = dir.join("unknown.toml");
    std::fs::write(&unknown, "cert_dir = \"/tmp/x\"\ncertdir = \"/tmp/y\"\n").unwrap();
    let out = Command::new(lanyard_bin())
        .args(["helper", "--config"])
        .arg(&unknown)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("certdir"));

    let port = free_port();
    let certs = dir.join("certs");
    let file = dir.join("helper.toml");
    std::fs::write(
        &file,
        format!(
            "socket = \"{}\"\ncert_dir = \"/nonexistent/overridden\"\ncombined = true\nowner = \"65534:65533\"\nhealth_address = \"127.0.0.1:{port}\"\n",
            agent.endpoint()
        ),
    )
    .unwrap();
    let helper = Command::new(lanyard_bin())
        .args(["helper", "--config"])
        .arg(&file)
        .arg("--cert-dir")
        .arg(&certs)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _helper = KillOnDrop(Some(helper));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, _)) = lanyard::health::probe(addr, "/ready").await {
            break;
        }
        assert!(Instant::now() < deadline, "helper never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lanyard::health::probe(addr, "/live").await.unwrap().0, 200);
    // The flag's directory won over the file's; the file's `combined` applied.
    assert!(certs.join("svid.pem").exists() && certs.join("svid_combined.pem").exists());
    assert!(!Path::new("/nonexistent/overridden").exists());
    // Owner and modes from the settings, on every file (root can hand files to another user).
    if euid() == 0 {
        for (f, mode) in [
            ("svid_key.pem", 0o600),
            ("svid.pem", 0o644),
            ("svid_combined.pem", 0o600),
            ("bundle.pem", 0o644),
        ] {
            let m = std::fs::metadata(certs.join(f)).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.mode() & 0o777),
                (65534, 65533, mode),
                "{f}"
            );
        }
    }
    agent.shutdown().await;
}

/// `bundle.pem` holds the own trust domain's roots only, unless asked: `--bundle-intermediates` adds
/// the SVID's intermediate (upstream mode), `--bundle-federated` the federated trust domains' CAs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_options_add_intermediates_and_federated_cas() {
    use lanyard::encoding::{pem_block, pem_cert};
    let dir = open_tempdir();
    let day = Duration::from_secs(86400);
    let td = lanyard::spiffe_id::TrustDomain::parse("example.org").unwrap();
    let (key, root) =
        lanyard::ca::mint::self_signed_root(&td, std::time::SystemTime::now(), day * 30).unwrap();
    std::fs::write(dir.path().join("root.crt"), pem_cert(&root)).unwrap();
    std::fs::write(
        dir.path().join("root.key"),
        pem_block("PRIVATE KEY", &key.serialize_der()),
    )
    .unwrap();
    // An operator's key file must be 0600 (the agent refuses one others can read).
    std::fs::set_permissions(
        dir.path().join("root.key"),
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    )
    .unwrap();
    let partner = lanyard::spiffe_id::TrustDomain::parse("partner.org").unwrap();
    let (_, partner_root) =
        lanyard::ca::mint::self_signed_root(&partner, std::time::SystemTime::now(), day).unwrap();
    std::fs::write(dir.path().join("partner.pem"), pem_cert(&partner_root)).unwrap();
    let agent = TestAgent::start(&format!(
        "[authority]\nmode = \"upstream\"\ncert_path = \"{d}/root.crt\"\nkey_path = \"{d}/root.key\"\n\n[[federation]]\ntrust_domain = \"partner.org\"\nbundle_path = \"{d}/partner.pem\"\n\n[[entry]]\nspiffe_id = \"spiffe://example.org/legacy\"\nselectors = [\"unix:uid:{uid}\"]\nfederates_with = [\"partner.org\"]\n",
        d = dir.path().display(),
        uid = euid()
    ))
    .await;
    let once = |extra: &'static [&'static str], out: PathBuf| {
        let ep = agent.endpoint();
        async move {
            tokio::task::spawn_blocking(move || {
                let o = Command::new(lanyard_bin())
                    .args(["helper", "--once", "--socket", &ep, "--cert-dir"])
                    .arg(&out)
                    .args(extra)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                CertificateDer::pem_file_iter(out.join("bundle.pem"))
                    .unwrap()
                    .map(|c| c.unwrap().to_vec())
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap()
        }
    };
    let plain = once(&[], dir.path().join("plain")).await;
    assert_eq!(plain, vec![root.to_vec()], "own roots only by default");
    let chain: Vec<Vec<u8>> = CertificateDer::pem_file_iter(dir.path().join("plain/svid.pem"))
        .unwrap()
        .map(|c| c.unwrap().to_vec())
        .collect();
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    let with_inter = once(&["--bundle-intermediates"], dir.path().join("inter")).await;
    assert_eq!(with_inter.len(), 2);
    assert_eq!(with_inter[0], root.to_vec());
    // The intermediate of the moment (the same one signed both fetches' leaves).
    let (_, inter) = x509_parser::parse_x509_certificate(&with_inter[1]).unwrap();
    assert!(
        inter.is_ca(),
        "the added certificate is the intermediate CA"
    );
    let with_fed = once(&["--bundle-federated"], dir.path().join("fed")).await;
    assert_eq!(with_fed, vec![root.to_vec(), partner_root.to_vec()]);
    agent.shutdown().await;
}
