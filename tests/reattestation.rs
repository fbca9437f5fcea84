//! Before a push every stream's caller is attested again; when a rotation wakes many streams of one
//! connection, one re-attestation made after the rotation's publication stands for all of them
//! (`PinnedProcess::recent_attestation`), and never for another connection's streams. Its own test
//! binary: the counters read here are the process's.

mod common;

use common::*;
use lanyard::metrics::{Outcome, metrics};

fn reattested(outcome: &'static str) -> u64 {
    metrics()
        .reattestations
        .get_or_create(&Outcome { outcome })
        .get()
}

/// Two connections of ten streams each, a 1-minute SVID rotated at about half-life: every stream
/// gets the new SVID; twenty re-attestations, one afresh per connection (at most one more where two
/// streams of a connection were attested at the same moment), the rest shared within it.
#[tokio::test]
async fn a_rotation_attests_each_connection_once_not_each_stream() {
    let agent = TestAgent::start(&format!(
        "[svid]\nx509_ttl = \"1m\"\n[[entry]]\nspiffe_id = \"spiffe://example.org/shared\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ))
    .await;
    let mut streams = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = agent.client().await;
        streams.extend(open_x509_streams(&mut c, 10).await);
        clients.push(c);
    }
    let (afresh, shared) = (reattested("afresh"), reattested("shared"));
    for s in &mut streams {
        let rotated = next_within(&mut *s, 60).await;
        assert_eq!(rotated.svids.len(), 1);
    }
    let (afresh, shared) = (reattested("afresh") - afresh, reattested("shared") - shared);
    assert_eq!(afresh + shared, 20, "one re-attestation per stream");
    assert!(
        (2..=4).contains(&afresh),
        "one afresh per connection (two at most): {afresh} afresh, {shared} shared"
    );
    drop(streams);
    drop(clients);
    agent.shutdown().await;
}
