//! `agent-bench`: the agent's measured figures, in the virtual lab with the real binaries.
//!
//! Subcommands (each bounded in count and time; each prints progress and a summary):
//! - `latency --joins N`: N DHCP joins (a new MAC each); per join, the DISCOVER and ACK on the
//!   wire (kernel receive timestamps on the lab bridge) against the first Snapshot and the
//!   first event carrying the leased address at an MQTT subscriber.
//! - `rss --devices N1,N2,..`: the agent's VmRSS/VmHWM idle, warm (two devices: the one-time
//!   costs) and at each count (one DUT plus the devices whose ARP announcements and neighbour
//!   solicitations it sends from as many MACs), the slope per device between counts, and the
//!   agent's writes per event.
//! - `cpu --seconds S --repeat R`: iperf3 from a DUT to the bridge and between two DUTs, each
//!   S seconds with and without the agent, R rounds in alternating order: iperf3's throughput,
//!   the machine's softirq time, the agent's CPU time and the frames it read.
//! - `arpwatch --duts N --mix mixed|v4 --seconds T`: Debian's arpwatch beside the agent while
//!   N DUTs join and talk for T seconds (the mixed LAN, or the IPv4-only mix arpwatch can see):
//!   devices each one found, and the CPU time of each.
//! - `durability --changes N --outage-secs S --churn R`: bytes written and fsyncs per event
//!   over N changes, the drain time of N changes queued in an outage, and the RSS over an
//!   S-second outage with R changes a second (see `durability.rs`).
//! - `commands --count N [--tls]`: the command round trip (cloud requester -> broker ->
//!   agent -> reply), p50/p99 over N `ping`s and N `set-availability`s (see `commands.rs`).
//!
//! The agent is the release build by default (`target/release/rae-agent`, which
//! `cargo build --release -p rae-agent` makes); `--agent-bin PATH` picks another.
//! `raectl` is the one next to this executable (it only reads the database).
//!
//! Limitations: needs root; the machine is shared, so CPU figures are best compared as
//! ratios within one run.

mod arpwatch;
mod bed;
mod commands;
mod cpu;
mod durability;
mod latency;
mod rss;
mod sniff;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: agent-bench [--agent-bin PATH] <subcommand> [options]
  latency  [--joins N]     DHCP ACK on the wire -> Snapshot at a subscriber (default 100)
  rss      [--devices N1,N2] [--tls]
                           agent RSS warm and at each device count, slope per device;
                           --tls: connected to the fleet broker of deploy/mosquitto
                           (default 256,1024)
  cpu      [--seconds S] [--repeat R]
                           iperf3 bulk traffic with and without the agent: throughput,
                           softirq, agent CPU (default 20 s windows, 3 rounds)
  arpwatch [--duts N] [--mix mixed|v4] [--seconds T]
                           arpwatch beside the agent, N DUTs talking T s (default 8, mixed, 60)
  durability [--changes N] [--outage-secs S] [--churn R]
                           writes and fsyncs per event over N changes, drain of N queued
                           changes, RSS over an S s outage with R changes/s
                           (default 10000, 600, 50)
  commands [--count N] [--broker-nodelay] [--tls]
                           command round trip requester -> agent -> reply, p50/p99 over
                           N pings and N set-availability (default 1000); --tls: the
                           fleet broker of deploy/mosquitto (TLS, certificates, ACL)
  --agent-bin PATH         the rae-agent to run (default: target/release/rae-agent)";

enum Command {
    Latency {
        joins: usize,
    },
    Rss {
        devices: Vec<usize>,
        tls: bool,
    },
    Cpu {
        seconds: u64,
        repeat: usize,
    },
    Arpwatch {
        duts: usize,
        mix: arpwatch::Mix,
        seconds: u64,
    },
    Durability(durability::Options),
    Commands(commands::Options),
}

struct Args {
    agent_bin: Option<PathBuf>,
    command: Command,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("agent-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T> {
    let value = value.with_context(|| format!("{flag} needs a number"))?;
    value
        .parse()
        .ok()
        .with_context(|| format!("{flag} {value:?} is not a number"))
}

fn parse_args() -> Result<Args> {
    let mut agent_bin = None;
    let mut command = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match (arg.as_str(), &mut command) {
            ("-h" | "--help", _) => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            ("--agent-bin", _) => {
                agent_bin = Some(PathBuf::from(
                    it.next().context("--agent-bin needs a path")?,
                ))
            }
            ("latency", None) => command = Some(Command::Latency { joins: 100 }),
            ("rss", None) => {
                command = Some(Command::Rss {
                    devices: vec![256, 1024],
                    tls: false,
                })
            }
            ("cpu", None) => {
                command = Some(Command::Cpu {
                    seconds: 20,
                    repeat: 3,
                })
            }
            ("arpwatch", None) => {
                command = Some(Command::Arpwatch {
                    duts: 8,
                    mix: arpwatch::Mix::Mixed,
                    seconds: 60,
                })
            }
            ("durability", None) => {
                command = Some(Command::Durability(durability::Options {
                    changes: 10_000,
                    outage_secs: 600,
                    churn_per_sec: 50,
                }))
            }
            ("commands", None) => {
                command = Some(Command::Commands(commands::Options {
                    count: 1000,
                    tls: false,
                    broker_nodelay: false,
                }))
            }
            ("--count", Some(Command::Commands(o))) => o.count = number(&arg, it.next())?,
            ("--tls", Some(Command::Commands(o))) => o.tls = true,
            ("--broker-nodelay", Some(Command::Commands(o))) => o.broker_nodelay = true,
            ("--changes", Some(Command::Durability(o))) => o.changes = number(&arg, it.next())?,
            ("--outage-secs", Some(Command::Durability(o))) => {
                o.outage_secs = number(&arg, it.next())?
            }
            ("--churn", Some(Command::Durability(o))) => o.churn_per_sec = number(&arg, it.next())?,
            ("--joins", Some(Command::Latency { joins })) => *joins = number(&arg, it.next())?,
            ("--tls", Some(Command::Rss { tls, .. })) => *tls = true,
            ("--devices", Some(Command::Rss { devices, .. })) => {
                let list = it.next().context("--devices needs counts, e.g. 256,1024")?;
                *devices = list
                    .split(',')
                    .map(|n| number(&arg, Some(n.to_owned())))
                    .collect::<Result<_>>()?;
            }
            ("--seconds", Some(Command::Cpu { seconds, .. })) => {
                *seconds = number(&arg, it.next())?
            }
            ("--repeat", Some(Command::Cpu { repeat, .. })) => *repeat = number(&arg, it.next())?,
            ("--duts", Some(Command::Arpwatch { duts, .. })) => *duts = number(&arg, it.next())?,
            ("--mix", Some(Command::Arpwatch { mix, .. })) => {
                *mix = it.next().context("--mix needs mixed or v4")?.parse()?
            }
            ("--seconds", Some(Command::Arpwatch { seconds, .. })) => {
                *seconds = number(&arg, it.next())?
            }
            (other, _) => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    let command = command.with_context(|| format!("no subcommand given\n{USAGE}"))?;
    Ok(Args { agent_bin, command })
}

fn run() -> Result<()> {
    let args = parse_args()?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!("must run as root (network namespaces, AF_PACKET sockets)");
    }
    let agent_bin = match args.agent_bin {
        Some(path) => path,
        None => bed::default_agent_binary()?,
    };
    if !agent_bin.is_file() {
        bail!(
            "no rae-agent binary at {} (build it with `cargo build --release -p rae-agent`)",
            agent_bin.display()
        );
    }
    println!("agent binary: {}", agent_bin.display());
    match args.command {
        Command::Latency { joins } => latency::run(&agent_bin, joins),
        Command::Rss { devices, tls } => rss::run(&agent_bin, &devices, tls),
        Command::Cpu { seconds, repeat } => cpu::run(&agent_bin, seconds, repeat),
        Command::Arpwatch { duts, mix, seconds } => arpwatch::run(&agent_bin, duts, mix, seconds),
        Command::Durability(options) => durability::run(&agent_bin, &options),
        Command::Commands(options) => commands::run(&agent_bin, &options),
    }
}
