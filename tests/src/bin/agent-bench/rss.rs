//! `rss`: the agent's memory idle, warm (two devices) and at each of several device counts,
//! with the slope per device between counts, and what the agent wrote per event meanwhile.
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
use rae_proto::Mac;
use rae_tests::netlab::{wait_until, DutKind, DutSpec, LabConfig};

use crate::bed::{Bed, BrokerKind};
use rae_tests::inject::{arp_announcement, neighbour_solicitation, Injector};
use rae_tests::procstat::{memory, writes, Memory};

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

/// Sends `frames` until `raectl devices` lists every MAC in `wanted`; returns the listing size.
fn announce(
    bed: &mut Bed,
    injector: &Injector,
    frames: &[(Mac, Vec<u8>)],
    wanted: &[Mac],
) -> Result<usize> {
    let started = Instant::now();
    let mut last_send: Option<Instant> = None;
    let total = wanted.len();
    let listed = wait_until(
        format!("`raectl devices` listing all {total} devices"),
        Duration::from_secs(180),
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
                "{} of {total} listed",
                total - wanted.iter().filter(|m| !seen.contains(m)).count()
            )))
        },
    )?;
    println!(
        "all {total} devices listed by `raectl devices --json` after {:.1} s ({listed} open sessions in all)",
        started.elapsed().as_secs_f64()
    );
    Ok(listed)
}

/// Events the subscriber received since `since`.
fn events_since(bed: &Bed, since: Instant) -> u64 {
    bed.watch
        .messages()
        .iter()
        .filter(|m| m.at >= since && m.event().is_some())
        .count() as u64
}

/// `tls`: the agent connects to the fleet broker (TLS, client certificate) instead of plain
/// mosquitto, for the cost of TLS in the same run's figures.
pub fn run(agent_bin: &Path, counts: &[usize], tls: bool) -> Result<()> {
    let mut counts = counts.to_vec();
    counts.sort_unstable();
    counts.dedup();
    if counts.is_empty() || counts.iter().any(|n| !(3..=MAX_DEVICES).contains(n)) {
        bail!("--devices takes counts in 3..={MAX_DEVICES}, e.g. 256,1024");
    }
    let kind = if tls {
        BrokerKind::Fleet
    } else {
        BrokerKind::Plain {
            extra_config: String::new(),
        }
    };
    println!("broker: {}", if tls { "fleet (TLS)" } else { "plain TCP" });
    let mut bed = Bed::start_with(agent_bin, 3600, LabConfig::default(), "", kind)?;
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
    let max = counts.last().copied().unwrap_or(3);
    let frames: Vec<(Mac, Vec<u8>)> = (0..max - 1)
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
    let mut wanted: Vec<Mac> = vec![Mac(dut.mac().0)];

    // Warm-up: the DUT and one injected device with a registered OUI, so the one-time costs
    // (the OUI table inflated on the first lookup, SQLite's page cache, the MQTT buffers) are
    // in the baseline and not in the per-device slope.
    wanted.push(frames[0].0);
    announce(&mut bed, &injector, &frames[..1], &wanted)?;
    let warm = sample(pid, "warm, 2 devices, after 15 s", Duration::from_secs(15))?;

    let mut steps: Vec<(usize, rae_tests::procstat::Memory)> = vec![(2, warm)];
    for &n in &counts {
        let from = wanted.len();
        wanted.extend(frames[from - 1..n - 1].iter().map(|(m, _)| *m));
        println!(
            "sending announcements from {} more MACs through DUT {} (up to {n} devices; {} by ARP, {} by IPv6 NS in all)",
            n - from,
            dut.name(),
            (n - 1).min(V4_DEVICES),
            (n - 1).saturating_sub(V4_DEVICES)
        );
        let (since, writes0) = (Instant::now(), writes(pid)?);
        announce(&mut bed, &injector, &frames[from - 1..n - 1], &wanted)?;
        println!("with {n} devices, just listed: {}", memory(pid)?);
        // Three probe rounds (10 s each) without answers take the injected devices offline:
        // the steady state of a registry that holds many sessions.
        let steady = sample(
            pid,
            &format!("with {n} devices, 40 s later"),
            Duration::from_secs(40),
        )?;
        let written = writes(pid)?.since(writes0);
        println!(
            "agent writes for devices {from}..{n} (joins, then offline after 3 missed probes): {}",
            written.per_event(events_since(&bed, since))
        );
        steps.push((n, steady));
    }
    let db_size = std::fs::metadata(bed.spec.database())
        .map(|m| m.len())
        .unwrap_or(0);
    println!("registry.db {:.1} KiB", db_size as f64 / 1024.0);

    let mib = |m: &rae_tests::procstat::Memory| m.rss_kib as f64 / 1024.0;
    println!(
        "\nRSS idle {:.2} MiB, warm (2 devices) {:.2} MiB",
        idle.rss_kib as f64 / 1024.0,
        mib(&warm)
    );
    for pair in steps.windows(2) {
        let ((n0, m0), (n1, m1)) = (&pair[0], &pair[1]);
        println!(
            "RSS {n0} -> {n1} devices: {:.2} -> {:.2} MiB, slope {:.2} KiB per device; VmHWM {:.2} MiB",
            mib(m0),
            mib(m1),
            (m1.rss_kib as f64 - m0.rss_kib as f64) / (*n1 - *n0) as f64,
            m1.hwm_kib as f64 / 1024.0
        );
    }
    drop(dut);
    Ok(())
}
