//! A record of what a lab created, to prove after it is dropped that all of it is gone.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::slot::{slot_of_name, SlotLock};
use super::{DutRecord, LabNet};
use crate::sweep::{
    lab_etc_netns, lab_links, lab_namespaces, lab_processes, netns_pids, process_info,
};

/// Names and identities of a lab's links, namespaces, files and processes at one moment.
#[derive(Clone, Debug)]
pub struct Footprint {
    slot: u16,
    dir: PathBuf,
    /// Name and ifindex: a later lab on the same slot reuses names, not ifindexes.
    links: Vec<(String, Option<u64>)>,
    /// Name and nsfs inode.
    namespaces: Vec<(String, Option<u64>)>,
    etc_netns: Vec<PathBuf>,
    /// Pid and start time.
    processes: Vec<(u32, u64)>,
}

impl Footprint {
    pub(crate) fn capture(
        net: &LabNet,
        dir: &Path,
        dnsmasq: Option<u32>,
        duts: &[DutRecord],
    ) -> Footprint {
        let link = |name: &str| (name.to_string(), ifindex(name));
        let mut links = vec![link(&net.bridge)];
        links.extend(duts.iter().map(|d| link(&d.host_link)));
        let namespaces = duts
            .iter()
            .map(|d| (d.ns.clone(), ns_inode(&d.ns)))
            .collect();
        let mut pids: Vec<u32> = dnsmasq.into_iter().collect();
        pids.extend(duts.iter().flat_map(|d| netns_pids(&d.ns)));
        let dir_text = dir.to_string_lossy().into_owned();
        pids.extend(
            lab_processes()
                .into_iter()
                .filter(|p| p.cmdline.contains(&dir_text))
                .map(|p| p.pid),
        );
        pids.sort_unstable();
        pids.dedup();
        Footprint {
            slot: net.slot,
            dir: dir.to_path_buf(),
            links,
            namespaces,
            etc_netns: duts
                .iter()
                .map(|d| Path::new("/etc/netns").join(&d.ns))
                .collect(),
            processes: pids
                .into_iter()
                .filter_map(process_info)
                .map(|p| (p.pid, p.start_time))
                .collect(),
        }
    }

    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// What of the footprint still exists, one line each; empty when all is gone.
    ///
    /// If the slot is free, anything at all with its prefix counts. If another lab has
    /// claimed the slot since, only the recorded identities do (ifindex, namespace inode,
    /// pid and start time), so that lab's own resources are not mistaken for leftovers.
    pub fn remaining(&self) -> Vec<String> {
        let mut left = Vec::new();
        match SlotLock::try_claim(self.slot) {
            Ok(Some(_lock)) => {
                let ours = |n: &String| slot_of_name(n) == Some(self.slot);
                left.extend(
                    lab_namespaces()
                        .iter()
                        .filter(|n| ours(n))
                        .map(|n| format!("namespace {n}")),
                );
                left.extend(
                    lab_links()
                        .iter()
                        .filter(|n| ours(n))
                        .map(|n| format!("link {n}")),
                );
                left.extend(
                    lab_etc_netns()
                        .iter()
                        .filter(|n| ours(n))
                        .map(|n| format!("/etc/netns/{n}")),
                );
            }
            Ok(None) => {
                for (name, index) in &self.links {
                    if index.is_some() && ifindex(name) == *index {
                        left.push(format!("link {name}"));
                    }
                }
                for (name, inode) in &self.namespaces {
                    if inode.is_some() && ns_inode(name) == *inode {
                        left.push(format!("namespace {name}"));
                    }
                }
                left.extend(
                    self.etc_netns
                        .iter()
                        .filter(|p| p.exists())
                        .map(|p| p.display().to_string()),
                );
            }
            Err(e) => left.push(format!("slot {} lock unreadable: {e}", self.slot)),
        }
        for (pid, start) in &self.processes {
            if let Some(p) = process_info(*pid).filter(|p| p.start_time == *start && !p.is_zombie())
            {
                left.push(format!("process {pid}: {}", p.cmdline));
            }
        }
        let dir_text = self.dir.to_string_lossy().into_owned();
        for p in lab_processes()
            .into_iter()
            .filter(|p| p.cmdline.contains(&dir_text))
        {
            if !self.processes.iter().any(|(pid, _)| *pid == p.pid) {
                left.push(format!("process {}: {}", p.pid, p.cmdline));
            }
        }
        if self.dir.exists() {
            left.push(format!("directory {}", self.dir.display()));
        }
        left
    }
}

fn ifindex(link: &str) -> Option<u64> {
    std::fs::read_to_string(Path::new("/sys/class/net").join(link).join("ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn ns_inode(ns: &str) -> Option<u64> {
    std::fs::metadata(Path::new("/run/netns").join(ns))
        .ok()
        .map(|m| m.ino())
}
