//! What a cloud consumer may rely on in the device events it received over QoS 1, checked:
//! per session, seqs from 1 without a gap, a seq re-delivered only with byte-identical
//! content (QoS 1 allows duplicates), the first delivery of each seq in seq order (no
//! reordering within a session), nothing after Closed; and the state folded from the
//! stream, to compare with what `raectl devices --all --json` shows.
//!
//! One gap is part of the contract (DESIGN, convergence rule): when the agent's outbox
//! coalesces a session's pending events over its quota, one Snapshot at the highest of their
//! seqs replaces them, so a Snapshot may follow a gap (or open a session at a seq above 1); it
//! closes the gap. [`Stream::check_coalesced`] accepts such gaps and counts them in
//! [`Stream::gaps_closed`]; [`Stream::check`], for tests where nothing may coalesce, takes
//! every gap for a violation.

use std::collections::BTreeMap;

use rae_proto::{CloseReason, DeviceRecord, Envelope, Event, SessionId, Topic};
use serde_json::Value;

use crate::mqtt_watch::Received;

/// One session as the subscriber folded it.
#[derive(Clone, Debug)]
pub struct Folded {
    pub record: DeviceRecord,
    pub last_seq: u64,
    pub closed: Option<CloseReason>,
    /// Payload of every seq, by seq.
    payloads: BTreeMap<u64, Vec<u8>>,
}

/// The checked stream.
#[derive(Debug, Default)]
pub struct Stream {
    pub sessions: BTreeMap<SessionId, Folded>,
    /// Deliveries of a seq already delivered, byte-identical (the QoS 1 duplicates).
    pub duplicates: usize,
    /// Device events received in all.
    pub events: usize,
    /// Gaps in seq that the next event, a Snapshot, closed (coalescing, see above).
    pub gaps_closed: usize,
    /// Whether such gaps are accepted (`check_coalesced`).
    coalescing: bool,
}

impl Stream {
    /// Checks `messages` (arrival order) and folds them; `Err` names every violation found
    /// (at most 20, then how many more). Every gap is one.
    pub fn check(messages: &[Received]) -> Result<Stream, String> {
        Stream::check_with(messages, false)
    }

    /// [`check`](Self::check), accepting the gaps a Snapshot closes (the outbox coalesced
    /// over its quota); they are counted in `gaps_closed`.
    pub fn check_coalesced(messages: &[Received]) -> Result<Stream, String> {
        Stream::check_with(messages, true)
    }

    fn check_with(messages: &[Received], coalescing: bool) -> Result<Stream, String> {
        let mut stream = Stream {
            coalescing,
            ..Stream::default()
        };
        let mut problems = Vec::new();
        for message in messages {
            let Ok(Topic::Device { session, .. }) = Topic::parse(&message.topic) else {
                continue;
            };
            stream.events += 1;
            let envelope = match Envelope::decode(&message.payload) {
                Ok(envelope) => envelope,
                Err(e) => {
                    problems.push(format!("{}: undecodable payload: {e}", message.topic));
                    continue;
                }
            };
            if envelope.session != session {
                problems.push(format!(
                    "{}: payload of session {}",
                    message.topic, envelope.session
                ));
                continue;
            }
            stream.take(envelope, &message.payload, &mut problems);
        }
        if problems.is_empty() {
            return Ok(stream);
        }
        let more = problems.len().saturating_sub(20);
        problems.truncate(20);
        if more > 0 {
            problems.push(format!("... and {more} more"));
        }
        Err(problems.join("\n"))
    }

    fn take(&mut self, envelope: Envelope, payload: &[u8], problems: &mut Vec<String>) {
        let session = envelope.session;
        let seq = envelope.seq;
        let Some(folded) = self.sessions.get_mut(&session) else {
            match envelope.event {
                Event::Snapshot { record } if seq == 1 || (seq > 1 && self.coalescing) => {
                    if seq > 1 {
                        self.gaps_closed += 1;
                    }
                    let mut payloads = BTreeMap::new();
                    payloads.insert(seq, payload.to_vec());
                    self.sessions.insert(
                        session,
                        Folded {
                            record: *record,
                            last_seq: seq,
                            closed: None,
                            payloads,
                        },
                    );
                }
                other => problems.push(format!(
                    "session {session}: first event is {} at seq {seq}, not a Snapshot",
                    other.kind()
                )),
            }
            return;
        };
        if let Some(earlier) = folded.payloads.get(&seq) {
            if earlier.as_slice() == payload {
                self.duplicates += 1;
            } else {
                problems.push(format!(
                    "session {session}: seq {seq} delivered again with different content"
                ));
            }
            return;
        }
        let snapshot = matches!(envelope.event, Event::Snapshot { .. });
        if seq > folded.last_seq + 1 && snapshot && folded.closed.is_none() && self.coalescing {
            self.gaps_closed += 1;
        } else if seq != folded.last_seq + 1 {
            problems.push(format!(
                "session {session}: seq {seq} after seq {} (gap or reorder)",
                folded.last_seq
            ));
            return;
        }
        if folded.closed.is_some() {
            problems.push(format!("session {session}: seq {seq} after Closed"));
            return;
        }
        folded.payloads.insert(seq, payload.to_vec());
        folded.last_seq = seq;
        match envelope.event {
            Event::Snapshot { record } => folded.record = *record,
            Event::Delta { fields } => {
                for field in fields {
                    folded.record.apply(field);
                }
            }
            Event::Closed { reason } => folded.closed = Some(reason),
        }
    }

    /// Compares the folded state with `raectl devices --all --json` output: the same
    /// sessions, and per session its MAC, IPv4, reachability, availability, close reason and
    /// last seq. `Err` lists every difference.
    pub fn matches_registry(&self, devices_json: &str) -> Result<(), String> {
        let doc: Value = serde_json::from_str(devices_json)
            .map_err(|e| format!("raectl devices --json is not JSON: {e}"))?;
        let rows = doc["devices"]
            .as_array()
            .ok_or("raectl devices --json has no \"devices\" array")?;
        let mut problems = Vec::new();
        let mut listed = BTreeMap::new();
        for row in rows {
            let session = row["session"].as_str().unwrap_or_default().to_owned();
            listed.insert(session, row);
        }
        for (session, folded) in &self.sessions {
            let Some(row) = listed.remove(&session.to_string()) else {
                problems.push(format!(
                    "session {session} was published but is not in the registry"
                ));
                continue;
            };
            let record = &folded.record;
            let ipv4 = record.ipv4.map(|ip| ip.to_string());
            let want = [
                ("mac", Some(record.mac.to_string())),
                ("ipv4", ipv4),
                (
                    "reachability",
                    Some(record.reachability.state.as_str().to_owned()),
                ),
                (
                    "availability",
                    Some(record.availability.as_str().to_owned()),
                ),
                ("close_reason", folded.closed.map(|r| r.as_str().to_owned())),
                ("last_seq", Some(folded.last_seq.to_string())),
            ];
            for (name, published) in want {
                let registry = match &row[name] {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    other => Some(other.to_string()),
                };
                if registry != published {
                    problems.push(format!(
                        "session {session} {name}: registry {registry:?}, subscriber {published:?}"
                    ));
                }
            }
        }
        for session in listed.keys() {
            problems.push(format!(
                "session {session} is in the registry but was never published"
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("\n"))
        }
    }
}
