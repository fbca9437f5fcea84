//! Fuzzing of every parser that reads what a caller or an operator wrote, with proptest (coverage-guided
//! `cargo fuzz` needs a nightly toolchain these machines are not guaranteed to have). Each target
//! mixes structured near-misses (mutations of valid inputs) with arbitrary bytes, runs a bounded
//! number of cases (`PROPTEST_CASES` raises it), and asserts the parser answers with a value or an
//! error — never a panic — and that what it accepts round-trips. Failures are kept by proptest under
//! `proptest-regressions/` and replayed first on every run.
//!
//! The HTTP/2 header handling of our own (the `:authority` normaliser) has its own property tests in
//! `src/workload_api/h2_normalize/tests.rs`.

use std::collections::BTreeMap;
use std::time::SystemTime;

use lanyard::attest::k8s::cgroup;
use lanyard::ca::jwt::Jwks;
use lanyard::selector::Selector;
use lanyard::spiffe_id::{SpiffeId, TrustDomain};
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig {
        cases: n,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    }
}

/// Text made of `alphabet`, up to `max` characters.
fn text(alphabet: &'static str, max: usize) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    prop::collection::vec(prop::sample::select(chars), 0..max).prop_map(|v| v.into_iter().collect())
}

/// Arbitrary bytes read as (lossy) UTF-8.
fn junk(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..max)
        .prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A valid input with a random edit: a character replaced, inserted or removed.
fn mutated(
    valid: &'static [&'static str],
    alphabet: &'static str,
) -> impl Strategy<Value = String> {
    let chars: Vec<char> = alphabet.chars().collect();
    (
        prop::sample::select(valid),
        any::<prop::sample::Index>(),
        prop::sample::select(chars),
        0u8..3,
    )
        .prop_map(|(base, at, c, op)| {
            let mut v: Vec<char> = base.chars().collect();
            let i = at.index(v.len() + 1);
            match op {
                0 if i < v.len() => v[i] = c,
                1 => v.insert(i, c),
                _ if i < v.len() => {
                    v.remove(i);
                }
                _ => v.push(c),
            }
            v.into_iter().collect()
        })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn spiffe_ids(s in prop_oneof![
        mutated(&["spiffe://example.org/ns/shop/sa/cart", "spiffe://a.b-c_d/x", "spiffe://td"],
                "abcXYZ019:/.%-_@?#~ "),
        text("spiffe:/.a%2F-_.0", 40),
        junk(80),
    ]) {
        if let Ok(id) = SpiffeId::parse(&s) {
            // Accepted IDs print as they were given and parse again to the same value (ID-1…ID-5).
            prop_assert_eq!(id.as_str(), s.as_str());
            prop_assert_eq!(SpiffeId::parse(id.as_str()).unwrap(), id.clone());
            prop_assert!(TrustDomain::parse(id.trust_domain_str()).is_ok());
        }
        let _ = TrustDomain::parse(&s);
    }

    #[test]
    fn selectors(s in prop_oneof![
        mutated(&["unix:uid:1000", "unix:path:/usr/bin/app", "k8s:pod-label:app:cart",
                  "unix:sha256:0000000000000000000000000000000000000000000000000000000000000000",
                  "k8s:container-image:registry.example/shop/cart:2.4"],
                "unixk8s:0123456789abcdef/-_. "),
        junk(80),
    ]) {
        if let Ok(sel) = Selector::parse(&s) {
            // The text form round-trips.
            prop_assert_eq!(Selector::parse(&sel.to_string()).unwrap(), sel);
        }
    }

    #[test]
    fn cgroup_files(s in prop_oneof![
        mutated(&[
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod5f0e27c1_8a8d_4e55_9d0b_2f1f61a4c7d2.slice/cri-containerd-3b5c1f0d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c.scope\n",
            "4:pids:/kubepods/pod5f0e27c1-8a8d-4e55-9d0b-2f1f61a4c7d2/3b5c1f0d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c\n0::/\n",
            "0::/../../kubepods-pod5f0e27c1_8a8d_4e55_9d0b_2f1f61a4c7d2.slice/crio-3b5c1f0d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c.scope\n",
        ], "0123456789abcdef:/.-_\n"),
        junk(200),
    ]) {
        let roots = [cgroup::Root::parse("/kubepods").unwrap(),
                     cgroup::Root::parse("/kubepods.slice").unwrap()];
        // No mounts in this view: nothing can be verified as root-owned, so nothing is a pod; the
        // parse itself must still answer (a location, none, or a clear error).
        let view = cgroup::View::default();
        if let Ok(Some(loc)) = cgroup::locate(&s, &roots, &view) {
            prop_assert!(false, "unverifiable cgroups were taken as pod {loc:?}");
        }
        let _ = cgroup::Root::parse(&s);
    }

    #[test]
    fn config_files(s in prop_oneof![
        mutated(&[
            "trust_domain = \"example.org\"\n[svid]\nx509_ttl = \"1h\"\n",
            "[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:0\"]\n",
            "[limits]\nmax_streams = 10\nnew_credentials_per_second = 5.0\nconnection_idle = \"3s\"\n",
            "[kubernetes]\nkubelet_url = \"http://127.0.0.1:10255\"\ncgroup_roots = [\"/kubepods\"]\n",
            "[authority]\nmode = \"upstream\"\ncert_path = \"/a\"\nkey_path = \"/b\"\n",
        ], "[]=\"\n .:/abcdehy0123456789_-"),
        junk(200),
    ]) {
        // Every problem is an error value naming a field (exit 64), never a panic.
        if let Err(e) = lanyard::config::Config::from_toml(&s) {
            prop_assert!(!e.0.is_empty());
        }
    }

    #[test]
    fn jwts_to_validate(token in prop_oneof![
        mutated(&[
            "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsiLCJ0eXAiOiJKV1QifQ.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy9hIiwiYXVkIjoiYSIsImV4cCI6OTk5OTk5OTk5OX0.c2ln",
            "eyJhbGciOiJub25lIn0.e30.",
            "a.b.c",
        ], "abcXYZ0123456789-_.=+/"),
        junk(300),
    ], audience in junk(20)) {
        let bundles: BTreeMap<TrustDomain, Jwks> = BTreeMap::new();
        // Anything but a valid token signed by a known key is a rejection with a reason.
        prop_assert!(lanyard::ca::jwt::validate(&token, &audience, &bundles, SystemTime::now()).is_err());
    }

    #[test]
    fn kubelet_pod_lists(s in prop_oneof![
        mutated(&[
            r#"{"kind":"PodList","items":[{"metadata":{"name":"p","namespace":"n","uid":"5f0e27c1-8a8d-4e55-9d0b-2f1f61a4c7d2"},"spec":{"serviceAccountName":"s","containers":[{"name":"c","image":"i"}]},"status":{"containerStatuses":[{"name":"c","containerID":"containerd://3b5c","image":"i","imageID":"x"}]}}]}"#,
            r#"{"kind":"PodList","items":[]}"#,
        ], "{}[]\":,abc0123-_/"),
        junk(300),
    ]) {
        if let Ok(list) = serde_json::from_str::<lanyard::attest::k8s::pods::PodList>(&s) {
            let loc = cgroup::Location {
                pod_uid: Some("5f0e27c1-8a8d-4e55-9d0b-2f1f61a4c7d2".into()),
                container_id: "3b5c".repeat(16),
            };
            // Looking a container up in any list the kubelet could send answers, never panics.
            let _ = list.find(&loc);
        }
    }
}
