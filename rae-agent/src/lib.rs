//! rae-agent: the RAE's device registry daemon and the library behind `raectl`.
//!
//! Parts, in the order a frame travels:
//! - [`capture`]: the capture thread: an AF_PACKET socket with a locked kernel BPF filter
//!   (ARP, DHCPv4, ICMPv6 ND, mDNS, SSDP), kernel drop counts, link loss handled with backoff.
//! - [`wire`]: pure parsers and emitters for the frames the agent sniffs and sends
//!   (Ethernet with 802.1Q, ARP, DHCPv4, ICMPv6 neighbour discovery); drops counted by reason.
//! - [`registry`]: the sans-IO registry core: Observations in, Changes out (sessions, seq,
//!   reachability with hysteresis, conflicts, OUI vendor); time and session ids are arguments.
//! - [`store`]: the only owner of the SQLite connection: registry rows, bounded history, the
//!   transactional outbox with its byte quota, and the read-only reader `raectl` uses.
//! - [`probe`]: active identification: mDNS browsing (`mdns-sd`) and SSDP search with UPnP
//!   description and DIAL application fetches, rate-limited per device and in total.
//! - [`config`]: `/etc/rae-agent/config.toml`, nested and strict (unknown keys are errors),
//!   with command-line overrides and `--check-config`.
//!
//! Limitations: the parts are built and tested one by one (the capture, probes and discovery
//! in the virtual lab), but the daemon does not wire them together yet, there is no MQTT
//! publisher, no ARP/NS liveness sender, no control socket, and `raectl` has no commands:
//! `rae-agent` validates its configuration and stops there. mdns-sd joins the mDNS group on
//! every interface at start-up before it can be restricted to the LAN port (see [`probe`]).

pub mod capture;
pub mod config;
pub mod ctl;
pub mod daemon;
pub mod probe;
pub mod publish;
pub mod registry;
pub mod replay;
pub mod store;
pub mod wire;

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
