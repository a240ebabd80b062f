//! `outage`: what losing nothing costs the router. Three phases on one bed, each with the
//! real agent, mosquitto and injected devices whose addresses flip (every flip is a Delta):
//!
//! 1. **Flash per event**, broker up: `write_bytes` of `/proc/<pid>/io` over `--events`
//!    changes, divided by the events the subscriber received in that window.
//! 2. **Drain after an outage**: the broker stopped, `--events` changes queued in the
//!    outbox, the broker started again; the time from its return to an empty outbox.
//! 3. **RSS through a long outage**: the broker stopped for `--minutes` while the devices
//!    keep flipping at `--rate` changes/s; VmRSS, the outbox rows and the database size,
//!    sampled every 30 s; then the drain once more.
//!
//! Bounded: every wait has a deadline; the churn stops with its phase.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rae_proto::Mac;
use rae_tests::agent::raectl;
use rae_tests::inject::{arp_announcement, Injector};
use rae_tests::netlab::{DutKind, DutSpec, LabConfig};
use rae_tests::procstat::{memory, writes};

use crate::bed::Bed;

/// Each device flips between hosts `FIRST + 2k` and `FIRST + 2k + 1` of the lab's /24, so no
/// two devices ever claim one address.
const FIRST_HOST: usize = 10;
const MAX_DEVICES: usize = 120;

pub struct Options {
    pub events: u64,
    pub minutes: u64,
    pub devices: usize,
    pub rate: u64,
}

struct Churn {
    injector: Injector,
    devices: Vec<(Mac, [Ipv4Addr; 2])>,
    round: usize,
    next: usize,
}

impl Churn {
    /// Sends `n` address flips, round-robin over the devices; each is one change.
    fn send(&mut self, n: u64) -> Result<()> {
        for _ in 0..n {
            let (mac, ips) = self.devices[self.next];
            let ip = ips[(self.round + 1) % 2];
            self.injector.send(&arp_announcement(mac, ip))?;
            self.next += 1;
            if self.next == self.devices.len() {
                self.next = 0;
                self.round += 1;
            }
        }
        Ok(())
    }

    /// `n` flips at `rate` per second, in 100 ms slices.
    fn paced(&mut self, n: u64, rate: u64) -> Result<()> {
        let per_slice = (rate / 10).max(1);
        let mut sent = 0;
        let mut next = Instant::now();
        while sent < n {
            let now = (per_slice).min(n - sent);
            self.send(now)?;
            sent += now;
            next += Duration::from_millis(100);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        Ok(())
    }
}

fn outbox_rows(bed: &Bed) -> Result<u64> {
    let (status, out, err) = raectl(&bed.spec, &["status", "--json"]).context("raectl status")?;
    if !status.success() {
        bail!("raectl status failed: {err}");
    }
    let json: serde_json::Value = serde_json::from_str(&out).context("raectl status --json")?;
    json["outbox"]["rows"]
        .as_u64()
        .with_context(|| format!("no outbox.rows in raectl status --json: {out}"))
}

fn db_bytes(bed: &Bed) -> u64 {
    let db = bed.spec.database();
    ["", "-wal", "-shm"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len())
        .sum()
}

fn device_events(bed: &Bed, since: Instant) -> u64 {
    bed.watch
        .messages()
        .iter()
        .filter(|m| m.at >= since && m.event().is_some())
        .count() as u64
}

/// Waits (polling every 100 ms, at most `within`) until `done`; returns how long it took.
fn wait_for(
    what: &str,
    within: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if done()? {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("{what}: not within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Queues `events` changes with the broker down (waits until the outbox holds them), brings
/// the broker back and times the drain to an empty outbox.
fn drain(bed: &mut Bed, churn: &mut Churn, events: u64, rate: u64) -> Result<()> {
    let before = outbox_rows(bed)?;
    bed.broker.stop().context("stopping mosquitto")?;
    churn.paced(events, rate)?;
    let queued = wait_for(
        "the outbox holding the changes",
        Duration::from_secs(120),
        || Ok(outbox_rows(bed)? >= before + events * 9 / 10),
    );
    let rows = outbox_rows(bed)?;
    if let Err(e) = queued {
        println!("  note: {e:#}; {rows} rows queued (coalesced or still arriving)");
    }
    let rss = memory(bed.agent.pid())?;
    println!(
        "  broker down, {rows} rows queued, db {:.1} MiB, {rss}",
        db_bytes(bed) as f64 / 1048576.0
    );
    let back = Instant::now();
    bed.broker
        .start_again()
        .context("starting mosquitto again")?;
    let took = wait_for(
        "the outbox empty after the broker's return",
        Duration::from_secs(600),
        || Ok(outbox_rows(bed)? == 0),
    )?;
    let received = device_events(bed, back);
    println!(
        "  broker back: outbox empty after {:.2} s ({rows} rows, {:.0} rows/s; {received} device events at the subscriber since)",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64().max(0.001)
    );
    bed.agent.ensure_running()
}

pub fn run(agent_bin: &Path, options: &Options) -> Result<()> {
    if !(1..=MAX_DEVICES).contains(&options.devices) {
        bail!("--devices takes 1..={MAX_DEVICES}");
    }
    if options.events == 0 || options.rate == 0 || options.minutes == 0 {
        bail!("--events, --rate and --minutes take numbers above 0");
    }
    let mut bed = Bed::start(agent_bin, 3600, LabConfig::default())?;
    let pid = bed.agent.pid();
    let dut = bed
        .lab
        .add_dut(DutSpec::new(
            "churner",
            DutKind::StaticV4 {
                addr: bed.lab.net().host_v4(2),
            },
        ))
        .context("adding the DUT the changes come from")?;
    dut.ping(std::net::IpAddr::V4(bed.lab.router_v4()))
        .context("pinging the bridge from the DUT")?;
    let slot = (bed.lab.slot() & 0xff) as u8;
    let devices: Vec<(Mac, [Ipv4Addr; 2])> = (0..options.devices)
        .map(|k| {
            let host = |i: usize| {
                bed.lab
                    .net()
                    .host_v4(u8::try_from(FIRST_HOST + 2 * k + i).unwrap_or(u8::MAX))
            };
            (Mac([0x02, 0xb2, slot, 0, 0, k as u8]), [host(0), host(1)])
        })
        .collect();
    let mut churn = Churn {
        injector: Injector::open(dut.ns_name(), "eth0")?,
        devices,
        round: 0,
        next: 0,
    };
    // Every device opened and published before anything is measured.
    let opened = Instant::now();
    churn.send(options.devices as u64)?;
    wait_for(
        "every device's session opened",
        Duration::from_secs(120),
        || Ok(bed.devices()?.len() > options.devices),
    )?;
    wait_for(
        "the outbox empty after the opening",
        Duration::from_secs(120),
        || Ok(outbox_rows(&bed)? == 0),
    )?;
    println!(
        "{} devices open after {:.1} s, {}",
        options.devices,
        opened.elapsed().as_secs_f64(),
        memory(pid)?
    );

    println!(
        "\n1. flash per event: {} changes with the broker up, at {}/s",
        options.events, options.rate
    );
    let (since, w0) = (Instant::now(), writes(pid)?);
    churn.paced(options.events, options.rate)?;
    wait_for(
        "the outbox empty after the changes",
        Duration::from_secs(300),
        || Ok(outbox_rows(&bed)? == 0),
    )?;
    let written = writes(pid)?.since(w0);
    println!("  agent {}", written.per_event(device_events(&bed, since)));

    println!(
        "\n2. drain: {} changes queued while the broker is down",
        options.events
    );
    drain(&mut bed, &mut churn, options.events, options.rate.max(1000))?;

    println!(
        "\n3. RSS over a {}-minute outage, {} changes/s",
        options.minutes, options.rate
    );
    println!(
        "  {:>6} {:>10} {:>10} {:>12} {:>10}",
        "t (s)", "VmRSS MiB", "VmHWM MiB", "outbox rows", "db MiB"
    );
    bed.broker.stop().context("stopping mosquitto")?;
    let start = Instant::now();
    let end = start + Duration::from_secs(options.minutes * 60);
    let mut next_sample = start;
    while Instant::now() < end {
        if Instant::now() >= next_sample {
            let m = memory(pid)?;
            println!(
                "  {:>6} {:>10.2} {:>10.2} {:>12} {:>10.2}",
                start.elapsed().as_secs(),
                m.rss_kib as f64 / 1024.0,
                m.hwm_kib as f64 / 1024.0,
                outbox_rows(&bed)?,
                db_bytes(&bed) as f64 / 1048576.0
            );
            next_sample += Duration::from_secs(30);
        }
        churn.paced(options.rate, options.rate)?;
        bed.agent.ensure_running()?;
    }
    let m = memory(pid)?;
    println!(
        "  {:>6} {:>10.2} {:>10.2} {:>12} {:>10.2}",
        start.elapsed().as_secs(),
        m.rss_kib as f64 / 1024.0,
        m.hwm_kib as f64 / 1024.0,
        outbox_rows(&bed)?,
        db_bytes(&bed) as f64 / 1048576.0
    );
    let back = Instant::now();
    bed.broker
        .start_again()
        .context("starting mosquitto again")?;
    let rows = outbox_rows(&bed)?;
    let took = wait_for(
        "the outbox empty after the long outage",
        Duration::from_secs(900),
        || Ok(outbox_rows(&bed)? == 0),
    )?;
    println!(
        "  broker back: {rows} rows drained in {:.2} s; {} device events at the subscriber since",
        took.as_secs_f64(),
        device_events(&bed, back)
    );
    drop(dut);
    Ok(())
}
