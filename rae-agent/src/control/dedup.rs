//! Replies to cloud commands already answered, by (requester, correlation data): a command
//! delivered again (a QoS 1 redelivery, or the requester retrying after a lost reply) gets
//! the same reply and has no second effect.
//!
//! Bounded three ways, each eviction counted: entries (`[control] duplicate_max_entries`),
//! bytes (the replies' encoded size plus their keys, [`MAX_BYTES`]; an inventory reply of
//! thousands of sessions is tens of KiB), and age (`[control] duplicate_window_secs`). Pure:
//! time comes in as core-clock milliseconds.

use std::collections::{HashMap, VecDeque};

use rae_proto::{CommandReply, RequesterId};

/// The replies kept, in bytes at most.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;
/// What an entry costs beyond its key and reply bytes (map and queue slots).
const ENTRY_OVERHEAD: usize = 64;

type Key = (RequesterId, Vec<u8>);

#[derive(Debug)]
struct Entry {
    reply: CommandReply,
    at_ms: i64,
    cost: usize,
}

/// Evictions so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Evictions {
    /// To make room (entries or bytes).
    pub full: u64,
    /// Older than the window.
    pub aged: u64,
}

#[derive(Debug)]
pub struct DuplicateCache {
    max_entries: usize,
    max_bytes: usize,
    window_ms: i64,
    entries: HashMap<Key, Entry>,
    /// Keys oldest first; each key once (a key is inserted only when it is absent).
    order: VecDeque<Key>,
    bytes: usize,
    evictions: Evictions,
}

impl DuplicateCache {
    pub fn new(max_entries: usize, max_bytes: usize, window_ms: i64) -> DuplicateCache {
        DuplicateCache {
            max_entries: max_entries.max(1),
            max_bytes,
            window_ms,
            entries: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            evictions: Evictions::default(),
        }
    }

    /// The earlier reply to this request, if it is still within the window.
    pub fn get(
        &mut self,
        requester: &RequesterId,
        correlation: &[u8],
        now_ms: i64,
    ) -> Option<&CommandReply> {
        self.expire(now_ms);
        self.entries
            .get(&(requester.clone(), correlation.to_vec()))
            .map(|entry| &entry.reply)
    }

    /// Remembers `reply` for this request. A reply larger than the whole budget is not kept
    /// (a redelivery then runs again; only an inventory could be that large, and it has no
    /// effect).
    pub fn insert(
        &mut self,
        requester: RequesterId,
        correlation: Vec<u8>,
        reply: CommandReply,
        now_ms: i64,
    ) {
        self.expire(now_ms);
        let reply_len = reply.encode().map_or(0, |bytes| bytes.len());
        let cost = ENTRY_OVERHEAD + requester.as_str().len() + correlation.len() + reply_len;
        if cost > self.max_bytes {
            self.evictions.full += 1;
            return;
        }
        let key = (requester, correlation);
        if self.entries.contains_key(&key) {
            return;
        }
        while self.entries.len() >= self.max_entries || self.bytes + cost > self.max_bytes {
            if !self.evict_oldest() {
                break;
            }
            self.evictions.full += 1;
        }
        self.bytes += cost;
        self.order.push_back(key.clone());
        self.entries.insert(
            key,
            Entry {
                reply,
                at_ms: now_ms,
                cost,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn evictions(&self) -> Evictions {
        self.evictions
    }

    fn expire(&mut self, now_ms: i64) {
        while let Some(oldest) = self.order.front() {
            let aged = self.entries.get(oldest).map_or(true, |entry| {
                now_ms.saturating_sub(entry.at_ms) >= self.window_ms
            });
            if !aged {
                break;
            }
            if self.evict_oldest() {
                self.evictions.aged += 1;
            }
        }
    }

    /// Drops the oldest entry; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some(key) = self.order.pop_front() else {
            return false;
        };
        if let Some(entry) = self.entries.remove(&key) {
            self.bytes -= entry.cost;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requester(name: &str) -> RequesterId {
        RequesterId::new(name).expect("requester id")
    }

    #[test]
    fn a_reply_is_found_again_until_it_ages_out() {
        let mut cache = DuplicateCache::new(8, MAX_BYTES, 1_000);
        cache.insert(requester("ci"), b"c1".to_vec(), CommandReply::internal(), 0);
        assert_eq!(
            cache.get(&requester("ci"), b"c1", 999),
            Some(&CommandReply::internal())
        );
        assert_eq!(
            cache.get(&requester("ci"), b"c2", 999),
            None,
            "other correlation"
        );
        assert_eq!(
            cache.get(&requester("other"), b"c1", 999),
            None,
            "other requester"
        );
        assert_eq!(cache.get(&requester("ci"), b"c1", 1_000), None, "aged out");
        assert_eq!(cache.evictions(), Evictions { full: 0, aged: 1 });
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_entry_cap_evicts_the_oldest_and_counts_it() {
        let mut cache = DuplicateCache::new(2, MAX_BYTES, 60_000);
        for (i, c) in [b"a", b"b", b"c"].into_iter().enumerate() {
            cache.insert(
                requester("ci"),
                c.to_vec(),
                CommandReply::rate_limited(),
                i as i64,
            );
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get(&requester("ci"), b"a", 3), None);
        assert!(cache.get(&requester("ci"), b"c", 3).is_some());
        assert_eq!(cache.evictions().full, 1);
    }

    #[test]
    fn the_byte_budget_evicts_too() {
        let reply = CommandReply::bad_request("x".repeat(100));
        let one = ENTRY_OVERHEAD + 2 + 1 + reply.encode().unwrap().len();
        let mut cache = DuplicateCache::new(100, one * 2, 60_000);
        for c in [b"a", b"b", b"c"] {
            cache.insert(requester("ci"), c.to_vec(), reply.clone(), 0);
        }
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.evictions().full, 1);
        // Larger than the whole budget: not kept, counted.
        let huge = CommandReply::bad_request("x".repeat(one * 3));
        cache.insert(requester("ci"), b"d".to_vec(), huge, 0);
        assert_eq!(cache.get(&requester("ci"), b"d", 0), None);
        assert_eq!(cache.evictions().full, 2);
    }
}
