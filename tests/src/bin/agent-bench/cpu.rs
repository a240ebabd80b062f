//! `cpu`: the agent's CPU time while bulk traffic crosses the LAN, against the same window idle.
//!
//! Windows of S seconds each:
//! - idle: nothing but the agent's own timers;
//! - DUT to DUT: iperf3 between two DUTs through the bridge. The agent's socket is not
//!   promiscuous, so the bridge forwards these frames without passing them up at all;
//! - DUT to bridge: iperf3 from a DUT to the bridge's own address (the RAE itself, as traffic
//!   to the WAN would be). Every frame passes the agent's socket, where the kernel filter
//!   drops it.
//!
//! Per window: the agent's utime+stime from /proc, the frames the agent's capture read (its
//! `capture.frames` counter in `raectl status --json`), the frames that crossed the DUT's
//! bridge port, and iperf3's throughput.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, LabConfig};
use serde_json::Value;

use crate::bed::{status_counter, Bed, Guarded};
use rae_tests::procstat::cpu_time;

const PORT: u16 = 5201;

struct Window {
    label: &'static str,
    wall: Duration,
    cpu: Duration,
    frames: u64,
    kernel_packets: u64,
    port_frames: u64,
    gbits: Option<f64>,
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

/// Runs `load` (which returns iperf3's throughput, or `None` for an idle window) and measures.
fn measure(
    bed: &Bed,
    port_link: &str,
    label: &'static str,
    load: impl FnOnce() -> Result<Option<f64>>,
) -> Result<Window> {
    let pid = bed.agent.pid();
    let before = fresh_status(bed, now_ms())?;
    let (cpu0, ports0, t0) = (cpu_time(pid)?, port_frames(port_link)?, Instant::now());
    let gbits = load()?;
    let (cpu1, ports1, wall) = (cpu_time(pid)?, port_frames(port_link)?, t0.elapsed());
    let after = fresh_status(bed, now_ms())?;
    let delta = |key: &str| -> Result<u64> {
        Ok(status_counter(&after, "capture", key)?
            .saturating_sub(status_counter(&before, "capture", key)?))
    };
    let window = Window {
        label,
        wall,
        cpu: cpu1.saturating_sub(cpu0),
        frames: delta("frames")?,
        kernel_packets: delta("kernel_packets")?,
        port_frames: ports1.saturating_sub(ports0),
        gbits,
    };
    println!(
        "{:<14} {:>5.1} s  agent CPU {:>6.3} s ({:>5.2} % of one core)  agent read {:>6} frames (kernel queued {:>6})  DUT port moved {:>9} frames  iperf3 {}",
        window.label,
        window.wall.as_secs_f64(),
        window.cpu.as_secs_f64(),
        100.0 * window.cpu.as_secs_f64() / window.wall.as_secs_f64(),
        window.frames,
        window.kernel_packets,
        window.port_frames,
        window
            .gbits
            .map_or_else(|| "-".to_owned(), |g| format!("{g:.2} Gbit/s"))
    );
    Ok(window)
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

pub fn run(agent_bin: &Path, seconds: u64) -> Result<()> {
    if !(1..=300).contains(&seconds) {
        bail!("--seconds must be 1..=300");
    }
    let bed = Bed::start(agent_bin, 3600, LabConfig::default())?;
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
        "{seconds} s windows; DUT {} ({a_ip}) sends, port {port_link}",
        a.name()
    );
    let idle = measure(&bed, &port_link, "idle", || {
        std::thread::sleep(Duration::from_secs(seconds));
        Ok(None)
    })?;
    let dut_to_dut = measure(&bed, &port_link, "DUT -> DUT", || {
        let server = b.spawn(["iperf3", "-s", "-1", "-p", &PORT.to_string()])?;
        let ss = |args: &[&str]| -> Result<String> {
            let mut argv = vec!["ss"];
            argv.extend_from_slice(args);
            Ok(b.exec(argv)?)
        };
        wait_listening(ss, &format!("sport = :{PORT}"), "iperf3 in bulk-b")?;
        let _server = server;
        let gbits = iperf_client(&a, b_ip, seconds)?;
        Ok(Some(gbits))
    })?;
    let dut_to_bridge = measure(&bed, &port_link, "DUT -> bridge", || {
        let mut cmd = Command::new("iperf3");
        cmd.args([
            "-s",
            "-1",
            "-B",
            &router.to_string(),
            "-p",
            &PORT.to_string(),
        ]);
        let server = Guarded::spawn(
            cmd,
            "iperf3 -s on the bridge",
            bed.lab.dir().join("iperf3-bridge.log"),
        )?;
        wait_listening(
            ss_here,
            &format!("src {router}:{PORT}"),
            "iperf3 on the bridge",
        )?;
        let _server = server;
        let gbits = iperf_client(&a, router, seconds)?;
        Ok(Some(gbits))
    })?;
    println!();
    for w in [&dut_to_dut, &dut_to_bridge] {
        println!(
            "{}: agent CPU {:.3} s vs {:.3} s idle ({:.2}x); agent read {} frames of {} that crossed the port ({:.5} %)",
            w.label,
            w.cpu.as_secs_f64(),
            idle.cpu.as_secs_f64(),
            w.cpu.as_secs_f64() / idle.cpu.as_secs_f64().max(1e-3),
            w.frames,
            w.port_frames,
            100.0 * w.frames as f64 / w.port_frames.max(1) as f64
        );
    }
    println!("(frame counts cover the window plus up to one status interval, 5 s, on each side)");
    Ok(())
}
