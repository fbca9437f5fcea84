//! Turns at slow work shared by every caller, with a share for each user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Slow work shared by every caller (name-service lookups, reading executables): at most `total`
/// at once, and at most `per_user` for the callers of one user (their share uid).
pub(super) struct Slots {
    /// Taken in turn (first come, first served) by whoever holds a user's slot.
    pub(super) gate: Arc<tokio::sync::Semaphore>,
    per_user: usize,
    /// Each user's own slots, while any is held or waited for.
    pub(super) users: Mutex<HashMap<u32, Arc<tokio::sync::Semaphore>>>,
}

impl Slots {
    pub(super) fn new(total: usize, per_user: usize) -> Arc<Self> {
        Arc::new(Self {
            gate: Arc::new(tokio::sync::Semaphore::new(total)),
            per_user,
            users: Mutex::default(),
        })
    }
}

/// One of a user's slots, held (or waited for) while it lives; the user's entry leaves
/// [`Slots::users`] once nobody holds or waits for one.
pub(super) struct UserSlot {
    all: Arc<Slots>,
    user: u32,
    slots: Option<Arc<tokio::sync::Semaphore>>,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl UserSlot {
    pub(super) fn new(all: &Arc<Slots>, user: u32) -> Self {
        let slots = all.users.lock().ok().map(|mut users| {
            users
                .entry(user)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(all.per_user)))
                .clone()
        });
        Self {
            all: all.clone(),
            user,
            slots,
            held: None,
        }
    }

    /// Waits for one of the user's slots.
    pub(super) async fn acquire(&mut self) -> bool {
        if let Some(slots) = &self.slots {
            self.held = slots.clone().acquire_owned().await.ok();
        }
        self.held.is_some()
    }

    /// One of the user's slots if one is free now.
    pub(super) fn try_acquire(&mut self) -> bool {
        if let Some(slots) = &self.slots {
            self.held = slots.clone().try_acquire_owned().ok();
        }
        self.held.is_some()
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Ok(mut users) = self.all.users.lock() {
            self.held = None;
            self.slots = None;
            if users
                .get(&self.user)
                .is_some_and(|slots| Arc::strong_count(slots) == 1)
            {
                users.remove(&self.user);
            }
        }
    }
}
