//! `arpwatch`: Debian's arpwatch and the agent watching the same LAN events side by side.
//!
//! arpwatch runs on the lab bridge in the foreground (`-d`: no fork, reports to stderr instead
//! of mail; `-Q`: no mail; `-N`: no bogon reports; `-p`: not promiscuous, like the agent),
//! its database in the lab directory. N DUTs join and each pings the bridge once a second for
//! T seconds: the `mixed` LAN (udhcpc, dhclient, static IPv4, IPv6-only SLAAC in turn, so every
//! fourth DUT is invisible to an ARP watcher by construction) or the `v4` mix arpwatch can see
//! (udhcpc, dhclient, static IPv4 only). Afterwards: which DUTs each one knows (arpwatch's
//! `arp.dat`, written when it exits, against `raectl devices`), and the CPU each process used
//! over the same window, in clock ticks (utime+stime) and in nanoseconds on the CPU
//! (`schedstat`), since a few ticks say little.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rae_proto::Mac;
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, LabConfig};

use crate::bed::{Bed, Guarded};
use rae_tests::procstat::{cpu_time, on_cpu};

const MAX_DUTS: usize = 40;

/// Which DUTs join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mix {
    /// udhcpc, dhclient, static IPv4, IPv6-only SLAAC in turn.
    Mixed,
    /// udhcpc, dhclient, static IPv4 in turn: all visible to ARP.
    V4,
}

impl std::str::FromStr for Mix {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Mix> {
        match s {
            "mixed" => Ok(Mix::Mixed),
            "v4" => Ok(Mix::V4),
            other => bail!("--mix {other:?}: mixed or v4"),
        }
    }
}

fn kind_for(i: usize, mix: Mix, lab: &rae_tests::netlab::Lab) -> (&'static str, DutKind) {
    let turn = match mix {
        Mix::Mixed => i % 4,
        Mix::V4 => i % 3,
    };
    match turn {
        0 => (
            "udhcpc",
            DutKind::Udhcpc {
                hostname: Some(format!("aw-udhcpc-{i}")),
                vendor_class: None,
                client_id: None,
            },
        ),
        1 => (
            "dhclient",
            DutKind::Dhclient {
                hostname: Some(format!("aw-dhclient-{i}")),
                vendor_class: None,
            },
        ),
        2 => (
            "static",
            DutKind::StaticV4 {
                addr: lab.net().host_v4(20 + i as u8),
            },
        ),
        _ => ("slaac", DutKind::Slaac),
    }
}

/// arpwatch writes MACs without leading zeros (`2:72:6c:0:0:1`).
fn parse_mac(text: &str) -> Option<Mac> {
    let mut octets = [0u8; 6];
    let mut parts = text.split(':');
    for octet in &mut octets {
        *octet = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(Mac(octets))
}

/// `arp.dat`: MAC, IPv4, time, [host name], tab separated.
fn arp_dat(path: &Path) -> Result<BTreeMap<Mac, BTreeSet<String>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out: BTreeMap<Mac, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let mut fields = line.split('\t');
        if let (Some(mac), Some(ip)) = (fields.next().and_then(parse_mac), fields.next()) {
            out.entry(mac).or_default().insert(ip.to_owned());
        }
    }
    Ok(out)
}

/// Whether `pid` holds a packet socket (arpwatch has opened its capture).
fn has_packet_socket(pid: u32) -> bool {
    let Ok(packet) = std::fs::read_to_string("/proc/net/packet") else {
        return false;
    };
    let inodes: BTreeSet<String> = packet
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .is_some_and(|inode| inodes.contains(inode))
        })
    })
}

/// Utime+stime and time on the CPU.
fn cpu(pid: u32) -> Result<(std::time::Duration, std::time::Duration)> {
    Ok((cpu_time(pid)?, on_cpu(pid)?))
}

pub fn run(agent_bin: &Path, n: usize, mix: Mix, talk_secs: u64) -> Result<()> {
    if !(1..=MAX_DUTS).contains(&n) {
        bail!("--duts must be 1..={MAX_DUTS}");
    }
    if !(1..=600).contains(&talk_secs) {
        bail!("--seconds must be 1..=600");
    }
    let mut bed = Bed::start(agent_bin, 600, LabConfig::default())?;
    let dat = bed.lab.dir().join("arp.dat");
    std::fs::write(&dat, "").with_context(|| format!("creating {}", dat.display()))?;
    let mut cmd = Command::new("/usr/sbin/arpwatch");
    cmd.args(["-d", "-Q", "-N", "-p", "-i", bed.lab.bridge_name(), "-f"])
        .arg(&dat);
    let mut arpwatch = Guarded::spawn(cmd, "arpwatch", bed.lab.dir().join("arpwatch.log"))
        .context("starting /usr/sbin/arpwatch (Debian package arpwatch)")?;
    let aw_pid = arpwatch.pid();
    wait_until(
        "arpwatch opening its capture",
        Duration::from_secs(20),
        || {
            Ok(if has_packet_socket(aw_pid) {
                Ok(())
            } else {
                Err(arpwatch.log())
            })
        },
    )?;
    let (agent_pid, t0) = (bed.agent.pid(), Instant::now());
    let (agent_cpu0, aw_cpu0) = (cpu(agent_pid)?, cpu(aw_pid)?);
    println!(
        "arpwatch pid {aw_pid} on {}; {n} DUTs joining ({mix:?} mix)",
        bed.lab.bridge_name()
    );
    let mut duts: Vec<(&str, Dut)> = Vec::new();
    for i in 0..n {
        let (kind, spec) = kind_for(i, mix, &bed.lab);
        let dut = bed
            .lab
            .add_dut(DutSpec::new(&format!("aw{i}-{kind}"), spec))
            .with_context(|| format!("adding DUT {i} ({kind})"))?;
        let router: IpAddr = match kind {
            "slaac" => bed.lab.router_v6().into(),
            _ => bed.lab.router_v4().into(),
        };
        if !dut.ping(router)? {
            bail!("DUT {} gets no answer from {router}", dut.name());
        }
        println!("  {} {} joined and pinged {router}", dut.name(), dut.mac());
        duts.push((kind, dut));
    }
    println!("all joined; each pings the bridge once a second for {talk_secs} s");
    let mut pings = Vec::new();
    for (kind, dut) in &duts {
        let router = match *kind {
            "slaac" => bed.lab.router_v6().to_string(),
            _ => bed.lab.router_v4().to_string(),
        };
        let count = talk_secs.to_string();
        pings.push(dut.spawn(["ping", "-q", "-i", "1", "-c", &count, &router])?);
    }
    for ping in &mut pings {
        ping.wait_exit(Duration::from_secs(talk_secs + 15))?;
    }
    let macs: Vec<Mac> = duts.iter().map(|(_, d)| Mac(d.mac().0)).collect();
    let spec = bed.spec.clone();
    wait_until(
        "the agent listing every DUT",
        Duration::from_secs(60),
        || {
            let listed =
                crate::bed::devices(&spec).map_err(|e| rae_tests::netlab::LabError::Parse {
                    what: "raectl devices".into(),
                    detail: format!("{e:#}"),
                })?;
            let missing = macs.iter().filter(|m| !listed.contains(m)).count();
            Ok(if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} missing"))
            })
        },
    )?;
    arpwatch.ensure_running()?;
    let (agent_cpu1, aw_cpu1, wall) = (cpu(agent_pid)?, cpu(aw_pid)?, t0.elapsed());
    // arpwatch writes its database when it exits.
    arpwatch.terminate(Duration::from_secs(10))?;
    let found_by_arpwatch = arp_dat(&dat)?;
    let reports = arpwatch.log().matches("new station").count();
    println!("arpwatch reported {reports} `new station`(s) on its stderr");
    let found_by_agent = bed.devices()?;
    bed.agent.ensure_running()?;
    println!(
        "\n{:<18} {:<9} {:<18} {:<6} {:<9}",
        "DUT", "kind", "MAC", "agent", "arpwatch"
    );
    let (mut agent_count, mut aw_count) = (0, 0);
    for ((kind, dut), mac) in duts.iter().zip(&macs) {
        let (by_agent, by_aw) = (
            found_by_agent.contains(mac),
            found_by_arpwatch.contains_key(mac),
        );
        agent_count += usize::from(by_agent);
        aw_count += usize::from(by_aw);
        let yes = |b: bool| if b { "found" } else { "MISSED" };
        println!(
            "{:<18} {:<9} {:<18} {:<6} {:<9}",
            dut.name(),
            kind,
            mac.to_string(),
            yes(by_agent),
            yes(by_aw)
        );
    }
    let others: Vec<String> = found_by_arpwatch
        .iter()
        .filter(|(m, _)| !macs.contains(m))
        .map(|(m, ips)| format!("{m} {}", ips.iter().cloned().collect::<Vec<_>>().join(",")))
        .collect();
    println!(
        "\nDUTs detected: agent {agent_count}/{n}, arpwatch {aw_count}/{n}\n\
         arpwatch's other entries (a Linux bridge takes the lowest MAC of its ports, so the \
         bridge's own address changes MAC as DUTs join): {}",
        others.join("; ")
    );
    let secs = |d: std::time::Duration| d.as_secs_f64();
    let (agent_ticks, aw_ticks) = (
        secs(agent_cpu1.0.saturating_sub(agent_cpu0.0)),
        secs(aw_cpu1.0.saturating_sub(aw_cpu0.0)),
    );
    let (agent_ns, aw_ns) = (
        secs(agent_cpu1.1.saturating_sub(agent_cpu0.1)),
        secs(aw_cpu1.1.saturating_sub(aw_cpu0.1)),
    );
    println!(
        "CPU over the same {:.1} s: ticks agent {agent_ticks:.3} s, arpwatch {aw_ticks:.3} s; \
         on CPU agent {agent_ns:.4} s ({:.3} % of a core), arpwatch {aw_ns:.4} s ({:.3} %), \
         agent/arpwatch {:.2}x",
        wall.as_secs_f64(),
        100.0 * agent_ns / wall.as_secs_f64(),
        100.0 * aw_ns / wall.as_secs_f64(),
        agent_ns / aw_ns.max(1e-6)
    );
    println!("(the agent also probes each device every 10 s, publishes to MQTT and writes SQLite)");
    drop(duts);
    Ok(())
}
