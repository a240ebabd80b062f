//! `rss`: the agent's memory idle and with N devices.
//!
//! One static DUT is a device itself and sends, through its port, an ARP announcement from
//! each of N-1 more MACs (a /24 has room for 238 of them beside the DUT) and a neighbour
//! solicitation from an address of the lab's IPv6 prefix for the rest. A third of the MACs
//! carry Google's OUI, a third the Raspberry Pi Foundation's, a third are locally
//! administered, so records have vendors as on a real LAN. The injected devices never answer
//! the agent's probes: after three missed rounds they are offline, still open sessions.

use std::net::Ipv6Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rae_proto::{Event, Mac};
use rae_tests::netlab::{wait_until, DutKind, DutSpec, LabConfig};

use crate::bed::Bed;
use crate::inject::{arp_announcement, neighbour_solicitation, Injector};
use rae_tests::procstat::{memory, Memory};

/// Addresses .12..=.249 of the /24 for injected devices; the DUT has .2.
const V4_FIRST_HOST: usize = 12;
const V4_DEVICES: usize = 250 - V4_FIRST_HOST;
const MAX_DEVICES: usize = 4096;

fn device_mac(slot: u8, k: usize) -> Mac {
    let [.., hi, lo] = (k as u32).to_be_bytes();
    match k % 3 {
        0 => Mac([0x00, 0x1a, 0x11, slot, hi, lo]),
        1 => Mac([0xb8, 0x27, 0xeb, slot, hi, lo]),
        _ => Mac([0x02, 0xb1, slot, 0x00, hi, lo]),
    }
}

/// Samples the agent's memory for `window`, once a second; prints and returns the last.
fn sample(pid: u32, what: &str, window: Duration) -> Result<Memory> {
    let end = Instant::now() + window;
    let mut last = memory(pid)?;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1));
        last = memory(pid)?;
    }
    println!("{what}: {last}");
    Ok(last)
}

pub fn run(agent_bin: &Path, devices: usize) -> Result<()> {
    if !(2..=MAX_DEVICES).contains(&devices) {
        bail!("--devices must be 2..={MAX_DEVICES}");
    }
    let mut bed = Bed::start(agent_bin, 3600, LabConfig::default())?;
    let pid = bed.agent.pid();
    let idle = sample(pid, "idle, 0 devices, after 5 s", Duration::from_secs(5))?;

    let slot = (bed.lab.slot() & 0xff) as u8;
    let dut_ip = bed.lab.net().host_v4(2);
    let dut = bed
        .lab
        .add_dut(DutSpec::new("injector", DutKind::StaticV4 { addr: dut_ip }))
        .context("adding the injector DUT")?;
    // A static address alone sends nothing: one ping makes the DUT speak (ARP) like a device.
    dut.ping(std::net::IpAddr::V4(bed.lab.router_v4()))
        .context("pinging the bridge from the injector DUT")?;
    let injector = Injector::open(dut.ns_name(), "eth0")?;
    let (prefix, _) = bed.lab.prefix_v6();
    let router_v6 = bed.lab.router_v6();
    let frames: Vec<(Mac, Vec<u8>)> = (0..devices - 1)
        .map(|k| {
            let mac = device_mac(slot, k);
            let frame = if k < V4_DEVICES {
                let host = u8::try_from(V4_FIRST_HOST + k).unwrap_or(u8::MAX);
                arp_announcement(mac, bed.lab.net().host_v4(host))
            } else {
                let ip = Ipv6Addr::from(u128::from(prefix) | (0xb000 + k as u128));
                neighbour_solicitation(mac, ip, router_v6)
            };
            (mac, frame)
        })
        .collect();
    let mut wanted: Vec<Mac> = frames.iter().map(|(m, _)| *m).collect();
    wanted.push(Mac(dut.mac().0));
    println!(
        "sending announcements from {} MACs through DUT {} ({} by ARP, {} by IPv6 NS)",
        frames.len(),
        dut.name(),
        frames.len().min(V4_DEVICES),
        frames.len().saturating_sub(V4_DEVICES)
    );
    let started = Instant::now();
    let mut last_send: Option<Instant> = None;
    let listed = wait_until(
        format!("`raectl devices` listing all {devices} devices"),
        Duration::from_secs(120),
        || {
            bed.agent
                .ensure_running()
                .map_err(|e| rae_tests::netlab::LabError::Parse {
                    what: "the agent".into(),
                    detail: format!("{e:#}"),
                })?;
            let seen =
                crate::bed::devices(&bed.spec).map_err(|e| rae_tests::netlab::LabError::Parse {
                    what: "raectl devices".into(),
                    detail: format!("{e:#}"),
                })?;
            let missing: Vec<&(Mac, Vec<u8>)> =
                frames.iter().filter(|(m, _)| !seen.contains(m)).collect();
            if wanted.iter().all(|m| seen.contains(m)) {
                return Ok(Ok(seen.len()));
            }
            // Unanswered frames are sent again every two seconds, only for the MACs missing.
            if last_send.map_or(true, |t| t.elapsed() >= Duration::from_secs(2)) {
                for (_, frame) in &missing {
                    if let Err(e) = injector.send(frame) {
                        return Ok(Err(format!("{e:#}")));
                    }
                }
                last_send = Some(Instant::now());
            }
            Ok(Err(format!(
                "{} of {devices} listed",
                devices - missing.len()
            )))
        },
    )?;
    println!(
        "all {devices} devices listed by `raectl devices --json` after {:.1} s ({listed} open sessions in all)",
        started.elapsed().as_secs_f64()
    );
    let snapshots = |bed: &Bed| {
        bed.watch
            .events()
            .iter()
            .filter(|e| matches!(e.event, Event::Snapshot { .. }))
            .map(|e| e.session)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let full = memory(pid)?;
    println!("with {devices} devices, just listed: {full}");
    // Three probe rounds (10 s each) without answers take the injected devices offline: the
    // steady state of a registry that holds many sessions.
    let steady = sample(pid, "with the devices, 40 s later", Duration::from_secs(40))?;
    let db = bed.spec.database();
    let db_size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
    println!(
        "sessions with a Snapshot at the broker: {}; registry.db {:.1} KiB",
        snapshots(&bed),
        db_size as f64 / 1024.0
    );
    println!(
        "\nRSS idle {:.2} MiB -> {devices} devices {:.2} MiB (+{:.2} MiB, {:.1} KiB per device); VmHWM {:.2} MiB",
        idle.rss_kib as f64 / 1024.0,
        steady.rss_kib as f64 / 1024.0,
        (steady.rss_kib as f64 - idle.rss_kib as f64) / 1024.0,
        (steady.rss_kib as f64 - idle.rss_kib as f64) / devices as f64,
        steady.hwm_kib as f64 / 1024.0
    );
    drop(dut);
    Ok(())
}
