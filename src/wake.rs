//! Waking the streams that follow a `watch` channel from a list of their own.
//!
//! A publisher sends on its `watch` (which keeps the value) and then calls [`Waiters::wake_all`];
//! each following stream keeps one registration ([`Updates`]) in that list between publications.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// Publishes `value` on `tx`, then wakes the streams that follow it from `waiters`: every
/// publisher's one way to change a followed channel.
pub(crate) fn publish<T>(tx: &watch::Sender<T>, waiters: &Waiters, value: T) {
    tx.send_replace(value);
    waiters.wake_all();
}

/// The open streams following one channel (an SVID's, the entries'), woken by its publications.
///
/// Each stream registers its waker once and keeps it here between pushes; a publication wakes them
/// from this one contiguous list. A `watch` channel's own waits sit in a linked list whose nodes lie
/// in each stream's memory: waking 10,000 streams through it took 34–49 ms, serial on one worker,
/// most of it missing the cache at every node (memory a stream has not touched since its last
/// push is slow to reach on a VM). In a small program with warm memory, 10,000 wake-ups took 4–6 ms
/// through a `watch` and 1.0–1.7 ms from a list like this one; in the agent, 1.1–2.3 ms.
#[derive(Default)]
pub struct Waiters {
    list: Mutex<WaiterList>,
}

#[derive(Default)]
struct WaiterList {
    /// Each stream's waker and its group (the process it serves). Never ends in an empty place.
    wakers: Vec<Option<(std::task::Waker, u64)>>,
    /// The empty places. The lowest is taken first, so taken places gather at the start and the
    /// list shrinks again after a peak (10,000 streams left ~0.3 MB behind per channel).
    free: std::collections::BTreeSet<usize>,
}

impl Waiters {
    /// Wakes every stream, in two passes: first one stream of each group (the first of each run
    /// of neighbours in the same group), then the others. The first stream of a process records
    /// the new SVID in the inventory; its siblings, run after every group's first, then find it
    /// durable instead of each waiting for that commit and being woken and run a second time.
    pub fn wake_all(&self) {
        let list = self.lock();
        for pass in [true, false] {
            let mut previous = None;
            for (waker, group) in list.wakers.iter().flatten() {
                let first = previous != Some(*group);
                previous = Some(*group);
                if first == pass {
                    waker.wake_by_ref();
                }
            }
        }
    }

    /// The list, even after a panic elsewhere while it was held: every change to it is a single
    /// store, so it is never half-made, and a stream must never be left unregistered (it would
    /// miss a rotation, or an entry change that takes its identity away).
    fn lock(&self) -> std::sync::MutexGuard<'_, WaiterList> {
        self.list
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts `waker` of `group` in place `at` (a new place when `None`); returns the place.
    fn register(&self, at: Option<usize>, waker: &std::task::Waker, group: u64) -> usize {
        let mut list = self.lock();
        let at = match at {
            Some(at) => at,
            None => match list.free.pop_first() {
                Some(at) => at,
                None => {
                    list.wakers.push(None);
                    list.wakers.len() - 1
                }
            },
        };
        list.wakers[at] = Some((waker.clone(), group));
        at
    }

    fn unregister(&self, at: usize) {
        let mut list = self.lock();
        let Some(place) = list.wakers.get_mut(at) else {
            return;
        };
        let waker = place.take();
        list.free.insert(at);
        while let Some(None) = list.wakers.last() {
            list.wakers.pop();
            let end = list.wakers.len();
            list.free.remove(&end);
        }
        let (len, capacity) = (list.wakers.len(), list.wakers.capacity());
        if capacity > 64 && len < capacity / 4 {
            list.wakers.shrink_to(len * 2);
        }
        drop(list);
        // Dropped outside the lock: it may be the last reference to a task.
        drop(waker);
    }

    /// How many streams are registered (tests).
    #[cfg(test)]
    fn registered(&self) -> usize {
        self.list
            .lock()
            .map(|l| l.wakers.iter().flatten().count())
            .unwrap_or(0)
    }
}

/// One subscriber's view of a channel: its current value (`watch`) and where to wait for the next.
pub struct Subscription<T> {
    rx: watch::Receiver<T>,
    waiters: Arc<Waiters>,
}

impl<T> Clone for Subscription<T> {
    fn clone(&self) -> Self {
        Self {
            rx: self.rx.clone(),
            waiters: self.waiters.clone(),
        }
    }
}

impl<T> std::ops::Deref for Subscription<T> {
    type Target = watch::Receiver<T>;
    fn deref(&self) -> &Self::Target {
        &self.rx
    }
}

impl<T> std::ops::DerefMut for Subscription<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.rx
    }
}

impl<T> Subscription<T> {
    /// A subscriber of `rx`, whose publisher wakes `waiters` after each change.
    pub fn new(rx: watch::Receiver<T>, waiters: Arc<Waiters>) -> Self {
        Self { rx, waiters }
    }

    /// A wait for this channel's publications after the ones this subscription has seen, by a stream
    /// of `group` (the process it serves: see [`Waiters::wake_all`]).
    pub fn updates(&self, group: u64) -> Updates<T> {
        Updates {
            rx: self.rx.clone(),
            waiters: self.waiters.clone(),
            group,
            registered: None,
        }
    }
}

/// Ready once the channel is published again (see [`Subscription::updates`]); the stream's waker
/// stays registered between publications, and leaves the list when this is dropped.
pub struct Updates<T> {
    rx: watch::Receiver<T>,
    waiters: Arc<Waiters>,
    group: u64,
    registered: Option<(usize, std::task::Waker)>,
}

impl<T> Updates<T> {
    /// Ready when a publication this has not seen was made (and marks it seen). A channel whose
    /// publisher is gone never becomes ready (the agent's shutdown signal ends such streams).
    pub fn poll_changed(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.take_change() {
            return std::task::Poll::Ready(());
        }
        let current = matches!(&self.registered, Some((_, w)) if w.will_wake(cx.waker()));
        if !current {
            let at = self.registered.as_ref().map(|(at, _)| *at);
            let at = self.waiters.register(at, cx.waker(), self.group);
            self.registered = Some((at, cx.waker().clone()));
        }
        // A publication made before the waker was in place is seen here.
        if self.take_change() {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }

    fn take_change(&mut self) -> bool {
        if self.rx.has_changed().unwrap_or(false) {
            self.rx.borrow_and_update();
            true
        } else {
            false
        }
    }
}

impl<T> Drop for Updates<T> {
    fn drop(&mut self) {
        if let Some((at, _)) = self.registered.take() {
            self.waiters.unregister(at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// A waker that counts its wake-ups.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Counting>, std::task::Waker) {
        let c = Arc::new(Counting(std::sync::atomic::AtomicUsize::new(0)));
        (c.clone(), std::task::Waker::from(c))
    }

    /// A waker that notes its name in a shared log when woken.
    struct Named(&'static str, Arc<Mutex<Vec<&'static str>>>);

    impl std::task::Wake for Named {
        fn wake(self: Arc<Self>) {
            self.1.lock().unwrap().push(self.0);
        }
    }

    #[test]
    fn a_publication_wakes_one_stream_of_each_process_before_its_siblings() {
        let tx = watch::Sender::new(0u32);
        let waiters = Arc::new(Waiters::default());
        let sub = Subscription::new(tx.subscribe(), waiters.clone());
        let woken = Arc::new(Mutex::new(Vec::new()));
        // Two processes' streams, registered in the order their callers opened them.
        let mut waits = Vec::new();
        for (name, pid) in [
            ("a1", 1),
            ("a2", 1),
            ("a3", 1),
            ("b1", 2),
            ("b2", 2),
            ("c1", 3),
        ] {
            let waker = std::task::Waker::from(Arc::new(Named(name, woken.clone())));
            let mut updates = sub.updates(pid);
            assert!(
                updates
                    .poll_changed(&mut std::task::Context::from_waker(&waker))
                    .is_pending()
            );
            waits.push(updates);
        }
        publish(&tx, &waiters, 1);
        assert_eq!(
            *woken.lock().unwrap(),
            ["a1", "b1", "c1", "a2", "a3", "b2"],
            "each process's first stream runs (and records the delivery) before its siblings"
        );
        for updates in &mut waits {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(
                updates.poll_changed(&mut cx).is_ready(),
                "every stream sees it"
            );
        }
    }

    #[test]
    fn a_streams_wait_stays_registered_wakes_on_each_publication_and_leaves_when_dropped() {
        let tx = watch::Sender::new(0u32);
        let waiters = Arc::new(Waiters::default());
        let sub = Subscription::new(tx.subscribe(), waiters.clone());
        let (count, waker) = counting();
        let mut cx = std::task::Context::from_waker(&waker);
        let mut updates = sub.updates(0);
        // Made before a publication, polled after it: the publication is seen, not lost.
        let mut late = sub.updates(0);
        assert!(updates.poll_changed(&mut cx).is_pending());
        assert_eq!(waiters.registered(), 1);

        publish(&tx, &waiters, 1);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the registered stream is woken"
        );
        assert!(updates.poll_changed(&mut cx).is_ready());
        assert!(updates.poll_changed(&mut cx).is_pending(), "seen once");
        assert_eq!(
            waiters.registered(),
            1,
            "the same waker is not registered twice"
        );
        assert!(late.poll_changed(&mut cx).is_ready());
        assert_eq!(waiters.registered(), 1);

        // Polled with another waker: that one is woken from now on, in the same place.
        let (other_count, other) = counting();
        assert!(
            updates
                .poll_changed(&mut std::task::Context::from_waker(&other))
                .is_pending()
        );
        assert_eq!(waiters.registered(), 1);
        drop(late);
        publish(&tx, &waiters, 2);
        assert_eq!(other_count.0.load(Ordering::SeqCst), 1);
        assert_eq!(
            count.0.load(Ordering::SeqCst),
            1,
            "the replaced waker is not woken"
        );

        drop(updates);
        assert_eq!(waiters.registered(), 0, "a dropped wait leaves the list");
        let mut again = sub.updates(0);
        assert!(
            again.poll_changed(&mut cx).is_ready(),
            "the last publication is news to it"
        );
        assert!(again.poll_changed(&mut cx).is_pending());
        assert_eq!(
            waiters.list.lock().unwrap().wakers.len(),
            1,
            "places are reused"
        );
    }

    #[test]
    fn the_list_takes_the_lowest_empty_place_and_shrinks_after_a_peak() {
        let tx = watch::Sender::new(0u32);
        let waiters = Arc::new(Waiters::default());
        let sub = Subscription::new(tx.subscribe(), waiters.clone());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut waits: Vec<Option<Updates<u32>>> = (0..10_000)
            .map(|i| {
                let mut updates = sub.updates(i);
                assert!(updates.poll_changed(&mut cx).is_pending());
                Some(updates)
            })
            .collect();
        let place =
            |u: &Option<Updates<u32>>| u.as_ref().and_then(|u| u.registered.as_ref()).map(|r| r.0);
        // The peak is over: every other stream leaves from the last down, then all but every
        // thousandth of the rest, from the first up.
        for i in (0..10_000).rev().step_by(2) {
            waits[i] = None;
        }
        for i in (0..10_000).step_by(2) {
            if i % 1000 != 0 {
                waits[i] = None;
            }
        }
        {
            let list = waiters.list.lock().unwrap();
            assert_eq!(list.wakers.len(), 9001, "ends at the last taken place");
            assert!(
                list.wakers.capacity() <= 18_002,
                "{}",
                list.wakers.capacity()
            );
        }
        // A new stream takes the lowest empty place.
        let mut newcomer = sub.updates(7);
        assert!(newcomer.poll_changed(&mut cx).is_pending());
        assert_eq!(newcomer.registered.as_ref().map(|r| r.0), Some(1));
        drop(newcomer);
        for w in waits.iter_mut().rev() {
            if place(w).is_some() {
                *w = None;
            }
        }
        let list = waiters.list.lock().unwrap();
        assert_eq!(list.wakers.len(), 0);
        assert!(
            list.free.is_empty(),
            "no empty place is remembered past the end"
        );
        assert!(list.wakers.capacity() <= 64, "{}", list.wakers.capacity());
    }
}
