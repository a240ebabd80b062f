//! `lab-sweep`: removes what crashed lab runs left behind (namespaces, links, processes,
//! `/etc/netns` entries, directories of dead owners). `lab-sweep --check` only lists
//! every lab resource that exists, stale or not, and exits 1 if there is any.

use std::process::ExitCode;

use rae_tests::sweep::{leftovers, sweep_stale};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--check"] => {
            let found = leftovers();
            if found.is_empty() {
                println!("no lab leftovers");
                return ExitCode::SUCCESS;
            }
            println!("lab leftovers:");
            for item in &found {
                println!("  {item}");
            }
            ExitCode::FAILURE
        }
        [] => {
            let report = sweep_stale();
            for item in &report.removed {
                println!("removed {item}");
            }
            for item in &report.failed {
                eprintln!("failed: {item}");
            }
            let live = leftovers();
            if !live.is_empty() {
                println!("left alone (in use by running labs):");
                for item in &live {
                    println!("  {item}");
                }
            }
            if report.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => {
            eprintln!("usage: lab-sweep [--check]");
            ExitCode::from(2)
        }
    }
}
