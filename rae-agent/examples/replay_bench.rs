//! Replay throughput: parse, and parse + apply, on one thread, from a capture file.
//!
//! Synthesizes a LAN capture (`tests/replay_support/lan.rs`: by default 1,000 devices joining
//! with DHCP/ARP/ND/mDNS/SSDP, then one frame per device per second for 1,000 s, about a
//! million frames) into a temporary pcap, then replays it twice with `quiet` through
//! [`rae_agent::replay::replay`], exactly what `rae-agent --pcap FILE --quiet` runs:
//! (a) read + parse only, (b) read + parse + observations + registry core (ticks at every
//! deadline included). Prints frames/s for each.
//!
//! Run: `cargo run --release -p rae-agent --example replay_bench [DEVICES] [SECONDS]`; the
//! two sizes docs/BENCHMARKS.md reports are `1000 1000` (the default) and `10000 100` (about
//! a million frames each). The core's cost grows with the devices only through its ordered
//! indexes (O(log n) per frame and per due deadline), so the second should run at more than
//! half the rate of the first.
//! An example rather than a `cargo bench`: the crate has no bench harness, and one timed
//! run over a million frames is the measurement, not a statistical micro-benchmark.

#[path = "../tests/replay_support/lan.rs"]
mod lan;

use std::io::BufWriter;
use std::process::ExitCode;
use std::time::Instant;

use rae_agent::config::Config;
use rae_agent::replay::{replay, CaptureWriter, ReplayOptions, ReplayReport, ReplayStage};
use rae_proto::Mac;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("replay_bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn arg(n: usize, default: u32) -> Result<u32, String> {
    std::env::args().nth(n).map_or(Ok(default), |text| {
        text.parse()
            .map_err(|e| format!("argument {n} ({text}): {e}"))
    })
}

fn run() -> Result<(), String> {
    let devices = arg(1, 1_000)?;
    let seconds = arg(2, 1_000)?;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let path = dir.path().join("lan.pcap");

    let started = Instant::now();
    let file = std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut writer = CaptureWriter::new(BufWriter::new(file), false, false, 262_144)
        .map_err(|e| format!("pcap header: {e}"))?;
    let mut written = 0u64;
    let mut failed = None;
    lan::generate(devices, seconds, seconds / 2, 42, |at, frame| {
        if failed.is_none() {
            match writer.write_packet(at, frame, frame.len() as u32) {
                Ok(()) => written += 1,
                Err(e) => failed = Some(e),
            }
        }
    });
    if let Some(e) = failed {
        return Err(format!("writing {}: {e}", path.display()));
    }
    drop(writer);
    let size = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
    println!(
        "capture: {devices} devices, {seconds} s, {written} frames, {:.1} MB, written in {:.2} s",
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let config = Config::parse(
        "[agent]\nserial = \"bench\"\nlan_interface = \"lan0\"\n[mqtt]\nhost = \"localhost\"\n",
    )
    .map_err(|e| e.to_string())?;
    for stage in [ReplayStage::Parse, ReplayStage::Apply] {
        let options = ReplayOptions {
            quiet: true,
            own_macs: vec![Mac(lan::RAE_MAC)],
            stage,
            ..ReplayOptions::default()
        };
        let report = replay(&path, &config, &options, &mut std::io::sink())
            .map_err(|e| format!("replay: {e}"))?;
        print(stage, &report);
    }
    Ok(())
}

fn print(stage: ReplayStage, r: &ReplayReport) {
    let what = match stage {
        ReplayStage::Parse => "(a) read + parse        ",
        ReplayStage::Apply => "(b) read + parse + apply",
    };
    println!(
        "{what}: {:>9.0} frames/s  ({} frames in {:.3} s; parsed {}, dropped {}, observations {}, \
         changes {} [opened {} updated {} snapshot {} closed {} seen {}], ticks {}, open at end {})",
        r.frames_per_sec(),
        r.frames_read,
        r.elapsed.as_secs_f64(),
        r.parsed,
        r.dropped(),
        r.observations,
        r.changes.total(),
        r.changes.opened,
        r.changes.updated,
        r.changes.snapshot,
        r.changes.closed,
        r.changes.seen,
        r.ticks,
        r.open_sessions.len(),
    );
}
