//! Lab slots: which subnet and which interface names a running lab owns.
//!
//! A slot is a number in `1..=MAX_SLOT`. Lab `N` owns `198.18.N.0/24`, `2001:db8:N::/64`
//! and every link or namespace whose name starts with `rlab<N>` followed by a non-digit.
//! Ownership is an exclusive `flock` on `LAB_ROOT/slots/<N>.lock`, held for the lab's
//! lifetime: the kernel drops it when the owner dies, so a slot whose lock can be taken
//! belongs to nobody and whatever carries its prefix is a leftover.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::error::{LabError, Result};
use crate::labdir::LAB_ROOT;

/// Prefix of every link and namespace a lab creates.
pub const NAME_PREFIX: &str = "rlab";

/// Highest slot number; keeps `198.18.N.0/24` inside 198.18.0.0/15 and names short.
pub const MAX_SLOT: u16 = 250;

/// Where a process starts looking for a free slot; rotating it keeps a slot that was
/// just released from being reused at once, so checks for leftovers by name stay exact.
static NEXT_START: AtomicU16 = AtomicU16::new(0);

/// An exclusively held slot; released on drop.
#[derive(Debug)]
pub struct SlotLock {
    slot: u16,
    _lock: Flock<File>,
}

impl SlotLock {
    /// Claims the first free slot, starting at a point that rotates per call.
    pub fn claim_free() -> Result<SlotLock> {
        let offset = NEXT_START.fetch_add(1, Ordering::Relaxed);
        let start = (std::process::id() as u16)
            .wrapping_mul(7)
            .wrapping_add(offset)
            % MAX_SLOT;
        for i in 0..MAX_SLOT {
            let slot = (start + i) % MAX_SLOT + 1;
            if let Some(lock) = SlotLock::try_claim(slot)? {
                return Ok(lock);
            }
        }
        Err(LabError::NoFreeSlot { max: MAX_SLOT })
    }

    /// Takes the slot if nobody holds it. The lock conflicts with other holders in this
    /// process too (flock locks belong to the open file, not to the process).
    pub fn try_claim(slot: u16) -> Result<Option<SlotLock>> {
        let dir = slots_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io("creating the slot directory", &dir, e))?;
        let path = dir.join(format!("{slot}.lock"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LabError::io("opening a slot lock", &path, e))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // The pid is for people reading the directory; the lock is what counts.
                let _ = lock.set_len(0);
                let _ = writeln!(&mut *lock, "{}", std::process::id());
                Ok(Some(SlotLock { slot, _lock: lock }))
            }
            Err((_, Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, errno)) => Err(LabError::io(
                "locking a slot",
                &path,
                std::io::Error::from_raw_os_error(errno as i32),
            )),
        }
    }

    pub fn slot(&self) -> u16 {
        self.slot
    }
}

/// Directory of the slot lock files.
pub fn slots_dir() -> PathBuf {
    PathBuf::from(LAB_ROOT).join("slots")
}

/// The slot a lab link or namespace name belongs to: `rlab12br`, `rlab12d3` and
/// `rlab12-phone` all give 12. `None` for names without the lab prefix and a number.
pub fn slot_of_name(name: &str) -> Option<u16> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits == rest.len() {
        return None;
    }
    rest[..digits].parse().ok()
}

/// The lab bridge of a slot.
pub fn bridge_name(slot: u16) -> String {
    format!("{NAME_PREFIX}{slot}br")
}

/// The root-namespace end of DUT `index`'s veth pair (at most 15 bytes, the kernel's limit).
pub fn host_link_name(slot: u16, index: u32) -> String {
    format!("{NAME_PREFIX}{slot}d{index}")
}

/// The network namespace of a DUT.
pub fn ns_name(slot: u16, dut: &str) -> String {
    format!("{NAME_PREFIX}{slot}-{dut}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_back_to_their_slot() {
        assert_eq!(slot_of_name(&bridge_name(12)), Some(12));
        assert_eq!(slot_of_name(&host_link_name(250, 9_999_999)), Some(250));
        assert_eq!(host_link_name(250, 9_999_999).len(), 15);
        assert_eq!(slot_of_name(&ns_name(7, "phone-1")), Some(7));
        assert_eq!(slot_of_name("rlab"), None);
        assert_eq!(slot_of_name("rlab12"), None);
        assert_eq!(slot_of_name("rlabx-1"), None);
        assert_eq!(slot_of_name("eth0"), None);
    }

    #[test]
    fn a_held_slot_cannot_be_claimed_twice_even_in_one_process() {
        let first = SlotLock::claim_free().unwrap();
        assert!(SlotLock::try_claim(first.slot()).unwrap().is_none());
        let recorded = std::fs::read_to_string(slots_dir().join(format!("{}.lock", first.slot())));
        assert_eq!(recorded.unwrap().trim(), std::process::id().to_string());
    }
}
