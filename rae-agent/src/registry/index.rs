//! The core's indexes over its open sessions, so that no operation scans them all:
//!
//! - [`Deadlines`]: each session's earliest expiry (gone, offline, an IPv6 address ageing
//!   out) in one ordered set, and each session's probe and Snapshot phases in two more.
//!   Probe rounds and Snapshot slots repeat on a grid (`schedule`), so a phase set answers
//!   "whose round falls in `(from, now]`" and "whose round comes next" with one range query
//!   instead of a deadline per session that would move at every round.
//! - [`Addresses`]: which MACs hold each IPv4 and IPv6 address (their records' `ipv4` and
//!   `ipv6`), and the contests over addresses that more than one MAC holds.
//!
//! Both are kept current by the core at every change of a session; they hold nothing that
//! the sessions do not, and are rebuilt from them on `Core::resume`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::ops::Bound;

use rae_proto::Mac;

use super::conflict::Contest;
use super::schedule::next_after;

const LAST_MAC: Mac = Mac([0xff; 6]);

/// The session deadlines the core must act on, by time.
#[derive(Clone, Debug, Default)]
pub(crate) struct Deadlines {
    /// (earliest expiry, MAC): exactly one entry per open session.
    expiries: BTreeSet<(i64, Mac)>,
    expiry_of: HashMap<Mac, i64>,
    /// (phase within the probe interval, MAC).
    probe_phases: BTreeSet<(i64, Mac)>,
    /// (phase within the Snapshot interval, MAC).
    snapshot_phases: BTreeSet<(i64, Mac)>,
}

impl Deadlines {
    pub fn insert(&mut self, mac: Mac, probe_phase: i64, snapshot_phase: i64, expiry: i64) {
        self.probe_phases.insert((probe_phase, mac));
        self.snapshot_phases.insert((snapshot_phase, mac));
        self.set_expiry(mac, expiry);
    }

    pub fn remove(&mut self, mac: Mac, probe_phase: i64, snapshot_phase: i64) {
        self.probe_phases.remove(&(probe_phase, mac));
        self.snapshot_phases.remove(&(snapshot_phase, mac));
        if let Some(at) = self.expiry_of.remove(&mac) {
            self.expiries.remove(&(at, mac));
        }
    }

    /// Moves `mac`'s expiry to `at`; a no-op when it is there already (most frames).
    pub fn set_expiry(&mut self, mac: Mac, at: i64) {
        match self.expiry_of.insert(mac, at) {
            Some(old) if old == at => return,
            Some(old) => {
                self.expiries.remove(&(old, mac));
            }
            None => {}
        }
        self.expiries.insert((at, mac));
    }

    /// The sessions whose expiry `now` has reached, in MAC order.
    pub fn expired(&self, now: i64) -> Vec<Mac> {
        let mut due: Vec<Mac> = self
            .expiries
            .range(..=(now, LAST_MAC))
            .map(|(_, mac)| *mac)
            .collect();
        due.sort_unstable();
        due
    }

    pub fn first_expiry(&self) -> Option<i64> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Sessions that may have a probe round in `(from, now]`, in MAC order; a superset the
    /// caller checks exactly (the grid arithmetic saturates at the ends of time).
    pub fn probe_candidates(&self, from: i64, now: i64, period: i64) -> Vec<Mac> {
        in_window(&self.probe_phases, from, now, period)
    }

    pub fn snapshot_candidates(&self, from: i64, now: i64, period: i64) -> Vec<Mac> {
        in_window(&self.snapshot_phases, from, now, period)
    }

    /// The first probe round of any session strictly after `now`.
    pub fn next_probe_round(&self, now: i64, period: i64) -> Option<i64> {
        next_point(&self.probe_phases, now, period)
    }

    pub fn next_snapshot_slot(&self, now: i64, period: i64) -> Option<i64> {
        next_point(&self.snapshot_phases, now, period)
    }

    #[cfg(test)]
    #[allow(clippy::type_complexity)]
    pub fn entries(&self) -> (Vec<(i64, Mac)>, Vec<(i64, Mac)>, Vec<(i64, Mac)>) {
        (
            self.expiries.iter().copied().collect(),
            self.probe_phases.iter().copied().collect(),
            self.snapshot_phases.iter().copied().collect(),
        )
    }
}

/// The MACs whose phase puts a grid point in `(from, now]`, sorted.
fn in_window(phases: &BTreeSet<(i64, Mac)>, from: i64, now: i64, period: i64) -> Vec<Mac> {
    let span = i128::from(now) - i128::from(from);
    let mut macs: Vec<Mac> = if span <= 0 {
        Vec::new()
    } else if span >= i128::from(period) {
        phases.iter().map(|(_, mac)| *mac).collect()
    } else {
        let lo = (
            Bound::Excluded((from.rem_euclid(period), LAST_MAC)),
            Bound::Unbounded,
        );
        let hi = now.rem_euclid(period);
        if from.rem_euclid(period) < hi {
            let window = (lo.0, Bound::Included((hi, LAST_MAC)));
            phases.range(window).map(|(_, mac)| *mac).collect()
        } else {
            // The window wraps around the end of the period.
            phases
                .range(lo)
                .chain(phases.range(..=(hi, LAST_MAC)))
                .map(|(_, mac)| *mac)
                .collect()
        }
    };
    macs.sort_unstable();
    macs
}

/// The earliest grid point strictly after `now` over all phases: the first phase past
/// `now`'s place in the period, else (wrapping) the smallest.
fn next_point(phases: &BTreeSet<(i64, Mac)>, now: i64, period: i64) -> Option<i64> {
    let place = now.rem_euclid(period);
    let (phase, _) = phases
        .range((Bound::Excluded((place, LAST_MAC)), Bound::Unbounded))
        .next()
        .or_else(|| phases.first())?;
    Some(next_after(now, *phase, period))
}

/// Who holds each address, and the contests over the addresses that several hold.
#[derive(Clone, Debug, Default)]
pub(crate) struct Addresses {
    /// The MACs whose record holds the address, sorted; never empty.
    holders: HashMap<IpAddr, Vec<Mac>>,
    /// Addresses held by at least two MACs that were claimed against each other; an entry
    /// goes when fewer than two hold the address.
    pub contests: BTreeMap<IpAddr, Contest>,
}

impl Addresses {
    pub fn holders(&self, ip: IpAddr) -> &[Mac] {
        self.holders.get(&ip).map_or(&[], Vec::as_slice)
    }

    pub fn add(&mut self, ip: IpAddr, mac: Mac) {
        let holders = self.holders.entry(ip).or_default();
        if let Err(at) = holders.binary_search(&mac) {
            holders.insert(at, mac);
        }
    }

    pub fn remove(&mut self, ip: IpAddr, mac: Mac) {
        let Some(holders) = self.holders.get_mut(&ip) else {
            return;
        };
        if let Ok(at) = holders.binary_search(&mac) {
            holders.remove(at);
        }
        if holders.len() < 2 {
            self.contests.remove(&ip);
        }
        if holders.is_empty() {
            self.holders.remove(&ip);
        }
    }

    /// `mac`'s IPv4 address went from `old` to `new`.
    pub fn move_v4(
        &mut self,
        mac: Mac,
        old: Option<std::net::Ipv4Addr>,
        new: Option<std::net::Ipv4Addr>,
    ) {
        if old == new {
            return;
        }
        if let Some(old) = old {
            self.remove(IpAddr::V4(old), mac);
        }
        if let Some(new) = new {
            self.add(IpAddr::V4(new), mac);
        }
    }

    /// `mac`'s IPv6 list went from `old` to `new` (both sorted, as records keep them).
    pub fn sync_v6(&mut self, mac: Mac, old: &[Ipv6Addr], new: &[Ipv6Addr]) {
        if old == new {
            return;
        }
        for ip in old {
            if new.binary_search(ip).is_err() {
                self.remove(IpAddr::V6(*ip), mac);
            }
        }
        for ip in new {
            if old.binary_search(ip).is_err() {
                self.add(IpAddr::V6(*ip), mac);
            }
        }
    }

    #[cfg(test)]
    pub fn holder_map(&self) -> BTreeMap<IpAddr, Vec<Mac>> {
        self.holders
            .iter()
            .map(|(ip, macs)| (*ip, macs.clone()))
            .collect()
    }
}
