//! `cloud-sink`: ingests RAE device events into the Cloud Registry.

use std::process::ExitCode;

use clap::Parser;

/// Ingests RAE device events from Kafka (or straight from MQTT for a single lab) into
/// CockroachDB, keeping per-device order; `bridge` mode moves MQTT into Kafka. This build
/// has no sources or writer yet.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("cloud-sink: this build has no ingestion pipeline yet (see `cloud-sink --help`)");
    ExitCode::from(1)
}
