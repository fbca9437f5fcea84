//! Kubernetes attestation against the real kernel and a kubelet stand-in over TLS.
//!
//! The kubelet cannot run here, so a test server plays it: TLS with its own CA, bearer-token check,
//! and `/pods` answered in the kubelet's real PodList format. Everything else is real: cgroup
//! directories named as the kubelet names them, a real child process moved into one, the agent
//! reading that child's `/proc/<pid>/cgroup`, and the real `lanyard` CLI as the workload.

mod common;

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject;
use serde_json::json;

const TOKEN: &str = "test-service-account-token";

/// What the stand-in kubelet answers.
#[derive(Clone)]
enum Answer {
    Pods(serde_json::Value),
    Garbage,
}

struct FakeKubelet {
    addr: SocketAddr,
    ca_path: PathBuf,
    token_path: PathBuf,
    requests: Arc<AtomicUsize>,
    answer: Arc<Mutex<Answer>>,
    /// How long each request waits before its answer, in milliseconds.
    delay_ms: Arc<AtomicU64>,
}

impl FakeKubelet {
    /// A TLS kubelet on 127.0.0.1 with a certificate from its own CA (written to `dir`), answering
    /// each request after `delay` (see [`FakeKubelet::set_delay`]).
    async fn start(dir: &Path, delay: Duration) -> Self {
        let token_path = dir.join("token");
        std::fs::write(&token_path, format!("{TOKEN}\n")).unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let answer = Arc::new(Mutex::new(Answer::Pods(
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}),
        )));
        let answerer: Answerer = {
            let (requests, answer, delay_ms) = (requests.clone(), answer.clone(), delay_ms.clone());
            Arc::new(move |(parts, _body): StandInRequest| {
                let (requests, answer) = (requests.clone(), answer.clone());
                let delay = Duration::from_millis(delay_ms.load(Ordering::SeqCst));
                Box::pin(async move {
                    requests.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let authorized = parts
                        .headers
                        .get("authorization")
                        .is_some_and(|v| v == format!("Bearer {TOKEN}").as_str());
                    if !authorized {
                        (401, "text/plain", "Unauthorized".to_owned())
                    } else if parts.uri.path() != "/pods" {
                        (404, "text/plain", "not found".to_owned())
                    } else {
                        match answer.lock().unwrap().clone() {
                            Answer::Pods(v) => (200, "application/json", v.to_string()),
                            Answer::Garbage => {
                                (200, "text/html", "<html>proxy error</html>".to_owned())
                            }
                        }
                    }
                })
            })
        };
        let tls = TlsStandIn::start(dir, "kubelet", answerer).await;
        Self {
            addr: tls.addr,
            ca_path: tls.ca_path,
            token_path,
            requests,
            answer,
            delay_ms,
        }
    }

    fn serve(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Requests from now on are answered after `delay`.
    fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The `[kubernetes]` block pointing the agent at this kubelet.
    fn config(&self, extra: &str) -> String {
        format!(
            "[kubernetes]\nkubelet_url = \"https://{}\"\ntoken_path = \"{}\"\nkubelet_ca_path = \"{}\"\n{extra}\n",
            self.addr,
            self.token_path.display(),
            self.ca_path.display()
        )
    }
}

/// Cgroup directories named as the kubelet names them, removed on drop.
struct PodCgroup {
    pod_uid: String,
    container_id: String,
    created: Vec<PathBuf>,
    leaf: PathBuf,
}

fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:x}", fastrand::u8(..16)))
        .collect()
}

/// Where test cgroups can be made: the cgroup v2 hierarchy if mounted (systemd-driver names), else
/// the v1 `pids` hierarchy (cgroupfs-driver names).
fn cgroup_hierarchy() -> Option<(PathBuf, bool)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut v1_pids = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 4 {
            continue;
        }
        if f[2] == "cgroup2" {
            return Some((PathBuf::from(f[1]), true));
        }
        if f[2] == "cgroup" && f[3].split(',').any(|o| o == "pids") {
            v1_pids = Some((PathBuf::from(f[1]), false));
        }
    }
    v1_pids
}

impl PodCgroup {
    /// `None` (with a loud message) where cgroups cannot be created.
    fn create(test: &str) -> Option<Self> {
        if !require_root(test) {
            return None;
        }
        let Some((root, v2)) = cgroup_hierarchy() else {
            eprintln!("\n*** SKIPPED {test}: no cgroup hierarchy mounted ***\n");
            return None;
        };
        let pod_uid = format!(
            "{}-{}-{}-{}-{}",
            random_hex(8),
            random_hex(4),
            random_hex(4),
            random_hex(4),
            random_hex(12)
        );
        let container_id = random_hex(64);
        let mut created = Vec::new();
        let dirs = pod_dirs(&root, v2, &pod_uid, &container_id);
        for dir in &dirs {
            if !dir.exists() {
                if let Err(e) = std::fs::create_dir(dir) {
                    eprintln!(
                        "\n*** SKIPPED {test}: cannot create cgroup {}: {e} ***\n",
                        dir.display()
                    );
                    return None;
                }
                created.push(dir.clone());
            }
        }
        let dir = dirs.last().unwrap().clone();
        Some(Self {
            pod_uid,
            container_id,
            created,
            leaf: dir,
        })
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Children have exited by now; shared parents may still be in use by other tests.
        for dir in self.created.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// `lanyard` with `args`, as a child that first moves itself into `cgroup` (then, with `uid`, drops
/// to that uid and gid with no supplementary groups).
fn lanyard_in_cgroup(cgroup: &Path, uid: Option<u32>, args: &[&str]) -> Command {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    let mut cmd = Command::new(lanyard_bin());
    cmd.args(args).env_remove("SPIFFE_ENDPOINT_SOCKET");
    // SAFETY: open, write, close, setgroups, setgid and setuid are async-signal-safe; `procs` was
    // allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let n = libc::write(fd, b"0".as_ptr().cast(), 1);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if n != 1 {
                return Err(err);
            }
            if let Some(uid) = uid
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs `lanyard fetch x509 --json` (plus `args`) as a child that first moves itself into `cgroup`.
fn fetch_in_cgroup(cgroup: &Path, endpoint: &str, args: &[&str]) -> Output {
    let mut cmd = lanyard_in_cgroup(
        cgroup,
        None,
        &["fetch", "x509", "--json", "--socket", endpoint],
    );
    cmd.args(args).output().unwrap()
}

async fn fetch_in(cgroup: &Path, endpoint: &str, args: &[&str]) -> Output {
    let (cgroup, endpoint) = (cgroup.to_owned(), endpoint.to_owned());
    let args: Vec<String> = args.iter().map(std::string::ToString::to_string).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fetch_in_cgroup(&cgroup, &endpoint, &args)
    })
    .await
    .unwrap()
}

/// A PodList in the kubelet's format: the test pod (regular container `server`, init container
/// `migrate`, a sidecar not started yet) plus an unrelated pod. With `listed` false the `server`
/// container has no status yet (the kubelet has not caught up).
fn pod_list(cg: &PodCgroup, ns: &str, sa: &str, listed: bool) -> serde_json::Value {
    let mut statuses = vec![json!({
        "name": "proxy", "image": "registry.example/mesh/proxy:1.9", "imageID": "",
        "lastState": {}, "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ContainerCreating"}}
    })];
    if listed {
        statuses.insert(0, json!({
            "containerID": format!("containerd://{}", cg.container_id),
            "image": "registry.example/shop/cart:2.4",
            "imageID": "registry.example/shop/cart@sha256:5e1f0c3b7a9d2e4f6a8b0c1d3e5f7a9b2c4d6e8f0a1b3c5d7e9f2a4b6c8d0e1f",
            "lastState": {}, "name": "server", "ready": true, "restartCount": 0,
            "state": {"running": {"startedAt": "2026-11-27T08:14:05Z"}}
        }));
    }
    json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {},
        "items": [
            {
                "metadata": {
                    "name": "other-0", "namespace": "kube-system",
                    "uid": "0a0b0c0d-0e0f-4a1b-8c2d-3e4f5a6b7c8d",
                    "labels": {"app": "other"}
                },
                "spec": {"containers": [{"name": "other", "image": "other:1"}], "nodeName": "node-a", "serviceAccountName": "other"},
                "status": {"phase": "Running", "containerStatuses": [{
                    "containerID": format!("containerd://{}", random_hex(64)),
                    "image": "other:1", "imageID": "other@sha256:00", "name": "other", "ready": true,
                    "restartCount": 0, "state": {"running": {}}
                }]}
            },
            {
                "metadata": {
                    "name": "cart-7d4b9c6f5-x2x7q", "namespace": ns, "uid": cg.pod_uid,
                    "generateName": "cart-7d4b9c6f5-", "resourceVersion": "48211",
                    "creationTimestamp": "2026-11-27T08:14:02Z",
                    "labels": {"app": "cart", "pod-template-hash": "7d4b9c6f5"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "cart-7d4b9c6f5",
                        "uid": "0f9e8d7c-6b5a-4f3e-8d1c-0b9a8f7e6d5c", "controller": true, "blockOwnerDeletion": true}]
                },
                "spec": {
                    "containers": [
                        {"name": "server", "image": "registry.example/shop/cart:2.4"},
                        {"name": "proxy", "image": "registry.example/mesh/proxy:1.9"}
                    ],
                    "initContainers": [{"name": "migrate", "image": "registry.example/tools/migrate:3"}],
                    "nodeName": "node-a", "serviceAccount": sa, "serviceAccountName": sa,
                    "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"
                },
                "status": {
                    "phase": "Running", "qosClass": "Burstable", "hostIP": "10.0.0.11", "podIP": "10.244.1.17",
                    "containerStatuses": statuses,
                    "initContainerStatuses": [{
                        "containerID": format!("containerd://{}", random_hex(64)),
                        "image": "registry.example/tools/migrate:3", "imageID": "registry.example/tools/migrate@sha256:0a",
                        "name": "migrate", "ready": true, "restartCount": 0,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}
                    }]
                }
            }
        ]
    })
}

/// `lanyard fetch x509 --json` as root, outside any pod.
async fn fetch_root(endpoint: &str) -> Output {
    let endpoint = endpoint.to_owned();
    tokio::task::spawn_blocking(move || fetch_as(0, 0, &endpoint))
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const TEMPLATE: &str = r#"
[[template]]
spiffe_id = "spiffe://{trust_domain}/ns/{k8s:ns}/sa/{k8s:sa}"
dns_names = ["{k8s:pod-name}.{k8s:ns}.svc"]

[[entry]]
spiffe_id = "spiffe://example.org/shop/server"
selectors = ["k8s:ns:shop", "k8s:container-name:server", "k8s:pod-label:app:cart", "k8s:pod-owner:ReplicaSet:cart-7d4b9c6f5", "k8s:container-image:registry.example/shop/cart:2.4", "k8s:node-name:node-a"]

[[entry]]
spiffe_id = "spiffe://example.org/host-root"
selectors = ["unix:uid:0"]
"#;

/// A test's pod: its cgroup, a kubelet stand-in answering `answer` (made from the cgroup) after
/// `delay`, and an agent with the template entry and the `[kubernetes]` settings `extra`, pointed
/// at that kubelet. `None` (skipped loudly) where cgroups cannot be made.
struct PodTest {
    cg: PodCgroup,
    /// Holds the kubelet's CA and token files.
    dir: tempfile::TempDir,
    kubelet: FakeKubelet,
    agent: TestAgent,
}

impl PodTest {
    async fn start(
        test: &str,
        delay: Duration,
        answer: impl FnOnce(&PodCgroup) -> Answer,
        extra: &str,
    ) -> Option<Self> {
        let cg = PodCgroup::create(test)?;
        let dir = open_tempdir();
        let kubelet = FakeKubelet::start(dir.path(), delay).await;
        kubelet.serve(answer(&cg));
        let agent = TestAgent::start(&format!("{}{TEMPLATE}", kubelet.config(extra))).await;
        Some(Self {
            cg,
            dir,
            kubelet,
            agent,
        })
    }
}

/// The child in the pod's cgroup gets the explicit entry (which needs k8s:ns, container-name,
/// pod-label, pod-owner, container-image and node-name) and its unix entry, in entry order, then the
/// template identity (templates come after entries); the template's DNS name is rendered from the
/// pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_process_gets_k8s_selectors_and_the_template_identity() {
    let Some(pod) = PodTest::start(
        "a_pod_process_gets_k8s_selectors_and_the_template_identity",
        Duration::from_millis(300),
        |cg| Answer::Pods(pod_list(cg, "shop", "cart", true)),
        "snapshot_ttl = \"30s\"",
    )
    .await
    else {
        return;
    };

    let out_dir = pod.dir.path().join("out");
    let out = fetch_in(
        &pod.cg.leaf,
        &pod.agent.endpoint(),
        &["--write", out_dir.to_str().unwrap()],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        ids_in(&out),
        [
            "spiffe://example.org/shop/server",
            "spiffe://example.org/host-root",
            "spiffe://example.org/ns/shop/sa/cart"
        ]
    );
    // The template's DNS SAN, rendered from the pod name and namespace.
    let pem = std::fs::read(out_dir.join("svid.2.pem")).unwrap();
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let sans = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(sans.contains("cart-7d4b9c6f5-x2x7q.shop.svc"), "{sans}");
    assert!(
        sans.contains("spiffe://example.org/ns/shop/sa/cart"),
        "{sans}"
    );
    assert_eq!(pod.kubelet.requests(), 1);

    // The test process itself is not in a pod: unix selectors only, and no kubelet request.
    let me = fetch_root(&pod.agent.endpoint()).await;
    assert_eq!(ids_in(&me), ["spiffe://example.org/host-root"]);
    assert_eq!(pod.kubelet.requests(), 1);
    pod.agent.shutdown().await;
}

/// Many attestations at once, with the snapshot expired: one kubelet request serves them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attestations_share_one_kubelet_request() {
    // A slow kubelet, so the attestations overlap the request in flight.
    let Some(pod) = PodTest::start(
        "concurrent_attestations_share_one_kubelet_request",
        Duration::from_millis(800),
        |cg| Answer::Pods(pod_list(cg, "shop", "cart", true)),
        "snapshot_ttl = \"30s\"",
    )
    .await
    else {
        return;
    };
    let children: Vec<_> = (0..8)
        .map(|_| {
            let (leaf, ep) = (pod.cg.leaf.clone(), pod.agent.endpoint());
            tokio::spawn(async move { fetch_in(&leaf, &ep, &[]).await })
        })
        .collect();
    for child in children {
        let out = child.await.unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(ids_in(&out).contains(&"spiffe://example.org/ns/shop/sa/cart".to_owned()));
    }
    assert_eq!(
        pod.kubelet.requests(),
        1,
        "8 concurrent attestations, one kubelet request"
    );
    pod.agent.shutdown().await;
}

/// A workload that keeps fetching never waits on the kubelet once its container is known: a pod
/// snapshot past three quarters of its TTL still answers, and the call that finds it so starts one
/// request in the background whose answer replaces it before it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_snapshot_is_asked_for_again_before_it_expires_so_fetches_never_wait() {
    let Some(pod) = PodTest::start(
        "a_pod_snapshot_is_asked_for_again_before_it_expires_so_fetches_never_wait",
        Duration::ZERO,
        |cg| Answer::Pods(pod_list(cg, "shop", "cart", true)),
        "snapshot_ttl = \"6s\"",
    )
    .await
    else {
        return;
    };
    // A fetch by the pod's process, answered with its pod identity sooner than the kubelet can.
    let fetch_without_waiting = async || {
        let asked = Instant::now();
        let out = fetch_in(&pod.cg.leaf, &pod.agent.endpoint(), &[]).await;
        let took = asked.elapsed();
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(ids_in(&out).contains(&"spiffe://example.org/ns/shop/sa/cart".to_owned()));
        assert!(
            took < Duration::from_secs(2),
            "the fetch waited {took:?} for the kubelet"
        );
    };
    let started = Instant::now();
    let out = fetch_in(&pod.cg.leaf, &pod.agent.endpoint(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(pod.kubelet.requests(), 1);

    // From now on the kubelet takes 2 s. Between 4.5 s (three quarters of the TTL) and 6 s the
    // snapshot still answers at once, and the call asks for a new one in the background.
    pod.kubelet.set_delay(Duration::from_secs(2));
    tokio::time::sleep_until((started + Duration::from_millis(5200)).into()).await;
    fetch_without_waiting().await;
    wait_until("the background refresh asks the kubelet", 10, || {
        pod.kubelet.requests() == 2
    })
    .await;
    let refreshed = Instant::now();

    // The first snapshot has expired; the new one (answered 2 s after it was asked for) serves
    // the next call without a request or a wait.
    tokio::time::sleep_until((refreshed + Duration::from_millis(2800)).into()).await;
    fetch_without_waiting().await;
    assert_eq!(
        pod.kubelet.requests(),
        2,
        "one request per snapshot, none by a caller"
    );
    pod.agent.shutdown().await;
}

/// A container the kubelet does not list yet is found in a fresh snapshot within the deadline; one
/// that never shows up gets a clear error naming the pod and container, after the (short) deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_container_is_found_within_the_deadline_and_a_missing_one_is_named() {
    let Some(pod) = PodTest::start(
        "a_late_container_is_found_within_the_deadline_and_a_missing_one_is_named",
        Duration::ZERO,
        |cg| Answer::Pods(pod_list(cg, "shop", "cart", false)),
        "container_wait = \"4s\"",
    )
    .await
    else {
        return;
    };
    let late = {
        let (leaf, ep) = (pod.cg.leaf.clone(), pod.agent.endpoint());
        tokio::spawn(async move { fetch_in(&leaf, &ep, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    pod.kubelet
        .serve(Answer::Pods(pod_list(&pod.cg, "shop", "cart", true)));
    let out = late.await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ids_in(&out).contains(&"spiffe://example.org/ns/shop/sa/cart".to_owned()));
    assert!(
        pod.kubelet.requests() >= 2,
        "a fresh snapshot was asked for"
    );

    // Now a container that never appears: the error names it, after about the deadline.
    pod.kubelet
        .serve(Answer::Pods(pod_list(&pod.cg, "shop", "cart", false)));
    tokio::time::sleep(Duration::from_millis(2100)).await; // past the snapshot TTL
    let started = Instant::now();
    let out = fetch_in(&pod.cg.leaf, &pod.agent.endpoint(), &[]).await;
    let waited = started.elapsed();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&pod.cg.container_id) && err.contains(&pod.cg.pod_uid),
        "{err}"
    );
    assert!(err.contains("not in the kubelet's pod list"), "{err}");
    assert!(
        waited >= Duration::from_millis(3500),
        "gave up after {waited:?}"
    );
    pod.agent.shutdown().await;
}

/// A push that another user's process holds up does not hold up anyone else's answers. While any stream is
/// making a push, a connection puts off its flush so that a fan-out leaves in fewer writes — but
/// only a few times in a row (`conn::MAX_DEFERRED`). Here uid 65534 keeps a push under way
/// for 8 s: its stream is woken by an entry change that gives it a new identity, and the
/// re-attestation before that push waits on a kubelet that answers after 8 s. A process outside
/// the pod still gets its answer at once; the pod process gets its update once the kubelet answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_held_up_by_one_process_does_not_hold_up_another_connections_answer() {
    let Some(cg) = PodCgroup::create(
        "a_push_held_up_by_one_process_does_not_hold_up_another_connections_answer",
    ) else {
        return;
    };
    let dir = open_tempdir();
    let kubelet = FakeKubelet::start(dir.path(), Duration::ZERO).await;
    kubelet.serve(Answer::Pods(pod_list(&cg, "shop", "cart", true)));
    let config = |extra: &str| {
        format!(
            "{}{TEMPLATE}{extra}",
            kubelet.config("request_timeout = \"30s\"\ncontainer_wait = \"30s\"")
        )
    };
    let mut agent = TestAgent::start(&config("")).await;

    // The pod process, another user (uid 65534), follows its X.509 stream (`lanyard watch`: a line
    // per SVID per update).
    let mut watch = lanyard_in_cgroup(
        &cg.leaf,
        Some(65534),
        &["watch", "--socket", &agent.endpoint()],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line_with =
        async |lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str, secs: u64| {
            let deadline = Instant::now() + Duration::from_secs(secs);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, lines.recv()).await {
                    Ok(Some(line)) if line.contains(what) => return line,
                    Ok(Some(_)) => {}
                    _ => panic!("`lanyard watch` printed no line with {what:?} within {secs} s"),
                }
            }
        };
    line_with(&mut lines, "update=1", 30).await;

    // From now on the kubelet answers after 8 s; the pod's snapshot is let expire.
    kubelet.set_delay(Duration::from_secs(8));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let asked = kubelet.requests();
    agent.reload(&config(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/shop/any\"\nselectors = [\"k8s:ns:shop\"]\n",
    ));
    wait_until(
        "the pod process's re-attestation asks the kubelet",
        10,
        || kubelet.requests() > asked,
    )
    .await;
    let held_up = Instant::now();

    // Meanwhile a process outside the pod asks on a connection of its own.
    let out = fetch_root(&agent.endpoint()).await;
    let took = held_up.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ids_in(&out), ["spiffe://example.org/host-root"]);
    assert!(
        took < Duration::from_secs(4),
        "the answer waited {took:?} for another process's push (held up for 8 s)"
    );

    // The held-up push goes out once the kubelet answers, with the new identity.
    let update = line_with(&mut lines, "spiffe://example.org/shop/any", 20).await;
    assert!(update.contains("update=2"), "{update}");
    assert!(held_up.elapsed() >= Duration::from_secs(7), "{update}");
    let _ = watch.kill();
    let _ = watch.wait();
    agent.shutdown().await;
}

/// A kubelet that is down, refuses the token, or sends garbage: pod callers get a clear error (unless
/// the last good answer listed their container), the agent keeps serving processes outside pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_kubelet_gives_clear_errors_and_unix_identities_still_work() {
    let Some(pod) = PodTest::start(
        "a_broken_kubelet_gives_clear_errors_and_unix_identities_still_work",
        Duration::ZERO,
        |_| Answer::Garbage,
        "snapshot_ttl = \"100ms\"\ncontainer_wait = \"1s\"",
    )
    .await
    else {
        return;
    };
    let out = fetch_in(&pod.cg.leaf, &pod.agent.endpoint(), &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unreadable pod list"),
        "{}",
        stderr(&out)
    );
    let me = fetch_root(&pod.agent.endpoint()).await;
    assert_eq!(ids_in(&me), ["spiffe://example.org/host-root"]);

    // A wrong token: the kubelet's 401 is reported.
    std::fs::write(&pod.kubelet.token_path, "wrong-token\n").unwrap();
    pod.kubelet
        .serve(Answer::Pods(pod_list(&pod.cg, "shop", "cart", true)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = fetch_in(&pod.cg.leaf, &pod.agent.endpoint(), &[]).await;
    assert!(stderr(&out).contains("answered 401"), "{}", stderr(&out));
    // The token file is re-read: fixing it fixes attestation without a restart.
    std::fs::write(&pod.kubelet.token_path, format!("{TOKEN}\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = fetch_in(&pod.cg.leaf, &pod.agent.endpoint(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    // The kubelet breaks again: a container its last good answer listed keeps its pod facts (a
    // container never moves to another pod; bounded to 5 minutes), one it never listed gets the
    // error.
    pod.kubelet.serve(Answer::Garbage);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let out = fetch_in(&pod.cg.leaf, &pod.agent.endpoint(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(ids_in(&out).contains(&"spiffe://example.org/ns/shop/sa/cart".to_owned()));
    let unseen = PodCgroup::create("a_broken_kubelet (second container)").unwrap();
    let out = fetch_in(&unseen.leaf, &pod.agent.endpoint(), &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unreadable pod list"),
        "{}",
        stderr(&out)
    );

    // A kubelet that is not there at all (nothing listens on the port).
    let port = free_port();
    let down = format!(
        "[kubernetes]\nkubelet_url = \"https://127.0.0.1:{port}\"\ntoken_path = \"{}\"\nkubelet_ca_path = \"{}\"\ncontainer_wait = \"1s\"\n{TEMPLATE}",
        pod.kubelet.token_path.display(),
        pod.kubelet.ca_path.display()
    );
    pod.agent.shutdown().await;
    let agent = TestAgent::start(&down).await;
    let out = fetch_in(&pod.cg.leaf, &agent.endpoint(), &[]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the kubelet"),
        "{}",
        stderr(&out)
    );
    let me = fetch_root(&agent.endpoint()).await;
    assert_eq!(ids_in(&me), ["spiffe://example.org/host-root"]);
    agent.shutdown().await;
}

/// The shipped ConfigMap's `lanyard.toml` and the example workload's namespace and service account
/// give the example workload `spiffe://<td>/ns/<ns>/sa/<sa>`, end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_workload_gets_its_identity_from_the_shipped_config() {
    let Some(cg) =
        PodCgroup::create("the_example_workload_gets_its_identity_from_the_shipped_config")
    else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let configmap = std::fs::read_to_string(root.join("20-configmap.yaml")).unwrap();
    let toml_text = embedded_block(&configmap, "lanyard.toml: |");
    let workload = std::fs::read_to_string(root.join("40-example-workload.yaml")).unwrap();
    let ns = yaml_value(&workload, "namespace:");
    let sa = yaml_value(&workload, "serviceAccountName:");

    let dir = open_tempdir();
    let kubelet = FakeKubelet::start(dir.path(), Duration::ZERO).await;
    kubelet.serve(Answer::Pods(pod_list(&cg, &ns, &sa, true)));
    // The shipped file, with this machine's paths and the stand-in kubelet.
    let mut table: toml::Table =
        toml::from_str(&toml_text).expect("the ConfigMap's lanyard.toml parses");
    let td = table["trust_domain"].as_str().unwrap().to_owned();
    for key in ["socket_path", "admin_socket_path", "data_dir"] {
        table.remove(key);
    }
    table.remove("health"); // the test harness puts it on a free loopback port
    let k8s = table["kubernetes"].as_table_mut().unwrap();
    k8s.insert(
        "kubelet_url".into(),
        format!("https://{}", kubelet.addr).into(),
    );
    k8s.insert(
        "token_path".into(),
        kubelet.token_path.display().to_string().into(),
    );
    k8s.insert(
        "kubelet_ca_path".into(),
        kubelet.ca_path.display().to_string().into(),
    );
    k8s.remove("skip_kubelet_verification");
    let agent = TestAgent::start(&toml::to_string(&table).unwrap()).await;
    let out = fetch_in(&cg.leaf, &agent.endpoint(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ids_in(&out)[0], format!("spiffe://{td}/ns/{ns}/sa/{sa}"));
    agent.shutdown().await;
}

/// The first `key: value` in a YAML file.
fn yaml_value(yaml: &str, key: &str) -> String {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .expect("key present")
        .trim()
        .trim_matches('"')
        .to_owned()
}

/// The many-nodes ConfigMap is a valid agent configuration in mode "spire" (k8s_psat, the server's
/// bundle, the kubelet for workloads).
#[test]
fn the_many_nodes_configmap_is_a_valid_spire_mode_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/many-nodes");
    let configmap = std::fs::read_to_string(root.join("20-configmap.yaml")).unwrap();
    // NODE_NAME comes from the downward API in the DaemonSet.
    let text = embedded_block(&configmap, "lanyard.toml: |").replace("{node_name}", "node-a");
    let config = lanyard::config::Config::from_toml(&text).expect("the many-nodes lanyard.toml");
    match &config.authority {
        lanyard::ca::AuthorityConfig::Spire(s) => {
            assert_eq!(s.attestation.kind(), "k8s_psat");
            assert_eq!(
                s.server_id.as_str(),
                "spiffe://cluster.example.org/spire/server"
            );
        }
        other => panic!("not mode spire: {other:?}"),
    }
    let daemonset = std::fs::read_to_string(root.join("30-daemonset.yaml")).unwrap();
    assert!(
        daemonset.contains("audience: spire-server") && daemonset.contains("name: spire-bundle")
    );
}

/// Every manifest in deploy/kubernetes validates offline against the Kubernetes schemas (strict:
/// unknown fields fail). No cluster can run here; this is the check that can.
#[test]
fn deploy_manifests_validate_against_the_kubernetes_schemas() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = [root.clone(), root.join("many-nodes")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{files:?}");
    let out = match Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(&files)
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!("cannot run python3: {e}"),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("No module named kubernetes_validate") {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("kubernetes-validate is missing; .ci/run installs it with pip");
        }
        eprintln!(
            "\n*** SKIPPED manifest validation: `python3 -m pip install kubernetes-validate` to run it ***\n"
        );
        return;
    }
    assert!(out.status.success(), "manifests do not validate:\n{text}");
}

/// What a child does before it execs `lanyard fetch`: as root, join `first` and optionally enter a
/// new cgroup namespace; then become `uid`, make `mkdirs` (in order) and join `then`.
#[derive(Default)]
struct Placement {
    first: Option<PathBuf>,
    new_cgroup_ns: bool,
    uid: Option<u32>,
    mkdirs: Vec<PathBuf>,
    then: Option<PathBuf>,
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

impl Placement {
    fn apply(&self, cmd: &mut Command) {
        let first = self.first.as_ref().map(|p| cstr(&p.join("cgroup.procs")));
        let then = self.then.as_ref().map(|p| cstr(&p.join("cgroup.procs")));
        let mkdirs: Vec<CString> = self.mkdirs.iter().map(|p| cstr(p)).collect();
        let (uid, unshare) = (self.uid, self.new_cgroup_ns);
        // SAFETY: only async-signal-safe calls (open, write, close, unshare, setgroups, setgid,
        // setuid, mkdir) on values prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let join = |procs: &CString| -> std::io::Result<()> {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let err = std::io::Error::last_os_error();
                    libc::close(fd);
                    if n != 1 { Err(err) } else { Ok(()) }
                };
                if let Some(p) = &first {
                    join(p)?;
                }
                if unshare && libc::unshare(libc::CLONE_NEWCGROUP) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(uid) = uid
                    && (libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                for d in &mkdirs {
                    if libc::mkdir(d.as_ptr(), 0o755) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(p) = &then {
                    join(p)?;
                }
                Ok(())
            });
        }
    }
}

async fn fetch_placed(placement: Placement, endpoint: &str) -> Output {
    let endpoint = endpoint.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(lanyard_bin());
        cmd.args(["fetch", "x509", "--json", "--socket", &endpoint])
            .env_remove("SPIFFE_ENDPOINT_SOCKET");
        placement.apply(&mut cmd);
        cmd.output().unwrap()
    })
    .await
    .unwrap()
}

/// A cgroup directory handed to `uid` as systemd delegates one (the directory and its
/// `cgroup.procs`/`cgroup.threads`/`cgroup.subtree_control` owned by the delegatee). Removed on drop,
/// children first.
struct Delegated {
    dir: PathBuf,
}

impl Delegated {
    fn create(parent: &Path, name: &str, uid: u32) -> Self {
        let dir = parent.join(name);
        std::fs::create_dir(&dir).unwrap();
        for f in [
            "",
            "cgroup.procs",
            "cgroup.threads",
            "cgroup.subtree_control",
        ] {
            let p = if f.is_empty() {
                dir.clone()
            } else {
                dir.join(f)
            };
            if p.exists() {
                std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
            }
        }
        Self { dir }
    }
}

impl Drop for Delegated {
    fn drop(&mut self) {
        // Deepest first: every cgroup below, then the delegated one.
        let mut dirs = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The kubelet's names for a pod's cgroups below `base` (systemd names on v2, cgroupfs on v1).
fn pod_dirs(base: &Path, v2: bool, pod_uid: &str, container_id: &str) -> Vec<PathBuf> {
    let parts: Vec<String> = if v2 {
        vec![
            "kubepods.slice".into(),
            "kubepods-burstable.slice".into(),
            format!("kubepods-burstable-pod{}.slice", pod_uid.replace('-', "_")),
            format!("cri-containerd-{container_id}.scope"),
        ]
    } else {
        vec![
            "kubepods".into(),
            "burstable".into(),
            format!("pod{pod_uid}"),
            container_id.into(),
        ]
    };
    let mut dir = base.to_owned();
    parts
        .into_iter()
        .map(|p| {
            dir.push(p);
            dir.clone()
        })
        .collect()
}

const NOBODY: &str = r#"
[[entry]]
spiffe_id = "spiffe://example.org/nobody"
selectors = ["unix:uid:65534"]
"#;

/// The attack of issue 11: uid 65534, with a delegated cgroup subtree (as systemd gives every user
/// session), names cgroups exactly like a pod's — once outside the kubelet's root, once inside it in
/// a pod directory delegated to it — and a kubelet that knows that pod. Neither is a pod: the caller
/// keeps its unix identity, gets no template identity, and the kubelet is never asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_named_cgroups_outside_the_kubelet_root_or_not_roots_are_not_pods() {
    let test = "pod_named_cgroups_outside_the_kubelet_root_or_not_roots_are_not_pods";
    // PodCgroup::create skips loudly where cgroups cannot be made; its pod is the kubelet's.
    let Some(real) = PodCgroup::create(test) else {
        return;
    };
    let (hier, v2) = cgroup_hierarchy().unwrap();
    let dir = open_tempdir();
    let kubelet = FakeKubelet::start(dir.path(), Duration::ZERO).await;
    // The kubelet lists the attacker's pod and container IDs (as it would a real pod's).
    let fake = PodCgroup {
        pod_uid: format!(
            "{}-{}-{}-{}-{}",
            random_hex(8),
            random_hex(4),
            random_hex(4),
            random_hex(4),
            random_hex(12)
        ),
        container_id: random_hex(64),
        created: Vec::new(),
        leaf: PathBuf::new(),
    };
    kubelet.serve(Answer::Pods(pod_list(&fake, "shop", "cart", true)));
    let agent = TestAgent::start(&format!("{}{TEMPLATE}{NOBODY}", kubelet.config(""))).await;

    // 1. A delegated user subtree outside the kubelet root.
    let user = Delegated::create(&hier, &format!("lanyard-user-{}", random_hex(8)), 65534);
    let dirs = pod_dirs(&user.dir, v2, &fake.pod_uid, &fake.container_id);
    let leaf = dirs.last().unwrap().clone();
    let out = fetch_placed(
        Placement {
            first: Some(user.dir.clone()),
            uid: Some(65534),
            mkdirs: dirs,
            then: Some(leaf),
            ..Default::default()
        },
        &agent.endpoint(),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ids_in(&out), ["spiffe://example.org/nobody"]);

    // 2. Under the kubelet root, in a pod directory delegated to the attacker: its own container
    // cgroup is not root's.
    let pod_parent = real.leaf.parent().unwrap().parent().unwrap();
    let pod_name = pod_dirs(Path::new("/"), v2, &fake.pod_uid, &fake.container_id)[2]
        .file_name()
        .unwrap()
        .to_owned();
    let pod_dir = Delegated::create(pod_parent, pod_name.to_str().unwrap(), 65534);
    let leaf = pod_dir.dir.join(
        pod_dirs(Path::new("/"), v2, &fake.pod_uid, &fake.container_id)[3]
            .file_name()
            .unwrap(),
    );
    // The attacker's process starts in its user subtree; the common ancestor of both is the
    // hierarchy root, so root moves it (as a misconfigured delegation would let it).
    let out = fetch_placed(
        Placement {
            first: Some(pod_dir.dir.clone()),
            uid: Some(65534),
            mkdirs: vec![leaf.clone()],
            then: Some(leaf),
            ..Default::default()
        },
        &agent.endpoint(),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ids_in(&out), ["spiffe://example.org/nobody"]);
    assert_eq!(kubelet.requests(), 0, "the agent never asked the kubelet");

    // The real pod still is one.
    kubelet.serve(Answer::Pods(pod_list(&real, "shop", "cart", true)));
    let out = fetch_in(&real.leaf, &agent.endpoint(), &[]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        ids_in(&out).last().unwrap(),
        "spiffe://example.org/ns/shop/sa/cart"
    );
    drop(pod_dir);
    drop(user);
    agent.shutdown().await;
}

/// An agent in its own cgroup namespace (as in a Kubernetes pod on cgroup v2) sees other pods'
/// cgroups as `/../...`; it enters the configured host namespace once at start to learn where it
/// sits, and resolves them. Without that (host_cgroup_namespace = ""), such paths are not pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_in_a_cgroup_namespace_resolves_pods_through_the_host_namespace() {
    let test = "an_agent_in_a_cgroup_namespace_resolves_pods_through_the_host_namespace";
    let Some(cg) = PodCgroup::create(test) else {
        return;
    };
    let (hier, _) = cgroup_hierarchy().unwrap();
    let agent_cg = Delegated::create(&hier, &format!("lanyard-agent-{}", random_hex(8)), 0);
    let dir = open_tempdir();
    let kubelet = FakeKubelet::start(dir.path(), Duration::ZERO).await;
    kubelet.serve(Answer::Pods(pod_list(&cg, "shop", "cart", true)));
    for (host_ns, want) in [
        (
            format!("/proc/{}/ns/cgroup", std::process::id()),
            vec![
                "spiffe://example.org/shop/server",
                "spiffe://example.org/host-root",
                "spiffe://example.org/ns/shop/sa/cart",
            ],
        ),
        (String::new(), vec!["spiffe://example.org/host-root"]),
    ] {
        let run = tempfile::tempdir().unwrap();
        let config = run.path().join("lanyard.toml");
        std::fs::write(
            &config,
            config_text(
                run.path(),
                &format!(
                    "{}{TEMPLATE}",
                    kubelet.config(&format!("host_cgroup_namespace = \"{host_ns}\""))
                ),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(lanyard_bin());
        cmd.args(["agent", "--config", config.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit());
        Placement {
            first: Some(agent_cg.dir.clone()),
            new_cgroup_ns: true,
            ..Default::default()
        }
        .apply(&mut cmd);
        let child = KillOnDrop(Some(cmd.spawn().unwrap()));
        let socket = run.path().join("workload.sock");
        wait_until("the agent's socket", 20, || socket.exists()).await;
        let out = fetch_in(&cg.leaf, &format!("unix://{}", socket.display()), &[]).await;
        assert!(out.status.success(), "{host_ns:?}: {}", stderr(&out));
        assert_eq!(ids_in(&out), want, "host_cgroup_namespace = {host_ns:?}");
        drop(child);
    }
    drop(agent_cg);
}
