//! Rotation on the open stream with the real clock: with the shortest TTL (1m) the agent pushes a new
//! SVID for the same ID, with a new serial, at about half its life and before the old one expires.
//! (The issuer's unit tests check the same on paused time.)

mod common;

use std::time::SystemTime;

use common::*;
use lanyard::encoding::split_der;
use lanyard::proto::X509svidRequest;
use tokio_stream::StreamExt;

fn facts(der: &[u8]) -> (String, i64) {
    let chain = split_der(der).unwrap();
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    (
        x509_parser::utils::format_serial(leaf.raw_serial()),
        leaf.validity().not_after.timestamp(),
    )
}

#[tokio::test]
async fn rotation_pushes_a_new_serial_before_expiry() {
    let agent = TestAgent::start(&format!(
        "[svid]\nx509_ttl = \"1m\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/short\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ))
    .await;
    let mut c = agent.client().await;
    let mut s = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut s, 5).await;
    let (serial1, expiry1) = facts(&first.svids[0].x509_svid);
    let second = next_within(&mut s, 60).await;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (serial2, expiry2) = facts(&second.svids[0].x509_svid);
    assert_eq!(second.svids[0].spiffe_id, "spiffe://example.org/short");
    assert_ne!(serial1, serial2, "a new certificate");
    assert!(now < expiry1, "pushed before the old SVID expired");
    assert!(expiry2 > expiry1);
    // Roughly half-life: 70 s of life (60 s + 10 s backdate), rotated at 45–55 %, so ≥ 20 s before expiry.
    assert!(
        expiry1 - now >= 20,
        "rotated early enough: {}s left",
        expiry1 - now
    );
    agent.shutdown().await;
}

/// An entry change that gives many open streams of one uid a new SVID charges that uid's
/// new-credential rate once, not once per stream: with a burst of 2, 60 streams all get the new SVID
/// (none is refused with ResourceExhausted).
#[tokio::test(flavor = "multi_thread")]
async fn many_streams_of_one_uid_share_one_new_credential_on_an_entry_change() {
    let entry = |dns: &str| {
        format!(
            "[limits]\nnew_credentials_per_second = 1\nnew_credentials_burst = 2\n[[entry]]\nspiffe_id = \"spiffe://example.org/many\"\nselectors = [\"unix:uid:{}\"]\ndns_names = [\"{dns}\"]\n",
            common::euid()
        )
    };
    let mut agent = TestAgent::start(&entry("before.example.org")).await;
    let mut client = agent.client().await;
    let mut streams = open_x509_streams(&mut client, 60).await;
    agent.reload(&entry("after.example.org"));
    for (i, s) in streams.iter_mut().enumerate() {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), s.next())
            .await
            .unwrap_or_else(|_| panic!("stream {i}: no new SVID"))
            .unwrap_or_else(|| panic!("stream {i} ended"));
        let msg = next.unwrap_or_else(|e| panic!("stream {i} refused: {e:?}"));
        assert_eq!(msg.svids.len(), 1);
    }
    drop(streams);
    drop(client);
    agent.shutdown().await;
}
