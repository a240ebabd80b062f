//! The core's timers: its configuration, and the arithmetic that places each session's
//! probe rounds and periodic Snapshots on a grid of its own.
//!
//! Every session has a phase within the probe interval and another within the Snapshot
//! interval, taken from its session id's random bits. Rounds then fall at
//! `phase + k * interval`: the devices of an RAE are probed (and snapshotted) spread evenly
//! over the interval rather than all at once, and a restart finds the same grid again with
//! nothing stored. Times are unix milliseconds (`i64`); the grid arithmetic is done in
//! `i128` so that no input time can overflow it.

use std::time::Duration;

use rae_proto::{Mac, SessionId};

use crate::config::{PublishConfig, RegistryConfig};

/// The registry core's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreConfig {
    /// How often each device is probed (one probe round per interval).
    pub probe_interval: Duration,
    /// How long a probe round waits for the device before it counts as missed.
    pub probe_timeout: Duration,
    /// Consecutive missed rounds before a device is offline (hysteresis).
    pub offline_after_misses: u32,
    /// Not heard for this long, the session is closed.
    pub gone_after: Duration,
    /// Period of the unprompted Snapshot of every open session.
    pub snapshot_interval: Duration,
    /// An IPv6 address the device stopped vouching for is dropped from its record this long
    /// after it last did, provided the device was heard since (see `core`).
    pub ipv6_expire_after: Duration,
    /// At most one flip-flop note per contested address per this interval.
    pub conflict_note_interval: Duration,
    /// The longest IPv6 list kept per device; the least recently heard address goes first.
    pub max_ipv6_per_device: usize,
    /// The RAE's own interfaces: never a device.
    pub own_macs: Vec<Mac>,
    /// At most this many open sessions (see `bounds`).
    pub max_sessions: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig::new(
            &RegistryConfig::default(),
            &PublishConfig::default(),
            Vec::new(),
        )
    }
}

impl CoreConfig {
    /// The core's settings from the agent's configuration; the settings the configuration
    /// file does not have take their defaults.
    pub fn new(registry: &RegistryConfig, publish: &PublishConfig, own_macs: Vec<Mac>) -> Self {
        let probe_interval = Duration::from_secs(registry.probe_interval_secs);
        CoreConfig {
            probe_interval,
            // A LAN answers in milliseconds; a device in Wi-Fi power save may take a second.
            probe_timeout: (probe_interval / 2).min(Duration::from_secs(2)),
            offline_after_misses: registry.offline_after_misses,
            gone_after: Duration::from_secs(registry.gone_after_secs),
            snapshot_interval: Duration::from_secs(publish.snapshot_interval_secs),
            ipv6_expire_after: Duration::from_secs(registry.ipv6_expire_after_secs),
            conflict_note_interval: Duration::from_secs(300),
            max_ipv6_per_device: 16,
            own_macs,
            max_sessions: usize::try_from(registry.max_sessions).unwrap_or(usize::MAX),
        }
    }
}

/// Why a [`CoreConfig`] cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CoreConfigError {
    #[error("{name} must be between 1 ms and 100 years, not {value:?}")]
    OutOfRange { name: &'static str, value: Duration },
    #[error("probe_timeout ({timeout:?}) must be shorter than probe_interval ({interval:?})")]
    TimeoutNotBelowInterval {
        timeout: Duration,
        interval: Duration,
    },
    #[error("offline_after_misses must be at least 1")]
    NoMisses,
    #[error("max_ipv6_per_device must be at least 1")]
    NoIpv6,
    #[error(
        "gone_after ({gone_after:?}) must be longer than the time to go offline ({offline:?})"
    )]
    GoneBeforeOffline {
        gone_after: Duration,
        offline: Duration,
    },
}

/// [`CoreConfig`] in milliseconds, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Timers {
    pub probe_ms: i64,
    pub timeout_ms: i64,
    pub misses: u32,
    pub gone_ms: i64,
    pub snapshot_ms: i64,
    pub ipv6_expire_ms: i64,
    pub conflict_note_ms: i64,
    pub max_ipv6: usize,
}

const MAX_SPAN_MS: u128 = 100 * 365 * 24 * 3600 * 1000;

fn millis(name: &'static str, value: Duration) -> Result<i64, CoreConfigError> {
    let ms = value.as_millis();
    if ms == 0 || ms > MAX_SPAN_MS {
        return Err(CoreConfigError::OutOfRange { name, value });
    }
    i64::try_from(ms).map_err(|_| CoreConfigError::OutOfRange { name, value })
}

impl Timers {
    pub fn new(config: &CoreConfig) -> Result<Timers, CoreConfigError> {
        let timers = Timers {
            probe_ms: millis("probe_interval", config.probe_interval)?,
            timeout_ms: millis("probe_timeout", config.probe_timeout)?,
            misses: config.offline_after_misses,
            gone_ms: millis("gone_after", config.gone_after)?,
            snapshot_ms: millis("snapshot_interval", config.snapshot_interval)?,
            ipv6_expire_ms: millis("ipv6_expire_after", config.ipv6_expire_after)?,
            conflict_note_ms: millis("conflict_note_interval", config.conflict_note_interval)?,
            max_ipv6: config.max_ipv6_per_device,
        };
        if timers.timeout_ms >= timers.probe_ms {
            return Err(CoreConfigError::TimeoutNotBelowInterval {
                timeout: config.probe_timeout,
                interval: config.probe_interval,
            });
        }
        if timers.misses == 0 {
            return Err(CoreConfigError::NoMisses);
        }
        if timers.max_ipv6 == 0 {
            return Err(CoreConfigError::NoIpv6);
        }
        // The longest a device can stay online unheard: up to an interval before its first
        // round, then the other misses, then the last round's timeout.
        let offline =
            i128::from(timers.probe_ms) * i128::from(timers.misses) + i128::from(timers.timeout_ms);
        if i128::from(timers.gone_ms) <= offline {
            return Err(CoreConfigError::GoneBeforeOffline {
                gone_after: config.gone_after,
                offline: Duration::from_millis(u64::try_from(offline).unwrap_or(u64::MAX)),
            });
        }
        Ok(timers)
    }

    /// When a device last heard at `heard` goes offline: after `misses` rounds that started
    /// after `heard` have each passed their timeout.
    pub fn offline_at(&self, session: SessionId, heard: i64) -> i64 {
        let first = next_after(heard, probe_phase(session, self.probe_ms), self.probe_ms);
        clamp(
            i128::from(first)
                + i128::from(self.misses - 1) * i128::from(self.probe_ms)
                + i128::from(self.timeout_ms),
        )
    }

    /// Rounds that started after `heard` and whose timeout has passed by `now`.
    pub fn misses_at(&self, session: SessionId, heard: i64, now: i64) -> u32 {
        let first = next_after(heard, probe_phase(session, self.probe_ms), self.probe_ms);
        let elapsed = i128::from(now) - i128::from(self.timeout_ms) - i128::from(first);
        if elapsed < 0 {
            return 0;
        }
        u32::try_from(elapsed / i128::from(self.probe_ms) + 1).unwrap_or(u32::MAX)
    }

    pub fn gone_at(&self, heard: i64) -> i64 {
        heard.saturating_add(self.gone_ms)
    }

    /// The latest probe round start at or before `now`.
    pub fn round_at_or_before(&self, session: SessionId, now: i64) -> i64 {
        at_or_before(now, probe_phase(session, self.probe_ms), self.probe_ms)
    }

    /// Per session, for tests; the core asks its phase index (`index`) instead.
    #[cfg(test)]
    pub fn next_round(&self, session: SessionId, now: i64) -> i64 {
        next_after(now, probe_phase(session, self.probe_ms), self.probe_ms)
    }

    /// The latest Snapshot slot at or before `now`.
    pub fn snapshot_slot(&self, session: SessionId, now: i64) -> i64 {
        at_or_before(
            now,
            snapshot_phase(session, self.snapshot_ms),
            self.snapshot_ms,
        )
    }

    #[cfg(test)]
    pub fn next_snapshot_slot(&self, session: SessionId, now: i64) -> i64 {
        next_after(
            now,
            snapshot_phase(session, self.snapshot_ms),
            self.snapshot_ms,
        )
    }

    /// The session's place in the probe interval: its rounds fall at `phase + k * probe_ms`.
    pub fn probe_phase(&self, session: SessionId) -> i64 {
        probe_phase(session, self.probe_ms)
    }

    pub fn snapshot_phase(&self, session: SessionId) -> i64 {
        snapshot_phase(session, self.snapshot_ms)
    }
}

/// The phase of a session within `period`, from the id's first 8 bytes (random in a v4 UUID).
fn snapshot_phase(session: SessionId, period: i64) -> i64 {
    phase(&session.as_uuid().as_bytes()[..8], period)
}

/// The probe phase, from the id's last 8 bytes, independent of the Snapshot phase.
fn probe_phase(session: SessionId, period: i64) -> i64 {
    phase(&session.as_uuid().as_bytes()[8..], period)
}

fn phase(bytes: &[u8], period: i64) -> i64 {
    let value = bytes
        .iter()
        .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
    let period = u64::try_from(period).unwrap_or(1).max(1);
    i64::try_from(value % period).unwrap_or(0)
}

fn clamp(value: i128) -> i64 {
    i64::try_from(value).unwrap_or(if value < 0 { i64::MIN } else { i64::MAX })
}

/// The grid point `phase + k * period` at or before `t`.
fn at_or_before(t: i64, phase: i64, period: i64) -> i64 {
    let t = i128::from(t);
    let period = i128::from(period.max(1));
    clamp(t - (t - i128::from(phase)).rem_euclid(period))
}

/// The first grid point `phase + k * period` strictly after `t`.
pub(crate) fn next_after(t: i64, phase: i64, period: i64) -> i64 {
    clamp(i128::from(at_or_before(t, phase, period)) + i128::from(period.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CoreConfig {
        CoreConfig {
            probe_interval: Duration::from_secs(10),
            probe_timeout: Duration::from_secs(2),
            offline_after_misses: 3,
            gone_after: Duration::from_secs(600),
            ..CoreConfig::default()
        }
    }

    #[test]
    fn defaults_follow_the_agent_config() {
        let config = CoreConfig::default();
        assert_eq!(config.probe_interval, Duration::from_secs(10));
        assert_eq!(config.offline_after_misses, 3);
        assert_eq!(config.gone_after, Duration::from_secs(600));
        assert_eq!(config.snapshot_interval, Duration::from_secs(300));
        assert!(Timers::new(&config).is_ok());
    }

    #[test]
    fn bad_settings_are_named() {
        let mut bad = config();
        bad.probe_timeout = bad.probe_interval;
        assert!(matches!(
            Timers::new(&bad),
            Err(CoreConfigError::TimeoutNotBelowInterval { .. })
        ));
        let mut bad = config();
        bad.offline_after_misses = 0;
        assert_eq!(Timers::new(&bad), Err(CoreConfigError::NoMisses));
        let mut bad = config();
        bad.gone_after = Duration::from_secs(30);
        assert!(matches!(
            Timers::new(&bad),
            Err(CoreConfigError::GoneBeforeOffline { .. })
        ));
        let mut bad = config();
        bad.snapshot_interval = Duration::ZERO;
        assert!(matches!(
            Timers::new(&bad),
            Err(CoreConfigError::OutOfRange {
                name: "snapshot_interval",
                ..
            })
        ));
    }

    #[test]
    fn grid_points() {
        assert_eq!(at_or_before(25, 3, 10), 23);
        assert_eq!(at_or_before(23, 3, 10), 23);
        assert_eq!(next_after(23, 3, 10), 33);
        assert_eq!(at_or_before(-5, 3, 10), -7);
        assert_eq!(next_after(i64::MAX, 3, 10), i64::MAX);
        assert_eq!(at_or_before(i64::MIN, 3, 10), i64::MIN);
    }

    #[test]
    fn offline_after_the_configured_misses() {
        let timers = Timers::new(&config()).unwrap();
        let session = SessionId::from_bytes([7; 16]);
        let heard = 1_000_000;
        let first = timers.next_round(session, heard);
        assert!(first > heard && first <= heard + 10_000);
        let offline = timers.offline_at(session, heard);
        assert_eq!(offline, first + 2 * 10_000 + 2_000);
        assert_eq!(timers.misses_at(session, heard, first + 1_999), 0);
        assert_eq!(timers.misses_at(session, heard, first + 2_000), 1);
        assert_eq!(timers.misses_at(session, heard, offline - 1), 2);
        assert_eq!(timers.misses_at(session, heard, offline), 3);
    }

    #[test]
    fn phases_spread_sessions() {
        let timers = Timers::new(&config()).unwrap();
        let rounds: std::collections::BTreeSet<i64> = (0u8..50)
            .map(|i| {
                let mut bytes = [i.wrapping_mul(37); 16];
                bytes[15] = i;
                timers.round_at_or_before(SessionId::from_bytes(bytes), 1_000_000)
            })
            .collect();
        assert!(rounds.len() > 40, "probe rounds bunch up: {rounds:?}");
    }
}
