//! `cpu`: what the agent costs the machine while bulk traffic crosses the LAN.
//!
//! Two loads, each for S seconds: iperf3 from a DUT to the bridge's own address (the RAE
//! itself, as traffic to the WAN would be: every frame passes the agent's socket, where the
//! kernel filter drops it) and iperf3 between two DUTs (forwarded by the bridge; the agent's
//! socket is not promiscuous, so these frames are never passed up to it).
//!
//! Each load runs WITH the agent and WITHOUT it (stopped, the same LAN), alternating which
//! goes first, R times. Per window: the agent's utime+stime (clock ticks) and its threads'
//! time on the CPU (`schedstat`, nanoseconds); the machine's softirq time (`/proc/stat`);
//! iperf3's throughput; the frames that crossed the DUT's bridge port; with the agent, the
//! frames its capture read (`raectl status`).
//!
//! What softirq time can show: the kernel runs the packet socket's BPF filter in softirq
//! context (receive) or in the sender's context (transmit taps), charged to no process, so the
//! agent's own CPU time cannot contain it. Softirq time is machine-wide (every namespace, every
//! other process on this shared machine), so the agent's share is only visible as the
//! difference between windows with and without it, per frame moved; when that difference is
//! within the spread of the runs, the filter's cost is below what this can resolve.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, LabConfig};
use serde_json::Value;

use crate::bed::{status_counter, Bed, Guarded};
use rae_tests::procstat::{cpu_time, on_cpu, softirq_time};

const PORT: u16 = 5201;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    DutToBridge,
    DutToDut,
}

impl Load {
    fn label(self) -> &'static str {
        match self {
            Load::DutToBridge => "DUT -> bridge",
            Load::DutToDut => "DUT -> DUT",
        }
    }
}

struct Window {
    load: Load,
    with_agent: bool,
    wall: Duration,
    /// The agent's utime+stime and its threads' time on the CPU; zero without the agent.
    agent_ticks: Duration,
    agent_on_cpu: Duration,
    softirq: Duration,
    /// Frames the agent's capture read; `None` without the agent.
    frames: Option<u64>,
    port_frames: u64,
    gbits: f64,
}

impl Window {
    fn pct(&self, d: Duration) -> f64 {
        100.0 * d.as_secs_f64() / self.wall.as_secs_f64()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The agent's status once it has been rewritten after `after_ms`.
fn fresh_status(bed: &Bed, after_ms: i64) -> Result<Value> {
    let spec = &bed.spec;
    let status = wait_until(
        "the agent rewriting its status",
        Duration::from_secs(30),
        || {
            let (_, out, err) = rae_tests::agent::raectl(spec, &["status", "--json"])?;
            let json: Value = match serde_json::from_str(&out) {
                Ok(json) => json,
                Err(e) => return Ok(Err(format!("raectl status: {e}: {err}"))),
            };
            let updated = json["status_updated_ms"].as_i64().unwrap_or(0);
            Ok(if updated > after_ms {
                Ok(json)
            } else {
                Err(format!("status last written at {updated} ms"))
            })
        },
    )?;
    Ok(status)
}

/// Frames the bridge received from and sent to one of its ports.
fn port_frames(link: &str) -> Result<u64> {
    let read = |name: &str| -> Result<u64> {
        let path = format!("/sys/class/net/{link}/statistics/{name}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        text.trim()
            .parse()
            .with_context(|| format!("{path}: {text:?}"))
    };
    Ok(read("rx_packets")? + read("tx_packets")?)
}

/// iperf3's received throughput in Gbit/s from its JSON report.
fn iperf_gbits(json: &str) -> Result<f64> {
    let report: Value = serde_json::from_str(json).context("iperf3's JSON report")?;
    if let Some(error) = report["error"].as_str() {
        bail!("iperf3: {error}");
    }
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .context("iperf3's report has no end.sum_received.bits_per_second")
}

/// Waits until `ss` (run by `ss`, in a DUT or here) shows a TCP listener matching `filter`.
fn wait_listening(ss: impl Fn(&[&str]) -> Result<String>, filter: &str, what: &str) -> Result<()> {
    wait_until(
        format!("{what} listening ({filter})"),
        Duration::from_secs(20),
        || {
            let out = ss(&["-Hltn", filter]).map_err(|e| rae_tests::netlab::LabError::Parse {
                what: "ss".into(),
                detail: format!("{e:#}"),
            })?;
            Ok(if out.trim().is_empty() {
                Err("no listener yet".to_owned())
            } else {
                Ok(())
            })
        },
    )?;
    Ok(())
}

fn ss_here(args: &[&str]) -> Result<String> {
    let out = Command::new("ss")
        .args(args)
        .output()
        .context("running ss")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `load` (which returns iperf3's throughput) and measures the window.
fn measure(
    bed: &Bed,
    port_link: &str,
    which: Load,
    load: impl FnOnce() -> Result<f64>,
) -> Result<Window> {
    let with_agent = bed.agent_running;
    let pid = bed.agent.pid();
    let before = match with_agent {
        true => Some(fresh_status(bed, now_ms())?),
        false => None,
    };
    let agent = |with: bool| -> Result<(Duration, Duration)> {
        Ok(match with {
            true => (cpu_time(pid)?, on_cpu(pid)?),
            false => (Duration::ZERO, Duration::ZERO),
        })
    };
    let (a0, s0, p0, t0) = (
        agent(with_agent)?,
        softirq_time()?,
        port_frames(port_link)?,
        Instant::now(),
    );
    let gbits = load()?;
    let (a1, s1, p1, wall) = (
        agent(with_agent)?,
        softirq_time()?,
        port_frames(port_link)?,
        t0.elapsed(),
    );
    let frames = match before {
        Some(before) => {
            let after = fresh_status(bed, now_ms())?;
            Some(
                status_counter(&after, "capture", "frames")?
                    .saturating_sub(status_counter(&before, "capture", "frames")?),
            )
        }
        None => None,
    };
    let w = Window {
        load: which,
        with_agent,
        wall,
        agent_ticks: a1.0.saturating_sub(a0.0),
        agent_on_cpu: a1.1.saturating_sub(a0.1),
        softirq: s1.saturating_sub(s0),
        frames,
        port_frames: p1.saturating_sub(p0),
        gbits,
    };
    println!(
        "{:<14} {:<13} {:>5.1} s  iperf3 {:>6.2} Gbit/s  port {:>9} frames  softirq {:>6.3} s ({:>5.2} % of a core)  agent {}",
        w.load.label(),
        if w.with_agent { "with agent" } else { "without agent" },
        w.wall.as_secs_f64(),
        w.gbits,
        w.port_frames,
        w.softirq.as_secs_f64(),
        w.pct(w.softirq),
        match w.frames {
            Some(frames) => format!(
                "ticks {:.3} s ({:.3} %), on CPU {:.4} s ({:.3} %), read {frames} frames",
                w.agent_ticks.as_secs_f64(),
                w.pct(w.agent_ticks),
                w.agent_on_cpu.as_secs_f64(),
                w.pct(w.agent_on_cpu),
            ),
            None => "-".to_owned(),
        }
    );
    Ok(w)
}

/// `mean (min..max)` of `values`.
fn spread(values: &[f64], digits: usize) -> String {
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{mean:.digits$} ({min:.digits$}..{max:.digits$})")
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    sum / n.max(1) as f64
}

fn iperf_client(dut: &Dut, server: Ipv4Addr, seconds: u64) -> Result<f64> {
    let (server, secs, port) = (server.to_string(), seconds.to_string(), PORT.to_string());
    let out = dut.exec_output([
        "timeout",
        &(seconds + 30).to_string(),
        "iperf3",
        "-c",
        &server,
        "-p",
        &port,
        "-t",
        &secs,
        "-J",
    ])?;
    iperf_gbits(&String::from_utf8_lossy(&out.stdout)).with_context(|| {
        format!(
            "iperf3 in {}: {}",
            dut.name(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub fn run(agent_bin: &Path, seconds: u64, repeat: usize) -> Result<()> {
    if !(1..=300).contains(&seconds) {
        bail!("--seconds must be 1..=300");
    }
    if !(1..=10).contains(&repeat) {
        bail!("--repeat must be 1..=10");
    }
    let mut bed = Bed::start(agent_bin, 3600, LabConfig::default())?;
    let (a_ip, b_ip) = (bed.lab.net().host_v4(2), bed.lab.net().host_v4(3));
    let a = bed
        .lab
        .add_dut(DutSpec::new("bulk-a", DutKind::StaticV4 { addr: a_ip }))?;
    let b = bed
        .lab
        .add_dut(DutSpec::new("bulk-b", DutKind::StaticV4 { addr: b_ip }))?;
    let router = bed.lab.router_v4();
    for dut in [&a, &b] {
        if !dut.ping(router.into())? {
            bail!("DUT {} cannot reach the bridge at {router}", dut.name());
        }
    }
    let port_link = a.host_link().to_owned();
    println!(
        "{seconds} s windows, {repeat} rounds; DUT {} ({a_ip}) sends, port {port_link}",
        a.name()
    );
    let iperf_log = bed.lab.dir().join("iperf3-bridge.log");
    let to_bridge = || -> Result<f64> {
        let mut cmd = Command::new("iperf3");
        cmd.args([
            "-s",
            "-1",
            "-B",
            &router.to_string(),
            "-p",
            &PORT.to_string(),
        ]);
        let server = Guarded::spawn(cmd, "iperf3 -s on the bridge", iperf_log.clone())?;
        wait_listening(
            ss_here,
            &format!("src {router}:{PORT}"),
            "iperf3 on the bridge",
        )?;
        let _server = server;
        iperf_client(&a, router, seconds)
    };
    let to_dut = || -> Result<f64> {
        let server = b.spawn(["iperf3", "-s", "-1", "-p", &PORT.to_string()])?;
        let ss = |args: &[&str]| -> Result<String> {
            let mut argv = vec!["ss"];
            argv.extend_from_slice(args);
            Ok(b.exec(argv)?)
        };
        wait_listening(ss, &format!("sport = :{PORT}"), "iperf3 in bulk-b")?;
        let _server = server;
        iperf_client(&a, b_ip, seconds)
    };
    let mut windows = Vec::new();
    for round in 0..repeat {
        // Alternate which condition goes first, so a drift in the machine's load falls on both.
        let order = match round % 2 {
            0 => [true, false],
            _ => [false, true],
        };
        for with_agent in order {
            match with_agent {
                true => bed.start_agent()?,
                false => bed.stop_agent()?,
            }
            windows.push(measure(&bed, &port_link, Load::DutToBridge, to_bridge)?);
            windows.push(measure(&bed, &port_link, Load::DutToDut, to_dut)?);
        }
    }
    bed.start_agent()?;
    println!();
    for load in [Load::DutToBridge, Load::DutToDut] {
        let pick = |with: bool| -> Vec<&Window> {
            windows
                .iter()
                .filter(|w| w.load == load && w.with_agent == with)
                .collect()
        };
        let (with, without) = (pick(true), pick(false));
        let col = |ws: &[&Window], f: &dyn Fn(&Window) -> f64| -> Vec<f64> {
            ws.iter().map(|w| f(w)).collect()
        };
        let softirq_per_mframe =
            |w: &Window| w.softirq.as_secs_f64() * 1e3 / (w.port_frames.max(1) as f64 / 1e6);
        println!(
            "{}, mean (min..max) over {} windows each:",
            load.label(),
            with.len()
        );
        println!(
            "  iperf3 Gbit/s       with agent {}  without {}",
            spread(&col(&with, &|w| w.gbits), 2),
            spread(&col(&without, &|w| w.gbits), 2)
        );
        println!(
            "  softirq % of a core with agent {}  without {}",
            spread(&col(&with, &|w| w.pct(w.softirq)), 2),
            spread(&col(&without, &|w| w.pct(w.softirq)), 2)
        );
        println!(
            "  softirq ms per M frames on the port: with agent {}  without {}",
            spread(&col(&with, &softirq_per_mframe), 1),
            spread(&col(&without, &softirq_per_mframe), 1)
        );
        println!(
            "  agent % of a core   ticks {}  on CPU {}; frames read {}",
            spread(&col(&with, &|w| w.pct(w.agent_ticks)), 3),
            spread(&col(&with, &|w| w.pct(w.agent_on_cpu)), 3),
            spread(&col(&with, &|w| w.frames.unwrap_or(0) as f64), 0)
        );
        // The agent's share of softirq: the per-frame difference, applied to the frames
        // of the windows with the agent.
        let extra_per_frame = mean(with.iter().map(|w| softirq_per_mframe(w)))
            - mean(without.iter().map(|w| softirq_per_mframe(w)));
        let frames_per_sec = mean(
            with.iter()
                .map(|w| w.port_frames as f64 / w.wall.as_secs_f64()),
        );
        let extra_pct = 100.0 * extra_per_frame * 1e-3 * frames_per_sec / 1e6;
        let agent_pct = mean(with.iter().map(|w| w.pct(w.agent_on_cpu)));
        println!(
            "  agent on CPU + softirq difference (with - without, per frame): {agent_pct:.3} % + {extra_pct:.3} % = {:.3} % of a core",
            agent_pct + extra_pct
        );
    }
    println!(
        "(agent frames read cover the window plus up to one status interval, 5 s, on each side)"
    );
    Ok(())
}
