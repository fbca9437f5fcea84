//! Envoy SDS v3 on the Workload API socket, checked with an independent client: a Go program on
//! Envoy's own generated types (go-control-plane, `tests/interop/go/sds`), speaking as Envoy does
//! (no `workload.spiffe.io` header). Rotation, ACK/NACK and the comparison with spire-agent are in
//! `tests/spire_server.rs` (they use SPIRE's short-lived SVIDs).

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn sds_bin() -> std::path::PathBuf {
    interop_dir().join("bin/interop-sds")
}

/// `interop-sds fetch` as `uid` against the agent: the parsed JSON line.
fn fetch_as(uid: u32, endpoint: &str, metadata: &str, names: &[&str]) -> Value {
    use std::os::unix::process::CommandExt;
    let socket = endpoint.strip_prefix("unix://").unwrap();
    let out = Command::new(sds_bin())
        .args(["fetch", socket, metadata])
        .args(names)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "interop-sds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn names_of(v: &Value) -> Vec<String> {
    v["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("no resources: {v}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

fn resource<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v}"))
}

/// Resource names as SPIRE serves them, the SPIFFE validator by default and plain `trusted_ca` when
/// the node's metadata turns it off, federated bundles, errors for what the caller may not have,
/// and attestation like any workload (a caller without an entry gets nothing).
#[tokio::test(flavor = "multi_thread")]
async fn sds_resources_as_envoy_asks_for_them() {
    let test = "sds_resources_as_envoy_asks_for_them";
    if !require_root(test) || !prepare("go", &["go"], test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let partner = lanyard::spiffe_id::TrustDomain::parse("partner.org").unwrap();
    let (_, partner_root) = lanyard::ca::mint::self_signed_root(
        &partner,
        std::time::SystemTime::now(),
        std::time::Duration::from_secs(86_400),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("partner.pem"),
        lanyard::encoding::pem_cert(&partner_root),
    )
    .unwrap();
    let agent = TestAgent::start(&format!(
        "[[federation]]\ntrust_domain = \"partner.org\"\nbundle_path = \"{}/partner.pem\"\n\n[[entry]]\nspiffe_id = \"spiffe://example.org/web\"\nselectors = [\"unix:uid:0\"]\nfederates_with = [\"partner.org\"]\n\n[[entry]]\nspiffe_id = \"spiffe://example.org/admin\"\nselectors = [\"unix:uid:0\"]\n",
        dir.path().display()
    ))
    .await;
    let ep = agent.endpoint();

    // No names: every resource (bundles by trust domain ID, SVIDs by SPIFFE ID), no "default".
    let all = fetch_as(0, &ep, "{}", &[]);
    let mut names = names_of(&all);
    names.sort();
    assert_eq!(
        names,
        [
            "spiffe://example.org",
            "spiffe://example.org/admin",
            "spiffe://example.org/web",
            "spiffe://partner.org"
        ]
    );
    let web = resource(&all, "spiffe://example.org/web");
    assert_eq!(web["kind"], "tls_certificate");
    assert_eq!(web["leaf_id"], "spiffe://example.org/web");
    assert_eq!(web["key_type"], "PRIVATE KEY");
    assert_eq!(web["key_matches"], true);
    let own = resource(&all, "spiffe://example.org");
    assert_eq!(own["validator"], "envoy.tls.cert_validator.spiffe");
    assert_eq!(own["trust_domains"], serde_json::json!(["example.org"]));
    let fed = resource(&all, "spiffe://partner.org");
    assert_eq!(fed["trust_domains"], serde_json::json!(["partner.org"]));

    // Named: default (the first identity), ROOTCA, ALL (one validator, both trust domains).
    let some = fetch_as(0, &ep, "{}", &["default", "ROOTCA", "ALL"]);
    assert_eq!(
        resource(&some, "default")["leaf_id"],
        "spiffe://example.org/web"
    );
    assert_eq!(
        resource(&some, "ROOTCA")["trust_domains"],
        serde_json::json!(["example.org"])
    );
    assert_eq!(
        resource(&some, "ALL")["trust_domains"],
        serde_json::json!(["example.org", "partner.org"])
    );

    // The node's metadata turns the SPIFFE validator off: plain trusted_ca; ALL is then refused.
    let plain = fetch_as(
        0,
        &ep,
        r#"{"disable_spiffe_cert_validation": true}"#,
        &["ROOTCA", "spiffe://partner.org"],
    );
    assert_eq!(resource(&plain, "ROOTCA")["validator"], "trusted_ca");
    assert_eq!(resource(&plain, "ROOTCA")["trusted_cas"], 1);
    assert_eq!(
        resource(&plain, "spiffe://partner.org")["validator"],
        "trusted_ca"
    );
    let refused = fetch_as(
        0,
        &ep,
        r#"{"disable_spiffe_cert_validation": true}"#,
        &["ALL"],
    );
    assert!(
        refused["error"].as_str().is_some_and(
            |e| e.contains("InvalidArgument") && e.contains("SPIFFE certificate validator")
        ),
        "{refused}"
    );

    // What the caller may not have is named in the error.
    let other = fetch_as(0, &ep, "{}", &["default", "spiffe://example.org/db"]);
    let err = other["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("InvalidArgument") && err.contains("spiffe://example.org/db"),
        "{other}"
    );
    // A caller with no entry gets nothing, as on the Workload API.
    let stranger = fetch_as(65534, &ep, "{}", &["default"]);
    let err = stranger["error"].as_str().unwrap_or_default();
    assert!(err.contains("PermissionDenied"), "{stranger}");

    // The delivery is on record like any other.
    let out = Command::new(lanyard_bin())
        .args(["inventory", "--json", "--admin-socket"])
        .arg(agent.dir.path().join("admin/admin.sock"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("spiffe://example.org/web"), "{text}");
    agent.shutdown().await;
}

/// `[sds] disable_spiffe_cert_validation = true` turns the validator off for every node, and
/// `[sds] enabled = false` stops serving SDS (the Workload API stays).
#[tokio::test(flavor = "multi_thread")]
async fn sds_configuration() {
    let test = "sds_configuration";
    if !require_root(test) || !prepare("go", &["go"], test) {
        return;
    }
    let entry =
        "[[entry]]\nspiffe_id = \"spiffe://example.org/web\"\nselectors = [\"unix:uid:0\"]\n";
    let agent = TestAgent::start(&format!(
        "[sds]\ndisable_spiffe_cert_validation = true\n{entry}"
    ))
    .await;
    let v = fetch_as(0, &agent.endpoint(), "{}", &["ROOTCA"]);
    assert_eq!(resource(&v, "ROOTCA")["validator"], "trusted_ca");
    agent.shutdown().await;

    let agent = TestAgent::start(&format!("[sds]\nenabled = false\n{entry}")).await;
    let v = fetch_as(0, &agent.endpoint(), "{}", &["default"]);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("Unimplemented")),
        "{v}"
    );
    assert_eq!(
        ids_in(&common::fetch_as(0, 0, &agent.endpoint())),
        ["spiffe://example.org/web"]
    );
    agent.shutdown().await;
}

/// The Envoy sidecar example (deploy/kubernetes/50-envoy-sidecar-example.yaml): its bootstrap is a
/// valid Envoy configuration by Envoy's own schema and validation rules (go-control-plane; no Envoy
/// binary can run here), a broken one is caught, and what it asks the agent for over SDS — "default"
/// and the trust domain's bundle by ID — is what the agent serves.
#[tokio::test(flavor = "multi_thread")]
async fn the_envoy_sidecar_bootstrap_is_valid_and_served() {
    let test = "the_envoy_sidecar_bootstrap_is_valid_and_served";
    if !require_root(test) || !prepare("go", &["go"], test) {
        return;
    }
    let manifest = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes/50-envoy-sidecar-example.yaml"
    ))
    .unwrap();
    let bootstrap = embedded_block(&manifest, "envoy.yaml: |");
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, text).unwrap();
        Command::new(sds_bin())
            .arg("bootstrap")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check(&bootstrap);
    assert!(
        out.status.success(),
        "the shipped bootstrap: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (from, to) in [
        ("port_value: 8443", "port_valu: 8443"),
        ("api_type: GRPC", "api_type: GRCP"),
        ("stat_prefix: inbound", "stat_prefix: \"\""),
    ] {
        let out = check(&bootstrap.replacen(from, to, 1));
        assert!(!out.status.success(), "{to:?} was not caught");
    }
    // The names the bootstrap asks for, from an agent of its trust domain.
    let sds_names: Vec<String> = bootstrap
        .lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix("name: "))
        .filter(|n| *n == "default" || n.starts_with("spiffe://"))
        .map(str::to_owned)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(sds_names.contains(&"default".to_owned()), "{sds_names:?}");
    let agent = TestAgent::start(
        "trust_domain = \"cluster.example.org\"\n[[entry]]\nspiffe_id = \"spiffe://cluster.example.org/ns/shop/sa/checkout\"\nselectors = [\"unix:uid:0\"]\n",
    )
    .await;
    let names: Vec<&str> = sds_names.iter().map(String::as_str).collect();
    let v = fetch_as(0, &agent.endpoint(), "{}", &names);
    assert_eq!(
        resource(&v, "default")["leaf_id"],
        "spiffe://cluster.example.org/ns/shop/sa/checkout"
    );
    assert_eq!(
        resource(&v, "spiffe://cluster.example.org")["validator"],
        "envoy.tls.cert_validator.spiffe"
    );
    agent.shutdown().await;
}

/// DeltaSecrets (incremental xDS) is not served: `Unimplemented`, as from spire-agent.
#[tokio::test]
async fn delta_secrets_is_unimplemented() {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    let agent = TestAgent::start(&format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/web\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ))
    .await;
    let mut client = SecretDiscoveryServiceClient::new(raw_channel(&agent.socket).await);
    let status = client
        .delta_secrets(tokio_stream::iter(vec![DeltaDiscoveryRequest::default()]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
    agent.shutdown().await;
}
