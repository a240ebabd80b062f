//! The registry core: a sans-IO state machine from Observations to Changes.
//!
//! Parts:
//! - [`observation`]: [`Observation`]s, what a frame, probe answer or fetched description says
//!   about one device, and [`observations_from_frame`], the pure map from parsed frames.
//! - [`core`]: the [`Core`] state machine: `apply`, `act`, `tick`, `due_probes`; its rules
//!   (sessions, reachability hysteresis, RTT, Snapshots) are in that module's documentation.
//! - `conflict`: addresses (IPv4 and IPv6) claimed by several MACs, and the flip-flop
//!   damping rule.
//! - `index`: the deadline queue, probe and Snapshot phase sets, session-id and address
//!   indexes that spare the core full scans of its sessions.
//! - [`bounds`]: the cap on open sessions (evict the least recently heard offline session,
//!   else refuse the new MAC), counted in [`CapCounters`].
//! - [`schedule`]: [`CoreConfig`] and the per-session probe and Snapshot grid.
//! - [`change`]: the [`Change`]s the core emits for the store and the publisher.
//! - [`ids`]: where session ids come from ([`RandomSessionIds`], [`SeededSessionIds`]).
//! - [`oui`]: the embedded IEEE OUI table behind the record's `vendor`.
//!
//! Limitations: ESNs come only from actions, not yet from DIAL additional data; DHCP
//! option 81 (client FQDN) is not used as a host name; the source address of a Neighbor
//! Advertisement is not taken (its target is); no DHCPv6, so no IPv6 address is
//! authoritative and an IPv6 conflict between live devices is noted, never resolved.

pub mod bounds;
pub mod change;
mod conflict;
pub mod core;
pub mod ids;
mod index;
pub mod mdns;
pub mod observation;
pub mod oui;
pub mod schedule;
mod session;

pub use self::core::{Action, ActionError, Core, CoreState, ProbeRequest, SessionView};
pub use bounds::CapCounters;
pub use change::{Cause, Change, ConflictKind};
pub use ids::{RandomSessionIds, SeededSessionIds, SessionIds};
pub use observation::{
    observations_from_frame, ArpKind, DhcpClient, DhcpMessage, NdpKind, Observation,
    ObservationKind, SsdpKind,
};
pub use schedule::{CoreConfig, CoreConfigError};
pub use session::RestoredSession;
