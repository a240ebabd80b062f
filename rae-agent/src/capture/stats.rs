//! The capture's counters, shared with whoever reports them (logs, `raectl`, metrics).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};

use crate::wire::{DropCounters, DropReason};

/// Live counters, written by the capture thread and readable from any thread.
#[derive(Debug, Default)]
pub struct CaptureStats {
    frames: AtomicU64,
    bytes: AtomicU64,
    kernel_packets: AtomicU64,
    kernel_drops: AtomicU64,
    queue_full: AtomicU64,
    truncated: AtomicU64,
    unparsable: AtomicU64,
    parse_drops: Mutex<DropCounters>,
    read_errors: AtomicU64,
    link_ups: AtomicU64,
    link_downs: AtomicU64,
    open_failures: AtomicU64,
    link_up: AtomicBool,
}

/// The counters at one moment (each read on its own, so a snapshot taken while frames
/// arrive may be a frame apart between fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCounters {
    /// Frames read from the socket: everything that got past the kernel filter.
    pub frames: u64,
    /// Their length on the wire, in bytes.
    pub bytes: u64,
    /// Frames the filter passed, as the kernel counts them (`PACKET_STATISTICS`
    /// `tp_packets`, accumulated across reads and reopened sockets; includes drops).
    pub kernel_packets: u64,
    /// Frames the filter passed that the kernel dropped because the socket's receive
    /// buffer was full (`tp_drops`, accumulated).
    pub kernel_drops: u64,
    /// Frames read but dropped because the consumer's queue was full.
    pub queue_full: u64,
    /// Frames read but dropped because they were longer than the snap length.
    pub truncated: u64,
    /// Frames read but dropped because the parsers rejected them; by reason in
    /// [`CaptureStats::parse_drops`].
    pub unparsable: u64,
    /// Failed reads other than timeouts (each also reopens the socket).
    pub read_errors: u64,
    /// Times the socket opened: once at start, once more after each outage.
    pub link_ups: u64,
    /// Times the interface was found missing or down, or the socket was lost.
    pub link_downs: u64,
    /// Failed attempts to open the socket (each retry counts; only the first is logged).
    pub open_failures: u64,
    /// Whether the socket is open now (false once the capture has stopped).
    pub link_up: bool,
}

impl CaptureCounters {
    /// Link state changes so far (each one logged once).
    pub fn link_changes(&self) -> u64 {
        self.link_ups + self.link_downs
    }
}

impl CaptureStats {
    pub fn snapshot(&self) -> CaptureCounters {
        CaptureCounters {
            frames: self.frames.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            kernel_packets: self.kernel_packets.load(Relaxed),
            kernel_drops: self.kernel_drops.load(Relaxed),
            queue_full: self.queue_full.load(Relaxed),
            truncated: self.truncated.load(Relaxed),
            unparsable: self.unparsable.load(Relaxed),
            read_errors: self.read_errors.load(Relaxed),
            link_ups: self.link_ups.load(Relaxed),
            link_downs: self.link_downs.load(Relaxed),
            open_failures: self.open_failures.load(Relaxed),
            link_up: self.link_up.load(Relaxed),
        }
    }

    /// Why frames were unparsable, by layer and detail.
    pub fn parse_drops(&self) -> DropCounters {
        self.drops().clone()
    }

    fn drops(&self) -> MutexGuard<'_, DropCounters> {
        // Counters stay meaningful even if a holder panicked mid-update.
        self.parse_drops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn unparsable(&self, reason: DropReason) {
        self.unparsable.fetch_add(1, Relaxed);
        self.drops().record(reason);
    }

    pub(crate) fn frame(&self, wire_len: usize) {
        self.frames.fetch_add(1, Relaxed);
        self.bytes.fetch_add(wire_len as u64, Relaxed);
    }

    pub(crate) fn kernel(&self, packets: u64, drops: u64) {
        self.kernel_packets.fetch_add(packets, Relaxed);
        self.kernel_drops.fetch_add(drops, Relaxed);
    }

    pub(crate) fn queue_full(&self) {
        self.queue_full.fetch_add(1, Relaxed);
    }

    pub(crate) fn truncated(&self) {
        self.truncated.fetch_add(1, Relaxed);
    }

    pub(crate) fn read_error(&self) {
        self.read_errors.fetch_add(1, Relaxed);
    }

    pub(crate) fn open_failed(&self) {
        self.open_failures.fetch_add(1, Relaxed);
    }

    /// The capture stopped: the socket is closed, which is not a link change.
    pub(crate) fn closed(&self) {
        self.link_up.store(false, Relaxed);
    }

    pub(crate) fn link(&self, up: bool) {
        let counter = if up { &self.link_ups } else { &self.link_downs };
        counter.fetch_add(1, Relaxed);
        self.link_up.store(up, Relaxed);
    }
}

/// A recurring condition (queue full, kernel drops) logged as two lines, when it starts
/// and when it ends, however often it recurs in between.
#[derive(Debug, Default)]
pub(crate) struct Episode {
    active: bool,
    count: u64,
}

impl Episode {
    /// The condition happened `n` times; `true` if this starts an episode.
    pub fn hit(&mut self, n: u64) -> bool {
        self.count += n;
        !std::mem::replace(&mut self.active, true)
    }

    /// The condition is over; the episode's count if one just ended.
    pub fn clear(&mut self) -> Option<u64> {
        if !std::mem::replace(&mut self.active, false) {
            return None;
        }
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_starts_once_and_ends_once_with_its_count() {
        let mut episode = Episode::default();
        assert_eq!(episode.clear(), None);
        assert!(episode.hit(1));
        assert!(!episode.hit(5));
        assert!(!episode.hit(1));
        assert_eq!(episode.clear(), Some(7));
        assert_eq!(episode.clear(), None);
        assert!(episode.hit(2));
        assert_eq!(episode.clear(), Some(2));
    }

    #[test]
    fn link_changes_count_both_ways_and_track_the_state() {
        let stats = CaptureStats::default();
        stats.link(true);
        stats.link(false);
        stats.link(true);
        let now = stats.snapshot();
        assert_eq!(
            (now.link_ups, now.link_downs, now.link_changes()),
            (2, 1, 3)
        );
        assert!(now.link_up);
    }
}
