//! The capture task: the only owner of the AF_PACKET socket on the LAN interface.
//!
//! One blocking thread reads the frames the kernel [`filter`] lets through (ARP, DHCPv4,
//! ICMPv6 RS/RA/NS/NA, mDNS, SSDP) and hands each to the consumer as a [`CapturedFrame`]
//! over a bounded channel. Bulk traffic is dropped by the filter inside the kernel and
//! never wakes the thread; reads block with a timeout (the thread wakes twice a second
//! when the LAN is quiet, to notice shutdown), so it never spins.
//!
//! Parts:
//! - [`filter`]: the classic BPF program, its assembler and its cross-check with tcpdump.
//! - `socket`: the socket itself (libc, each `unsafe` with its reason).
//! - [`link`]: the pure state machine for an interface that goes away and comes back, with
//!   exponential backoff and one [`LinkChange`] (so one log line) per state change.
//! - [`stats`]: counters ([`CaptureStats`]): frames, bytes, kernel packets and drops
//!   (`PACKET_STATISTICS`, accumulated, since the kernel resets them on every read),
//!   unparsable frames (by reason), queue-full drops, truncated frames, read errors,
//!   link changes and failed reopen attempts.
//!
//! Every frame is parsed once here, so only frames the [`crate::wire`] parsers accept are
//! handed on; the rest are counted by reason ([`CaptureStats::parse_drops`]). The consumer
//! parses again ([`CapturedFrame::parse`]): zero-copy parsing is cheaper than sending
//! owned, parsed frames across the channel.
//!
//! Nothing is dropped silently: an unparsable frame, a full queue, a frame over the snap
//! length and a kernel drop each have a counter, and a recurring queue-full or kernel drop
//! is logged when it starts and when it ends, never per frame. Unparsable frames are only
//! counted: on a LAN with a broken device they would otherwise be a log line each.
//!
//! Limitations:
//! - The frame is copied into a fresh `Vec` per frame; after the filter that is a few
//!   frames per second, so a buffer pool would not pay for itself.
//! - `at_ms` is the wall clock when the thread read the frame, not the kernel's receive
//!   time (`SO_TIMESTAMP` would make the kernel timestamp every packet of every socket).
//! - See [`filter`] for what the filter cannot see (extension headers, QinQ).

pub mod filter;
pub mod link;
mod socket;
pub mod stats;

mod error;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::wire::{self, DropReason, UdpChecksum};
use error::chain;
pub use error::CaptureError;
use filter::{Insn, SNAP_LEN};
use link::LinkMonitor;
pub use link::{Backoff, LinkChange};
pub use socket::PacketType;
use socket::{PacketSocket, Received, SocketOptions};
use stats::Episode;
pub use stats::{CaptureCounters, CaptureStats};

/// What to capture on, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// The LAN interface (on the RAE, the bridge the DUT ports belong to).
    pub interface: String,
    /// Also see frames between other hosts. Off by default: everything the registry
    /// reads is broadcast, multicast or addressed to the RAE, while a promiscuous bridge
    /// passes every forwarded frame up to its own stack (the filter then drops it, but the
    /// kernel has done the work).
    pub promiscuous: bool,
    /// How long a read blocks; bounds how long [`CaptureHandle::stop`] takes.
    pub read_timeout: Duration,
    /// `SO_RCVBUF`: what the kernel holds for a slow reader before it drops.
    pub recv_buffer_bytes: usize,
    /// How often the kernel's packet and drop counts are read.
    pub stats_interval: Duration,
    pub backoff: Backoff,
}

impl CaptureConfig {
    pub fn new(interface: impl Into<String>) -> CaptureConfig {
        CaptureConfig {
            interface: interface.into(),
            promiscuous: false,
            read_timeout: Duration::from_millis(500),
            recv_buffer_bytes: 1 << 20,
            stats_interval: Duration::from_secs(1),
            backoff: Backoff::default(),
        }
    }

    fn validate(&self) -> Result<(), CaptureError> {
        let name = &self.interface;
        // IFNAMSIZ is 16 with the NUL; the kernel also refuses `/` and whitespace.
        let valid = !name.is_empty()
            && name.len() < 16
            && name != "."
            && name != ".."
            && !name
                .bytes()
                .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace());
        if !valid {
            return Err(CaptureError::InterfaceName { name: name.clone() });
        }
        Ok(())
    }
}

/// A frame the filter passed and the parsers accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedFrame {
    /// Wall clock when it was read, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// The frame from the destination MAC on, with the 802.1Q tag put back where the
    /// kernel took it out, so [`wire::parse_frame`] sees the VLAN.
    pub bytes: Vec<u8>,
    /// `TP_STATUS_CSUMNOTREADY`: the UDP checksum is not filled in yet (sent by this host,
    /// or forwarded over a veth with checksum offload), so it must not be verified.
    pub csum_not_ready: bool,
    /// The VLAN id, if the frame was tagged.
    pub vlan: Option<u16>,
    pub packet_type: PacketType,
}

impl CapturedFrame {
    /// How [`wire::parse_frame_with`] should treat this frame's UDP checksum.
    pub fn udp_checksum(&self) -> UdpChecksum {
        if self.csum_not_ready {
            UdpChecksum::Skip
        } else {
            UdpChecksum::Verify
        }
    }

    pub fn parse(&self) -> Result<wire::Frame<'_>, DropReason> {
        wire::parse_frame_with(&self.bytes, self.udp_checksum())
    }
}

/// Puts the tag the kernel took out of the frame back behind the MAC addresses.
fn with_tag(frame: &[u8], vlan: Option<(u16, u16)>) -> Vec<u8> {
    match (vlan, frame.get(..12), frame.get(12..)) {
        (Some((tpid, tci)), Some(macs), Some(rest)) => {
            let mut bytes = Vec::with_capacity(frame.len() + 4);
            bytes.extend_from_slice(macs);
            bytes.extend_from_slice(&tpid.to_be_bytes());
            bytes.extend_from_slice(&tci.to_be_bytes());
            bytes.extend_from_slice(rest);
            bytes
        }
        _ => frame.to_vec(),
    }
}

/// A number in 0..1 for backoff jitter: std's per-instance random hash keys are enough
/// to keep RAEs from retrying in step, without a random-number crate.
fn jitter() -> f64 {
    RandomState::new().build_hasher().finish() as f64 / u64::MAX as f64
}

/// The capture task: the socket (while the interface is there), the consumer's queue and
/// the counters. [`Capture::run`] is its loop; [`spawn`] runs it on its own thread.
#[derive(Debug)]
pub struct Capture {
    config: CaptureConfig,
    program: Vec<Insn>,
    frames: SyncSender<CapturedFrame>,
    stats: Arc<CaptureStats>,
    socket: Option<PacketSocket>,
    link: LinkMonitor,
    queue_full: Episode,
    kernel_drops: Episode,
    stats_failing: Episode,
    next_stats: Instant,
}

impl Capture {
    /// Opens the socket. A missing or down interface is not an error (the capture waits
    /// for it, logging that once); anything else, such as a missing `CAP_NET_RAW`, is.
    pub fn open(
        config: CaptureConfig,
        frames: SyncSender<CapturedFrame>,
    ) -> Result<Capture, CaptureError> {
        config.validate()?;
        let mut capture = Capture {
            program: filter::program()?,
            next_stats: Instant::now() + config.stats_interval,
            link: LinkMonitor::new(config.backoff),
            config,
            frames,
            stats: Arc::default(),
            socket: None,
            queue_full: Episode::default(),
            kernel_drops: Episode::default(),
            stats_failing: Episode::default(),
        };
        match capture.reopen() {
            Err(e) if !e.is_link_unavailable() => Err(e),
            Err(e) => {
                capture.stats.open_failed();
                capture.link_failed(&e);
                Ok(capture)
            }
            Ok(()) => Ok(capture),
        }
    }

    pub fn stats(&self) -> Arc<CaptureStats> {
        Arc::clone(&self.stats)
    }

    /// Reads until `shutdown` is set or the consumer hangs up. Takes at most the read
    /// timeout to notice `shutdown`.
    pub fn run(mut self, shutdown: &AtomicBool) {
        let mut buf = vec![0u8; SNAP_LEN as usize];
        while !shutdown.load(Ordering::Relaxed) {
            if self.socket.is_some() {
                if !self.read_one(&mut buf) {
                    break;
                }
            } else if self.wait_for_retry(shutdown) {
                if let Err(e) = self.reopen() {
                    self.stats.open_failed();
                    self.link_failed(&e);
                }
            }
            if Instant::now() >= self.next_stats {
                self.read_kernel_stats();
            }
        }
        self.close();
        self.stats.closed();
    }

    /// One read; `false` when the consumer is gone.
    fn read_one(&mut self, buf: &mut [u8]) -> bool {
        let Some(socket) = &self.socket else {
            return true;
        };
        match socket.recv(buf) {
            Ok(Some(received)) => self.deliver(&buf[..received.len], received),
            Ok(None) => true,
            Err(source) => {
                if !socket::is_link_error(&source) {
                    self.stats.read_error();
                }
                let cause = CaptureError::Socket {
                    interface: self.config.interface.clone(),
                    step: "recvmsg",
                    source,
                };
                self.close();
                self.link_failed(&cause);
                true
            }
        }
    }

    fn deliver(&mut self, data: &[u8], received: Received) -> bool {
        self.stats.frame(received.wire_len);
        if received.wire_len > data.len() {
            self.stats.truncated();
            return true;
        }
        let frame = CapturedFrame {
            at_ms: crate::wall_ms(),
            bytes: with_tag(data, received.vlan),
            csum_not_ready: received.status & libc::TP_STATUS_CSUMNOTREADY != 0,
            vlan: received.vlan.map(|(_, tci)| tci & 0x0fff),
            packet_type: received.packet_type,
        };
        if let Err(reason) = frame.parse() {
            self.stats.unparsable(reason);
            return true;
        }
        match self.frames.try_send(frame) {
            Ok(()) => {
                if let Some(dropped) = self.queue_full.clear() {
                    info!(interface = %self.config.interface, dropped,
                        "capture queue has room again");
                }
                true
            }
            Err(TrySendError::Full(_)) => {
                self.stats.queue_full();
                if self.queue_full.hit(1) {
                    warn!(interface = %self.config.interface,
                        "capture queue full, dropping frames until the consumer catches up");
                }
                true
            }
            Err(TrySendError::Disconnected(_)) => {
                info!(interface = %self.config.interface, "frame consumer gone, capture stops");
                false
            }
        }
    }

    /// Sleeps until the next attempt to reopen is due, in slices of the read timeout so
    /// shutdown is noticed as quickly as while reading; `false` on shutdown.
    fn wait_for_retry(&self, shutdown: &AtomicBool) -> bool {
        let Some(at) = self.link.retry_at() else {
            return true;
        };
        loop {
            if shutdown.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            if now >= at {
                return true;
            }
            std::thread::sleep((at - now).min(self.config.read_timeout));
        }
    }

    fn reopen(&mut self) -> Result<(), CaptureError> {
        let options = SocketOptions {
            interface: &self.config.interface,
            program: &self.program,
            promiscuous: self.config.promiscuous,
            read_timeout: self.config.read_timeout,
            recv_buffer_bytes: self.config.recv_buffer_bytes,
        };
        self.socket = Some(PacketSocket::open(&options)?);
        if let Some(change) = self.link.opened(Instant::now()) {
            self.report(change, None);
        }
        Ok(())
    }

    fn link_failed(&mut self, cause: &CaptureError) {
        if let Some(change) = self.link.failed(Instant::now(), jitter()) {
            self.report(change, Some(cause));
        }
    }

    /// The one log line (and counter) of a link state change.
    fn report(&self, change: LinkChange, cause: Option<&CaptureError>) {
        self.stats.link(change.is_up());
        let interface = &self.config.interface;
        let cause = cause.map(|e| chain(e)).unwrap_or_default();
        match change {
            LinkChange::Started => info!(
                interface = %interface,
                promiscuous = self.config.promiscuous,
                "capture started"
            ),
            LinkChange::Unavailable => warn!(
                interface = %interface,
                cause = %cause,
                "capture interface unavailable, waiting for it"
            ),
            LinkChange::WentAway => warn!(
                interface = %interface,
                cause = %cause,
                "capture interface went away, waiting for it"
            ),
            LinkChange::CameBack { away_for } => info!(
                interface = %interface,
                away_ms = away_for.as_millis() as u64,
                "capture interface is back"
            ),
        }
    }

    fn read_kernel_stats(&mut self) {
        self.next_stats = Instant::now() + self.config.stats_interval;
        let Some(socket) = &self.socket else {
            return;
        };
        match socket.take_statistics() {
            Ok((packets, drops)) => {
                self.stats.kernel(packets, drops);
                if drops > 0 {
                    if self.kernel_drops.hit(drops) {
                        warn!(interface = %self.config.interface, drops,
                            "kernel dropping captured frames, socket buffer full");
                    }
                } else if let Some(dropped) = self.kernel_drops.clear() {
                    info!(interface = %self.config.interface, dropped,
                        "kernel no longer dropping captured frames");
                }
            }
            // Not worth a reopen: the counts are caught up at the next successful read.
            Err(e) => {
                self.stats.read_error();
                if self.stats_failing.hit(1) {
                    warn!(interface = %self.config.interface, cause = %e,
                        "cannot read the kernel's capture statistics");
                }
                return;
            }
        }
        if let Some(failures) = self.stats_failing.clear() {
            info!(interface = %self.config.interface, failures,
                "kernel capture statistics readable again");
        }
    }

    /// Closes the socket, first collecting the kernel counts it holds.
    fn close(&mut self) {
        if self.socket.is_some() {
            self.read_kernel_stats();
        }
        self.socket = None;
    }
}

/// A capture running on its own thread (named `rae-capture`).
#[derive(Debug)]
pub struct CaptureHandle {
    thread: Option<JoinHandle<()>>,
    shutdown: Arc<AtomicBool>,
    stats: Arc<CaptureStats>,
}

/// Opens the capture (see [`Capture::open`]) and runs it on a new thread.
pub fn spawn(
    config: CaptureConfig,
    frames: SyncSender<CapturedFrame>,
) -> Result<CaptureHandle, CaptureError> {
    let capture = Capture::open(config, frames)?;
    let stats = capture.stats();
    let shutdown = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&shutdown);
    let thread = std::thread::Builder::new()
        .name("rae-capture".to_string())
        .spawn(move || capture.run(&flag))
        .map_err(CaptureError::Thread)?;
    Ok(CaptureHandle {
        thread: Some(thread),
        shutdown,
        stats,
    })
}

impl CaptureHandle {
    pub fn stats(&self) -> Arc<CaptureStats> {
        Arc::clone(&self.stats)
    }

    pub fn counters(&self) -> CaptureCounters {
        self.stats.snapshot()
    }

    /// Stops the thread (within the read timeout) and returns the final counters.
    pub fn stop(mut self) -> Result<CaptureCounters, CaptureError> {
        self.join()?;
        Ok(self.stats.snapshot())
    }

    fn join(&mut self) -> Result<(), CaptureError> {
        self.shutdown.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread.join().map_err(|_| CaptureError::Panicked),
            None => Ok(()),
        }
    }
}

impl Drop for CaptureHandle {
    fn drop(&mut self) {
        // A panic in the thread was already reported by the panic hook.
        let _ = self.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_tag_goes_back_behind_the_macs() {
        let frame: Vec<u8> = (0u8..20).collect();
        let tagged = with_tag(&frame, Some((0x8100, 0x6005)));
        assert_eq!(&tagged[..12], &frame[..12]);
        assert_eq!(&tagged[12..16], &[0x81, 0x00, 0x60, 0x05]);
        assert_eq!(&tagged[16..], &frame[12..]);
        assert_eq!(with_tag(&frame, None), frame);
        assert_eq!(with_tag(&frame[..5], Some((0x8100, 1))), &frame[..5]);
    }

    fn arp_frame() -> Vec<u8> {
        [
            &[0xff; 6][..],
            &[0x02, 0, 0x5e, 0x10, 0, 1],
            &[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1],
            &[0x02, 0, 0x5e, 0x10, 0, 1, 198, 18, 7, 100],
            &[0, 0, 0, 0, 0, 0, 198, 18, 7, 1],
        ]
        .concat()
    }

    #[test]
    fn a_retagged_frame_parses_with_its_vlan_and_checksum_policy() {
        let arp = arp_frame();
        let frame = CapturedFrame {
            at_ms: 0,
            bytes: with_tag(&arp, Some((0x8100, 0x2064))),
            csum_not_ready: true,
            vlan: Some(0x064),
            packet_type: PacketType::Broadcast,
        };
        assert_eq!(frame.udp_checksum(), UdpChecksum::Skip);
        let parsed = frame.parse().unwrap();
        assert_eq!(parsed.vlan_id(), Some(100));
        assert!(matches!(parsed.message, wire::Message::Arp(_)));
    }

    fn without_socket(frames: SyncSender<CapturedFrame>) -> Capture {
        let config = CaptureConfig::new("lo");
        Capture {
            program: Vec::new(),
            next_stats: Instant::now(),
            link: LinkMonitor::new(config.backoff),
            config,
            frames,
            stats: Arc::default(),
            socket: None,
            queue_full: Episode::default(),
            kernel_drops: Episode::default(),
            stats_failing: Episode::default(),
        }
    }

    fn received(len: usize) -> Received {
        Received {
            len,
            wire_len: len,
            status: 0,
            vlan: None,
            packet_type: PacketType::Broadcast,
        }
    }

    #[test]
    fn every_frame_read_is_handed_on_or_counted_by_why_it_was_not() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let mut capture = without_socket(tx);
        let arp = arp_frame();
        assert!(capture.deliver(&arp, received(arp.len())));
        assert_eq!(rx.try_recv().unwrap().bytes, arp);

        let mut not_ipv4 = arp.clone();
        not_ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert!(capture.deliver(&not_ipv4, received(not_ipv4.len())));
        let cut = Received {
            wire_len: 3000,
            ..received(arp.len())
        };
        assert!(capture.deliver(&arp, cut));
        assert!(capture.deliver(&arp, received(arp.len())));
        assert!(capture.deliver(&arp, received(arp.len())), "queue full");
        assert!(rx.try_recv().is_ok());
        assert!(capture.deliver(&arp, received(arp.len())), "room again");

        let counters = capture.stats.snapshot();
        assert_eq!(counters.frames, 6);
        assert_eq!(counters.bytes, 5 * arp.len() as u64 + 3000);
        assert_eq!(
            (counters.unparsable, counters.truncated, counters.queue_full),
            (1, 1, 1)
        );
        let drops = capture.stats.parse_drops();
        assert_eq!(drops.total(), 1);
        assert_eq!(drops.iter().next().unwrap().0.layer, wire::Layer::Ipv4);

        drop(rx);
        assert!(
            !capture.deliver(&arp, received(arp.len())),
            "a capture without a consumer must stop"
        );
    }

    #[test]
    fn bad_interface_names_are_refused_before_any_syscall() {
        let (tx, _rx) = std::sync::mpsc::sync_channel(1);
        for name in ["", "sixteen-bytes-xx", "a/b", "a b", "nul\0", ".."] {
            let result = Capture::open(CaptureConfig::new(name), tx.clone());
            assert!(
                matches!(result, Err(CaptureError::InterfaceName { .. })),
                "{name:?}: {result:?}"
            );
        }
    }

    #[test]
    fn only_a_missing_or_down_interface_is_worth_waiting_for() {
        let missing = CaptureError::NoSuchInterface {
            interface: "x".into(),
        };
        let gone = CaptureError::Socket {
            interface: "x".into(),
            step: "recvmsg",
            source: std::io::Error::from_raw_os_error(libc::ENETDOWN),
        };
        let denied = CaptureError::Socket {
            interface: "x".into(),
            step: "socket(AF_PACKET)",
            source: std::io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(missing.is_link_unavailable() && gone.is_link_unavailable());
        assert!(!denied.is_link_unavailable());
        assert_eq!(
            chain(&denied),
            "socket(AF_PACKET) on the packet socket for x: Operation not permitted (os error 1)"
        );
    }
}
