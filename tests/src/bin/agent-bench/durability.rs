//! `durability`: what the store's durability costs and how the outbox behaves in an outage.
//!
//! One DUT sends, through its port, ARP announcements from 50 MACs, each alternating between
//! two addresses of its own, so every frame is an IPv4 change (a Delta) of one session:
//!
//! 1. **Writes per event**: `--changes` changes (default 10,000) at 1,000 a second with the
//!    broker up; the agent's `write_bytes` from `/proc/<pid>/io` and its fsync/fdatasync
//!    calls (counted by `perf stat` on the syscall tracepoints, which costs the agent nothing
//!    measurable) over the run, per event delivered.
//! 2. **Drain after an outage**: the broker stopped, `--changes` changes queued in the outbox,
//!    the broker started again: the time from its start to an empty outbox.
//! 3. **RSS over an outage with churn**: the broker stopped for `--outage-secs` (default 600)
//!    while `--churn` changes a second (default 50) go on; VmRSS/VmHWM, outbox rows and bytes
//!    sampled twenty times, as a table; then the drain again.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rae_proto::Mac;
use rae_tests::inject::{arp_announcement, Injector};
use rae_tests::netlab::{wait_until, DutKind, DutSpec, LabConfig, LabError};
use rae_tests::procstat::{memory, mib, writes};

use crate::bed::{Bed, Guarded};

const MACS: usize = 50;

pub struct Options {
    pub changes: usize,
    pub outage_secs: u64,
    pub churn_per_sec: u64,
}

/// The frame generator: change `i` moves MAC `i % 50` to its other address.
struct Generator {
    injector: Injector,
    slot: u8,
    net: rae_tests::netlab::LabNet,
    next: usize,
}

impl Generator {
    fn frame(&self, i: usize) -> Vec<u8> {
        let (k, round) = (i % MACS, i / MACS);
        let mac = Mac([0x02, 0xd7, self.slot, 0, 0, k as u8]);
        let host = if round % 2 == 0 {
            12 + k
        } else {
            12 + MACS + k
        };
        arp_announcement(mac, self.net.host_v4(host as u8))
    }

    /// Sends `n` changes at `per_sec`; returns how long it took.
    fn send(&mut self, n: usize, per_sec: u64) -> Result<Duration> {
        let pace = Duration::from_micros(1_000_000 / per_sec.max(1));
        let started = Instant::now();
        let mut at = started;
        for _ in 0..n {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            at += pace;
            self.injector.send(&self.frame(self.next))?;
            self.next += 1;
        }
        Ok(started.elapsed())
    }
}

fn status(bed: &Bed) -> Result<serde_json::Value> {
    let (ok, out, err) =
        rae_tests::agent::raectl(&bed.spec, &["status", "--json"]).context("raectl status")?;
    if !ok.success() {
        bail!("raectl status failed: {err}");
    }
    serde_json::from_str(&out).context("raectl status --json output")
}

fn outbox(bed: &Bed) -> Result<(u64, u64)> {
    let json = status(bed)?;
    Ok((
        json["outbox"]["rows"].as_u64().unwrap_or(0),
        json["outbox"]["bytes"].as_u64().unwrap_or(0),
    ))
}

fn lab_err(e: anyhow::Error) -> LabError {
    LabError::Parse {
        what: "the bench".into(),
        detail: format!("{e:#}"),
    }
}

/// Waits until the outbox has not changed for three seconds (the agent took every frame).
fn outbox_settled(bed: &Bed, what: &str) -> Result<(u64, u64)> {
    let mut last = (u64::MAX, 0);
    let mut since = Instant::now();
    let settled = wait_until(what, Duration::from_secs(300), || {
        let now = outbox(bed).map_err(lab_err)?;
        if now != last {
            last = now;
            since = Instant::now();
        }
        Ok(match since.elapsed() >= Duration::from_secs(3) {
            true => Ok(now),
            false => Err(format!("outbox {now:?}")),
        })
    })?;
    Ok(settled)
}

/// Starts the broker and times the drain to an empty outbox.
fn drain(bed: &mut Bed) -> Result<Duration> {
    let (rows, bytes) = outbox(bed)?;
    bed.broker.start_again().context("starting mosquitto")?;
    let started = Instant::now();
    let back_ms = rae_agent::wall_ms();
    wait_until(
        "an empty outbox after the broker's return",
        Duration::from_secs(600),
        || {
            let (rows, _) = outbox(bed).map_err(lab_err)?;
            Ok(match rows {
                0 => Ok(()),
                n => Err(format!("{n} rows")),
            })
        },
    )?;
    let took = started.elapsed();
    // When the agent's connection came up (`broker.since_ms`, wall clock), once the status
    // the daemon writes every few seconds shows it: the reconnect backoff's share.
    let since_ms = wait_until(
        "raectl status broker.connected = yes",
        Duration::from_secs(60),
        || {
            let json = status(bed).map_err(lab_err)?;
            let broker = &json["status"]["broker"];
            let since = &broker["since_ms"];
            let since = since
                .as_str()
                .and_then(|ms| ms.parse::<i64>().ok())
                .or_else(|| since.as_i64());
            Ok(match (broker["connected"].as_str(), since) {
                (Some("yes"), Some(ms)) if ms >= back_ms => Ok(ms),
                other => Err(format!("{other:?}")),
            })
        },
    )?;
    let reconnect_s = (since_ms - back_ms) as f64 / 1000.0;
    println!(
        "drain: {rows} rows ({:.2} MiB) queued; broker back -> empty outbox in {:.2} s \
         (reconnect after {reconnect_s:.2} s, then {:.0} rows/s)",
        bytes as f64 / 1048576.0,
        took.as_secs_f64(),
        rows as f64 / (took.as_secs_f64() - reconnect_s).max(1e-3)
    );
    Ok(took)
}

fn stop_broker(bed: &mut Bed) -> Result<()> {
    bed.broker.stop().context("stopping mosquitto")?;
    wait_until(
        "raectl status broker.connected = no",
        Duration::from_secs(60),
        || {
            let json = status(bed).map_err(lab_err)?;
            Ok(match json["status"]["broker"]["connected"].as_str() {
                Some("no") => Ok(()),
                other => Err(format!("{other:?}")),
            })
        },
    )?;
    Ok(())
}

/// `perf stat` counting the agent's fsync and fdatasync calls until [`stop_fsyncs`].
fn count_fsyncs(bed: &Bed, out: &Path) -> Result<Guarded> {
    let mut cmd = Command::new("perf");
    cmd.args([
        "stat",
        "-x,",
        "-e",
        "syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
        "-p",
    ])
    .arg(bed.agent.pid().to_string())
    .arg("-o")
    .arg(out);
    Guarded::spawn(cmd, "perf stat", out.with_extension("log"))
}

fn stop_fsyncs(mut perf: Guarded, out: &Path) -> Result<u64> {
    // perf stat writes its counts on SIGINT.
    kill(Pid::from_raw(perf.pid() as i32), Signal::SIGINT).context("SIGINT to perf")?;
    wait_until(
        "perf stat writing its counts",
        Duration::from_secs(10),
        || {
            let text = std::fs::read_to_string(out).unwrap_or_default();
            Ok(match text.contains("sys_enter_fdatasync") {
                true => Ok(()),
                false => Err("no counts yet".to_owned()),
            })
        },
    )?;
    perf.terminate(Duration::from_secs(5))?;
    let text = std::fs::read_to_string(out)?;
    let total = text
        .lines()
        .filter(|l| l.contains("sys_enter_"))
        .filter_map(|l| l.split(',').next()?.trim().parse::<u64>().ok())
        .sum();
    Ok(total)
}

pub fn run(agent_bin: &Path, options: &Options) -> Result<()> {
    let mut bed = Bed::start(agent_bin, 3600, LabConfig::default())?;
    let pid = bed.agent.pid();
    let dut = bed
        .lab
        .add_dut(DutSpec::new(
            "generator",
            DutKind::StaticV4 {
                addr: bed.lab.net().host_v4(2),
            },
        ))
        .context("adding the generator DUT")?;
    let mut generator = Generator {
        injector: Injector::open(dut.ns_name(), "eth0")?,
        slot: (bed.lab.slot() & 0xff) as u8,
        net: bed.lab.net().clone(),
        next: 0,
    };
    // Every session opened first: the run measures changes, not joins.
    generator.send(2 * MACS, 1_000)?;
    outbox_settled(&bed, "the sessions opened and published")?;

    // 1. Writes and fsyncs per event, broker up.
    let perf_out = bed.lab.dir().join("perf-fsyncs.csv");
    let perf = count_fsyncs(&bed, &perf_out)?;
    let events_before = bed
        .watch
        .messages()
        .iter()
        .filter(|m| m.event().is_some())
        .count();
    let before = writes(pid)?;
    let sent = generator.send(options.changes, 1_000)?;
    outbox_settled(&bed, "every change published and acknowledged")?;
    let wrote = writes(pid)?.since(before);
    let fsyncs = stop_fsyncs(perf, &perf_out)?;
    let events = (bed
        .watch
        .messages()
        .iter()
        .filter(|m| m.event().is_some())
        .count()
        - events_before) as u64;
    println!(
        "writes: {} changes sent in {:.1} s; {}",
        options.changes,
        sent.as_secs_f64(),
        wrote.per_event(events)
    );
    println!(
        "fsyncs: {fsyncs} fsync+fdatasync calls, {:.3} per event",
        fsyncs as f64 / events.max(1) as f64
    );

    // 2. Outage drain.
    stop_broker(&mut bed)?;
    generator.send(options.changes, 1_000)?;
    outbox_settled(&bed, "the changes queued in the outbox")?;
    drain(&mut bed)?;

    // 3. RSS over an outage with churn.
    stop_broker(&mut bed)?;
    let outage = Duration::from_secs(options.outage_secs);
    let step = outage / 20;
    let started = Instant::now();
    println!(
        "\n| t (s) | VmRSS (MiB) | VmHWM (MiB) | outbox rows | outbox MiB | coalesced events |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    let per_step = (options.churn_per_sec * step.as_secs().max(1)) as usize;
    for n in 0..=20u32 {
        if n > 0 {
            generator.send(per_step, options.churn_per_sec)?;
        }
        bed.agent.ensure_running()?;
        let mem = memory(pid)?;
        let json = status(&bed)?;
        let coalesced = json["counters"]["outbox_coalesced_events"]
            .as_u64()
            .unwrap_or(0);
        println!(
            "| {:.0} | {:.2} | {:.2} | {} | {:.2} | {coalesced} |",
            started.elapsed().as_secs_f64(),
            mib(mem.rss_kib),
            mib(mem.hwm_kib),
            json["outbox"]["rows"].as_u64().unwrap_or(0),
            json["outbox"]["bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0,
        );
    }
    drain(&mut bed)?;
    println!("after the drain: {}", memory(pid)?);
    Ok(())
}
