//! The core's clock: monotonic, never stepped, counting a suspend too (CLOCK_BOOTTIME), and
//! started at the wall clock's reading so that its times read like unix ms.
//!
//! Why: every timer of the registry core (offline, gone, probe rounds, Snapshot slots, IPv6
//! ageing) runs on it, so a wall-clock step (the first NTP sync of a router without an RTC,
//! an operator's `date -s`) closes no session and stops no probing. The wall clock only
//! stamps what the core makes: [`CoreClock::read`] gives both and their offset, which the
//! core adds to its stamps (`Core::set_wall_offset`).

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// Both clocks, read at one instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The core clock, ms.
    pub core_ms: i64,
    /// The wall clock, unix ms.
    pub wall_ms: i64,
}

impl Reading {
    /// Wall minus core clock: 0 until the wall clock is stepped (or drifts under NTP slewing).
    pub fn wall_offset_ms(&self) -> i64 {
        self.wall_ms.saturating_sub(self.core_ms)
    }
}

/// The core clock: CLOCK_BOOTTIME plus the offset that made it equal to the wall clock when
/// the daemon started.
#[derive(Clone, Copy, Debug)]
pub struct CoreClock {
    start_offset_ms: i64,
}

impl CoreClock {
    /// Starts the clock at the wall clock's current reading.
    pub fn start() -> CoreClock {
        CoreClock::starting_at(crate::wall_ms(), boot_ms())
    }

    /// The clock that reads `wall_ms` when CLOCK_BOOTTIME reads `boot_ms` (tests).
    pub fn starting_at(wall_ms: i64, boot_ms: i64) -> CoreClock {
        CoreClock {
            start_offset_ms: wall_ms.saturating_sub(boot_ms),
        }
    }

    pub fn read(&self) -> Reading {
        self.reading(crate::wall_ms(), boot_ms())
    }

    fn reading(&self, wall_ms: i64, boot_ms: i64) -> Reading {
        Reading {
            core_ms: boot_ms.saturating_add(self.start_offset_ms),
            wall_ms,
        }
    }
}

/// CLOCK_BOOTTIME in ms. Linux has had it since 2.6.39; should it ever fail, CLOCK_MONOTONIC
/// (which stops during a suspend) is the next best, and the standard library's `Instant` uses
/// that one too.
fn boot_ms() -> i64 {
    let read =
        |id| clock_gettime(id).map(|ts| Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32));
    let since_boot = read(ClockId::CLOCK_BOOTTIME)
        .or_else(|_| read(ClockId::CLOCK_MONOTONIC))
        .unwrap_or_default();
    i64::try_from(since_boot.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_clock_starts_at_the_wall_clock_and_ignores_its_steps() {
        let clock = CoreClock::starting_at(1_000_000, 50);
        let at_start = clock.reading(1_000_000, 50);
        assert_eq!(at_start.core_ms, 1_000_000);
        assert_eq!(at_start.wall_offset_ms(), 0);
        // Ten seconds later the wall clock was stepped back an hour.
        let later = clock.reading(1_000_000 + 10_000 - 3_600_000, 10_050);
        assert_eq!(
            later.core_ms, 1_010_000,
            "the core clock moved by the elapsed time only"
        );
        assert_eq!(later.wall_offset_ms(), -3_600_000);
    }

    #[test]
    fn the_real_core_clock_moves_forward() {
        let clock = CoreClock::start();
        let a = clock.read();
        let b = clock.read();
        assert!(b.core_ms >= a.core_ms);
        assert!(a.wall_offset_ms().abs() < 1_000, "{a:?}");
    }
}
