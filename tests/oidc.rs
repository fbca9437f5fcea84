//! OIDC discovery for JWT-SVIDs, checked by real relying parties that get everything from the
//! issuer URL: Go `github.com/coreos/go-oidc/v3` (`tests/interop/go/oidc`) and Python PyJWT's
//! `PyJWKClient` (`tests/interop/python/oidc_verify.py`).

mod common;

use std::process::Command;

use common::*;
use lanyard::proto::JwtsvidRequest;

async fn fetch_jwt(agent: &TestAgent, audience: &str) -> String {
    let mut client = agent.client().await;
    client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec![audience.into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid
}

/// The JWS header of a token.
fn header_of(token: &str) -> serde_json::Value {
    part_of(token, 0)
}

/// The claims of a token.
fn claims_of(token: &str) -> serde_json::Value {
    part_of(token, 1)
}

fn part_of(token: &str, index: usize) -> serde_json::Value {
    use base64::Engine as _;
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

fn http_get(url: &str, extra: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "-", "-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.trim_end().rsplit_once('\n').unwrap();
    let (headers, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        code.parse().unwrap(),
        headers.to_lowercase(),
        body.to_owned(),
    )
}

/// go-oidc and PyJWT verify a JWT-SVID through the discovery document alone; the document and the
/// key set have the fields relying parties need and caching headers; a token for another audience
/// or signed by a key the issuer does not publish is refused.
#[tokio::test(flavor = "multi_thread")]
async fn oidc_relying_parties_verify_jwt_svids_from_discovery() {
    let test = "oidc_relying_parties_verify_jwt_svids_from_discovery";
    if !prepare("go", &["go"], test) || !prepare("python", &["python3"], test) {
        return;
    }
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let agent = TestAgent::start(&format!(
        "[oidc]\naddress = \"127.0.0.1:{port}\"\nissuer = \"{issuer}\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/ci-job\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ))
    .await;
    let token = fetch_jwt(&agent, "sts.example.com").await;
    let claims = claims_of(&token);
    assert_eq!(
        claims["iss"], issuer,
        "JWT-SVIDs carry iss when an issuer is configured"
    );

    // The documents.
    let (code, headers, body) =
        http_get(&format!("{issuer}/.well-known/openid-configuration"), &[]);
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["issuer"], issuer);
    assert_eq!(doc["jwks_uri"], format!("{issuer}/keys"));
    assert_eq!(
        doc["response_types_supported"],
        serde_json::json!(["id_token"])
    );
    assert_eq!(
        doc["subject_types_supported"],
        serde_json::json!(["public"])
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
    assert!(
        headers.contains("cache-control: public, max-age=300"),
        "{headers}"
    );
    let (code, headers, body) = http_get(&format!("{issuer}/keys"), &[]);
    assert_eq!(code, 200);
    let keys: serde_json::Value = serde_json::from_str(&body).unwrap();
    let header_kid = header_of(&token)["kid"].as_str().unwrap().to_owned();
    let key = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header_kid.as_str())
        .expect("the signing key is published");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["alg"], "ES256");
    let etag = headers
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .trim()
        .to_owned();
    let (code, _, _) = http_get(
        &format!("{issuer}/keys"),
        &["-H", &format!("If-None-Match: {etag}")],
    );
    assert_eq!(code, 304, "If-None-Match with the current ETag");

    // go-oidc, defaults, discovery only.
    let go = interop_dir().join("bin/interop-oidc");
    let out = Command::new(&go)
        .args(["verify", &issuer, "sts.example.com", &token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go-oidc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["subject"], "spiffe://example.org/ci-job");
    let out = Command::new(&go)
        .args(["verify", &issuer, "another-audience", &token])
        .output()
        .unwrap();
    assert!(!out.status.success(), "go-oidc accepted another audience");

    // PyJWT's PyJWKClient, from the issuer URL.
    let py = Command::new(interop_dir().join("venv/bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/oidc_verify.py"
        ))
        .args([&issuer, "sts.example.com", &token])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "PyJWT: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(v["subject"], "spiffe://example.org/ci-job");

    // A token signed by a key this issuer does not publish (as after a key retires and its last
    // tokens expire) is refused by both.
    let stranger = lanyard::ca::jwt::JwtKey::generate().unwrap();
    let now = std::time::SystemTime::now();
    let forged = stranger
        .sign(
            &lanyard::spiffe_id::SpiffeId::parse("spiffe://example.org/ci-job").unwrap(),
            &["sts.example.com".into()],
            now,
            std::time::Duration::from_secs(300),
            Some(&issuer),
        )
        .unwrap();
    let out = Command::new(&go)
        .args(["verify", &issuer, "sts.example.com", &forged.token])
        .output()
        .unwrap();
    assert!(!out.status.success(), "go-oidc accepted an unpublished key");
    let py = Command::new(interop_dir().join("venv/bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/oidc_verify.py"
        ))
        .args([&issuer, "sts.example.com", &forged.token])
        .output()
        .unwrap();
    assert!(!py.status.success(), "PyJWT accepted an unpublished key");
    agent.shutdown().await;
}

/// `[oidc]` is checked: the issuer must be a URL, the address ip:port, TLS files come in pairs, and
/// mode "spire" refuses it (the SPIRE server signs JWT-SVIDs there).
#[test]
fn oidc_config_is_checked() {
    let err = lanyard::config::Config::from_toml(
        "[oidc]\naddress = \"nowhere\"\nissuer = \"oidc.example.org/\"\ncert_path = \"/c.pem\"\n",
    )
    .unwrap_err()
    .to_string();
    for want in ["oidc.address", "oidc.issuer", "oidc.cert_path"] {
        assert!(err.contains(want), "{want} in {err}");
    }
    let ok = lanyard::config::Config::from_toml(
        "[oidc]\naddress = \"0.0.0.0:8443\"\nissuer = \"https://oidc.example.org\"\n",
    )
    .unwrap();
    assert_eq!(ok.oidc.unwrap().issuer, "https://oidc.example.org");
}

/// `jwt_key_type = "rsa-2048"`: JWT-SVIDs are RS256 (for relying parties that accept only RSA, such
/// as Azure), the discovery document says so, go-oidc and PyJWT verify them, and the agent itself
/// validates them.
#[tokio::test(flavor = "multi_thread")]
async fn rsa_jwt_keys_for_rs256_relying_parties() {
    let test = "rsa_jwt_keys_for_rs256_relying_parties";
    if !prepare("go", &["go"], test) || !prepare("python", &["python3"], test) {
        return;
    }
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let agent = TestAgent::start(&format!(
        "[authority]\njwt_key_type = \"rsa-2048\"\n[oidc]\naddress = \"127.0.0.1:{port}\"\nissuer = \"{issuer}\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/ci-job\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ))
    .await;
    let token = fetch_jwt(&agent, "api://AzureADTokenExchange").await;
    assert_eq!(header_of(&token)["alg"], "RS256");
    let (_, _, body) = http_get(&format!("{issuer}/.well-known/openid-configuration"), &[]);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    let (_, _, body) = http_get(&format!("{issuer}/keys"), &[]);
    let keys: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(keys["keys"][0]["kty"], "RSA");
    assert_eq!(keys["keys"][0]["alg"], "RS256");
    let out = Command::new(interop_dir().join("bin/interop-oidc"))
        .args(["verify", &issuer, "api://AzureADTokenExchange", &token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go-oidc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let py = Command::new(interop_dir().join("venv/bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/oidc_verify.py"
        ))
        .args([&issuer, "api://AzureADTokenExchange", &token])
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "PyJWT: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let mut client = agent.client().await;
    let v = client
        .validate_jwtsvid(lanyard::proto::ValidateJwtsvidRequest {
            audience: "api://AzureADTokenExchange".into(),
            svid: token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.spiffe_id, "spiffe://example.org/ci-job");
    drop(client);
    agent.shutdown().await;
}
