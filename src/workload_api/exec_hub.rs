//! Wakes the streams of a process when the kernel reports that it exec'd, so they are cut off at once
//! (the connection's ceiling no longer holds) instead of at the next push.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, watch};

use crate::sys::exec_events::ExecEvents;

/// Streams interested in exec events, by PID.
#[derive(Default)]
pub(crate) struct ExecHub {
    map: Mutex<HashMap<u32, Vec<Weak<Notify>>>>,
}

impl ExecHub {
    /// A notifier that fires when `pid` execs (kept alive by the caller; dropped when it stops caring).
    pub(crate) fn register(&self, pid: u32) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        if let Ok(mut map) = self.map.lock() {
            if map.len() > 4096 {
                map.retain(|_, v| {
                    v.retain(|w| w.strong_count() > 0);
                    !v.is_empty()
                });
            }
            let list = map.entry(pid).or_default();
            list.retain(|w| w.strong_count() > 0);
            list.push(Arc::downgrade(&notify));
        }
        notify
    }

    fn notify(&self, pids: Option<&[u32]>) {
        let Ok(mut map) = self.map.lock() else { return };
        let wake = |list: &mut Vec<Weak<Notify>>| {
            list.retain(|w| match w.upgrade() {
                Some(n) => {
                    // A permit is kept if the stream is busy, so the event is not lost.
                    n.notify_one();
                    true
                }
                None => false,
            });
        };
        match pids {
            Some(pids) => {
                for pid in pids {
                    if let Some(list) = map.get_mut(pid) {
                        wake(list);
                    }
                }
            }
            None => map.values_mut().for_each(wake),
        }
    }

    /// Reads exec events until `shutdown`. Without the process connector (no CAP_NET_ADMIN) it logs
    /// once and returns: streams are then re-attested before each push only.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let events = match ExecEvents::subscribe() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "exec events unavailable; callers are re-attested before each push only");
                crate::shutdown::signalled(&mut shutdown).await;
                return;
            }
        };
        loop {
            tokio::select! {
                _ = crate::shutdown::signalled(&mut shutdown) => return,
                next = events.next() => match next {
                    Ok(Some(pids)) => self.notify(Some(&pids)),
                    // Events were lost: everyone re-checks.
                    Ok(None) => self.notify(None),
                    Err(e) => {
                        tracing::warn!(error = %e, "exec events failed; callers are re-attested before each push only");
                        crate::shutdown::signalled(&mut shutdown).await;
                        return;
                    }
                },
            }
        }
    }
}
