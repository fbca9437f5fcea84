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
