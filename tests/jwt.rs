//! JWT-SVIDs against a running agent (SPEC.md §6): real clients, the ValidateJWTSVID rejection table
//! with tokens signed by the agent's own key (read from its data directory) and by strangers, the
//! audience policy, and key material in the bundle.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::*;
use lanyard::proto::*;
use serde_json::json;
use tonic::Code;

fn entry(path: &str, uid: u32, extra: &str) -> String {
    format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org{path}\"\nselectors = [\"unix:uid:{uid}\"]\n{extra}\n"
    )
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A P-256 signing key and its kid.
struct Signer {
    pair: EcdsaKeyPair,
    kid: String,
}

impl Signer {
    fn fresh(kid: &str) -> Self {
        let doc = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        Self {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap(),
            kid: kid.into(),
        }
    }

    /// The agent's active JWT key, read from its data directory (the test runs with its permissions).
    fn agent(agent: &TestAgent) -> Self {
        let path = agent.dir.path().join("data/authority/jwt.json");
        let keys: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let active = keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["role"] == "active")
            .unwrap();
        let der = STANDARD.decode(active["pkcs8"].as_str().unwrap()).unwrap();
        Self {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap(),
            kid: active["kid"].as_str().unwrap().into(),
        }
    }

    fn jwk(&self) -> serde_json::Value {
        let p = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": b64(&p[1..33]), "y": b64(&p[33..65]), "kid": self.kid, "use": "jwt-svid"})
    }

    fn token(&self, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }

    fn standard(&self, claims: serde_json::Value) -> String {
        self.token(
            json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }
}

fn claims(sub: &str, aud: serde_json::Value) -> serde_json::Value {
    json!({"sub": sub, "aud": aud, "exp": now() + 300, "iat": now()})
}

async fn validate(
    agent: &TestAgent,
    audience: &str,
    token: &str,
) -> Result<ValidateJwtsvidResponse, tonic::Status> {
    let mut c = agent.client().await;
    c.validate_jwtsvid(ValidateJwtsvidRequest {
        audience: audience.into(),
        svid: token.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

async fn fetch(
    agent: &TestAgent,
    audiences: &[&str],
    id: &str,
) -> Result<JwtsvidResponse, tonic::Status> {
    let mut c = agent.client().await;
    c.fetch_jwtsvid(JwtsvidRequest {
        audience: audiences
            .iter()
            .map(std::string::ToString::to_string)
            .collect(),
        spiffe_id: id.into(),
    })
    .await
    .map(tonic::Response::into_inner)
}

fn decode(part: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// A partner trust domain whose JWKS the agent knows, with an entry for this process federating.
async fn agent_with_partner(partner: &Signer) -> (TestAgent, tempfile::TempDir) {
    let dir = open_tempdir();
    let jwks = dir.path().join("partner.jwks.json");
    std::fs::write(&jwks, json!({"keys": [partner.jwk()]}).to_string()).unwrap();
    let cfg = format!(
        "[[federation]]\ntrust_domain = \"partner.org\"\njwks_path = \"{}\"\n{}",
        jwks.display(),
        entry("/me", euid(), "federates_with = [\"partner.org\"]")
    );
    (TestAgent::start(&cfg).await, dir)
}

/// JW-1..5: what the agent issues, and that its bundle holds the signing key (JW-3, JW-6).
#[tokio::test]
async fn jw1_to_jw6_issued_tokens_and_bundle() {
    let agent = TestAgent::start(&entry("/svc", euid(), "hint = \"svc\"")).await;
    let resp = fetch(&agent, &["db", "api"], "").await.unwrap();
    assert_eq!(resp.svids.len(), 1);
    let svid = &resp.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://example.org/svc");
    assert_eq!(svid.hint, "svc");
    let parts: Vec<&str> = svid.svid.split('.').collect();
    assert_eq!(parts.len(), 3, "JW-1: JWS compact");
    let header = decode(parts[0]);
    let mut keys: Vec<&String> = header.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["alg", "kid", "typ"], "JW-1: only alg, kid, typ");
    assert_eq!(header["alg"], "ES256", "JW-2");
    assert_eq!(header["typ"], "JWT", "JW-4");
    let payload = decode(parts[1]);
    assert_eq!(payload["sub"], "spiffe://example.org/svc", "JW-5");
    let mut aud: Vec<String> = serde_json::from_value(payload["aud"].clone()).unwrap();
    aud.sort();
    assert_eq!(
        aud,
        vec!["api", "db"],
        "JW-5: exactly the requested audiences"
    );
    let exp = payload["exp"].as_u64().unwrap();
    assert!(
        exp > now() && exp <= now() + 300 + 5,
        "JW-5: exp in the future and short (default 5m)"
    );

    let mut c = agent.client().await;
    let mut s = c
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let bundles = next_within(&mut s, 5).await;
    let jwks: serde_json::Value =
        serde_json::from_slice(&bundles.bundles["spiffe://example.org"]).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert!(
        keys.iter()
            .all(|k| k["kty"].is_string() && k["use"] == "jwt-svid" && k.get("x5c").is_none()),
        "JW-6"
    );
    assert!(
        keys.iter().any(|k| k["kid"] == header["kid"]),
        "JW-3: kid is in the bundle"
    );
    assert_quiet(&mut s, 300).await;

    // A second fetch within half the lifetime is the cached token.
    let again = fetch(&agent, &["api", "db"], "").await.unwrap();
    assert_eq!(again.svids[0].svid, svid.svid);
    agent.shutdown().await;
}

/// Real clients: crates.io `spiffe` JwtSource, parse_and_validate against FetchJWTBundles, and
/// validate_jwt_token through the agent.
#[tokio::test]
async fn spiffe_crate_jwt_source_and_validation() {
    let agent = TestAgent::start(&entry("/svc", euid(), "")).await;
    let source = spiffe::JwtSource::builder()
        .endpoint(agent.endpoint())
        .build()
        .await
        .expect("JwtSource");
    let svid = source
        .fetch_jwt_svid(["payments"])
        .await
        .expect("fetch_jwt_svid");
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/svc");
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let bundles = client.fetch_jwt_bundles().await.expect("fetch_jwt_bundles");
    let checked = spiffe::JwtSvid::parse_and_validate(svid.token(), &bundles, &["payments"])
        .expect("parse_and_validate");
    assert_eq!(checked.spiffe_id().to_string(), "spiffe://example.org/svc");
    assert!(spiffe::JwtSvid::parse_and_validate(svid.token(), &bundles, &["other"]).is_err());
    let validated = client
        .validate_jwt_token("payments", svid.token())
        .await
        .expect("validate_jwt_token");
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://example.org/svc"
    );
    source.shutdown().await;
    agent.shutdown().await;
}

/// Every rejection of SPEC.md §6 answers InvalidArgument; the accepted forms are accepted.
#[tokio::test]
async fn validate_jwtsvid_rejection_table_and_accepted_forms() {
    let partner = Signer::fresh("partner-key");
    let (agent, _dir) = agent_with_partner(&partner).await;
    let own = Signer::agent(&agent);
    let stranger = Signer::fresh("nope");
    let sub = "spiffe://example.org/x";
    let good = own.standard(claims(sub, json!("db")));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims("spiffe://example.org/admin", json!("db"))
            .to_string()
            .as_bytes()),
        parts[2]
    );
    let hs256 = {
        use aws_lc_rs::hmac;
        let header = json!({"alg": "HS256", "kid": own.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims(sub, json!("db")).to_string().as_bytes())
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, own.jwk().to_string().as_bytes());
        format!(
            "{input}.{}",
            b64(hmac::sign(&key, input.as_bytes()).as_ref())
        )
    };
    let t = now();
    let rejected: Vec<(&str, String)> = vec![
        ("tampered payload", tampered),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "kid": own.kid, "typ": "JWT"})
                    .to_string()
                    .as_bytes()),
                parts[1]
            ),
        ),
        ("HS256 with the public key as secret", hs256),
        (
            "EdDSA",
            own.token(
                json!({"alg": "EdDSA", "kid": own.kid, "typ": "JWT"}),
                claims(sub, json!("db")),
            ),
        ),
        (
            "alg that does not match the key",
            own.token(
                json!({"alg": "RS256", "kid": own.kid, "typ": "JWT"}),
                claims(sub, json!("db")),
            ),
        ),
        ("unknown kid", stranger.standard(claims(sub, json!("db")))),
        (
            "expired",
            own.standard(json!({"sub": sub, "aud": "db", "exp": t - 600, "iat": t - 900})),
        ),
        (
            "missing exp",
            own.standard(json!({"sub": sub, "aud": "db", "iat": t})),
        ),
        (
            "nbf in the future",
            own.standard(
                json!({"sub": sub, "aud": "db", "exp": t + 900, "nbf": t + 600, "iat": t}),
            ),
        ),
        ("wrong audience", own.standard(claims(sub, json!("other")))),
        (
            "missing aud",
            own.standard(json!({"sub": sub, "exp": t + 300})),
        ),
        (
            "sub not a SPIFFE ID",
            own.standard(claims("alice", json!("db"))),
        ),
        (
            "sub of a trust domain without bundle",
            own.standard(claims("spiffe://unknown.org/x", json!("db"))),
        ),
        (
            "signed with another trust domain's key",
            partner.standard(claims(sub, json!("db"))),
        ),
        (
            "unknown crit",
            own.token(
                json!({"alg": "ES256", "kid": own.kid, "typ": "JWT", "crit": ["exp2"], "exp2": 1}),
                claims(sub, json!("db")),
            ),
        ),
        (
            "bad typ",
            own.token(
                json!({"alg": "ES256", "kid": own.kid, "typ": "XYZ"}),
                claims(sub, json!("db")),
            ),
        ),
        ("two parts", format!("{}.{}", parts[0], parts[1])),
        ("four parts", format!("{good}.x")),
        ("bad base64", format!("{}.%%%%.{}", parts[0], parts[2])),
        (
            "bad JSON",
            format!("{}.{}.{}", parts[0], b64(b"{not json"), parts[2]),
        ),
    ];
    for (name, token) in &rejected {
        let err = validate(&agent, "db", token).await.expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().starts_with("invalid JWT-SVID: "),
            "{name}: {}",
            err.message()
        );
        eprintln!("rejected {name}: {}", err.message());
    }

    let accepted: Vec<(&str, String, &str)> = vec![
        ("aud as string", own.standard(claims(sub, json!("db"))), sub),
        (
            "aud as array",
            own.standard(claims(sub, json!(["db", "x"]))),
            sub,
        ),
        (
            "typ absent",
            own.token(
                json!({"alg": "ES256", "kid": own.kid}),
                claims(sub, json!("db")),
            ),
            sub,
        ),
        (
            "typ JOSE",
            own.token(
                json!({"alg": "ES256", "kid": own.kid, "typ": "JOSE"}),
                claims(sub, json!("db")),
            ),
            sub,
        ),
        (
            "federated token",
            partner.standard(claims("spiffe://partner.org/svc", json!("db"))),
            "spiffe://partner.org/svc",
        ),
    ];
    for (name, token, want) in &accepted {
        let ok = validate(&agent, "db", token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(ok.spiffe_id, *want, "{name}");
        let claims = ok.claims.unwrap();
        let aud = &claims.fields["aud"];
        assert!(
            matches!(aud.kind, Some(prost_types::value::Kind::ListValue(_))),
            "{name}: aud always a list"
        );
        assert!(
            claims.fields.contains_key("exp") && claims.fields.contains_key("sub"),
            "{name}"
        );
    }

    // EP-6: empty fields.
    assert_eq!(
        validate(&agent, "", &good).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert_eq!(
        validate(&agent, "db", "").await.unwrap_err().code(),
        Code::InvalidArgument
    );
    agent.shutdown().await;
}

/// The entry's audience list binds tokens to their destinations; entitlement to a spiffe_id.
#[tokio::test]
async fn audience_policy_and_spiffe_id_entitlement() {
    let me = euid();
    let cfg = format!(
        "{}{}",
        entry(
            "/db-client",
            me,
            "jwt_audiences = [\"db.internal\", \"payments\"]\njwt_ttl = \"2m\""
        ),
        entry("/open", me, ""),
    );
    let agent = TestAgent::start(&cfg).await;
    let ok = fetch(&agent, &["db.internal"], "spiffe://example.org/db-client")
        .await
        .unwrap();
    assert_eq!(ok.svids.len(), 1);
    let exp = decode(ok.svids[0].svid.split('.').nth(1).unwrap())["exp"]
        .as_u64()
        .unwrap();
    assert!(exp <= now() + 120 + 5, "per-entry jwt_ttl");

    let err = fetch(
        &agent,
        &["db.internal", "evil.example"],
        "spiffe://example.org/db-client",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("\"evil.example\""),
        "names the audience: {}",
        err.message()
    );

    // Without spiffe_id: identities whose policy forbids the audience are left out.
    let some = fetch(&agent, &["anything"], "").await.unwrap();
    let ids: Vec<&str> = some.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, vec!["spiffe://example.org/open"]);
    let both = fetch(&agent, &["payments"], "").await.unwrap();
    assert_eq!(both.svids.len(), 2, "default first, both allowed");
    assert_eq!(both.svids[0].spiffe_id, "spiffe://example.org/db-client");

    let err = fetch(&agent, &["x"], "spiffe://example.org/someone-else")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "not entitled");
    let err = fetch(&agent, &["x"], "not-an-id").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = fetch(&agent, &[], "").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "EP-6: audience required");
    agent.shutdown().await;
}

/// TB-2 for JWT bundles: federated JWKS only where an entry federates.
#[tokio::test]
async fn jwt_bundles_include_federated_keys_only_for_federating_entries() {
    let partner = Signer::fresh("partner-key");
    let (agent, _dir) = agent_with_partner(&partner).await;
    let mut c = agent.client().await;
    let mut s = c
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let msg = next_within(&mut s, 5).await;
    let mut keys: Vec<&String> = msg.bundles.keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["spiffe://example.org", "spiffe://partner.org"]);
    let jwks: serde_json::Value =
        serde_json::from_slice(&msg.bundles["spiffe://partner.org"]).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], "partner-key");
    agent.shutdown().await;
}

/// JW-7 on the running agent, on paused time: the bundle stream shows the next key before any token
/// carries its kid, and a token signed just before rotation still validates after it.
#[tokio::test(start_paused = true)]
async fn jw7_key_rotation_on_paused_time() {
    use std::sync::Arc;
    use std::time::Duration;
    let dir = open_tempdir();
    let cfg = lanyard::config::Config::from_toml(&config_text(
        dir.path(),
        &format!(
            "[authority]\njwt_key_ttl = \"4h\"\n{}",
            entry("/rot", euid(), "")
        ),
    ))
    .unwrap();
    let clock = Arc::new(lanyard::clock::TokioClock::starting_at(SystemTime::now()));
    let running = lanyard::app::start(cfg, clock).await.unwrap();
    let endpoint = format!("unix://{}", running.socket_path.display());
    let mut c = lanyard::client::connect(&endpoint).await.unwrap();
    let mut bundles = c
        .fetch_jwt_bundles(JwtBundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let kids_of = |m: &JwtBundlesResponse| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_slice(&m.bundles["spiffe://example.org"]).unwrap();
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = next_within(&mut bundles, 5).await;
    let mut published: Vec<String> = kids_of(&first);
    assert_eq!(published.len(), 1);
    let first_kid = published[0].clone();
    let mut last_before_rotation = None;
    let mut rotated = false;
    for _ in 0..(5 * 30) {
        // Two minutes at a time (less than a token's 5-minute life), over five hours.
        tokio::time::advance(Duration::from_secs(120)).await;
        use tokio_stream::StreamExt;
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(1), bundles.next()).await
        {
            for k in kids_of(&m) {
                if !published.contains(&k) {
                    published.push(k);
                }
            }
        }
        let resp = c
            .fetch_jwtsvid(JwtsvidRequest {
                audience: vec![format!("aud-{}", published.len())],
                spiffe_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let token = resp.svids[0].svid.clone();
        let kid = decode(token.split('.').next().unwrap())["kid"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            published.contains(&kid),
            "token kid {kid} was published first ({published:?})"
        );
        if kid == first_kid {
            last_before_rotation = Some(token);
        } else if !rotated {
            rotated = true;
            // Signed by the old key two minutes ago and not expired: still valid.
            let old = last_before_rotation
                .clone()
                .expect("a token before rotation");
            let aud = decode(old.split('.').nth(1).unwrap())["aud"]
                .as_str()
                .unwrap()
                .to_owned();
            let ok2 = c
                .validate_jwtsvid(ValidateJwtsvidRequest {
                    audience: aud,
                    svid: old,
                })
                .await;
            assert!(
                ok2.is_ok(),
                "a pre-rotation token validates after rotation: {ok2:?}"
            );
        }
    }
    assert!(
        rotated,
        "the key rotated within five hours of a 4h key lifetime"
    );
    assert!(published.len() >= 2);
    drop(bundles);
    drop(c);
    running.shutdown().await;
}

/// Revocation at validation: a token whose last holder exited is refused by ValidateJWTSVID with
/// the reason, at once rather than at `exp`; a token another live process still holds stays valid;
/// the agent does not hand the revoked token to anyone again; the revocation survives a restart of
/// the agent; `[inventory] jwt_revocation = false` turns it off.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_whose_holder_exited_is_refused_at_validation() {
    let cfg = entry("/job", euid(), "");
    let mut agent = TestAgent::start(&cfg).await;
    // A workload in another process (the Python SPIFFE library, with its defaults) fetches a
    // token and exits.
    if !prepare(
        "python",
        &["python3"],
        "a_token_whose_holder_exited_is_refused_at_validation",
    ) {
        return;
    }
    let fetch_in_child = |agent: &TestAgent, audience: &str| {
        let out = std::process::Command::new(interop_dir().join("venv/bin/python"))
            .args([
                "-c",
                "import sys\nfrom spiffe import WorkloadApiClient\nwith WorkloadApiClient() as c:\n    print(c.fetch_jwt_svid(audience={sys.argv[1]}).token)",
                audience,
            ])
            .env("SPIFFE_ENDPOINT_SOCKET", agent.endpoint())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // The child fetched a token and exited; its credentials are withdrawn within milliseconds.
    let copied = fetch_in_child(&agent, "payments");
    let mut client = agent.client().await;
    let validator = client.clone();
    let validate = |token: String| {
        let mut client = validator.clone();
        async move {
            client
                .validate_jwtsvid(ValidateJwtsvidRequest {
                    audience: "payments".into(),
                    svid: token,
                })
                .await
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let refused = loop {
        match validate(copied.clone()).await {
            Err(status) => break status,
            Ok(_) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "still valid 5 s after its holder exited"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("withdrawn (process exited)"),
        "{refused:?}"
    );

    // This process (alive) fetches the same identity and audience: a new token, not the revoked one.
    let mine = client
        .fetch_jwtsvid(JwtsvidRequest {
            audience: vec!["payments".into()],
            spiffe_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .svids
        .remove(0)
        .svid;
    assert_ne!(mine, copied, "the revoked token is not handed out again");
    // A child fetching it now shares this process's token (cached); when the child exits, the token
    // is still held by this live process, so it stays valid.
    let shared = fetch_in_child(&agent, "payments");
    assert_eq!(shared, mine);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    validate(mine.clone())
        .await
        .expect("held by a live process");

    // Restart on the same data directory: the revocation is still in force.
    drop(client);
    let running = agent.running.take().unwrap();
    running.shutdown().await;
    let restart = |extra: &str| {
        let text = config_text(agent.dir.path(), &format!("{extra}{cfg}"));
        lanyard::app::start(
            lanyard::config::Config::from_toml(&text).unwrap(),
            std::sync::Arc::new(lanyard::clock::SystemClock),
        )
    };
    let running = restart("").await.unwrap();
    let mut client = agent.client().await;
    let refused = client
        .validate_jwtsvid(ValidateJwtsvidRequest {
            audience: "payments".into(),
            svid: copied.clone(),
        })
        .await
        .unwrap_err();
    assert!(refused.message().contains("withdrawn"), "{refused:?}");
    drop(client);
    running.shutdown().await;
    // A token fetched with `lanyard fetch jwt` is handed on by design (printed for a script): the
    // CLI's exit does not revoke it.
    let client_running = restart("").await.unwrap();
    let out = std::process::Command::new(lanyard_bin())
        .args([
            "fetch",
            "jwt",
            "--json",
            "--audience",
            "handed-on",
            "--socket",
        ])
        .arg(agent.endpoint())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let handed = v["svids"][0]["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut client = agent.client().await;
    client
        .validate_jwtsvid(ValidateJwtsvidRequest {
            audience: "handed-on".into(),
            svid: handed,
        })
        .await
        .expect("a handed-on token outlives the CLI");
    drop(client);
    client_running.shutdown().await;
    // Turned off: the same token validates again (until its exp, as for JWKS-only verifiers).
    let running = restart("[inventory]\njwt_revocation = false\n")
        .await
        .unwrap();
    let mut client = agent.client().await;
    client
        .validate_jwtsvid(ValidateJwtsvidRequest {
            audience: "payments".into(),
            svid: copied,
        })
        .await
        .expect("jwt_revocation = false");
    drop(client);
    running.shutdown().await;
}
