//! `raectl`: inspect and steer the RAE's device registry.

use std::process::ExitCode;

use clap::Parser;

/// Inspects and steers rae-agent on this RAE. The read commands (devices, show, events,
/// status) read the registry database directly and arrive with the registry itself; this
/// build has none yet.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("raectl: this build has no registry to read yet (see `raectl --help`)");
    ExitCode::from(1)
}
