//! The agent-wide shutdown signal: a `watch` of `bool` that turns `true` once.

use tokio::sync::watch;

/// Resolves once shutdown has been signalled (or its sender is gone).
pub(crate) async fn signalled(rx: &mut watch::Receiver<bool>) {
    // The guard returned by wait_for is dropped here, so callers never hold it across an await.
    let _ = rx.wait_for(|s| *s).await;
}
