//! Ownership of lab state on disk.
//!
//! Every lab resource lives under [`LAB_ROOT`] in a directory named
//! `<owner-pid>-<kind>-<unique>`. Processes the lab starts get their config and data paths
//! from that directory, so their command lines name it; that is how a later run finds and
//! ends the processes of an owner that died without cleaning up.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Root of all lab state. Under /tmp so nothing outside it is touched.
pub const LAB_ROOT: &str = "/tmp/rae-lab";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory owned by this process; removed on drop.
#[derive(Debug)]
pub struct OwnedDir {
    path: PathBuf,
}

impl OwnedDir {
    /// Creates `LAB_ROOT/<pid>-<kind>-<n>`. `kind` is a short word such as `mosquitto`.
    pub fn create(kind: &str) -> std::io::Result<OwnedDir> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = Path::new(LAB_ROOT).join(format!(
            "{}-{}-{}{:x}",
            std::process::id(),
            kind,
            n,
            nanos & 0xffff
        ));
        std::fs::create_dir_all(&path)?;
        Ok(OwnedDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The pid that owns a lab directory name, if the name has the lab's shape.
pub fn owner_of(dir_name: &str) -> Option<u32> {
    dir_name.split('-').next()?.parse().ok()
}

/// Whether a process with this pid is alive.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The sweep of leftovers from crashed runs lives with the rest of the sweep code.
pub use crate::sweep::sweep_stale;
