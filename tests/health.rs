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
    assert_eq!(probe(addr, "/metrics").await.unwrap().0, 404);

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
