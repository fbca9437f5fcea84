//! `cargo bench`: prints the numbers README quotes.
//!
//! - mint throughput: X.509-SVIDs (P-256 key + signature) per second on one core;
//! - FetchX509SVID latency to the first message over the real Unix socket, cached and first-time
//!   (p50/p99), next to a bare tonic server streaming a precomputed message of the same size over a
//!   Unix socket in the same process, so the ratio can be quoted.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use lanyard::ca::mint::{self, SvidRequest};
use lanyard::clock::SystemClock;
use lanyard::config::Config;
use lanyard::proto::*;
use lanyard::registry::{Entry, EntryId};
use lanyard::selector::Selector;
use lanyard::spiffe_id::{SpiffeId, TrustDomain};
use tokio_stream::StreamExt;

#[path = "support/floor.rs"]
mod floor;

const ITERATIONS: usize = 5000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "lanyard benchmarks ({} cores)",
        std::thread::available_parallelism()
            .map(std::num::NonZero::get)
            .unwrap_or(0)
    );
    mint_throughput();
    attestation_cost();
    k8s_lookup_cost();
    rt.block_on(fetch_latency());
}

/// The pod part of a Kubernetes attestation once the pod list is in the snapshot: cgroup parsing
/// plus finding the container among 110 pods (the kubelet's default maximum) and building selectors.
fn k8s_lookup_cost() {
    use lanyard::attest::k8s::{cgroup, pods};
    let hex = |i: usize, salt: &str| format!("{:0>64}", format!("{salt}{i:x}"));
    let uid = |i: usize| format!("00000000-0000-4000-8000-{i:012x}");
    let items: Vec<serde_json::Value> = (0..110)
        .map(|i| {
            serde_json::json!({
                "metadata": {"name": format!("pod-{i}"), "namespace": "ns", "uid": uid(i),
                    "labels": {"app": format!("app-{i}"), "tier": "web"},
                    "ownerReferences": [{"kind": "ReplicaSet", "name": format!("rs-{i}")}]},
                "spec": {"serviceAccountName": "sa", "nodeName": "node-a",
                    "containers": [{"name": "main", "image": "registry.example/app:1"},
                                   {"name": "sidecar", "image": "registry.example/proxy:1"}]},
                "status": {"containerStatuses": [
                    {"name": "main", "containerID": format!("containerd://{}", hex(i, "a")),
                     "image": "registry.example/app:1", "imageID": "registry.example/app@sha256:00"},
                    {"name": "sidecar", "containerID": format!("containerd://{}", hex(i, "b")),
                     "image": "registry.example/proxy:1", "imageID": "registry.example/proxy@sha256:00"}]}
            })
        })
        .collect();
    let list: pods::PodList =
        serde_json::from_value(serde_json::json!({"kind": "PodList", "items": items})).unwrap();
    let target = 97;
    let cgroup_text = format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{}.scope\n",
        uid(target).replace('-', "_"),
        hex(target, "a")
    );
    // The cgroup hierarchy as the agent checks it (pod and container directories owned by root):
    // a directory tree standing in for the mount, so the stat calls are counted.
    let mount = tempfile::tempdir().unwrap();
    let path = cgroup_text.trim().trim_start_matches("0::/");
    std::fs::create_dir_all(mount.path().join(path)).unwrap();
    let view = cgroup::View {
        ns_roots: Default::default(),
        mounts: vec![cgroup::Mount {
            hierarchy: cgroup::Hierarchy::Unified,
            root: "/".into(),
            at: mount.path().to_owned(),
        }],
    };
    let roots: Vec<cgroup::Root> = lanyard::config::DEFAULT_CGROUP_ROOTS
        .iter()
        .map(|r| cgroup::Root::parse(r).unwrap())
        .collect();
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        let location = cgroup::locate(&cgroup_text, &roots, &view)
            .unwrap()
            .expect("a pod (the bench runs as root: pod directories must be root's)");
        let pods::Found::Container(pod, status) = list.find(&location) else {
            panic!("not found");
        };
        std::hint::black_box(pods::selectors(pod, status));
        samples.push(t.elapsed());
    }
    report(
        "k8s lookup (cgroup parse + 2 directory owner checks + find among 110 pods + selectors)",
        samples,
    );
}

/// Pinning plus unix attestation of this process through a real socket pair, warm caches.
fn attestation_cost() {
    use lanyard::attest::{Attestor, Caller, attest_blocking, attest_fast, unix::UnixAttestor};
    use std::os::fd::AsFd;
    let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
    let caller = Caller::from_socket(a.as_fd()).unwrap();
    let attestors: Vec<Box<dyn Attestor>> = vec![Box::new(UnixAttestor::new(u64::MAX))];
    attest_blocking(&caller, &attestors).unwrap();
    let mut samples = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        attest_fast(&caller, &attestors)
            .unwrap()
            .expect("warm cache");
        samples.push(t.elapsed());
    }
    report("attestation (pin + unix selectors, cached hash)", samples);
}

/// How many times a second `f` runs on this one thread: 200 warm-up calls, then counted for two
/// seconds.
fn per_second(mut f: impl FnMut()) -> f64 {
    for _ in 0..200 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn mint_throughput() {
    let td = TrustDomain::parse("example.org").unwrap();
    let (key, cert) =
        mint::self_signed_root(&td, SystemTime::now(), Duration::from_secs(86400)).unwrap();
    let signer = mint::Signer::new(key, cert, vec![]).unwrap();
    let req = SvidRequest {
        spiffe_id: SpiffeId::parse("spiffe://example.org/bench").unwrap(),
        ttl: Duration::from_secs(3600),
        dns_names: vec![],
    };
    let rate = per_second(|| {
        mint::mint_svid(&signer, &req, SystemTime::now()).unwrap();
    });
    // The floor of a mint on this machine: the cryptography alone, as aws-lc does it (a fresh
    // P-256 key with its PKCS#8, and one ECDSA signature over a leaf-sized message), so a mint
    // rate that moves with the host can be told from one that moves with the code.
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let ca = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
    let tbs = [0x5au8; 500];
    let crypto = || {
        let leaf = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        std::hint::black_box(leaf.to_pkcs8v1().unwrap());
        std::hint::black_box(ca.sign(&rng, &tbs).unwrap());
    };
    let floor = per_second(crypto);
    println!(
        "mint: {rate:.0} X.509-SVIDs/s on one core ({:.1} us each); the cryptography alone (aws-lc: a P-256 key and its PKCS#8, one ECDSA signature): {floor:.0}/s ({:.1} us), so a mint is {:.2}x it",
        1e6 / rate,
        1e6 / floor,
        floor / rate
    );
}

async fn first_message_latencies<F, Fut>(
    iterations: usize,
    mut before_each: F,
    client: &mut lanyard::client::WorkloadClient,
) -> Vec<Duration>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut out = Vec::with_capacity(iterations);
    for i in 0..iterations {
        before_each(i).await;
        let t = Instant::now();
        let mut s = client
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        let msg = s.next().await.unwrap().unwrap();
        out.push(t.elapsed());
        assert!(!msg.svids.is_empty());
    }
    out
}

fn report(name: &str, mut d: Vec<Duration>) -> (Duration, Duration) {
    d.sort();
    let p = |q: f64| d[((d.len() as f64 * q) as usize).min(d.len() - 1)];
    let (p50, p99) = (p(0.50), p(0.99));
    println!(
        "{name}: p50 {:.1} us, p99 {:.1} us ({} samples)",
        us(p50),
        us(p99),
        d.len()
    );
    (p50, p99)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn entry(id: &str, uid: u32) -> Entry {
    let spiffe_id = SpiffeId::parse(id).unwrap();
    let selectors = vec![Selector::UnixUid(uid)];
    Entry {
        id: EntryId::declared(&spiffe_id, &selectors),
        spiffe_id,
        selectors,
        x509_ttl: None,
        jwt_ttl: None,
        jwt_audiences: vec![],
        hint: String::new(),
        dns_names: vec![],
        federates_with: vec![],
        origin: lanyard::registry::Origin::Declared,
    }
}

async fn fetch_latency() {
    let dir = tempfile::tempdir().unwrap();
    let uid = lanyard::sys::euid();
    let cfg = Config::from_toml(&format!(
        // The first-time numbers mint 500 new credentials back to back: above the default per-uid
        // rate (50/s, burst 200), which is not what they measure.
        "socket_path = \"{}\"\ndata_dir = \"{}\"\n[limits]\nnew_credentials_per_second = 100000\nnew_credentials_burst = 100000\n[[entry]]\nspiffe_id = \"spiffe://example.org/bench\"\nselectors = [\"unix:uid:{uid}\"]\n",
        dir.path().join("workload.sock").display(),
        dir.path().join("data").display()
    ))
    .unwrap();
    let agent = lanyard::app::start(cfg, Arc::new(SystemClock))
        .await
        .unwrap();
    let endpoint = format!("unix://{}", agent.socket_path.display());
    let mut client = lanyard::client::connect(&endpoint).await.unwrap();

    // The same message the agent sends, served by a bare tonic server: the floor.
    let mut s = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let sample = s.next().await.unwrap().unwrap();
    drop(s);
    let bare_path = dir.path().join("bare.sock");
    spawn_bare(&bare_path, sample).await;
    let mut bare = lanyard::client::connect(&format!("unix://{}", bare_path.display()))
        .await
        .unwrap();

    // Warm both paths (connections, hash cache), then alternate runs to share machine noise.
    first_message_latencies(200, |_| async {}, &mut bare).await;
    first_message_latencies(200, |_| async {}, &mut client).await;
    // Alternate single calls so both see the same machine noise.
    let mut floor = Vec::new();
    let mut cached = Vec::new();
    for _ in 0..ITERATIONS {
        floor.extend(first_message_latencies(1, |_| async {}, &mut bare).await);
        cached.extend(first_message_latencies(1, |_| async {}, &mut client).await);
    }
    let (floor50, floor99) = report("bare tonic stream (floor)", floor);
    let (cached50, cached99) = report("FetchX509SVID cached", cached);

    let running = &agent;
    let first_time = first_message_latencies(
        500,
        |i| async move {
            running.set_entries(vec![entry(&format!("spiffe://example.org/bench/{i}"), uid)]);
            // Let the policy change land before timing the call.
            tokio::task::yield_now().await;
        },
        &mut client,
    )
    .await;
    let (first50, first99) = report("FetchX509SVID first-time (mint on demand)", first_time);
    println!(
        "ratio cached/floor: p50 {:.2}x, p99 {:.2}x; first-time/floor: p50 {:.2}x, p99 {:.2}x",
        us(cached50) / us(floor50),
        us(cached99) / us(floor99),
        us(first50) / us(floor50),
        us(first99) / us(floor99)
    );
    jwt_numbers(&mut client, &agent).await;
    lifecycle_numbers(&mut client, &agent, &endpoint).await;
    drop(client);
    drop(bare);
    agent.shutdown().await;
}

async fn jwt_numbers(client: &mut lanyard::client::WorkloadClient, agent: &lanyard::app::Running) {
    agent.set_entries(vec![entry(
        "spiffe://example.org/bench",
        lanyard::sys::euid(),
    )]);
    tokio::task::yield_now().await;
    let fetch = |aud: String| {
        let mut c = client.clone();
        async move {
            let t = Instant::now();
            let r = c
                .fetch_jwtsvid(JwtsvidRequest {
                    audience: vec![aud],
                    spiffe_id: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            (t.elapsed(), r.svids[0].svid.clone())
        }
    };
    let mut miss = Vec::new();
    for i in 0..1000 {
        miss.push(fetch(format!("aud-{i}")).await.0);
    }
    let mut hit = Vec::new();
    let mut token = String::new();
    for _ in 0..2000 {
        let (d, t) = fetch("aud-0".into()).await;
        hit.push(d);
        token = t;
    }
    report("FetchJWTSVID cache miss (signs)", miss);
    report("FetchJWTSVID cache hit", hit);

    let mut validate = Vec::new();
    for _ in 0..1000 {
        let t = Instant::now();
        client
            .validate_jwtsvid(ValidateJwtsvidRequest {
                audience: "aud-0".into(),
                svid: token.clone(),
            })
            .await
            .unwrap();
        validate.push(t.elapsed());
    }
    report("ValidateJWTSVID over the socket", validate);

    // Validation alone, in process, on one core.
    let td = TrustDomain::parse("example.org").unwrap();
    let bundles = std::collections::BTreeMap::from([(td, agent.ca().jwt.jwks())]);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        lanyard::ca::jwt::validate(&token, "aud-0", &bundles, SystemTime::now()).unwrap();
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    println!(
        "jwt validation: {rate:.0} tokens/s on one core ({:.1} us each)",
        1e6 / rate
    );
}

async fn spawn_bare(path: &Path, msg: X509svidResponse) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    // Never pushed to: the sender is dropped at once.
    let (_, pushes) = tokio::sync::watch::channel(0);
    tokio::spawn(floor::serve(listener, msg, None, pushes));
}

/// Entry change (admin call returned) to the new message on an open stream, and process exit to the
/// withdrawal being on record.
async fn lifecycle_numbers(
    client: &mut lanyard::client::WorkloadClient,
    agent: &lanyard::app::Running,
    endpoint: &str,
) {
    use lanyard::proto::admin::*;
    let uid = lanyard::sys::euid();
    agent.set_entries(vec![entry("spiffe://example.org/bench", uid)]);
    tokio::task::yield_now().await;
    let mut admin = lanyard::client::connect_admin(&agent.admin_socket_path)
        .await
        .unwrap();
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    stream.next().await.unwrap().unwrap();
    let mut change = Vec::new();
    for i in 0..200 {
        let created = admin
            .create_entry(CreateEntryRequest {
                spec: Some(EntrySpec {
                    spiffe_id: format!("spiffe://example.org/bench/e{i}"),
                    selectors: vec![format!("unix:uid:{uid}")],
                    ..EntrySpec::default()
                }),
            })
            .await
            .unwrap()
            .into_inner();
        let t = Instant::now();
        stream.next().await.unwrap().unwrap();
        change.push(t.elapsed());
        admin
            .delete_entry(DeleteEntryRequest { id: created.id })
            .await
            .unwrap();
        let t = Instant::now();
        stream.next().await.unwrap().unwrap();
        change.push(t.elapsed());
    }
    report(
        "entry change (admin call returned) to stream message",
        change,
    );
    drop(stream);

    let mut exits = Vec::new();
    for _ in 0..30 {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_lanyard"))
            .args(["watch", "--socket", endpoint])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = child.stdout.take().unwrap();
        tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(out).lines().next()
        })
        .await
        .unwrap();
        let held = |creds: &[Credential], withdrawn: bool| {
            creds
                .iter()
                .any(|c| c.pid == pid && (c.withdrawn_at > 0) == withdrawn)
        };
        loop {
            let c = admin
                .list_credentials(ListCredentialsRequest {
                    live: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            if held(&c.into_inner().credentials, false) {
                break;
            }
        }
        child.kill().unwrap();
        let t = Instant::now();
        child.wait().unwrap();
        loop {
            let c = admin
                .list_credentials(ListCredentialsRequest {
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            if held(&c.into_inner().credentials, true) {
                break;
            }
        }
        exits.push(t.elapsed());
    }
    report("process exit (SIGKILL) to withdrawal on record", exits);
}
