//! Free loopback ports that no other lab test in any process takes at the same time.
//!
//! Ports come from below the kernel's ephemeral range, so an outgoing connection of some
//! client never lands on a port a service is about to bind (or re-bind after a restart).
//! Each port is leased with an exclusive `flock` on `LAB_ROOT/ports/<port>`, held for the
//! service's lifetime; lock files are never deleted, since deleting a locked file lets a
//! second process lock a fresh inode under the same name. A bind test skips ports other
//! software holds; a service that still loses its port is restarted on new ones.

use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{Flock, FlockArg};

use super::ServiceError;
use crate::labdir::LAB_ROOT;

/// Lowest port the lab uses; below are well-known and commonly configured ports.
const LOWEST: u16 = 20_000;
/// Used when the kernel's ephemeral range cannot be read.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;
const TRIES: u32 = 200;

static DRAW: AtomicU64 = AtomicU64::new(0);

/// A loopback port reserved for one lab service; released on drop.
#[derive(Debug)]
pub struct PortLease {
    port: u16,
    _lock: Flock<File>,
}

impl PortLease {
    /// Leases one free port on 127.0.0.1.
    pub fn acquire() -> Result<PortLease, ServiceError> {
        let range = port_range();
        let dir = Path::new(LAB_ROOT).join("ports");
        std::fs::create_dir_all(&dir)
            .map_err(|e| ServiceError::io("creating the port lease dir", &dir, e))?;
        let hasher = RandomState::new();
        for _ in 0..TRIES {
            let draw = hasher.hash_one(DRAW.fetch_add(1, Ordering::Relaxed));
            let span = u64::from(range.end - range.start);
            // `span` is below 2^16, so the remainder fits a u16.
            let port = range.start + (draw % span) as u16;
            if let Some(lease) = try_lease(&dir, port)? {
                return Ok(lease);
            }
        }
        Err(ServiceError::NoFreePort {
            tries: TRIES,
            range,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

fn try_lease(dir: &Path, port: u16) -> Result<Option<PortLease>, ServiceError> {
    let path: PathBuf = dir.join(port.to_string());
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServiceError::io("opening a port lease file", &path, e))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
        Err((_, errno)) => {
            return Err(ServiceError::io(
                "locking a port lease file",
                &path,
                errno.into(),
            ))
        }
    };
    // The lease only keeps other lab tests away; this shows whether anything else listens.
    if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_err() {
        return Ok(None);
    }
    Ok(Some(PortLease { port, _lock: lock }))
}

/// Ports from [`LOWEST`] up to the start of the kernel's ephemeral range.
fn port_range() -> Range<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_START);
    if ephemeral_start > LOWEST + 1_000 {
        LOWEST..ephemeral_start
    } else {
        // A machine whose ephemeral range starts low: fall back to the range above it
        // and rely on the retry when a service loses its port.
        DEFAULT_EPHEMERAL_START..u16::MAX
    }
}

/// How often a service start is tried on fresh ports after losing a port.
const PORT_ATTEMPTS: u32 = 3;

/// Runs `attempt` (lease ports, configure, spawn, wait until ready) again on fresh ports
/// when the service reports its port already in use.
pub(crate) fn retry_on_port_clash<T>(
    service: &'static str,
    mut attempt: impl FnMut() -> Result<T, ServiceError>,
) -> Result<T, ServiceError> {
    for n in 1..PORT_ATTEMPTS {
        match attempt() {
            Err(e) if e.is_address_in_use() => {
                tracing::warn!(
                    service,
                    attempt = n,
                    "port taken during start-up; retrying on other ports"
                );
            }
            other => return other,
        }
    }
    attempt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_distinct_while_held() {
        let leases: Vec<PortLease> = (0..20).map(|_| PortLease::acquire().unwrap()).collect();
        let mut ports: Vec<u16> = leases.iter().map(PortLease::port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(
            ports.len(),
            leases.len(),
            "a port was leased twice: {ports:?}"
        );
        let range = port_range();
        assert!(
            ports.iter().all(|p| range.contains(p)),
            "{ports:?} outside {range:?}"
        );
    }

    #[test]
    fn a_port_clash_is_retried_and_other_errors_are_not() {
        let clash = || ServiceError::Exited {
            service: "test",
            status: std::os::unix::process::ExitStatusExt::from_raw(256),
            log_tail: "bind: Address already in use".into(),
        };
        let mut calls = 0;
        let result = retry_on_port_clash("test", || {
            calls += 1;
            if calls < 3 {
                Err(clash())
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result.unwrap(), 3);

        let mut calls = 0;
        let result: Result<(), _> = retry_on_port_clash("test", || {
            calls += 1;
            Err(ServiceError::NoFreePort {
                tries: 1,
                range: 1..2,
            })
        });
        assert!(result.is_err());
        assert_eq!(calls, 1);
    }
}
