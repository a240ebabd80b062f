//! What `/proc` says about a process and the machine, for the benchmark programs: a process's
//! CPU time in clock ticks (`stat`) and in nanoseconds on the CPU (`task/*/schedstat`), its
//! memory (`status`) and its writes (`io`); the machine's softirq time (`/proc/stat`).
//!
//! Limitations: `schedstat` sums the threads alive at the reading (a thread that ended in
//! between drops out; `stat`'s ticks keep it); softirq time is machine-wide and charged to no
//! process, so a benchmark reads it as a difference between runs with and without the process.

use std::time::Duration;

use anyhow::{Context, Result};

/// User plus system CPU time the process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no `)`"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_nanos(
        total * 1_000_000_000 / clock_ticks_per_sec(),
    ))
}

/// Time the process's live threads have run on a CPU, in nanoseconds (`task/*/schedstat`):
/// no clock-tick rounding, unlike [`cpu_time`].
pub fn on_cpu(pid: u32) -> Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task
            .with_context(|| format!("reading {dir}"))?
            .path()
            .join("schedstat");
        // A thread may end between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .with_context(|| format!("{}: {text:?}", path.display()))?;
    }
    Ok(Duration::from_nanos(total))
}

fn clock_ticks_per_sec() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|hz| *hz > 0)
        .unwrap_or(100) as u64
}

/// The machine's time in softirq context (all CPUs, `/proc/stat`), in clock ticks as time.
/// Packet receive and the filters of packet sockets run there, charged to no process.
pub fn softirq_time() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))
        .and_then(|l| l.split_whitespace().nth(6))
        .and_then(|t| t.parse().ok())
        .context("/proc/stat has no softirq column on its `cpu` line")?;
    Ok(Duration::from_nanos(
        ticks * 1_000_000_000 / clock_ticks_per_sec(),
    ))
}

/// What the process wrote (`/proc/<pid>/io`, all its threads).
#[derive(Clone, Copy, Debug, Default)]
pub struct Writes {
    /// Bytes passed to write(2) and the like, whatever they hit.
    pub wchar: u64,
    /// Bytes it caused to be sent to the storage layer (page cache pages it dirtied).
    pub write_bytes: u64,
}

pub fn writes(pid: u32) -> Result<Writes> {
    let path = format!("/proc/{pid}/io");
    let io = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        io.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("{path} has no {name}"))
    };
    Ok(Writes {
        wchar: field("wchar:")?,
        write_bytes: field("write_bytes:")?,
    })
}

impl Writes {
    pub fn since(self, earlier: Writes) -> Writes {
        Writes {
            wchar: self.wchar.saturating_sub(earlier.wchar),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }

    /// `write_bytes .. (.. per event), wchar ..` for `events` events.
    pub fn per_event(self, events: u64) -> String {
        let per = |b: u64| b as f64 / events.max(1) as f64 / 1024.0;
        format!(
            "write_bytes {:.1} KiB ({:.2} KiB per event), wchar {:.1} KiB ({:.2} KiB per event), {events} events",
            self.write_bytes as f64 / 1024.0,
            per(self.write_bytes),
            self.wchar as f64 / 1024.0,
            per(self.wchar),
        )
    }
}

/// `VmRSS` and `VmHWM` in KiB.
#[derive(Clone, Copy, Debug)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{path} has no {name}"))
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.2} MiB, VmHWM {:.2} MiB",
            mib(self.rss_kib),
            mib(self.hwm_kib)
        )
    }
}

/// KiB as MiB, for printing.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
