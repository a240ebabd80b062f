//! rae-agent: the RAE's device registry daemon and the library behind `raectl`.
//!
//! Parts:
//! - [`config`]: `/etc/rae-agent/config.toml`, nested and strict (unknown keys are errors),
//!   with command-line overrides and `--check-config`.
//! - [`registry`]: the sans-IO registry core (Observations in, Changes out).
//! - [`wire`]: pure parsers and emitters for the frames the agent sniffs and sends
//!   (Ethernet with 802.1Q, ARP, DHCPv4, ICMPv6 neighbour discovery).
//!
//! Limitations: capture, the registry core, the SQLite store, probes and the MQTT
//! publisher are not written yet; the daemon validates its configuration and stops there.

pub mod capture;
pub mod config;
pub mod registry;
pub mod store;
pub mod wire;
