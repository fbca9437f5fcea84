//! Process lifecycle: the one owner of "a process that holds credentials has exited".
//!
//! Whoever delivers a credential asks [`Lifecycle::watch`] for its holder. Each holder (PID plus
//! instance) gets one exit watch on a duplicate of its pidfd, however many deliveries and streams it
//! has; when the process exits, one typed [`Exited`] message goes to the app's dispatcher, which
//! withdraws the holder's credentials in the inventory and tells the issuer which SVIDs no longer
//! need to stay cached. No callbacks between modules: messages only.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::inventory::{Holder, HolderInfo};
use crate::sys::pidfd::ExitWatch;

/// A holder's process has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exited {
    pub(crate) holder: Holder,
}

/// Watches holders' processes. Cloning shares it.
#[derive(Clone)]
pub(crate) struct Lifecycle {
    watched: Arc<Mutex<HashSet<Holder>>>,
    tx: mpsc::UnboundedSender<Exited>,
}

impl Lifecycle {
    /// A lifecycle and the receiver of its exit messages.
    pub(crate) fn new() -> (Self, mpsc::UnboundedReceiver<Exited>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                watched: Arc::default(),
                tx,
            },
            rx,
        )
    }

    /// Watches `holder` for exit, once per holder. Must run inside the tokio runtime.
    pub(crate) fn watch(&self, holder: &HolderInfo) {
        let who = holder.holder;
        match self.watched.lock() {
            Ok(mut w) => {
                if !w.insert(who) {
                    return;
                }
            }
            Err(_) => return,
        }
        let watch = match ExitWatch::new(&holder.pidfd) {
            Ok(w) => w,
            Err(e) => {
                if let Ok(mut w) = self.watched.lock() {
                    w.remove(&who);
                }
                tracing::warn!(pid = who.pid, error = %e, "cannot watch a credential holder for exit");
                return;
            }
        };
        let (watched, tx) = (self.watched.clone(), self.tx.clone());
        tokio::spawn(async move {
            watch.exited().await;
            tracing::debug!(pid = who.pid, "credential holder exited");
            if let Ok(mut w) = watched.lock() {
                w.remove(&who);
            }
            let _ = tx.send(Exited { holder: who });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::pidfd::Pidfd;
    use std::time::Duration;

    /// One exit message per holder, however often it was watched, and only when it exits.
    #[tokio::test]
    async fn one_message_per_holder_on_exit() {
        let (lifecycle, mut exits) = Lifecycle::new();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let holder = HolderInfo {
            holder: Holder {
                pid: child.id(),
                instance: 1,
            },
            uid: 0,
            exe: "/bin/sleep".into(),
            pidfd: Arc::new(Pidfd::open(child.id()).unwrap()),
        };
        for _ in 0..10 {
            lifecycle.watch(&holder);
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(100), exits.recv())
                .await
                .is_err(),
            "nothing before the exit"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let exited = tokio::time::timeout(Duration::from_secs(5), exits.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exited.holder, holder.holder);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), exits.recv())
                .await
                .is_err(),
            "one message, not ten"
        );
    }
}
