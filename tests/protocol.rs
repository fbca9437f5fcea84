//! The Workload API wire contract against a running agent (SPEC.md §1–3, §7), over a real socket.

mod common;

use common::*;
use lanyard::proto::*;
use tonic::Code;
use tonic::metadata::MetadataValue;

fn uid_entry(path: &str, uid: u32, extra: &str) -> String {
    format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org{path}\"\nselectors = [\"unix:uid:{uid}\"]\n{extra}\n"
    )
}

/// The four ways to get the security header wrong (EP-2).
fn bad_headers() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("absent", vec![]),
        ("True", vec!["True"]),
        ("false", vec!["false"]),
        ("sent twice", vec!["true", "true"]),
    ]
}

fn with_header<T>(msg: T, values: &[&'static str]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    for v in values {
        req.metadata_mut()
            .append("workload.spiffe.io", MetadataValue::from_static(v));
    }
    req
}

/// EP-2: InvalidArgument on all seven RPCs, before any message, even for an entitled caller.
#[tokio::test]
async fn ep2_bad_security_header_is_invalid_argument_on_every_rpc() {
    let agent = TestAgent::start(&uid_entry("/me", euid(), "")).await;
    let mut c = agent.raw_client().await;
    for (name, values) in bad_headers() {
        let codes = [
            (
                "FetchX509SVID",
                c.fetch_x509svid(with_header(X509svidRequest {}, &values))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "FetchX509Bundles",
                c.fetch_x509_bundles(with_header(X509BundlesRequest {}, &values))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "FetchJWTSVID",
                c.fetch_jwtsvid(with_header(
                    JwtsvidRequest {
                        audience: vec!["a".into()],
                        spiffe_id: String::new(),
                    },
                    &values,
                ))
                .await
                .err()
                .map(|s| s.code()),
            ),
            (
                "FetchJWTBundles",
                c.fetch_jwt_bundles(with_header(JwtBundlesRequest {}, &values))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
            (
                "ValidateJWTSVID",
                c.validate_jwtsvid(with_header(
                    ValidateJwtsvidRequest {
                        audience: "a".into(),
                        svid: "x.y.z".into(),
                    },
                    &values,
                ))
                .await
                .err()
                .map(|s| s.code()),
            ),
            (
                "FetchWITSVID",
                c.fetch_witsvid(with_header(
                    WitsvidRequest {
                        spiffe_id: String::new(),
                    },
                    &values,
                ))
                .await
                .err()
                .map(|s| s.code()),
            ),
            (
                "FetchWITBundles",
                c.fetch_wit_bundles(with_header(WitBundlesRequest {}, &values))
                    .await
                    .err()
                    .map(|s| s.code()),
            ),
        ];
        for (rpc, code) in codes {
            assert_eq!(
                code,
                Some(Code::InvalidArgument),
                "{rpc} with header {name}"
            );
        }
    }
    // The same client with the right header is served.
    let ok = c
        .fetch_x509svid(with_header(X509svidRequest {}, &["true"]))
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    agent.shutdown().await;
}

/// EP-4: a caller no entry matches gets PermissionDenied on both X.509 RPCs.
#[tokio::test]
async fn ep4_no_identity_is_permission_denied() {
    let other = euid().wrapping_add(4242);
    let agent = TestAgent::start(&uid_entry("/someone-else", other, "")).await;
    let mut c = agent.client().await;
    let err = c.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains(&format!("unix:uid:{}", euid())),
        "{}",
        err.message()
    );
    let err = c
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    agent.shutdown().await;
}

/// EP-7: the WIT-SVID pair is Unimplemented; so are the JWT RPCs until the JWT issue lands.
#[tokio::test]
async fn ep7_unsupported_rpcs_are_unimplemented() {
    let agent = TestAgent::start(&uid_entry("/me", euid(), "")).await;
    let mut c = agent.client().await;
    let e = c
        .fetch_witsvid(WitsvidRequest {
            spiffe_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    let e = c.fetch_wit_bundles(WitBundlesRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented);
    agent.shutdown().await;
}

/// ST-2 and ST-7: the first message comes at once, with the default SVID first and hints unique.
#[tokio::test]
async fn st2_st7_first_message_at_once_default_first_unique_hints() {
    let me = euid();
    let cfg = format!(
        "{}{}{}",
        uid_entry("/first", me, "hint = \"web\""),
        uid_entry("/second", me, "hint = \"web\""),
        uid_entry("/third", me, "hint = \"db\""),
    );
    let agent = TestAgent::start(&cfg).await;
    let mut c = agent.client().await;
    let started = std::time::Instant::now();
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let msg = next_within(&mut stream, 5).await;
    eprintln!("first message after {:?}", started.elapsed());
    let got: Vec<(&str, &str)> = msg
        .svids
        .iter()
        .map(|s| (s.spiffe_id.as_str(), s.hint.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("spiffe://example.org/first", "web"),
            ("spiffe://example.org/second", ""),
            ("spiffe://example.org/third", "db"),
        ]
    );
    // A second stream sees the same order (ST-7: stable).
    let mut again = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let msg2 = next_within(&mut again, 5).await;
    let ids2: Vec<&str> = msg2.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids2,
        vec![
            "spiffe://example.org/first",
            "spiffe://example.org/second",
            "spiffe://example.org/third"
        ]
    );
    // The cache serves the same SVID to both streams.
    assert_eq!(msg.svids[0].x509_svid, msg2.svids[0].x509_svid);
    agent.shutdown().await;
}

/// ST-3/ST-4: reloads add and remove identities on an open stream; a reload that changes nothing for
/// this caller sends nothing.
#[tokio::test]
async fn st3_st4_reload_adds_and_removes_identities_and_is_quiet_otherwise() {
    let me = euid();
    let mut agent = TestAgent::start(&uid_entry("/a", me, "")).await;
    let mut c = agent.client().await;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut stream, 5).await;
    assert_eq!(first.svids.len(), 1);

    // Unchanged policy, and a change that does not concern this caller: no message.
    agent.reload(&uid_entry("/a", me, ""));
    assert_quiet(&mut stream, 300).await;
    agent.reload(&format!(
        "{}{}",
        uid_entry("/a", me, ""),
        uid_entry("/x", me.wrapping_add(7), "")
    ));
    assert_quiet(&mut stream, 300).await;

    // A new entry for this caller: a new message with both, the default unchanged.
    agent.reload(&format!(
        "{}{}",
        uid_entry("/a", me, ""),
        uid_entry("/b", me, "")
    ));
    let added = next_within(&mut stream, 5).await;
    let ids: Vec<&str> = added.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["spiffe://example.org/a", "spiffe://example.org/b"]
    );
    assert_eq!(
        added.svids[0].x509_svid, first.svids[0].x509_svid,
        "unchanged SVID is not re-minted"
    );

    // ST-4: removal is absence.
    agent.reload(&uid_entry("/b", me, ""));
    let removed = next_within(&mut stream, 5).await;
    let ids: Vec<&str> = removed.svids.iter().map(|s| s.spiffe_id.as_str()).collect();
    assert_eq!(ids, vec!["spiffe://example.org/b"]);
    agent.shutdown().await;
}

/// ST-5: losing every identity mid-stream ends the stream with PermissionDenied, on both streams.
#[tokio::test]
async fn st5_losing_every_identity_ends_with_permission_denied() {
    let me = euid();
    let mut agent = TestAgent::start(&uid_entry("/a", me, "")).await;
    let mut c = agent.client().await;
    let mut svids = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bundles = c
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    next_within(&mut svids, 5).await;
    next_within(&mut bundles, 5).await;
    agent.reload(&uid_entry("/a", me.wrapping_add(1), ""));
    assert_eq!(
        end_status(&mut svids, 5).await.code(),
        Code::PermissionDenied
    );
    assert_eq!(
        end_status(&mut bundles, 5).await.code(),
        Code::PermissionDenied
    );
    agent.shutdown().await;
}

/// TB-1/TB-2: every SVID carries its trust domain's bundle; federated bundles go only to callers
/// whose entry federates, never the own trust domain; removing federation removes the bundle.
#[tokio::test]
async fn tb1_tb2_federated_bundles_only_where_entries_federate() {
    let me = euid();
    let dir = open_tempdir();
    // A partner trust domain's root, written as a PEM bundle file.
    let partner = lanyard::spiffe_id::TrustDomain::parse("partner.org").unwrap();
    let (_, partner_root) = lanyard::ca::mint::self_signed_root(
        &partner,
        std::time::SystemTime::now(),
        std::time::Duration::from_secs(86400),
    )
    .unwrap();
    let bundle_path = dir.path().join("partner.pem");
    std::fs::write(&bundle_path, lanyard::encoding::pem_cert(&partner_root)).unwrap();
    let fed = format!(
        "[[federation]]\ntrust_domain = \"partner.org\"\nbundle_path = \"{}\"\n",
        bundle_path.display()
    );

    let mut agent = TestAgent::start(&format!("{fed}{}", uid_entry("/plain", me, ""))).await;
    let mut c = agent.client().await;
    let mut svids = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut bundles = c
        .fetch_x509_bundles(X509BundlesRequest {})
        .await
        .unwrap()
        .into_inner();
    let m = next_within(&mut svids, 5).await;
    assert!(
        m.federated_bundles.is_empty(),
        "no federation without federates_with"
    );
    assert!(
        !m.svids[0].bundle.is_empty(),
        "TB-1: own bundle never empty"
    );
    let b = next_within(&mut bundles, 5).await;
    assert_eq!(
        b.bundles.keys().collect::<Vec<_>>(),
        vec!["spiffe://example.org"]
    );

    agent.reload(&format!(
        "{fed}{}",
        uid_entry("/plain", me, "federates_with = [\"partner.org\"]")
    ));
    let m = next_within(&mut svids, 5).await;
    assert_eq!(
        m.federated_bundles.keys().collect::<Vec<_>>(),
        vec!["spiffe://partner.org"]
    );
    assert_eq!(
        m.federated_bundles["spiffe://partner.org"],
        partner_root.to_vec()
    );
    assert!(
        !m.federated_bundles.contains_key("spiffe://example.org"),
        "TB-2: never the own trust domain"
    );
    let b = next_within(&mut bundles, 5).await;
    let mut keys: Vec<&String> = b.bundles.keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["spiffe://example.org", "spiffe://partner.org"]);

    agent.reload(&format!("{fed}{}", uid_entry("/plain", me, "")));
    let m = next_within(&mut svids, 5).await;
    assert!(
        m.federated_bundles.is_empty(),
        "ST-4: removed federation is absent"
    );
    agent.shutdown().await;
}

/// EP-5: beyond the stream limit the agent answers Unavailable (clients retry) instead of hanging.
#[tokio::test]
async fn ep5_stream_limit_is_unavailable() {
    let agent = TestAgent::start(&format!(
        "[limits]\nmax_streams = 1\n{}",
        uid_entry("/a", euid(), "")
    ))
    .await;
    let mut c = agent.client().await;
    let mut first = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    next_within(&mut first, 5).await;
    let err = c.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    drop(first);
    // The permit comes back once the stream is gone.
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(s) = c.fetch_x509svid(X509svidRequest {}).await {
            ok = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok.is_some(), "stream slot freed after the client left");
    agent.shutdown().await;
}

/// EP-5 with ST-5: a stream the agent ends (its caller lost every identity) gives its slot back:
/// with a limit of one stream, the client opens a new one once it is entitled again. (The client
/// still holds the ended stream's handle, but the agent's trailers closed both halves of the h2
/// stream, so this guards a leaked slot, not "at the end vs. when the client lets go": over h2 the
/// two cannot differ here.)
#[tokio::test]
async fn a_stream_the_agent_ends_gives_back_its_slot() {
    let me = euid();
    let limits = "[limits]\nmax_streams = 1\n";
    let mut agent = TestAgent::start(&format!("{limits}{}", uid_entry("/a", me, ""))).await;
    let mut c = agent.client().await;
    let mut first = open_x509_streams(&mut c, 1).await.remove(0);
    agent.reload(&format!(
        "{limits}{}",
        uid_entry("/a", me.wrapping_add(7), "")
    ));
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), first.message())
        .await
        .expect("the stream ends within 5 s");
    assert_eq!(ended.unwrap_err().code(), Code::PermissionDenied);
    agent.reload(&format!("{limits}{}", uid_entry("/a", me, "")));
    let mut again = None;
    for _ in 0..100 {
        match c.fetch_x509svid(X509svidRequest {}).await {
            Ok(s) => {
                again = Some(s.into_inner());
                break;
            }
            // Not entitled yet (the reload is still being read) or, wrongly, no slot.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    let mut again = again.expect("a new stream opens once the agent has ended the first");
    next_within(&mut again, 5).await;
    drop(first);
    agent.shutdown().await;
}

/// Shutdown ends open streams with Unavailable (clients reconnect) and removes the socket.
#[tokio::test]
async fn shutdown_ends_streams_with_unavailable_and_removes_the_socket() {
    let mut agent = TestAgent::start(&uid_entry("/a", euid(), "")).await;
    let mut c = agent.client().await;
    let mut stream = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    next_within(&mut stream, 5).await;
    let socket = agent.socket.clone();
    let running = agent.running.take().unwrap();
    let stopping = tokio::spawn(running.shutdown());
    assert_eq!(end_status(&mut stream, 5).await.code(), Code::Unavailable);
    drop(stream);
    drop(c);
    stopping.await.unwrap();
    assert!(!socket.exists(), "socket removed on shutdown");
}
