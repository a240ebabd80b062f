//! rae-agent: the RAE's device registry daemon and the library behind `raectl`.
//!
//! Parts, in the order a frame travels:
//! - [`capture`]: the capture thread: an AF_PACKET socket with a locked kernel BPF filter
//!   (ARP, DHCPv4, ICMPv6 ND, mDNS, SSDP), kernel drop counts, link loss handled with backoff.
//! - [`wire`]: pure parsers and emitters for the frames the agent sniffs and sends
//!   (Ethernet with 802.1Q, ARP, DHCPv4, ICMPv6 neighbour discovery, mDNS); drops counted by
//!   reason. It is the crate rae-wire, re-exported: the parsers build (and are fuzzed) without
//!   this crate's dependencies; everything here that touches a socket, file or clock stays here.
//! - [`registry`]: the sans-IO registry core: Observations in, Changes out (sessions, seq,
//!   reachability with hysteresis, IPv4 and IPv6 conflicts, IPv6 addresses from DAD probes and
//!   NS/NA with ageing, OUI vendor); time and session ids are arguments. A deadline queue and
//!   indexes keep `tick`, `due_probes` and lookups at O(log n) per item, not per session.
//!   At most `registry.max_sessions` sessions are open: a new MAC at the cap evicts the least
//!   recently heard offline session, else it is refused (both counted).
//! - [`store`]: the only owner of the SQLite connection: registry rows, bounded history, the
//!   transactional outbox with its byte quota, an adaptive commit (a quiet change commits at
//!   once, batching only under load), an integrity check at start (a damaged database is moved
//!   aside and a fresh one created, counted), and the read-only reader `raectl` uses. The quota
//!   holds for every session (closed sessions the cloud never heard of vanish whole, counted);
//!   below a free-disk floor it drops to `disk.low_outbox_max_bytes`.
//! - [`publish`]: the only owner of the MQTT connection: drains the outbox at QoS 1, deleting a
//!   row only after its PUBACK, at most one unacknowledged row per session (so none overtakes
//!   a refused or lost one), rows above the broker's Maximum Packet Size dropped and counted,
//!   a broker silent for two keep-alives (half-open link) dropped and reconnected; retained
//!   status with a Last Will; the inventory. A supervisor restarts it with backoff when it
//!   fails (counted) and stops the daemon when it cannot.
//! - [`probe`]: liveness (unicast ARP requests and Neighbor Solicitations, rate-limited in
//!   total), DNS-SD queries on the LAN port only (answers come back through the capture), and
//!   SSDP search with UPnP description and DIAL application fetches.
//! - [`clock`]: the core's monotonic clock (CLOCK_BOOTTIME, started at the wall clock) and
//!   its offset to the wall clock, which only stamps times.
//! - [`daemon`]: wires the parts together (one task per I/O resource, bounded channels),
//!   writes the status `raectl status` shows, speaks systemd's notify protocol.
//! - [`replay`]: `rae-agent --pcap FILE`, the same parsers and core over a capture file.
//! - [`control`]: cloud commands and `raectl` actions, one handler in the core task; the
//!   control Unix socket `raectl` talks to (mode 0660, bounded, refusals counted).
//! - [`ctl`]: `raectl`'s rendering of the registry database (tables and JSON).
//! - [`log_limit`]: recurring warnings at most `log.max_per_minute` a minute per kind, the
//!   rest counted and summarized.
//! - [`config`]: `/etc/rae-agent/config.toml`, nested and strict (unknown keys are errors),
//!   with command-line overrides and `--check-config`.
//!
//! Limitations: MQTT TLS (`publish/transport.rs`) reads its files at start and per publisher
//! run: a renewed certificate takes effect after a restart.

pub mod capture;
pub mod clock;
pub mod config;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod log_limit;
pub mod probe;
pub mod publish;
pub mod registry;
pub mod replay;
pub mod store;
/// The frame parsers (crate rae-wire), under the path the daemon has always used for them.
pub use rae_wire as wire;

/// `error: cause: cause` on one line, as an operator reads it in the journal.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The RAE wall clock, unix ms (0 if the clock is before 1970).
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
