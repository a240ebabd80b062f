//! Finding and removing what labs leave behind.
//!
//! A lab's resources carry its marks: links and namespaces are named `rlab<slot>...`
//! (guarded by the slot's lock, see [`crate::netlab::slot`]), `/etc/netns/rlab...` holds a
//! DUT's resolv.conf, and every process the lab or the services start has a path
//! `LAB_ROOT/<owner-pid>-...` on its command line. A resource is stale when its slot lock
//! is free or its owner pid is dead; [`sweep_stale`] removes exactly those, so it is safe
//! to run while other labs are running. [`leftovers`] lists everything, stale or not.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::labdir::{owner_of, pid_alive, LAB_ROOT};
use crate::netlab::slot::{slot_of_name, SlotLock, NAME_PREFIX};
use crate::netlab::{delete_link, delete_netns, wait_until};

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub removed: Vec<String>,
    pub failed: Vec<String>,
}

/// A process as `/proc` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub pgid: u32,
    /// Clock ticks after boot; with the pid, identifies a process across pid reuse.
    pub start_time: u64,
    /// `R`, `S`, `Z` (zombie), ...
    pub state: char,
    /// Arguments joined by spaces.
    pub cmdline: String,
}

impl ProcessInfo {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// One process, or `None` if it is gone (or a kernel thread without a command line).
pub fn process_info(pid: u32) -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let pgid = fields.get(2)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(" ");
    Some(ProcessInfo {
        pid,
        pgid,
        start_time,
        state,
        cmdline,
    })
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Processes (other than this one) whose command line names a path under `LAB_ROOT`.
pub fn lab_processes() -> Vec<ProcessInfo> {
    let marker = format!("{LAB_ROOT}/");
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|pid| *pid != me)
        .filter_map(process_info)
        .filter(|p| !p.is_zombie() && p.cmdline.contains(&marker))
        .collect()
}

/// The owner pids of the lab directories a command line names.
fn owners_named(cmdline: &str) -> BTreeSet<u32> {
    let marker = format!("{LAB_ROOT}/");
    cmdline
        .match_indices(&marker)
        .filter_map(|(at, _)| {
            let rest = &cmdline[at + marker.len()..];
            let name = rest.split(['/', ' ']).next()?;
            owner_of(name)
        })
        .collect()
}

/// How `/proc/<pid>/ns/net` reads for a process in namespace `ns` (a name under
/// /run/netns), or `None` if there is no such namespace.
fn netns_link(ns: &str) -> Option<String> {
    let meta = std::fs::metadata(Path::new("/run/netns").join(ns)).ok()?;
    Some(format!("net:[{}]", meta.ino()))
}

fn pid_has_netns(pid: u32, link: &str) -> bool {
    std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.as_os_str() == link)
}

/// Pids of the processes in network namespace `ns`.
pub fn netns_pids(ns: &str) -> Vec<u32> {
    let Some(link) = netns_link(ns) else {
        return Vec::new();
    };
    all_pids()
        .into_iter()
        .filter(|pid| pid_has_netns(*pid, &link))
        .collect()
}

/// Whether process `pid` is in network namespace `ns`.
pub fn pid_in_netns(pid: u32, ns: &str) -> bool {
    netns_link(ns).is_some_and(|link| pid_has_netns(pid, &link))
}

/// SIGKILLs every process in namespace `ns` and waits until none is left running
/// (zombies whose parent has yet to reap them count as gone). Returns failures.
pub(crate) fn kill_netns_processes(ns: &str) -> Vec<String> {
    let pids = netns_pids(ns);
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
    }
    match wait_until(
        format!("processes in namespace {ns} exiting"),
        Duration::from_secs(5),
        || {
            let running: Vec<u32> = netns_pids(ns)
                .into_iter()
                .filter(|pid| process_info(*pid).is_some_and(|p| !p.is_zombie()))
                .collect();
            Ok(if running.is_empty() {
                Ok(())
            } else {
                Err(format!("still running: {running:?}"))
            })
        },
    ) {
        Ok(()) => Vec::new(),
        Err(e) => vec![e.to_string()],
    }
}

fn names_in(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(NAME_PREFIX))
        .collect();
    names.sort();
    names
}

/// Named network namespaces with the lab prefix.
pub fn lab_namespaces() -> Vec<String> {
    names_in("/run/netns")
}

/// Links in this (the root) namespace with the lab prefix.
pub fn lab_links() -> Vec<String> {
    names_in("/sys/class/net")
}

/// Per-namespace `/etc/netns` directories with the lab prefix.
pub fn lab_etc_netns() -> Vec<String> {
    names_in("/etc/netns")
}

/// Directories under `LAB_ROOT` that belong to an owner pid, with that pid.
pub fn owned_dirs() -> Vec<(PathBuf, u32)> {
    let mut dirs: Vec<(PathBuf, u32)> = std::fs::read_dir(LAB_ROOT)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.path(), owner_of(e.file_name().to_str()?)?)))
        .collect();
    dirs.sort();
    dirs
}

/// Everything of any lab that exists now, stale or in use, one line each.
pub fn leftovers() -> Vec<String> {
    let mut found = Vec::new();
    found.extend(
        lab_namespaces()
            .into_iter()
            .map(|n| format!("namespace {n}")),
    );
    found.extend(lab_links().into_iter().map(|n| format!("link {n}")));
    found.extend(
        lab_etc_netns()
            .into_iter()
            .map(|n| format!("/etc/netns/{n}")),
    );
    found.extend(
        lab_processes()
            .into_iter()
            .map(|p| format!("process {}: {}", p.pid, p.cmdline)),
    );
    found.extend(owned_dirs().into_iter().map(|(path, owner)| {
        let state = if pid_alive(owner) { "alive" } else { "dead" };
        format!("directory {} (owner {owner}, {state})", path.display())
    }));
    found
}

/// Removes what dead labs and services left behind: their processes, namespaces, links,
/// `/etc/netns` entries and directories. Resources of running labs are left alone.
pub fn sweep_stale() -> SweepReport {
    let mut report = SweepReport::default();
    for process in lab_processes() {
        let owners = owners_named(&process.cmdline);
        if owners.is_empty() || owners.iter().all(|o| pid_alive(*o)) {
            continue;
        }
        let pid = Pid::from_raw(process.pid as i32);
        let result = if process.pgid == process.pid {
            killpg(pid, Signal::SIGKILL)
        } else {
            kill(pid, Signal::SIGKILL)
        };
        match result {
            Ok(()) => report
                .removed
                .push(format!("process {}: {}", process.pid, process.cmdline)),
            Err(e) => report
                .failed
                .push(format!("killing process {}: {e}", process.pid)),
        }
    }
    let named: BTreeSet<Option<u16>> = lab_namespaces()
        .iter()
        .chain(&lab_links())
        .chain(&lab_etc_netns())
        .map(|n| slot_of_name(n))
        .collect();
    for slot in named {
        match slot {
            Some(slot) => match SlotLock::try_claim(slot) {
                Ok(Some(lock)) => purge_slot(&lock, &mut report),
                Ok(None) => {}
                Err(e) => report.failed.push(format!("checking slot {slot}: {e}")),
            },
            // Prefixed but slot-less names belong to no lab that could still be running.
            None => purge(|name| slot_of_name(name).is_none(), &mut report),
        }
    }
    for (path, owner) in owned_dirs() {
        if pid_alive(owner) {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => report.removed.push(format!("directory {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report
                .failed
                .push(format!("removing {}: {e}", path.display())),
        }
    }
    report
}

/// Removes every namespace, link and `/etc/netns` entry of a slot; holding its lock
/// proves that no running lab uses them.
pub(crate) fn purge_slot(lock: &SlotLock, report: &mut SweepReport) {
    let slot = lock.slot();
    purge(|name| slot_of_name(name) == Some(slot), report);
}

fn purge(matches: impl Fn(&str) -> bool, report: &mut SweepReport) {
    // Namespaces first: their processes hold them, and their veth ends go with them.
    for ns in lab_namespaces().into_iter().filter(|n| matches(n)) {
        report.failed.extend(kill_netns_processes(&ns));
        record(
            report,
            format!("namespace {ns}"),
            delete_netns(&ns).map_err(|e| e.to_string()),
        );
    }
    for link in lab_links().into_iter().filter(|n| matches(n)) {
        record(
            report,
            format!("link {link}"),
            delete_link(&link).map_err(|e| e.to_string()),
        );
    }
    for name in lab_etc_netns().into_iter().filter(|n| matches(n)) {
        let path = Path::new("/etc/netns").join(&name);
        record(
            report,
            format!("{}", path.display()),
            std::fs::remove_dir_all(&path).map_err(|e| e.to_string()),
        );
    }
}

fn record(report: &mut SweepReport, what: String, result: Result<(), String>) {
    match result {
        Ok(()) => report.removed.push(what),
        Err(e) => report.failed.push(format!("removing {what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_lab_paths_on_a_command_line() {
        let cmdline = "dnsmasq --conf-file=/tmp/rae-lab/4242-netlab-1ab/dnsmasq.conf -k";
        assert_eq!(owners_named(cmdline), BTreeSet::from([4242]));
        let two = "x /tmp/rae-lab/1-a-0/f /tmp/rae-lab/77-postgres-3/data";
        assert_eq!(owners_named(two), BTreeSet::from([1, 77]));
        assert!(owners_named("/tmp/rae-lab/slots/3.lock").is_empty());
        assert!(owners_named("sleep 10").is_empty());
    }

    #[test]
    fn this_process_is_described_by_proc() {
        let me = process_info(std::process::id()).unwrap();
        assert_eq!(me.pid, std::process::id());
        assert!(!me.is_zombie());
        assert!(!me.cmdline.is_empty());
    }
}
