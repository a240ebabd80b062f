//! The registry core: a sans-IO state machine from Observations, operator actions and the
//! passing of time to [`Change`]s.
//!
//! Nothing here reads a clock, draws a random number or touches a socket: time comes in as
//! `now_ms`, new session ids from the [`SessionIds`] the core was given. The same inputs in
//! the same order therefore give the same Changes.
//!
//! Two clocks. `now_ms` and an observation's `at_ms` are on the *core clock*: monotonic,
//! never stepped (the daemon's `crate::clock`, CLOCK_BOOTTIME so that it also counts a
//! suspend, started at the wall clock's reading). Every decision (offline, gone, probe
//! rounds, Snapshot slots, IPv6 ageing, conflict notes) is made on it. The wall clock only
//! stamps what leaves the core: the records' `first_seen_ms`/`last_seen_ms` and the causes'
//! `at_ms` are core time plus the offset last given to [`Core::set_wall_offset`] (wall minus
//! core clock, 0 until the wall clock is stepped). A step of the wall clock therefore changes
//! no session and no liveness decision; the stamps made after it follow the new wall clock,
//! those made before keep theirs.
//!
//! The rules (the module docs of `schedule` and `conflict` hold the timer and conflict ones):
//! - Identity is the MAC: one open session per MAC. A frame from an unknown MAC opens a
//!   session (`Opened`, seq 1). Only observations from the device itself open one; a DHCP ACK
//!   or an mDNS-resolved name only fills in a session that exists.
//! - Reachability: a frame of any kind from the device is proof of life. A device goes
//!   offline when `offline_after_misses` consecutive probe rounds (see `schedule`) passed
//!   their timeout without a frame from it, and online again at its next frame, each a Delta
//!   carrying `reachability`. One missed round changes nothing.
//! - A session is Closed (`Gone`) once its device was not heard for `gone_after`; a frame
//!   after that opens a new session. A frame that arrives after the deadline but before the
//!   tick that would have closed the session closes it first, so the outcome does not depend
//!   on how often `tick` runs.
//! - IPv6 addresses: the record's `ipv6` holds every address the device vouched for (the
//!   source of its NS or RS, the target of its NA or of its DAD probe, a probe answer), at
//!   most `max_ipv6_per_device`, the least recently heard going first. An address leaves
//!   `ipv6_expire_after` after it was last vouched for, counted only while the device was
//!   heard since (a silent device keeps them all); that is a deadline of its own, so the
//!   address goes at that tick even when no frame follows. Liveness probes ask for every
//!   address in the record, so an address the device still holds is vouched for each round.
//! - Addresses claimed by several MACs, IPv4 and IPv6 alike: the rules are in `conflict`.
//! - Deltas carry the fields that changed, `last_seen_ms` included when it moved; a frame that
//!   moves only `last_seen_ms` gives a local [`Change::Seen`] instead.
//! - Probe RTT: the record's `reachability.rtt_us` follows every answered probe in the core's
//!   copy, but a new RTT alone never makes a Delta (that would publish every device every
//!   probe interval). It reaches the cloud with the next event that carries `reachability`:
//!   an online/offline transition or a Snapshot. The store's copy of the RTT is therefore as
//!   of the last published event, and so is the RTT after a restart.
//! - Periodic Snapshots: each session has its own slot in the Snapshot interval (from its id),
//!   skipped when the whole record went out less than half an interval before.
//! - Availability and ESN are set only by actions ([`Action`]), never by the agent itself.
//! - At most `max_sessions` sessions are open; a new MAC at the cap evicts the least recently
//!   heard offline session or is refused (see `bounds`).
//!
//! Cost: nothing scans all sessions except what must visit them all (`sessions`,
//! `inventory`, a resync of every device, `resume`). The indexes (`index`) hold each
//! session's earliest expiry (gone, offline, an IPv6 address ageing out) in an ordered set,
//! its probe and Snapshot phases in two more, a map from session id to MAC, and who holds
//! each address. `tick` and `due_probes` cost O(log n) plus O(log n) per session with
//! something due, `next_deadline` O(log n), an observation O(log n). A frame from an online
//! device that only proves it alive, vouching at most for an address that is its alone,
//! takes a fast path that neither copies the record nor formats a cause; every other
//! observation is diffed against a copy of the record. `queue_tests` checks all of it
//! against the full scans it replaced, on random histories.
//!
//! Limitation: the core clock starts at the wall clock's reading and restored sessions are
//! taken at their wall stamps, so a wall clock that was wrong across a restart (say, an RTC
//! reset) shifts their deadlines once, at start; the daemon caps restored stamps at the
//! current wall time, so nothing is heard "in the future".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rae_proto::{
    check_esn, Availability, CloseReason, DeviceRecord, DeviceRef, EsnError, Evidence, Field,
    Liveness, Mac, SessionId, SessionSeq,
};

use super::bounds::SessionCap;
use super::change::{Cause, Change};
use super::conflict::Contest;
use super::ids::{RandomSessionIds, SessionIds};
use super::index::{Addresses, Deadlines};
use super::observation::Observation;
use super::oui;
use super::schedule::{CoreConfig, CoreConfigError, Timers};
use super::session::{RestoredSession, Session};

/// How many fresh ids the core draws before it gives up opening a session: a source that
/// keeps returning ids of open sessions is broken, and the device stays unregistered rather
/// than the core looping.
const ID_ATTEMPTS: usize = 8;

/// The registry core. See the module documentation for its rules.
pub struct Core<I: SessionIds = RandomSessionIds> {
    pub(super) timers: Timers,
    own_macs: BTreeSet<Mac>,
    pub(super) sessions: BTreeMap<Mac, Session>,
    /// Session id -> MAC, for actions and lookups by session.
    by_id: HashMap<SessionId, Mac>,
    /// Who holds each address, and the contests (`conflict`).
    pub(super) addresses: Addresses,
    pub(super) deadlines: Deadlines,
    tick_cursor: Option<i64>,
    probe_cursor: Option<i64>,
    /// Restored sessions that duplicated another one's MAC: closed at the first tick.
    duplicates: Vec<RestoredSession>,
    ids: I,
    /// Wall clock minus core clock, for the stamps (see the module documentation).
    wall_offset_ms: i64,
    /// `max_sessions` and the offline sessions it may evict (`bounds`).
    pub(super) cap: SessionCap,
    /// Tests compare the fast path of `apply` with the full one.
    #[cfg(test)]
    full_path_only: bool,
}

/// Everything a core holds, from [`Core::export`]; [`Core::resume`] carries on from it
/// exactly. [`CoreState::sessions`] is the part the store keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreState {
    sessions: Vec<Session>,
    contests: BTreeMap<IpAddr, Contest>,
    tick_cursor: Option<i64>,
    probe_cursor: Option<i64>,
    duplicates: Vec<RestoredSession>,
    wall_offset_ms: i64,
}

impl CoreState {
    /// The open sessions with their seq and record, as the store would hold them.
    pub fn sessions(&self) -> Vec<RestoredSession> {
        self.sessions.iter().map(Session::to_restored).collect()
    }
}

/// An operator's or the cloud's request about one device (or all, for a resync).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SetAvailability {
        device: DeviceRef,
        availability: Availability,
    },
    /// `None` clears the ESN.
    SetEsn {
        device: DeviceRef,
        esn: Option<String>,
    },
    /// A Snapshot of one device, or of every open session.
    Resync { device: Option<DeviceRef> },
    /// Close the session (`Closed { Forgotten }`); the device's next frame opens a new one.
    Forget { device: DeviceRef },
}

/// Why an action was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("unknown device: {0}")]
    UnknownDevice(DeviceRef),
    #[error("invalid ESN: {0}")]
    InvalidEsn(#[from] EsnError),
}

/// A liveness probe the I/O layer should send now: an ARP probe for `ipv4` and a Neighbor
/// Solicitation for each of `ipv6`. At least one address is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeRequest {
    pub session: SessionId,
    pub mac: Mac,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

/// An open session, read-only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionView<'a> {
    pub session: SessionId,
    pub seq: u64,
    pub record: &'a DeviceRecord,
}

impl Core<RandomSessionIds> {
    /// A core for the daemon: random session ids.
    pub fn with_random_ids(
        config: &CoreConfig,
        restored: Vec<RestoredSession>,
    ) -> Result<Self, CoreConfigError> {
        Core::new(config, restored, RandomSessionIds)
    }
}

impl<I: SessionIds> Core<I> {
    /// A core that carries on the open sessions the store kept. Should two of them share a
    /// MAC (which the core never makes), the most recently seen one is kept and the others
    /// are Closed at the first tick.
    pub fn new(
        config: &CoreConfig,
        restored: Vec<RestoredSession>,
        ids: I,
    ) -> Result<Self, CoreConfigError> {
        let mut by_mac: BTreeMap<Mac, RestoredSession> = BTreeMap::new();
        let mut duplicates = Vec::new();
        for candidate in restored {
            let Some(kept) = by_mac.get_mut(&candidate.record.mac) else {
                by_mac.insert(candidate.record.mac, candidate);
                continue;
            };
            let rank = |s: &RestoredSession| {
                (
                    s.record.last_seen_ms,
                    s.record.first_seen_ms,
                    s.seq,
                    s.session,
                )
            };
            if rank(&candidate) > rank(kept) {
                duplicates.push(std::mem::replace(kept, candidate));
            } else {
                duplicates.push(candidate);
            }
        }
        duplicates.sort_by_key(|s| s.session);
        let state = CoreState {
            sessions: by_mac.into_values().map(Session::restored).collect(),
            contests: BTreeMap::new(),
            tick_cursor: None,
            probe_cursor: None,
            duplicates,
            wall_offset_ms: 0,
        };
        Core::resume(config, state, ids)
    }

    /// A core that carries on exactly where the one that [`export`](Core::export)ed `state`
    /// stopped.
    pub fn resume(config: &CoreConfig, state: CoreState, ids: I) -> Result<Self, CoreConfigError> {
        let mut core = Core {
            timers: Timers::new(config)?,
            own_macs: config.own_macs.iter().copied().collect(),
            sessions: BTreeMap::new(),
            by_id: HashMap::new(),
            addresses: Addresses::default(),
            deadlines: Deadlines::default(),
            tick_cursor: state.tick_cursor,
            probe_cursor: state.probe_cursor,
            duplicates: state.duplicates,
            ids,
            wall_offset_ms: state.wall_offset_ms,
            cap: SessionCap::new(config.max_sessions),
            #[cfg(test)]
            full_path_only: false,
        };
        for session in state.sessions {
            core.insert_session(session);
        }
        // As exported: the exporting core kept only contests over addresses two hold.
        core.addresses.contests = state.contests;
        Ok(core)
    }

    pub fn export(&self) -> CoreState {
        CoreState {
            sessions: self.sessions.values().cloned().collect(),
            contests: self.addresses.contests.clone(),
            tick_cursor: self.tick_cursor,
            probe_cursor: self.probe_cursor,
            duplicates: self.duplicates.clone(),
            wall_offset_ms: self.wall_offset_ms,
        }
    }

    /// The wall clock's reading minus the core clock's, from now on: the stamps of what the
    /// core makes after this follow it; no decision depends on it.
    pub fn set_wall_offset(&mut self, offset_ms: i64) {
        self.wall_offset_ms = offset_ms;
    }

    /// `core_ms` (core clock) as a wall-clock stamp.
    pub(super) fn wall(&self, core_ms: i64) -> i64 {
        core_ms.saturating_add(self.wall_offset_ms)
    }

    /// A cause stamped at `core_ms`.
    fn cause_at(&self, core_ms: i64, summary: String) -> Cause {
        Cause {
            at_ms: self.wall(core_ms),
            summary,
        }
    }

    /// Replaces the agent's own MACs (interfaces come and go; a Linux bridge takes a new MAC
    /// when ports join). Frames from them are ignored from now on; a session one of them
    /// already has is Closed (`Forgotten`), since it was never a device.
    pub fn set_own_macs(&mut self, macs: &[Mac], now_ms: i64) -> Vec<Change> {
        self.own_macs = macs.iter().copied().collect();
        let own: Vec<Mac> = self
            .own_macs
            .iter()
            .filter(|mac| self.sessions.contains_key(mac))
            .copied()
            .collect();
        let mut out = Vec::new();
        for mac in own {
            let forget = Action::Forget {
                device: DeviceRef::Mac(mac),
            };
            // The session exists (just listed), so Forget cannot fail.
            if let Ok(changes) = self.act(&forget, "agent: own interface", now_ms) {
                out.extend(changes);
            }
        }
        out
    }

    /// Takes in one observation made at `obs.at_ms` (capped at `now_ms`).
    pub fn apply(&mut self, obs: Observation, now_ms: i64) -> Vec<Change> {
        let mut out = Vec::new();
        let mac = obs.mac;
        if self.own_macs.contains(&mac) || mac.is_multicast() || mac.octets() == [0; 6] {
            return out;
        }
        let at = obs.at_ms.min(now_ms);
        let wall_at = self.wall(at);
        self.expire(mac, now_ms, &mut out);
        if self.refresh(mac, &obs, at, wall_at, &mut out) {
            return out;
        }
        let cause = self.cause_at(at, format!("{mac}: {}", obs.kind.describe()));
        let evidence = obs.kind.evidence();
        let before = match self.sessions.get_mut(&mac) {
            Some(session) => Some(session.record.clone()),
            None => {
                let Some(evidence) = evidence else {
                    return out;
                };
                if !self.make_room(now_ms, &mut out) {
                    return out;
                }
                let Some(id) = self.fresh_id() else {
                    return out;
                };
                let mut record = DeviceRecord::new(mac, evidence, wall_at);
                record.vendor = oui::vendor(mac).map(str::to_owned);
                self.insert_session(Session::opened(id, record, at, now_ms));
                None
            }
        };
        let Some(session) = self.sessions.get_mut(&mac) else {
            return out;
        };
        let heard_before = session.heard_ms;
        let claim = session.absorb(&obs.kind, at, wall_at, &self.timers);
        if let Some(evidence) = evidence {
            let reachability = &mut session.record.reachability;
            // A frame older than the last one heard says nothing new about liveness.
            if reachability.state == Liveness::Offline && at > heard_before {
                reachability.state = Liveness::Online;
                reachability.evidence = evidence;
            }
        }
        let old_ipv6 = before.as_ref().map_or(&[][..], |b| b.ipv6.as_slice());
        self.addresses.sync_v6(mac, old_ipv6, &session.record.ipv6);
        let follow_ups = self.settle_claim(mac, claim, now_ms, &cause);
        let Some(session) = self.sessions.get_mut(&mac) else {
            return out;
        };
        self.deadlines
            .set_expiry(mac, session.expiry_at(&self.timers));
        self.cap.track(session);
        match before {
            Some(before) => publish_update(session, &before, cause, &mut out),
            None => out.push(Change::Opened {
                session: session.id,
                seq: session.seq,
                record: session.record.clone(),
                cause,
            }),
        }
        out.extend(follow_ups);
        out
    }

    /// The fast path of `apply` (see [`Session::refresh`]); false when the observation needs
    /// the full one.
    fn refresh(
        &mut self,
        mac: Mac,
        obs: &Observation,
        at: i64,
        wall_at: i64,
        out: &mut Vec<Change>,
    ) -> bool {
        #[cfg(test)]
        if self.full_path_only {
            return false;
        }
        let Some(session) = self.sessions.get_mut(&mac) else {
            return false;
        };
        let addresses = &self.addresses;
        let sole = |ip| addresses.holders(ip) == [mac];
        let Some(moved) = session.refresh(&obs.kind, at, wall_at, &self.timers, sole) else {
            return false;
        };
        self.deadlines
            .set_expiry(mac, session.expiry_at(&self.timers));
        if moved {
            out.push(Change::Seen {
                session: session.id,
                last_seen_ms: session.record.last_seen_ms,
            });
        }
        true
    }

    /// Carries out an operator's or the cloud's action; `by` names who asked, for the history.
    pub fn act(
        &mut self,
        action: &Action,
        by: &str,
        now_ms: i64,
    ) -> Result<Vec<Change>, ActionError> {
        let mut out = Vec::new();
        let at_ms = self.wall(now_ms);
        let cause = |summary: String| Cause {
            at_ms,
            summary: format!("{summary} (by {by})"),
        };
        match action {
            Action::SetAvailability {
                device,
                availability,
            } => {
                let session = self.resolve(device)?;
                let before = session.record.clone();
                session.record.availability = *availability;
                let cause = cause(format!("availability set to {availability}"));
                publish_update(session, &before, cause, &mut out);
            }
            Action::SetEsn { device, esn } => {
                if let Some(esn) = esn {
                    check_esn(esn)?;
                }
                let session = self.resolve(device)?;
                let before = session.record.clone();
                session.record.esn.clone_from(esn);
                let summary = match esn {
                    Some(esn) => format!("ESN set to {esn}"),
                    None => "ESN cleared".to_owned(),
                };
                publish_update(session, &before, cause(summary), &mut out);
            }
            Action::Resync {
                device: Some(device),
            } => {
                let session = self.resolve(device)?;
                push_snapshot(session, now_ms, cause("resync".to_owned()), &mut out);
            }
            Action::Resync { device: None } => {
                for session in self.sessions.values_mut() {
                    push_snapshot(session, now_ms, cause("resync".to_owned()), &mut out);
                }
            }
            Action::Forget { device } => {
                let mac = self.resolve(device)?.record.mac;
                if let Some(mut session) = self.remove_session(mac) {
                    out.push(Change::Closed {
                        session: session.id,
                        seq: session.bump(),
                        mac,
                        reason: CloseReason::Forgotten,
                        cause: cause("forgotten".to_owned()),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Moves time on to `now_ms`: offline transitions, Closed sessions, IPv6 addresses that
    /// aged out and periodic Snapshots that are due. Only the sessions with something due
    /// are visited (`index`).
    pub fn tick(&mut self, now_ms: i64) -> Vec<Change> {
        let mut out = self.close_duplicates(now_ms);
        for mac in self.deadlines.expired(now_ms) {
            self.expire(mac, now_ms, &mut out);
        }
        if let Some(cursor) = self.tick_cursor.filter(|cursor| *cursor < now_ms) {
            let candidates =
                self.deadlines
                    .snapshot_candidates(cursor, now_ms, self.timers.snapshot_ms);
            let at_ms = self.wall(now_ms);
            for mac in candidates {
                if let Some(session) = self.sessions.get_mut(&mac) {
                    periodic_snapshot(&self.timers, session, cursor, now_ms, at_ms, &mut out);
                }
            }
        }
        self.tick_cursor = Some(self.tick_cursor.map_or(now_ms, |c| c.max(now_ms)));
        out
    }

    /// The probes to send now: one per session whose probe round started since the last
    /// call (on the first call, within the last probe timeout) and that has an address.
    /// Rounds sit on each session's own phase (see `schedule`), so calls spread over the
    /// interval each return a share of the devices.
    pub fn due_probes(&mut self, now_ms: i64) -> Vec<ProbeRequest> {
        let from = self.probe_from(now_ms);
        let candidates = self
            .deadlines
            .probe_candidates(from, now_ms, self.timers.probe_ms);
        let probes = candidates
            .into_iter()
            .filter_map(|mac| self.sessions.get(&mac))
            .filter_map(|session| self.probe(session, from, now_ms))
            .collect();
        self.probe_cursor = Some(from.max(now_ms));
        probes
    }

    /// The earliest time after `now_ms` at which `tick` or `due_probes` has work; `now_ms`
    /// itself when something is overdue, `None` when there is no session. Probe rounds and
    /// Snapshot slots count whether or not they were handled already: the next one after
    /// `now_ms` of any session.
    pub fn next_deadline(&self, now_ms: i64) -> Option<i64> {
        if !self.duplicates.is_empty() {
            return Some(now_ms);
        }
        let d = &self.deadlines;
        [
            d.first_expiry(),
            d.next_probe_round(now_ms, self.timers.probe_ms),
            d.next_snapshot_slot(now_ms, self.timers.snapshot_ms),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|deadline| deadline.max(now_ms))
    }

    /// Every open session, by MAC.
    pub fn sessions(&self) -> impl Iterator<Item = SessionView<'_>> {
        self.sessions.values().map(view)
    }

    /// The open session a reference names.
    pub fn session(&self, device: &DeviceRef) -> Option<SessionView<'_>> {
        let mac = match device {
            DeviceRef::Mac(mac) => *mac,
            DeviceRef::Session(id) => *self.by_id.get(id)?,
        };
        self.sessions.get(&mac).map(view)
    }

    /// Every open session with its latest seq: the inventory.
    pub fn inventory(&self) -> Vec<SessionSeq> {
        let mut sessions: Vec<SessionSeq> = self
            .sessions
            .values()
            .map(|s| SessionSeq {
                session: s.id,
                seq: s.seq,
            })
            .collect();
        sessions.sort();
        sessions
    }

    /// The device using `ip`, for observations that arrive by address (mDNS, UPnP). When
    /// several claim the address, the most recently heard online one.
    pub fn mac_for_ip(&self, ip: IpAddr) -> Option<Mac> {
        self.addresses
            .holders(ip)
            .iter()
            .filter_map(|mac| self.sessions.get(mac))
            .max_by_key(|s| {
                let r = &s.record;
                (r.reachability.state == Liveness::Online, s.heard_ms, r.mac)
            })
            .map(|s| s.record.mac)
    }

    fn fresh_id(&mut self) -> Option<SessionId> {
        (0..ID_ATTEMPTS)
            .map(|_| self.ids.next_id())
            .find(|id| !self.by_id.contains_key(id))
    }

    /// The open session `device` names. Actions take the sessions as they are: deadlines
    /// move only in `tick` (and in `apply`, for the device observed).
    fn resolve(&mut self, device: &DeviceRef) -> Result<&mut Session, ActionError> {
        let mac = match device {
            DeviceRef::Mac(mac) => Some(*mac),
            DeviceRef::Session(id) => self.by_id.get(id).copied(),
        };
        mac.and_then(|mac| self.sessions.get_mut(&mac))
            .ok_or(ActionError::UnknownDevice(*device))
    }

    /// Adds an open session and its index entries.
    fn insert_session(&mut self, session: Session) {
        let mac = session.record.mac;
        self.by_id.insert(session.id, mac);
        self.deadlines.insert(
            mac,
            self.timers.probe_phase(session.id),
            self.timers.snapshot_phase(session.id),
            session.expiry_at(&self.timers),
        );
        self.addresses.move_v4(mac, None, session.record.ipv4);
        self.addresses.sync_v6(mac, &[], &session.record.ipv6);
        self.cap.track(&session);
        self.sessions.insert(mac, session);
    }

    /// Takes an open session out, with its index entries.
    pub(super) fn remove_session(&mut self, mac: Mac) -> Option<Session> {
        let session = self.sessions.remove(&mac)?;
        self.by_id.remove(&session.id);
        self.deadlines.remove(
            mac,
            self.timers.probe_phase(session.id),
            self.timers.snapshot_phase(session.id),
        );
        self.addresses.move_v4(mac, session.record.ipv4, None);
        self.addresses.sync_v6(mac, &session.record.ipv6, &[]);
        self.cap.forget(mac);
        Some(session)
    }

    fn close_duplicates(&mut self, now_ms: i64) -> Vec<Change> {
        let at_ms = self.wall(now_ms);
        std::mem::take(&mut self.duplicates)
            .into_iter()
            .map(|duplicate| Change::Closed {
                session: duplicate.session,
                seq: duplicate.seq.saturating_add(1),
                mac: duplicate.record.mac,
                reason: CloseReason::Gone,
                cause: Cause {
                    at_ms,
                    summary: "restored beside a more recent session of the same MAC".to_owned(),
                },
            })
            .collect()
    }

    fn probe_from(&self, now_ms: i64) -> i64 {
        self.probe_cursor
            .unwrap_or_else(|| now_ms.saturating_sub(self.timers.timeout_ms))
    }

    /// The probe for `session` when a round of it started in `(from, now]` and it has an
    /// address to probe.
    fn probe(&self, session: &Session, from: i64, now: i64) -> Option<ProbeRequest> {
        let record = &session.record;
        let round = self.timers.round_at_or_before(session.id, now);
        (round > from && (record.ipv4.is_some() || !record.ipv6.is_empty())).then(|| ProbeRequest {
            session: session.id,
            mac: record.mac,
            ipv4: record.ipv4,
            ipv6: record.ipv6.clone(),
        })
    }

    /// Applies the session's deadlines that `now` has reached: Closed when gone, else the
    /// offline transition and the IPv6 addresses that aged out.
    fn expire(&mut self, mac: Mac, now: i64, out: &mut Vec<Change>) {
        let offset = self.wall_offset_ms;
        let Some(session) = self.sessions.get_mut(&mac) else {
            return;
        };
        let heard = session.heard_ms;
        let gone_at = self.timers.gone_at(heard);
        if now >= gone_at {
            if let Some(mut session) = self.remove_session(mac) {
                out.push(Change::Closed {
                    session: session.id,
                    seq: session.bump(),
                    mac,
                    reason: CloseReason::Gone,
                    cause: Cause {
                        at_ms: gone_at.saturating_add(offset),
                        summary: format!(
                            "not heard for {} s (gone_after)",
                            self.timers.gone_ms / 1000
                        ),
                    },
                });
            }
            return;
        }
        let mut moved = false;
        let offline_at = self.timers.offline_at(session.id, heard);
        if session.record.reachability.state == Liveness::Online && now >= offline_at {
            let count = self.timers.misses_at(session.id, heard, now);
            let before = session.record.clone();
            session.record.reachability.state = Liveness::Offline;
            session.record.reachability.evidence = Evidence::ProbeMissed { count };
            let cause = Cause {
                at_ms: offline_at.saturating_add(offset),
                summary: format!("{count} probe rounds in a row passed without a frame"),
            };
            publish_update(session, &before, cause, out);
            moved = true;
        }
        if let Some(aged_at) = session.ipv6_age_at(&self.timers).filter(|at| now >= *at) {
            let before = session.record.clone();
            let aged = session.age_ipv6(now, &self.timers);
            self.addresses
                .sync_v6(mac, &before.ipv6, &session.record.ipv6);
            let aged: Vec<String> = aged.iter().map(ToString::to_string).collect();
            let cause = Cause {
                at_ms: aged_at.saturating_add(offset),
                summary: format!(
                    "{} not vouched for in {} s while the device was heard (ipv6_expire_after)",
                    aged.join(", "),
                    self.timers.ipv6_expire_ms / 1000
                ),
            };
            publish_update(session, &before, cause, out);
            moved = true;
        }
        if moved {
            self.deadlines
                .set_expiry(mac, session.expiry_at(&self.timers));
            self.cap.track(session);
        }
    }
}

/// The periodic Snapshot of `session`, when one of its slots passed in `(cursor, now]` and
/// the whole record did not go out less than half an interval before that slot.
fn periodic_snapshot(
    timers: &Timers,
    session: &mut Session,
    cursor: i64,
    now: i64,
    wall_now: i64,
    out: &mut Vec<Change>,
) {
    let slot = timers.snapshot_slot(session.id, now);
    let recent = session
        .last_full_ms
        .is_some_and(|full| slot.saturating_sub(full) < timers.snapshot_ms / 2);
    if slot > cursor && !recent {
        let cause = Cause {
            at_ms: wall_now,
            summary: "periodic snapshot".to_owned(),
        };
        push_snapshot(session, now, cause, out);
    }
}

fn view(session: &Session) -> SessionView<'_> {
    SessionView {
        session: session.id,
        seq: session.seq,
        record: &session.record,
    }
}

fn push_snapshot(session: &mut Session, now: i64, cause: Cause, out: &mut Vec<Change>) {
    session.last_full_ms = Some(now);
    out.push(Change::Snapshot {
        session: session.id,
        seq: session.bump(),
        record: session.record.clone(),
        cause,
    });
}

/// Publishes what changed in `session` since `before`: a Delta, or a local `Seen` when only
/// `last_seen_ms` moved, or nothing. A reachability that differs only in its RTT does not
/// count as changed (see the module documentation).
pub(super) fn publish_update(
    session: &mut Session,
    before: &DeviceRecord,
    cause: Cause,
    out: &mut Vec<Change>,
) {
    let mut fields = before.diff(&session.record);
    fields.retain(|field| match field {
        Field::Reachability(now) => {
            (now.state, now.evidence) != (before.reachability.state, before.reachability.evidence)
        }
        _ => true,
    });
    if fields.iter().all(|f| matches!(f, Field::LastSeen(_))) {
        if !fields.is_empty() {
            out.push(Change::Seen {
                session: session.id,
                last_seen_ms: session.record.last_seen_ms,
            });
        }
        return;
    }
    out.push(Change::Updated {
        session: session.id,
        seq: session.bump(),
        mac: session.record.mac,
        fields,
        cause,
    });
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "queue_tests.rs"]
mod queue_tests;
