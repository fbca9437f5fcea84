//! `cargo bench --bench policy`: Cedar decisions as lanyard asks them.
//!
//! - one decision (FetchX509SVID, a Kubernetes principal with 12 selectors), p50/p99 over 20,000
//!   decisions, with 10 and with 1,000 policies (forbids on other identities, as a real set grows);
//! - a cached FetchX509SVID from a separate `lanyard agent` process, first message, with the 10
//!   policies on and with no `[policy]`, interleaved call by call.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use lanyard::config::PolicyConfig;
use lanyard::policy::{Action, Ask, Engine, Resource};
use lanyard::proto::X509svidRequest;
use lanyard::selector::{Selector, SelectorSet};
use lanyard::spiffe_id::SpiffeId;
use tokio_stream::StreamExt;

#[path = "support/agent.rs"]
mod agent;
use agent::Agent;

fn pct(d: &mut [Duration], q: f64) -> Duration {
    d.sort();
    d[((d.len() as f64 * q) as usize).min(d.len() - 1)]
}

/// `n` policies: the base permit, then forbids for other identities and namespaces.
fn write_policies(dir: &Path, n: usize) {
    let mut text = String::from("@id(\"base\")\npermit (principal, action, resource);\n");
    for i in 1..n {
        text.push_str(&format!(
            "@id(\"p{i}\")\nforbid (principal == Workload::\"spiffe://example.org/ns/team{i}/sa/app\", action, resource) unless {{ principal has k8s_ns && principal.k8s_ns == \"team{i}\" && context.hour >= 0 }};\n"
        ));
    }
    std::fs::write(dir.join("set.cedar"), text).unwrap();
}

fn main() {
    let id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/cart").unwrap();
    let mut selectors = SelectorSet::new();
    for s in [
        "unix:uid:1000",
        "unix:gid:1000",
        "unix:user:app",
        "unix:path:/usr/bin/cart",
        "k8s:ns:shop",
        "k8s:sa:cart",
        "k8s:pod-name:cart-7d9f",
        "k8s:pod-uid:0b1c",
        "k8s:pod-label:app:cart",
        "k8s:pod-label:tier:web",
        "k8s:container-name:cart",
        "k8s:node-name:node-a",
    ] {
        selectors.insert(Selector::parse(s).unwrap());
    }
    println!("lanyard policy bench: Cedar (cedar-policy 4) decisions as the agent asks them");
    for n in [10, 1000] {
        let dir = tempfile::tempdir().unwrap();
        write_policies(dir.path(), n);
        let engine = Engine::load(
            &PolicyConfig {
                paths: vec![dir.path().to_owned()],
                ..PolicyConfig::default()
            },
            "node-a",
        )
        .unwrap();
        let ask = Ask {
            principal: &id,
            selectors: &selectors,
            action: Action::FetchX509Svid,
            resource: Resource::Identity(&id),
            ttl: Duration::from_secs(3600),
            now: SystemTime::now(),
        };
        for _ in 0..2000 {
            assert!(engine.decide(&ask).allowed);
        }
        let mut times = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let t = Instant::now();
            let v = engine.decide(&ask);
            times.push(t.elapsed());
            assert!(v.allowed);
        }
        println!(
            "  decision with {n:>5} policies: p50 {:>8.1?}  p99 {:>8.1?}",
            pct(&mut times, 0.5),
            pct(&mut times, 0.99)
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(cached_fetch());
}

async fn cached_fetch() {
    let uid = lanyard::sys::euid();
    let mut agents = Vec::new();
    let mut clients = Vec::new();
    let mut dirs = Vec::new();
    for with_policy in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("policies");
        std::fs::create_dir(&pdir).unwrap();
        write_policies(&pdir, 10);
        let policy = if with_policy {
            format!("[policy]\npaths = [\"{}\"]\n", pdir.display())
        } else {
            String::new()
        };
        let agent = Agent::start(
            dir.path(),
            &format!(
                "{policy}[[entry]]\nspiffe_id = \"spiffe://example.org/bench\"\nselectors = [\"unix:uid:{uid}\"]\n"
            ),
            "warn",
        )
        .await;
        let socket = agent.socket.clone();
        agents.push(agent);
        clients.push(
            lanyard::client::connect(&format!("unix://{}", socket.display()))
                .await
                .unwrap(),
        );
        dirs.push(dir);
    }
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..3200 {
        for (i, client) in clients.iter_mut().enumerate() {
            let t = Instant::now();
            let mut s = client
                .fetch_x509svid(X509svidRequest {})
                .await
                .unwrap()
                .into_inner();
            s.next().await.unwrap().unwrap();
            if round >= 200 {
                times[i].push(t.elapsed());
            }
        }
    }
    let [off, on] = &mut times;
    println!(
        "  cached FetchX509SVID, agent process: no policy p50 {:>8.1?} p99 {:>8.1?} | 10 policies p50 {:>8.1?} p99 {:>8.1?} (3,000 interleaved)",
        pct(off, 0.5),
        pct(off, 0.99),
        pct(on, 0.5),
        pct(on, 0.99)
    );
    drop(agents);
}
