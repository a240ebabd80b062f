//! `sink-bench`: cloud-sink's measured figures, with the library in-process against a real
//! Kafka (KRaft) and a real PostgreSQL at SERIALIZABLE, both started on loopback by
//! `rae_tests::services`.
//!
//! Subcommands (each bounded in count and time; each prints progress and `RESULT` lines):
//! - `throughput [--events N] [--sessions S] [--baseline-events M] [--baseline-seconds T]`:
//!   events/s through the Kafka source into PostgreSQL, against a bare loop of the same
//!   batched writes with no Kafka and a record-at-a-time consumer (one transaction and one
//!   synchronous offset commit per record), with both ratios.
//! - `rss [--backlog N] [--sessions S] [--delay-ms D]`: the sink (a child process) drains a
//!   backlog of N events with D ms extra latency per transaction; VmRSS sampled each second
//!   and the child's VmHWM.
//! - `lag [--events N] [--sessions S] [--bursts B]`: with the source idle, a burst of N
//!   events from S sessions; the time until committed offsets equal the high watermarks.
//! - `drain ...`: the child of `rss` (internal).
//!
//! `--partitions P` (default 4), `--channel-capacity C` (the source's channel per partition)
//! and `--pred-locks L` (PostgreSQL's `max_pred_locks_per_transaction`, set before the run)
//! apply to all.
//!
//! Limitations: the machine is small and shared with Kafka's JVM and PostgreSQL, so absolute
//! rates are this machine's; the ratios are the portable part. PostgreSQL runs with
//! `fsync=off` and `synchronous_commit=off` (the lab's settings), which flatters a design
//! that commits per record the most.

mod delay;
mod events;
mod kafkaio;
mod lag;
mod rss;
mod throughput;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cloud_sink::apply::{Db, DbOptions};
use rae_tests::services::{Kafka, Postgres};

const USAGE: &str = "usage: sink-bench [--partitions P] [--channel-capacity C] [--pred-locks L]
                  <subcommand> [options]
  throughput [--events N] [--sessions S] [--baseline-events M] [--baseline-seconds T]
             (defaults 200000, 10000, 5000, 60)
  rss        [--backlog N] [--sessions S] [--delay-ms D] [--within-s T]
             (defaults 1000000, 50000, 5, 1800)
  lag        [--events N] [--sessions S] [--bursts B]   (defaults 20000, 3000, 3)
  --partitions P        topic partitions (default 4)
  --channel-capacity C  the source's per-partition channel (default: the source's, 2000)
  --pred-locks L        PostgreSQL max_pred_locks_per_transaction (default: PostgreSQL's, 64)";

/// The services every measurement runs against.
pub struct Bench {
    pub kafka: Kafka,
    pub pg: Postgres,
    pub brokers: String,
    pub partitions: i32,
    /// The source's per-partition channel capacity (`KafkaSourceConfig::channel_capacity`).
    pub channel_capacity: usize,
}

impl Bench {
    fn start(options: &Options) -> Result<Bench> {
        let mut pg = Postgres::start().context("starting PostgreSQL")?;
        if let Some(locks) = options.pred_locks {
            set_pred_locks(&mut pg, locks)?;
        }
        let kafka = Kafka::start().context("starting Kafka")?;
        let brokers = kafka.bootstrap_servers();
        Ok(Bench {
            kafka,
            pg,
            brokers,
            partitions: options.partitions,
            channel_capacity: options.channel_capacity,
        })
    }

    /// A new, migrated database.
    pub async fn database(&self, name: &str) -> Result<Db> {
        let url = self.pg.create_database(name).await?;
        let db = Db::connect(&url, DbOptions::default())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        db.migrate()
            .await
            .with_context(|| format!("migrating {url}"))?;
        Ok(db)
    }
}

/// `max_pred_locks_per_transaction` needs a restart: PostgreSQL sizes shared memory by it.
fn set_pred_locks(pg: &mut Postgres, locks: u32) -> Result<()> {
    let url = pg.admin_url();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for ALTER SYSTEM")?;
    runtime.block_on(async {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        sqlx::raw_sql(&format!(
            "ALTER SYSTEM SET max_pred_locks_per_transaction = {locks}"
        ))
        .execute(&mut conn)
        .await
        .context("ALTER SYSTEM SET max_pred_locks_per_transaction")?;
        conn.close().await.context("closing the admin connection")
    })?;
    pg.stop().context("stopping PostgreSQL")?;
    pg.start_again().context("restarting PostgreSQL")?;
    println!("PostgreSQL: max_pred_locks_per_transaction = {locks} (default 64)");
    Ok(())
}

struct Options {
    partitions: i32,
    channel_capacity: usize,
    pred_locks: Option<u32>,
}

enum Command {
    Throughput(throughput::Params),
    Rss(rss::Params),
    Lag(lag::Params),
    Drain(rss::DrainArgs),
}

fn number<T: std::str::FromStr>(flag: &str, value: Option<String>) -> Result<T> {
    let value = value.with_context(|| format!("{flag} needs a number"))?;
    value
        .parse()
        .ok()
        .with_context(|| format!("{flag} {value:?} is not a number"))
}

fn text(flag: &str, value: Option<String>) -> Result<String> {
    value.with_context(|| format!("{flag} needs a value"))
}

fn parse_args() -> Result<(Options, Command)> {
    let mut options = Options {
        partitions: 4,
        channel_capacity: cloud_sink::source::kafka::KafkaSourceConfig::default().channel_capacity,
        pred_locks: None,
    };
    let mut command = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        use Command::*;
        match (arg.as_str(), &mut command) {
            ("-h" | "--help", _) => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            ("--partitions", _) => options.partitions = number(&arg, it.next())?,
            ("--channel-capacity", _) => options.channel_capacity = number(&arg, it.next())?,
            ("--pred-locks", _) => options.pred_locks = Some(number(&arg, it.next())?),
            ("throughput", None) => {
                command = Some(Throughput(throughput::Params {
                    events: 200_000,
                    sessions: 10_000,
                    baseline_events: 5000,
                    baseline_seconds: 60,
                }))
            }
            ("rss", None) => {
                command = Some(Rss(rss::Params {
                    backlog: 1_000_000,
                    sessions: 50_000,
                    delay_ms: 5,
                    within_s: 1800,
                }))
            }
            ("lag", None) => {
                command = Some(Lag(lag::Params {
                    events: 20_000,
                    sessions: 3000,
                    bursts: 3,
                }))
            }
            ("drain", None) => {
                command = Some(Drain(rss::DrainArgs {
                    brokers: String::new(),
                    topic: String::new(),
                    group: String::new(),
                    db_url: String::new(),
                    expect: 0,
                    delay_ms: 0,
                    within_s: 1800,
                    channel_capacity: 0,
                }))
            }
            ("--events", Some(Throughput(p))) => p.events = number(&arg, it.next())?,
            ("--sessions", Some(Throughput(p))) => p.sessions = number(&arg, it.next())?,
            ("--baseline-events", Some(Throughput(p))) => {
                p.baseline_events = number(&arg, it.next())?
            }
            ("--baseline-seconds", Some(Throughput(p))) => {
                p.baseline_seconds = number(&arg, it.next())?
            }
            ("--backlog", Some(Rss(p))) => p.backlog = number(&arg, it.next())?,
            ("--sessions", Some(Rss(p))) => p.sessions = number(&arg, it.next())?,
            ("--delay-ms", Some(Rss(p))) => p.delay_ms = number(&arg, it.next())?,
            ("--within-s", Some(Rss(p))) => p.within_s = number(&arg, it.next())?,
            ("--events", Some(Lag(p))) => p.events = number(&arg, it.next())?,
            ("--sessions", Some(Lag(p))) => p.sessions = number(&arg, it.next())?,
            ("--bursts", Some(Lag(p))) => p.bursts = number(&arg, it.next())?,
            ("--brokers", Some(Drain(a))) => a.brokers = text(&arg, it.next())?,
            ("--topic", Some(Drain(a))) => a.topic = text(&arg, it.next())?,
            ("--group", Some(Drain(a))) => a.group = text(&arg, it.next())?,
            ("--db-url", Some(Drain(a))) => a.db_url = text(&arg, it.next())?,
            ("--expect", Some(Drain(a))) => a.expect = number(&arg, it.next())?,
            ("--delay-ms", Some(Drain(a))) => a.delay_ms = number(&arg, it.next())?,
            ("--within-s", Some(Drain(a))) => a.within_s = number(&arg, it.next())?,
            (other, _) => bail!("unexpected argument {other:?}\n{USAGE}"),
        }
    }
    let command = command.with_context(|| format!("no subcommand given\n{USAGE}"))?;
    if !(1..=64).contains(&options.partitions) || options.channel_capacity == 0 {
        bail!("--partitions must be 1..=64 and --channel-capacity at least 1");
    }
    Ok((options, command))
}

async fn run() -> Result<()> {
    let (options, command) = parse_args()?;
    if let Command::Drain(mut args) = command {
        args.channel_capacity = options.channel_capacity;
        return rss::drain(args).await;
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!("must run as root (the lab's services run as their own users)");
    }
    let bench = tokio::task::spawn_blocking(move || Bench::start(&options))
        .await
        .context("starting the services panicked")??;
    println!(
        "services: Kafka {}, PostgreSQL {}",
        bench.brokers,
        bench.pg.url("")
    );
    let result = match command {
        Command::Throughput(p) => throughput::run(&bench, &p).await,
        Command::Rss(p) => rss::run(&bench, &p).await,
        Command::Lag(p) => lag::run(&bench, &p).await,
        Command::Drain(_) => unreachable!("handled above"),
    };
    // Services stop in their guards' drop, which blocks: off the async workers.
    tokio::task::spawn_blocking(move || drop(bench))
        .await
        .context("stopping the services")?;
    result
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_keep_alive(Duration::from_secs(10))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sink-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("sink-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}
