//! Wakes the streams of a process when the kernel reports that it exec'd, so they are cut off at once
//! (the connection's ceiling no longer holds) instead of at the next push.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{Notify, watch};

use crate::sys::exec_events::ExecEvents;

/// Streams interested in exec events, by PID.
#[derive(Default)]
pub(crate) struct ExecHub {
    registry: Mutex<Registry>,
}

/// The notifiers by PID. Dropped notifiers are swept out when a list, or the map, has doubled since
/// the last sweep, so a registration costs O(1) amortised however many streams one process (or
/// every process) holds open.
#[derive(Default)]
struct Registry {
    by_pid: HashMap<u32, Vec<Weak<Notify>>>,
    /// The map's length at which it is swept next.
    sweep_at: usize,
}

/// Below this many PIDs the map is never swept as a whole.
const SWEEP_MIN: usize = 4096;

impl ExecHub {
    /// A notifier that fires when `pid` execs (kept alive by the caller; dropped when it stops caring).
    pub(crate) fn register(&self, pid: u32) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        if let Ok(mut reg) = self.registry.lock() {
            let reg = &mut *reg;
            if reg.by_pid.len() > reg.sweep_at.max(SWEEP_MIN) {
                reg.by_pid.retain(|_, v| {
                    v.retain(|w| w.strong_count() > 0);
                    !v.is_empty()
                });
                reg.sweep_at = reg.by_pid.len() * 2;
            }
            let list = reg.by_pid.entry(pid).or_default();
            if list.len() == list.capacity() {
                // Full: sweep before it grows (it doubles only when the live ones fill it).
                list.retain(|w| w.strong_count() > 0);
            }
            list.push(Arc::downgrade(&notify));
        }
        notify
    }

    /// How many notifiers are held for `pid`, dropped ones included (for tests).
    #[cfg(test)]
    fn held(&self, pid: u32) -> usize {
        self.registry
            .lock()
            .map(|r| r.by_pid.get(&pid).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    fn notify(&self, pids: Option<&[u32]>) {
        let Ok(mut reg) = self.registry.lock() else {
            return;
        };
        let map = &mut reg.by_pid;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Many streams of one process: dropped notifiers do not pile up, live ones all fire.
    #[tokio::test]
    async fn one_process_with_many_streams() {
        let hub = ExecHub::default();
        let live: Vec<_> = (0..1000).map(|_| hub.register(7)).collect();
        for _ in 0..100_000 {
            drop(hub.register(7));
        }
        // Live ones kept; dropped ones swept whenever the list filled: at most as many again.
        assert!(hub.held(7) <= 2 * 1024 + 1, "held {}", hub.held(7));
        hub.notify(Some(&[7]));
        for n in &live {
            tokio::time::timeout(std::time::Duration::from_secs(1), n.notified())
                .await
                .expect("every live notifier fires");
        }
        drop(live);
        drop(hub.register(7));
        hub.notify(Some(&[7]));
        assert!(hub.held(7) <= 1, "dropped ones are swept on notify");
    }

    /// Many processes that came and went: the map is swept, not grown without bound.
    #[test]
    fn many_processes_swept() {
        let hub = ExecHub::default();
        for pid in 0..50_000 {
            drop(hub.register(pid));
        }
        let len = hub.registry.lock().unwrap().by_pid.len();
        assert!(len <= SWEEP_MIN + 1, "map holds {len} PIDs");
    }
}
