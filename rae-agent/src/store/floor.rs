//! The free-disk floor: below it the store coalesces harder (a lower outbox quota) and warns,
//! so that a long broker outage or a MAC flood cannot fill the flash the RAE runs from.
//!
//! The floor is the higher of `disk.min_free_bytes` and `disk.min_free_percent` of the
//! filesystem that holds the database (statvfs of its directory, blocks available to an
//! unprivileged user). The store samples it when it opens and with every status write (every
//! `agent.status_interval_secs`); each commit uses the last sample. Short of disk, the quota
//! is `disk.low_outbox_max_bytes` (never above the normal one), and the quota's own rule
//! (`quota`) does the rest. The policy is pure; [`sample`] is the only system call.

use std::path::Path;

use crate::config::DiskConfig;

/// The configured floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskFloor {
    pub min_free_bytes: u64,
    pub min_free_percent: u8,
    /// The outbox quota while short of disk.
    pub low_outbox_max_bytes: u64,
}

impl DiskFloor {
    pub fn from_config(disk: &DiskConfig) -> DiskFloor {
        DiskFloor {
            min_free_bytes: disk.min_free_bytes,
            min_free_percent: disk.min_free_percent,
            low_outbox_max_bytes: disk.low_outbox_max_bytes,
        }
    }

    /// The free bytes below which the store is short of disk, on a filesystem of `total`.
    pub fn floor_bytes(&self, total: u64) -> u64 {
        let share = (u128::from(total) * u128::from(self.min_free_percent) / 100) as u64;
        self.min_free_bytes.max(share)
    }

    pub fn is_low(&self, sample: DiskSample) -> bool {
        sample.free_bytes < self.floor_bytes(sample.total_bytes)
    }

    /// The outbox quota to enforce, given the normal one.
    pub fn quota(&self, normal: u64, low: bool) -> u64 {
        match low {
            true => normal.min(self.low_outbox_max_bytes),
            false => normal,
        }
    }
}

/// Free and total bytes of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSample {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// The filesystem that holds `dir`.
// statvfs's field types differ between targets (u32 on some 32-bit ones): the conversions
// are no-ops only here.
#[allow(clippy::useless_conversion)]
pub fn sample(dir: &Path) -> Result<DiskSample, nix::Error> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    let unit = u64::from(stat.fragment_size()).max(1);
    Ok(DiskSample {
        free_bytes: u64::from(stat.blocks_available()).saturating_mul(unit),
        total_bytes: u64::from(stat.blocks()).saturating_mul(unit),
    })
}

/// What the store knows about its disk, and what it did about it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskState {
    pub last: Option<DiskSample>,
    pub low: bool,
}

impl DiskState {
    /// Takes a new sample; true when it crossed the floor downwards.
    pub fn update(&mut self, floor: &DiskFloor, sample: DiskSample) -> bool {
        let low = floor.is_low(sample);
        let crossed = low && !self.low;
        self.last = Some(sample);
        self.low = low;
        crossed
    }

    /// The `store.disk_*` status entries.
    pub fn entries(&self, floor: &DiskFloor, normal_quota: u64) -> Vec<(String, String)> {
        let mut out = vec![
            ("store.disk_low".to_owned(), self.low.to_string()),
            (
                "store.outbox_quota_bytes".to_owned(),
                floor.quota(normal_quota, self.low).to_string(),
            ),
        ];
        if let Some(sample) = self.last {
            out.push((
                "store.disk_free_bytes".to_owned(),
                sample.free_bytes.to_string(),
            ));
            out.push((
                "store.disk_floor_bytes".to_owned(),
                floor.floor_bytes(sample.total_bytes).to_string(),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: DiskFloor = DiskFloor {
        min_free_bytes: 1000,
        min_free_percent: 10,
        low_outbox_max_bytes: 64,
    };

    fn sample(free: u64, total: u64) -> DiskSample {
        DiskSample {
            free_bytes: free,
            total_bytes: total,
        }
    }

    #[test]
    fn the_higher_of_bytes_and_percent_is_the_floor() {
        assert_eq!(FLOOR.floor_bytes(5_000), 1000);
        assert_eq!(FLOOR.floor_bytes(50_000), 5000);
        assert!(FLOOR.is_low(sample(999, 5_000)));
        assert!(!FLOOR.is_low(sample(1000, 5_000)));
        assert!(FLOOR.is_low(sample(4_999, 50_000)));
    }

    #[test]
    fn short_of_disk_the_quota_drops_and_the_crossing_counts_once() {
        let mut state = DiskState::default();
        assert!(!state.update(&FLOOR, sample(10_000, 50_000)));
        assert_eq!(FLOOR.quota(1 << 20, state.low), 1 << 20);
        assert!(state.update(&FLOOR, sample(10, 50_000)));
        assert!(
            !state.update(&FLOOR, sample(10, 50_000)),
            "still low: no new crossing"
        );
        assert_eq!(FLOOR.quota(1 << 20, state.low), 64);
        assert_eq!(
            FLOOR.quota(32, state.low),
            32,
            "never above the normal quota"
        );
        assert!(!state.update(&FLOOR, sample(10_000, 50_000)));
        assert!(!state.low);
    }

    #[test]
    fn the_real_filesystem_can_be_sampled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = super::sample(dir.path()).expect("statvfs of a temp dir");
        assert!(s.total_bytes > 0 && s.free_bytes <= s.total_bytes, "{s:?}");
    }
}
