//! The status entries the daemon writes for `raectl status`: `agent.*`, `capture.*`,
//! `parse.drop.<reason>`, `registry.*` (the session cap included), `probe.*`, `log.*` (lines
//! the per-kind log limit suppressed, see [`crate::log_limit`]); the publisher adds `broker.*` and
//! `publish.*` (see [`crate::publish::PublisherStatus::entries`]); `command.*` come from the
//! counters the command handler and its entry points share ([`crate::control::CommandCounters`]). The store writes
//! `store.recovered_*` once, into the fresh database, when it replaced a damaged one (see
//! [`crate::store::Recovery::status_entries`]); they stay until the next recovery.

use crate::capture::CaptureCounters;
use crate::probe::liveness::LivenessCounters;
use crate::wire::DropCounters;

use super::engine::EngineCounters;

/// Who is running, for the `agent.*` entries.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub version: &'static str,
    pub pid: u32,
    pub started_ms: i64,
    pub interface: String,
}

pub struct Snapshot<'a> {
    pub agent: &'a AgentInfo,
    pub capture: Option<CaptureCounters>,
    /// Parse drops counted by the capture thread and by the engine, merged.
    pub drops: DropCounters,
    pub engine: &'a EngineCounters,
    pub liveness: LivenessCounters,
    pub sessions_open: usize,
    pub max_sessions: usize,
    pub cap: crate::registry::CapCounters,
}

/// The entries, as `(key, value)` text pairs.
pub fn entries(s: &Snapshot<'_>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |key: &str, value: String| out.push((key.to_owned(), value));
    put("agent.version", s.agent.version.to_owned());
    put("agent.pid", s.agent.pid.to_string());
    put("agent.started_ms", s.agent.started_ms.to_string());
    put("agent.interface", s.agent.interface.clone());
    match &s.capture {
        Some(c) => {
            put(
                "capture.state",
                if c.link_up {
                    "up"
                } else {
                    "waiting for the interface"
                }
                .to_owned(),
            );
            put("capture.frames", c.frames.to_string());
            put("capture.bytes", c.bytes.to_string());
            put("capture.kernel_packets", c.kernel_packets.to_string());
            put("capture.kernel_drops", c.kernel_drops.to_string());
            put("capture.queue_full", c.queue_full.to_string());
            put("capture.truncated", c.truncated.to_string());
            put("capture.unparsable", c.unparsable.to_string());
            put("capture.read_errors", c.read_errors.to_string());
            put("capture.link_ups", c.link_ups.to_string());
            put("capture.link_downs", c.link_downs.to_string());
        }
        None => put("capture.state", "stopped".to_owned()),
    }
    for (reason, count) in s.drops.iter() {
        put(
            &format!("parse.drop.{}.{}", reason.layer, reason.detail),
            count.to_string(),
        );
    }
    let e = s.engine;
    put("registry.sessions_open", s.sessions_open.to_string());
    put("registry.max_sessions", s.max_sessions.to_string());
    put("registry.sessions_evicted", s.cap.evicted.to_string());
    put("registry.sessions_refused", s.cap.refused.to_string());
    put("registry.frames", e.frames.to_string());
    put("registry.observations", e.observations.to_string());
    put("registry.changes", e.changes.to_string());
    put("registry.mdns_decoded", e.mdns_decoded.to_string());
    put(
        "registry.unmatched_identifications",
        e.unmatched_identifications.to_string(),
    );
    put("registry.esn_refused", e.esn_refused.to_string());
    let l = s.liveness;
    put("probe.arp_sent", l.arp_sent.to_string());
    put("probe.ns_sent", l.ns_sent.to_string());
    put("probe.answered", l.answered.to_string());
    put("probe.rate_limited", l.rate_limited.to_string());
    put("probe.send_errors", l.send_errors.to_string());
    out
}
