//! Cedar policies at request time, against a real agent: the shipped example policies and schema
//! (deploy/policies/) decide X.509, JWT, validation and SDS; time comes from the agent's clock; a
//! policy change ends the open streams it denies and the inventory records why; an invalid set is
//! refused and the running one stays; `lanyard policy check` evaluates without issuing.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use lanyard::clock::ManualClock;
use lanyard::proto::*;

const POLICIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/policies");

/// The most recent Saturday 12:00 UTC before now.
fn last_saturday_noon() -> SystemTime {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let day = now / 86_400;
    // 1970-01-01 was a Thursday: weekday (Monday = 0) is (day + 3) % 7; Saturday is 5.
    let back = ((day + 3) % 7 + 7 - 5) % 7;
    let saturday = if back == 0 && now % 86_400 < 12 * 3600 {
        day - 7
    } else {
        day - back
    };
    SystemTime::UNIX_EPOCH + Duration::from_secs(saturday * 86_400 + 12 * 3600)
}

fn sha256_of(path: &str) -> String {
    let bytes = std::fs::read(path).unwrap();
    lanyard::encoding::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref())
}

/// The example policies with the billing digest set to `digest`, written into `dir`.
fn example_policies(dir: &Path, digest: &str) {
    for entry in std::fs::read_dir(POLICIES).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "0000000000000000000000000000000000000000000000000000000000000000",
            digest,
        );
        std::fs::write(dir.join(path.file_name().unwrap()), text).unwrap();
    }
}

fn policy_section(dir: &Path) -> String {
    format!(
        "[policy]\npaths = [\"{d}\"]\nschema_path = \"{d}/lanyard.cedarschema\"\nenvironment = {{ env = \"prod\" }}\n",
        d = dir.display()
    )
}

const ENTRIES: &str = "[[entry]]\nspiffe_id = \"spiffe://example.org/web\"\nselectors = [\"unix:uid:0\"]\n\n[[entry]]\nspiffe_id = \"spiffe://example.org/billing\"\nselectors = [\"unix:uid:0\"]\n";

async fn jwt_for(
    client: &mut lanyard::client::WorkloadClient,
    audience: &str,
    id: &str,
) -> Result<JwtsvidResponse, tonic::Status> {
    client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec![audience.into()],
            spiffe_id: id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread")]
async fn cedar_decides_every_issuance() {
    if !require_root("cedar_decides_every_issuance") {
        return;
    }
    let dir = open_tempdir();
    let pdir = dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    // Billing is pinned to the lanyard binary: `lanyard fetch` (a child) may have it, this test
    // process may not.
    example_policies(&pdir, &sha256_of(lanyard_bin()));
    // Debug builds of lanyard are larger than the default hashing limit (256 MiB).
    let cfg = format!(
        "[attestation]\nhash_max_bytes = 2147483648\n{}{ENTRIES}",
        policy_section(&pdir)
    );
    let clock = ManualClock::new(last_saturday_noon());
    let config_text_now = config_text(dir.path(), &cfg);
    let running = lanyard::app::start(
        lanyard::config::Config::from_toml(&config_text_now).unwrap(),
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let endpoint = format!("unix://{}", running.socket_path.display());
    let mut client = lanyard::client::connect(&endpoint).await.unwrap();

    // Executable pinning: this process gets web only; the lanyard binary gets both.
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut stream, 10).await;
    let ids: Vec<&str> = first.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, ["spiffe://example.org/web"]);
    let denied = jwt_for(&mut client, "x", "spiffe://example.org/billing")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("billing-executable-pinned"),
        "names the deciding policy: {denied:?}"
    );
    let child = fetch_as(0, 0, &endpoint);
    let mut child_ids = ids_in(&child);
    child_ids.sort();
    assert_eq!(
        child_ids,
        ["spiffe://example.org/billing", "spiffe://example.org/web"]
    );

    // Business hours by the agent's clock: Saturday noon, no production tokens; Monday 10:00, yes.
    let denied = jwt_for(&mut client, "payments.prod.example.org", "")
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied.message().contains("prod-audience-business-hours"),
        "{denied:?}"
    );
    jwt_for(&mut client, "payments.staging.example.org", "")
        .await
        .expect("other audiences are not restricted");
    clock.advance(Duration::from_secs(46 * 3600)); // Monday 10:00
    let ok = jwt_for(&mut client, "payments.prod.example.org", "")
        .await
        .unwrap();
    assert_eq!(ok.svids[0].spiffe_id, "spiffe://example.org/web");

    // An invalid policy set is refused with Cedar's message; the running set stays.
    let mut running = running;
    std::fs::write(
        pdir.join("broken.cedar"),
        "permit (principal, action, resource",
    )
    .unwrap();
    let refused = running
        .reload(lanyard::config::Config::from_toml(&config_text_now).unwrap())
        .unwrap_err();
    let text = format!("{refused:?}");
    assert!(text.contains("broken.cedar"), "{text}");
    std::fs::remove_file(pdir.join("broken.cedar")).unwrap();
    jwt_for(&mut client, "x", "spiffe://example.org/web")
        .await
        .expect("the running set still applies");

    // A policy change that denies the open stream's identity ends it, and the inventory says why.
    std::fs::write(
        pdir.join("deny-web.cedar"),
        "@id(\"web-suspended\")\nforbid (principal == Workload::\"spiffe://example.org/web\", action, resource);\n",
    )
    .unwrap();
    let t = Instant::now();
    running
        .reload(lanyard::config::Config::from_toml(&config_text_now).unwrap())
        .unwrap();
    let status = end_status(&mut stream, 5).await;
    let took = t.elapsed();
    eprintln!("policy change -> open stream ended: {took:?}");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("web-suspended"), "{status:?}");
    assert!(took < Duration::from_millis(500), "{took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = Command::new(lanyard_bin())
            .args(["inventory", "--json", "--admin-socket"])
            .arg(&running.admin_socket_path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("policy denied") {
            // Every issuance names the policies that permitted it.
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let rows = v["credentials"].as_array().unwrap();
            assert!(!rows.is_empty());
            for row in rows {
                assert_eq!(row["permitted_by"], "entries-decide", "{row}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no 'policy denied' withdrawal: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // New requests for it are refused too, naming the policy.
    let denied = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(denied.message().contains("web-suspended"), "{denied:?}");
    // The admin API lists what is in force and re-reads the files (refusing a broken set).
    let admin = |args: &[&str]| {
        Command::new(lanyard_bin())
            .args(["policy"])
            .args(args)
            .args(["--json", "--admin-socket"])
            .arg(&running.admin_socket_path)
            .output()
            .unwrap()
    };
    let out = admin(&["list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["enabled"], true);
    assert!(
        v["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "web-suspended"),
        "{v}"
    );
    std::fs::remove_file(pdir.join("deny-web.cedar")).unwrap();
    std::fs::write(pdir.join("broken.cedar"), "forbid (principal").unwrap();
    let out = admin(&["reload"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broken.cedar") && err.contains("running set stays"),
        "{err}"
    );
    std::fs::remove_file(pdir.join("broken.cedar")).unwrap();
    let out = admin(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !v["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "web-suspended"),
        "{v}"
    );
    // Web is given again (and since the agent's clock moved 46 h, past the cached SVID's expiry
    // before its monotonic rotation timer fired, as after a suspend: it is minted anew, not refused).
    let mut stream = client
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let again = next_within(&mut stream, 10).await;
    assert_eq!(again.svids[0].spiffe_id, "spiffe://example.org/web");
    drop(stream);
    drop(client);
    running.shutdown().await;
}

/// `lanyard policy check` runs the shipped examples: namespace isolation, business hours, the
/// executable pin, with `--principal-json` and with `--pid`; exit 0 on allow, 3 on deny.
#[test]
fn policy_check_runs_the_example_policies() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("policies");
    std::fs::create_dir(&pdir).unwrap();
    let me = std::env::current_exe().unwrap();
    example_policies(&pdir, &sha256_of(me.to_str().unwrap()));
    let config = dir.path().join("lanyard.toml");
    std::fs::write(&config, policy_section(&pdir)).unwrap();
    let principal = |id: &str, selectors: &[&str]| {
        let path = dir.path().join(format!("p{}.json", fastrand::u32(..)));
        std::fs::write(
            &path,
            serde_json::json!({ "spiffe_id": id, "selectors": selectors }).to_string(),
        )
        .unwrap();
        path
    };
    let check = |args: &[&str]| {
        let out = Command::new(lanyard_bin())
            .args(["policy", "check", "--json", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!("{}", String::from_utf8_lossy(&out.stderr));
        });
        (out.status.code(), v)
    };
    let pod = principal(
        "spiffe://example.org/ns/shop/sa/cart",
        &["k8s:ns:shop", "k8s:sa:cart", "unix:uid:1000"],
    );
    let p = pod.to_str().unwrap();
    let (code, v) = check(&["--principal-json", p]);
    assert_eq!(
        (code, v["decision"].as_str()),
        (Some(0), Some("allow")),
        "{v}"
    );
    let other = principal("spiffe://example.org/ns/bank/sa/vault", &["k8s:ns:shop"]);
    let (code, v) = check(&["--principal-json", other.to_str().unwrap()]);
    assert_eq!(code, Some(3));
    assert_eq!(v["policies"], serde_json::json!(["namespace-isolation"]));
    let (code, v) = check(&[
        "--principal-json",
        p,
        "--action",
        "FetchJWTSVID",
        "--audience",
        "payments.prod.example.org",
        "--at",
        "2026-11-28T12:00:00Z",
    ]);
    assert_eq!(code, Some(3));
    assert_eq!(
        v["policies"],
        serde_json::json!(["prod-audience-business-hours"])
    );
    let (code, _) = check(&[
        "--principal-json",
        p,
        "--action",
        "FetchJWTSVID",
        "--audience",
        "payments.prod.example.org",
        "--at",
        "2026-11-30T10:00:00Z",
    ]);
    assert_eq!(code, Some(0));
    // --pid: this test process's executable is the pinned one; a `sleep` is not.
    let pid = std::process::id().to_string();
    let (code, v) = check(&["--pid", &pid, "--spiffe-id", "spiffe://example.org/billing"]);
    assert_eq!(code, Some(0), "{v}");
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let (code, v) = check(&[
        "--pid",
        &sleeper.id().to_string(),
        "--spiffe-id",
        "spiffe://example.org/billing",
    ]);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(code, Some(3));
    assert_eq!(
        v["policies"],
        serde_json::json!(["billing-executable-pinned"])
    );
}
