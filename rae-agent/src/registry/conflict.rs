//! Addresses claimed by more than one MAC: IPv4 and IPv6 alike.
//!
//! A session's `ipv4` is the address its device last used (ARP sender, DHCP ciaddr, a probe
//! answer) or was given by the DHCP server (ACK). Its `ipv6` list holds every address the
//! device vouched for (the source of its NS or RS, the target of its NA or of its Duplicate
//! Address Detection probe, a probe answer) until the address ages out (`core`). When an
//! address a device claims is another open session's too:
//! - **Reassigned**: if the DHCP server gave it to the new MAC (IPv4 only), or the other
//!   holder is offline, the other holder loses it (a Delta with `ipv4: None`, or the `ipv6`
//!   list without it). This is what a DUT whose MAC changed looks like: the old session
//!   shows the address leaving, goes offline and is Closed after `gone_after`; the new MAC
//!   has its own session with the address.
//! - **Claimed**: if the other holder is online and the claim came from the device itself
//!   (two live devices with one static address; for IPv6 also a DAD probe for an address a
//!   live device holds, which the holder should then defend), both keep the address: the
//!   records stay as they are, and a `Conflict` note goes to the history of every session
//!   involved.
//! - **Flip-flop** (damping): while both keep claiming, every change of claimant is a flip.
//!   The records never change for a flip, so flips cost no Delta at all. The first flip of
//!   a conflict is noted at once; after that at most one note per `conflict_note_interval`,
//!   carrying the number of flips since the previous note (flips after the last note of a
//!   conflict that then ends are not noted).
//!
//! Conflict notes are local-only Changes: the store records them in each session's history
//! for `raectl show`; nothing is published. The flip counter is memory only: after a
//! restart a conflict still present is known again from the records (no new Claimed note),
//! and its flips are counted afresh. Who holds an address comes from the core's address
//! index (`index`), not from a scan of the sessions.

use std::net::IpAddr;

use rae_proto::{Liveness, Mac};

use super::change::{Cause, Change, ConflictKind};
use super::core::{publish_update, Core};
use super::ids::SessionIds;
use super::session::Claim;

/// A contested address: who claimed it last and the flips not yet noted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Contest {
    last_claimant: Mac,
    flips: u32,
    last_flip_note_ms: Option<i64>,
}

impl Contest {
    fn new(claimant: Mac) -> Contest {
        Contest {
            last_claimant: claimant,
            flips: 0,
            last_flip_note_ms: None,
        }
    }
}

impl<I: SessionIds> Core<I> {
    /// Settles the address `claim` names between `mac`'s session and the others: gives an
    /// IPv4 address to `mac`'s session (an IPv6 one is in its record already), takes it from
    /// the holders that lose it, and notes conflicts. Returns the other sessions' Deltas and
    /// every Conflict note; `mac`'s own change is the caller's to publish.
    pub(super) fn settle_claim(
        &mut self,
        mac: Mac,
        claim: Option<Claim>,
        now: i64,
        cause: &Cause,
    ) -> Vec<Change> {
        let mut out = Vec::new();
        let Some(claim) = claim else {
            return out;
        };
        let Some(claimant) = self.sessions.get_mut(&mac) else {
            return out;
        };
        let (ip, authoritative, joined) = match claim {
            Claim::Released(ip) => {
                if claimant.record.ipv4 == Some(ip) {
                    claimant.record.ipv4 = None;
                    self.addresses.move_v4(mac, Some(ip), None);
                }
                return out;
            }
            Claim::Uses(ip) | Claim::Assigned(ip) => {
                let old = claimant.record.ipv4.replace(ip);
                self.addresses.move_v4(mac, old, Some(ip));
                (
                    IpAddr::V4(ip),
                    matches!(claim, Claim::Assigned(_)),
                    old != Some(ip),
                )
            }
            // Evicted at once (an old frame beyond the list's cap): nothing to settle.
            Claim::Vouches { ip, .. } if claimant.record.ipv6.binary_search(&ip).is_err() => {
                return out;
            }
            Claim::Vouches { ip, new } => (IpAddr::V6(ip), false, new),
        };
        let claimant_id = claimant.id;

        let mut live = Vec::new();
        let holders: Vec<Mac> = self
            .addresses
            .holders(ip)
            .iter()
            .filter(|other| **other != mac)
            .copied()
            .collect();
        for holder in holders {
            let Some(session) = self.sessions.get_mut(&holder) else {
                continue;
            };
            let offline = session.record.reachability.state == Liveness::Offline;
            if !(authoritative || offline) {
                live.push(holder);
                continue;
            }
            let why = if authoritative {
                "the DHCP server assigned it"
            } else {
                "this device was offline"
            };
            let before = session.record.clone();
            match ip {
                IpAddr::V4(_) => session.record.ipv4 = None,
                IpAddr::V6(v6) => session.forget_ipv6(v6),
            }
            self.addresses.remove(ip, holder);
            self.deadlines
                .set_expiry(holder, session.expiry_at(&self.timers));
            let lost = Cause {
                at_ms: cause.at_ms,
                summary: format!("{ip} now used by {mac}: {why}"),
            };
            publish_update(session, &before, lost.clone(), &mut out);
            out.push(note(
                session.id,
                holder,
                ip,
                vec![mac],
                ConflictKind::Reassigned,
                lost,
            ));
            let took = Cause {
                at_ms: cause.at_ms,
                summary: format!("{ip} taken over from {holder}: {}", cause.summary),
            };
            out.push(note(
                claimant_id,
                mac,
                ip,
                vec![holder],
                ConflictKind::Reassigned,
                took,
            ));
        }
        let contests = &mut self.addresses.contests;
        if live.is_empty() {
            contests.remove(&ip);
            return out;
        }

        let kind = if joined {
            contests.insert(ip, Contest::new(mac));
            ConflictKind::Claimed
        } else {
            let contest = contests.entry(ip).or_insert_with(|| Contest::new(mac));
            if contest.last_claimant == mac {
                return out;
            }
            contest.last_claimant = mac;
            contest.flips = contest.flips.saturating_add(1);
            let due = contest.last_flip_note_ms.map_or(true, |last| {
                now.saturating_sub(last) >= self.timers.conflict_note_ms
            });
            if !due {
                return out;
            }
            let flips = contest.flips;
            contest.flips = 0;
            contest.last_flip_note_ms = Some(now);
            ConflictKind::FlipFlop { flips }
        };
        let mut group = live;
        group.push(mac);
        group.sort();
        let summary = match kind {
            ConflictKind::FlipFlop { flips } => {
                format!("{ip} flip-flopped {flips} times; now {}", cause.summary)
            }
            _ => format!(
                "{ip} claimed by {} live devices: {}",
                group.len(),
                cause.summary
            ),
        };
        for member in &group {
            let Some(session) = self.sessions.get(member) else {
                continue;
            };
            let others = group.iter().filter(|m| *m != member).copied().collect();
            let cause = Cause {
                at_ms: cause.at_ms,
                summary: summary.clone(),
            };
            out.push(note(session.id, *member, ip, others, kind, cause));
        }
        out
    }
}

fn note(
    session: rae_proto::SessionId,
    mac: Mac,
    ip: IpAddr,
    others: Vec<Mac>,
    kind: ConflictKind,
    cause: Cause,
) -> Change {
    Change::Conflict {
        session,
        mac,
        ip,
        others,
        kind,
        cause,
    }
}
