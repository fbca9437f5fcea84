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

/// An OIDC test's setup: go and Python ready (else `None`, after the loud SKIPPED line), and on a
/// free port the issuer URL and the agent's config: `before` (other sections), then `[oidc]` and an
/// entry `spiffe://example.org/ci-job` for this uid.
fn oidc_setup(test: &str, before: &str) -> Option<(String, String)> {
    if !prepare("go", &["go"], test) || !prepare("python", &["python3"], test) {
        return None;
    }
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let config = format!(
        "{before}[oidc]\naddress = \"127.0.0.1:{port}\"\nissuer = \"{issuer}\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/ci-job\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    );
    Some((issuer, config))
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
    let Some((issuer, config)) =
        oidc_setup("oidc_relying_parties_verify_jwt_svids_from_discovery", "")
    else {
        return;
    };
    let agent = TestAgent::start(&config).await;
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

/// A long-lived relying party (`interop-oidc follow` / `oidc_verify.py --follow`): one request per
/// line on stdin, one JSON answer per line on stdout.
struct Follower {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    name: &'static str,
}

impl Follower {
    fn start(name: &'static str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Self { child, out, name }
    }

    /// Sends one request line; the answer's error, or the subject when it verified.
    fn ask(&mut self, line: &str) -> Result<String, String> {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        self.out.read_line(&mut answer).unwrap();
        let v: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("{}: not a JSON answer {answer:?}: {e}", self.name));
        if v["ok"] == true {
            Ok(v["subject"].as_str().unwrap_or_default().to_owned())
        } else {
            Err(v["error"].as_str().unwrap_or_default().to_owned())
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh relying party (go-oidc and PyJWT, one process each, discovery only) verifying `token`.
fn fresh_verifiers(issuer: &str, audience: &str, token: &str) -> [Result<(), String>; 2] {
    let go = Command::new(interop_dir().join("bin/interop-oidc"))
        .args(["verify", issuer, audience, token])
        .output()
        .unwrap();
    let py = Command::new(interop_dir().join("venv/bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/oidc_verify.py"
        ))
        .args([issuer, audience, token])
        .output()
        .unwrap();
    [go, py].map(|o| {
        if o.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&o.stderr).into_owned())
        }
    })
}

/// The kids `/keys` publishes, once it publishes `want` of them (within 15 s: the authority reads
/// the wall clock at least every 5 s).
fn published_kids(issuer: &str, want: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (_, _, body) = http_get(&format!("{issuer}/keys"), &[]);
        let keys: serde_json::Value = serde_json::from_str(&body).unwrap();
        let kids: Vec<String> = keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        if kids.len() == want {
            return kids;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/keys publishes {kids:?}, expected {want} keys"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Relying parties follow a real JWT signing-key rotation on the agent's clock (JW-7): the next key
/// is published before it signs, a long-lived go-oidc key set and PyJWKClient that loaded the key
/// set before the rotation verify tokens of the new key (fetching the set again for its kid), tokens
/// of the old key verify while it is still published, and once its publication ends (every token it
/// signed has expired by the agent's clock) a fresh relying party refuses a token it signed.
///
/// Relying parties check `exp`/`iat` on the real clock, so the agent's clock starts about one key
/// lifetime in the past and is moved so that every token verified is valid now.
#[tokio::test(flavor = "multi_thread")]
async fn oidc_relying_parties_follow_a_jwt_key_rotation() {
    let Some((issuer, config)) = oidc_setup(
        "oidc_relying_parties_follow_a_jwt_key_rotation",
        "[authority]\njwt_key_ttl = \"4h\"\n[svid]\njwt_ttl = \"1h\"\n",
    ) else {
        return;
    };
    use std::time::{Duration, SystemTime};
    const MIN: Duration = Duration::from_secs(60);
    let key_ttl = 4 * lanyard::ca::jwt::MAX_JWT_TTL; // the shortest allowed
    let real_start = SystemTime::now();
    let clock = lanyard::clock::ManualClock::new(real_start - key_ttl - 2 * MIN);
    let agent = TestAgent::start_with_clock(&config, std::sync::Arc::new(clock.clone())).await;
    let kid = |t: &str| header_of(t)["kid"].as_str().unwrap().to_owned();

    // Key 1 alone. The long-lived relying parties load the key set now (the token is long expired
    // by the real clock: only its key is looked up).
    let k1 = published_kids(&issuer, 1).remove(0);
    let old = fetch_jwt(&agent, "warm-up").await;
    assert_eq!(kid(&old), k1);
    let mut go = Follower::start("go-oidc", {
        let mut c = Command::new(interop_dir().join("bin/interop-oidc"));
        c.args(["follow", &issuer]);
        c
    });
    let mut py = Follower::start("PyJWT", {
        let mut c = Command::new(interop_dir().join("venv/bin/python"));
        c.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/python/oidc_verify.py"
        ))
        .args(["--follow", &issuer]);
        c
    });
    for f in [&mut go, &mut py] {
        f.ask(&format!("warm {old}"))
            .unwrap_or_else(|e| panic!("{}: {e}", f.name));
    }
    // PyJWKClient fetches the set again for an unknown kid only 30 s (its default cooldown) after
    // its last fetch; in real use key 2 is published an hour before it signs.
    let py_cooldown_over = std::time::Instant::now() + Duration::from_secs(31);

    // 30 min before the rotation: key 2 is published (≥ one JWT lifetime before it signs); key 1
    // still signs.
    clock.advance(key_ttl - 30 * MIN);
    let both = published_kids(&issuer, 2);
    let k2 = both.iter().find(|k| **k != k1).unwrap().clone();
    let before = fetch_jwt(&agent, "before-rotation").await;
    assert_eq!(kid(&before), k1, "key 1 signs until the rotation");
    for f in [&mut go, &mut py] {
        assert_eq!(
            f.ask(&format!("verify before-rotation {before}"))
                .as_deref(),
            Ok("spiffe://example.org/ci-job"),
            "{}",
            f.name
        );
    }

    // 1 min after the rotation: key 2 signs; the relying parties whose cached set predates key 2
    // verify its tokens; key 1's tokens still verify (still published), fresh or cached.
    clock.advance(31 * MIN);
    // (A token cached before the authority noticed the new time stays as it is: a new audience
    // each try.)
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut tries = 0;
    let (aud, after) = loop {
        let aud = format!("after-rotation-{tries}");
        let t = fetch_jwt(&agent, &aud).await;
        if kid(&t) == k2 {
            break (aud, t);
        }
        assert!(std::time::Instant::now() < deadline, "key 2 never signed");
        tries += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(published_kids(&issuer, 2).len(), 2);
    tokio::time::sleep_until(py_cooldown_over.into()).await;
    for f in [&mut go, &mut py] {
        assert_eq!(
            f.ask(&format!("verify {aud} {after}")).as_deref(),
            Ok("spiffe://example.org/ci-job"),
            "{} follows the rotation",
            f.name
        );
        assert!(f.ask(&format!("verify before-rotation {before}")).is_ok());
    }
    for r in fresh_verifiers(&issuer, &aud, &after)
        .into_iter()
        .chain(fresh_verifiers(&issuer, "before-rotation", &before))
    {
        r.unwrap();
    }

    // Past key 1's publication (one JWT lifetime and the leeway after the rotation, by the agent's
    // clock): only key 2 is published, and a fresh relying party refuses the token key 1 signed
    // (still unexpired by the real clock here, so the refusal is the key's).
    clock.advance(lanyard::ca::jwt::MAX_JWT_TTL + MIN);
    assert_eq!(published_kids(&issuer, 1), std::slice::from_ref(&k2));
    for (who, r) in
        ["go-oidc", "PyJWT"]
            .iter()
            .zip(fresh_verifiers(&issuer, "before-rotation", &before))
    {
        assert!(
            r.is_err(),
            "{who} accepted a token of a key no longer published"
        );
    }
    for r in fresh_verifiers(&issuer, &aud, &after) {
        r.unwrap();
    }
    // The agent's own validation agrees.
    let refused = agent
        .client()
        .await
        .validate_jwtsvid(lanyard::proto::ValidateJwtsvidRequest {
            audience: "before-rotation".into(),
            svid: before,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    drop((go, py));
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
    let Some((issuer, config)) = oidc_setup(
        "rsa_jwt_keys_for_rs256_relying_parties",
        "[authority]\njwt_key_type = \"rsa-2048\"\n",
    ) else {
        return;
    };
    let agent = TestAgent::start(&config).await;
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
