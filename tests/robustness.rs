//! Bad input on the socket never stops the agent serving others.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use lanyard::proto::X509svidRequest;

#[tokio::test]
async fn garbage_and_abrupt_disconnects_leave_the_agent_serving() {
    let agent = TestAgent::start(&format!(
        "[[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ))
    .await;
    let socket = agent.socket.clone();
    tokio::task::spawn_blocking(move || {
        for i in 0..50u32 {
            let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            let junk: Vec<u8> = (0..(i * 37 % 2000)).map(|j| (j * 31 + i) as u8).collect();
            let _ = s.write_all(&junk);
            if i % 2 == 0 {
                let _ = s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\xff\xff\xff\xff");
            }
        }
    })
    .await
    .unwrap();
    // A connection that stays open and silent does not block others.
    let _silent = tokio::net::UnixStream::connect(&agent.socket)
        .await
        .unwrap();
    // Streams dropped mid-flight, connections dropped with them.
    for _ in 0..20 {
        let mut c = agent.client().await;
        let mut s = c
            .fetch_x509svid(X509svidRequest {})
            .await
            .unwrap()
            .into_inner();
        next_within(&mut s, 5).await;
        drop(s);
        drop(c);
    }
    let mut c = agent.client().await;
    let mut s = c
        .fetch_x509svid(X509svidRequest {})
        .await
        .unwrap()
        .into_inner();
    let msg = next_within(&mut s, 5).await;
    assert_eq!(msg.svids[0].spiffe_id, "spiffe://example.org/a");
    // Abandoned streams release their slots.
    tokio::time::sleep(Duration::from_millis(200)).await;
    agent.shutdown().await;
}

/// A connection over its uid's share is answered with the refusal naming the limit and then closed
/// by the agent at once, which gives back its place among the 64 refused connections kept to be
/// answered. So a client that connects again and again, keeping every connection it made, has each
/// one answered — none is closed unanswered, however fast it comes back (each connection here is
/// made, asked and answered in well under the second a refused connection may wait for a request)
/// — and each reads the end of the connection after its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_are_answered_then_closed_one_after_another() {
    let agent = TestAgent::start(&format!(
        "[limits]\nmax_connections_per_uid = 1\n\
         [[entry]]\nspiffe_id = \"spiffe://example.org/a\"\nselectors = [\"unix:uid:{}\"]\n",
        euid()
    ))
    .await;
    // The uid's one place, taken by a served client.
    let mut holder = agent.client().await;
    let jwt = || lanyard::proto::JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    };
    holder
        .fetch_jwtsvid(jwt())
        .await
        .expect("the holder is served");
    let mut kept = Vec::new();
    for i in 0..200 {
        let io = tokio::net::UnixStream::connect(&agent.socket)
            .await
            .unwrap();
        let (mut send, conn) = h2::client::handshake(io).await.unwrap();
        let closed = tokio::spawn(conn);
        let request = http::Request::post("http://localhost/SpiffeWorkloadAPI/FetchJWTSVID")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("workload.spiffe.io", "true")
            .body(())
            .unwrap();
        let (answer, mut body) = send.send_request(request, false).unwrap();
        // A JWTSVIDRequest for audience "a", gRPC-framed.
        body.send_data(
            bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 1, b'a']),
            true,
        )
        .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("answered")
            .unwrap_or_else(|e| panic!("connection {i} closed unanswered: {e}"));
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        assert_eq!(
            header("grpc-status"),
            "8",
            "connection {i}: {:?}",
            answer.headers()
        );
        assert!(
            header("grpc-message").contains("limits.max_connections_per_uid"),
            "connection {i}: {:?}",
            answer.headers()
        );
        // The client keeps its side open, and comes back at once.
        kept.push((send, closed));
    }
    for (i, (_send, closed)) in kept.into_iter().enumerate() {
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .unwrap_or_else(|_| panic!("connection {i} is closed by the agent after its answer"))
            .unwrap()
            .ok();
    }
    holder
        .fetch_jwtsvid(jwt())
        .await
        .expect("the holder is still served");
    agent.shutdown().await;
}
