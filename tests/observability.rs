//! Operability: `/metrics` scraped by a real Prometheus (Debian's package, installed by `.ci/run`),
//! the shipped Grafana dashboard checked against what `/metrics` exports, and the audit stream as
//! written by a real agent for real workloads.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use lanyard::health::probe;
use lanyard::proto::{JwtsvidRequest, X509svidRequest};

/// The Prometheus binary; `None` after one loud SKIPPED line outside CI (under CI a missing one fails).
fn prometheus(test: &str) -> Option<String> {
    for p in ["/usr/bin/prometheus", "/usr/local/bin/prometheus"] {
        if Path::new(p).exists() {
            return Some(p.to_owned());
        }
    }
    assert!(
        !in_ci(),
        "{test}: no prometheus binary (CI=true: .ci/run installs Debian's prometheus)"
    );
    eprintln!("\n*** SKIPPED {test}: no prometheus binary (apt-get install prometheus) ***\n");
    None
}

/// One instant-vector query through Prometheus' HTTP API: the first sample's value.
async fn query(prom: SocketAddr, promql: &str) -> Option<f64> {
    let mut encoded = String::new();
    for b in promql.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let (code, body) = probe(prom, &format!("/api/v1/query?query={encoded}"))
        .await
        .ok()?;
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Fetches that move the counters: X.509 streams, JWT-SVIDs, and a refused call.
async fn traffic(agent: &TestAgent) {
    let mut c = agent.client().await;
    for _ in 0..3 {
        let mut s = c
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        next_within(&mut s, 5).await;
    }
    for aud in ["db", "queue"] {
        c.fetch_jwtsvid(JwtsvidRequest {
            audience: vec![aud.into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap();
    }
    // EP-6: an empty audience is InvalidArgument, counted under its code.
    let _ = c
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec![],
            spiffe_id: String::new(),
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_counters_moving() {
    let Some(bin) = prometheus("a_real_prometheus_scrapes_the_counters_moving") else {
        return;
    };
    let agent = TestAgent::start(&format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/observed\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ))
    .await;
    let target = agent.running().health_addr.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: lanyard\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={prom}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _prometheus = KillOnDrop(Some(child));

    traffic(&agent).await;
    let checks = [
        (
            r#"sum(lanyard_workload_api_requests_total{method="FetchX509SVID",code="Ok"})"#,
            3.0,
        ),
        (
            r#"sum(lanyard_workload_api_requests_total{method="FetchJWTSVID",code="Ok"})"#,
            2.0,
        ),
        (
            r#"sum(lanyard_workload_api_requests_total{method="FetchJWTSVID",code="InvalidArgument"})"#,
            1.0,
        ),
        (r#"sum(lanyard_svid_mints_total{kind="x509"})"#, 1.0),
        (r#"sum(lanyard_svid_mints_total{kind="jwt"})"#, 2.0),
        (r#"sum(lanyard_attestations_total{outcome="ok"})"#, 5.0),
        (r#"sum(lanyard_inventory_writes_total{outcome="ok"})"#, 1.0),
        (
            r#"sum(lanyard_workload_api_request_duration_seconds_count{method="FetchX509SVID"})"#,
            3.0,
        ),
        ("count(lanyard_build_info)", 1.0),
    ];
    for (promql, at_least) in checks {
        let mut got = None;
        for _ in 0..120 {
            got = query(prom, promql).await;
            if got.is_some_and(|v| v >= at_least) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            got.is_some_and(|v| v >= at_least),
            "Prometheus answers {got:?} for {promql}, want at least {at_least}"
        );
    }
    agent.shutdown().await;
}

/// Every metric the shipped dashboard queries is one `/metrics` declares.
#[tokio::test]
async fn the_dashboard_queries_only_exported_metrics() {
    let agent = TestAgent::start("").await;
    let addr = agent.running().health_addr.unwrap();
    let (code, text) = probe(addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let declared: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/lanyard-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut checked = 0;
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("lanyard_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let base = ["_bucket", "_count", "_sum", "_total", "_info"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                declared.contains(base),
                "the dashboard queries {name}, which /metrics does not declare ({expr})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15);
    agent.shutdown().await;
}

/// The audit stream, from a real agent: a workload process fetches and exits; its X.509-SVID is
/// `issued` then `withdrawn` ("process exited"); a JWT-SVID is named by its jti, and no line holds
/// a key or a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_stream_records_issuance_and_withdrawal_without_secrets() {
    let dir = open_tempdir();
    let audit = dir.path().join("audit").join("audit.jsonl");
    let agent = TestAgent::start(&format!(
        "[audit]\npath = \"{}\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/audited\"\nselectors = [\"unix:uid:{}\"]\n",
        audit.display(),
        euid()
    ))
    .await;
    // A separate process fetches an X.509-SVID and exits.
    let out = tokio::task::spawn_blocking({
        let e = agent.endpoint();
        move || fetch_as(euid(), euid(), &e)
    })
    .await
    .unwrap();
    assert!(out.status.success());
    // This process fetches a JWT-SVID.
    let mut c = agent.client().await;
    let jwt = c
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["audit-aud".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let token = jwt.svids[0].svid.clone();
    let read = || std::fs::read_to_string(&audit).unwrap_or_default();
    let a = audit.clone();
    wait_until("issued and withdrawn lines", 10, move || {
        let t = std::fs::read_to_string(&a).unwrap_or_default();
        t.contains("\"withdrawn\"") && t.contains("\"jwt\"")
    })
    .await;
    let text = read();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let x509_issued = lines
        .iter()
        .find(|l| l["event"] == "issued" && l["kind"] == "x509")
        .expect("an issued X.509 line");
    for field in [
        "time",
        "event",
        "kind",
        "spiffe_id",
        "serial",
        "entry",
        "pid",
        "uid",
        "executable",
    ] {
        assert!(!x509_issued[field].is_null(), "{field} in {x509_issued}");
    }
    assert_eq!(x509_issued["spiffe_id"], "spiffe://example.org/audited");
    let withdrawn = lines
        .iter()
        .find(|l| l["event"] == "withdrawn" && l["serial"] == x509_issued["serial"])
        .expect("the exited process's SVID withdrawn");
    assert_eq!(withdrawn["reason"], "process exited");
    let jwt_line = lines
        .iter()
        .find(|l| l["kind"] == "jwt")
        .expect("a JWT line");
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(jwt_line["serial"], claims["jti"]);
    assert!(!text.contains(&token), "a token in the audit stream");
    assert!(!text.contains("PRIVATE KEY") && !text.contains(token.split('.').nth(2).unwrap()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777,
        0o600
    );
    agent.shutdown().await;
}
