//! Bounded caches that forget the entry used least recently, one at a time.
//!
//! A cache a caller can fill (names of its many uids, hashes of its many programs, policy subsets
//! for its many audiences) must not be emptied when full: that makes every other caller's next
//! request pay the miss at once, through the same rationed turns the filler is using. Each entry
//! keeps the [`recency`] count of its last use instead, and [`insert_bounded`] forgets only the
//! oldest.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The next value of a process-wide count that orders uses of cache entries (a logical clock: one
/// relaxed atomic add, no clock read on the cached path).
pub(crate) fn recency() -> u64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    COUNT.fetch_add(1, Ordering::Relaxed)
}

/// Puts `value` in `cache` under `key`; a new key in a cache that holds `capacity` first makes room
/// ([`make_room`]). Every bounded cache a caller can fill adds its entries through this.
pub(crate) fn insert_bounded<K: Clone + Eq + std::hash::Hash, V>(
    cache: &mut HashMap<K, V>,
    capacity: usize,
    key: K,
    value: V,
    used: impl Fn(&V) -> u64,
) {
    if !cache.contains_key(&key) {
        make_room(cache, capacity, used);
    }
    cache.insert(key, value);
}

/// Makes room in `cache` for one more entry when it holds `capacity`: forgets the entry used least
/// recently (`used`, a [`recency`] value). A scan of the entries, only when one is added to a full
/// cache; callers ration what adds entries, so the scan is paid at that rate.
fn make_room<K: Clone + Eq + std::hash::Hash, V>(
    cache: &mut HashMap<K, V>,
    capacity: usize,
    used: impl Fn(&V) -> u64,
) {
    if cache.len() < capacity {
        return;
    }
    if let Some(oldest) = cache
        .iter()
        .min_by_key(|(_, v)| used(v))
        .map(|(k, _)| k.clone())
    {
        cache.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_cache_forgets_only_the_entry_used_least_recently() {
        let mut cache: HashMap<String, u64> = HashMap::new();
        for name in ["a", "b", "c"] {
            insert_bounded(&mut cache, 3, name.to_string(), recency(), |u| *u);
        }
        // "a" is used again, so "b" is now the oldest.
        *cache.get_mut("a").expect("a is cached") = recency();
        insert_bounded(&mut cache, 3, "d".to_string(), recency(), |u| *u);
        let mut kept: Vec<&str> = cache.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["a", "c", "d"]);
        // A key already cached is replaced, nothing forgotten; below capacity nothing is either.
        insert_bounded(&mut cache, 3, "c".to_string(), recency(), |u| *u);
        insert_bounded(&mut cache, 4, "e".to_string(), recency(), |u| *u);
        let mut kept: Vec<&str> = cache.keys().map(String::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["a", "c", "d", "e"]);
    }
}
