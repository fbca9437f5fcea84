//! The agent's HTTP health endpoints, for Kubernetes probes and load balancers.

mod common;

use common::*;
use lanyard::health::probe;

/// `/live` answers while the process serves; `/ready` only while the authority is loaded and the
/// Workload API socket is bound (here: until the socket file disappears).
#[tokio::test]
async fn live_and_ready_follow_the_agent_state() {
    let agent = TestAgent::start("").await;
    let addr = agent.running().health_addr.expect("health endpoint on");
    assert!(addr.ip().is_loopback());
    assert_eq!(probe(addr, "/live").await.unwrap(), (200, "live\n".into()));
    assert_eq!(
        probe(addr, "/ready").await.unwrap(),
        (200, "ready\n".into())
    );
    let (code, metrics) = probe(addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("lanyard_build_info"), "{metrics}");
    assert_eq!(probe(addr, "/nope").await.unwrap().0, 404);

    std::fs::remove_file(&agent.socket).unwrap();
    let (code, body) = probe(addr, "/ready").await.unwrap();
    assert_eq!(code, 503);
    assert!(body.contains(&agent.socket.display().to_string()), "{body}");
    assert_eq!(probe(addr, "/live").await.unwrap().0, 200);
    agent.shutdown().await;
    assert!(
        probe(addr, "/live").await.is_err(),
        "the endpoint stops with the agent"
    );
}

/// The embedded default is loopback-only; a bad address is refused with the value named.
#[test]
fn the_default_address_is_loopback_and_bad_ones_are_named() {
    let config = lanyard::config::Config::from_toml("").unwrap();
    let addr = config.health_addr.unwrap();
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(addr.port(), 8788);
    let off = lanyard::config::Config::from_toml("[health]\naddress = \"off\"\n").unwrap();
    assert_eq!(off.health_addr, None);
    let err = lanyard::config::Config::from_toml("[health]\naddress = \"localhost:80\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("health.address") && err.contains("localhost:80"),
        "{err}"
    );
}

/// `/ready` reports pressure: open connections above 90 % of `limits.max_connections` make it fail,
/// naming the resource; when they close it is ready again.
#[tokio::test]
async fn ready_reports_connection_pressure() {
    let agent =
        TestAgent::start("[limits]\nmax_connections = 10\nmax_connections_per_uid = 10\n").await;
    let addr = agent.running().health_addr.expect("health endpoint on");
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(
            tokio::net::UnixStream::connect(&agent.socket)
                .await
                .unwrap(),
        );
    }
    let socket = agent.socket.clone();
    let mut body = String::new();
    for _ in 0..100 {
        let (code, b) = probe(addr, "/ready").await.unwrap();
        body = b;
        if code == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(body.contains("connections above 90 %"), "{body}");
    drop(held);
    let mut ok = false;
    for _ in 0..100 {
        if probe(addr, "/ready").await.unwrap().0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        ok,
        "ready again once the connections closed ({})",
        socket.display()
    );
    agent.shutdown().await;
}
