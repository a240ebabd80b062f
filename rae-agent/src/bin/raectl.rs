//! `raectl`: inspect the RAE's device registry.
//!
//! The read commands open the registry database read-only and never write to it, so they work
//! while rae-agent runs (SQLite WAL readers see the last commit and never block the daemon) and
//! while it is stopped. Exit codes: 0 done, 1 failed (the message says why), 2 bad usage.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use rae_agent::config::DEFAULT_CONFIG_PATH;
use rae_agent::ctl::{
    devices_json, devices_table, event_json, event_line, locate, show_json, show_text, status_json,
    status_text, CtlError, DbChoice, DbLocation, DeviceDetail, SessionMacs, StatusReport,
};
use rae_agent::error_chain;
use rae_agent::store::{DeviceQuery, HistoryRow, StoreReader};

/// Inspects rae-agent's device registry on this RAE.
///
/// The commands read the registry database (STATE_DIR/registry.db) directly and read-only:
/// they work whether or not rae-agent is running, and never change the database.
/// The database is `--db FILE`, else `--state-dir DIR`/registry.db, else the state_dir of the
/// agent configuration (`-c FILE`, default /etc/rae-agent/config.toml), else, when that file
/// does not exist, /var/lib/rae-agent/registry.db.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// Read this registry database file.
    #[arg(long, global = true, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Read DIR/registry.db.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The agent configuration naming the state dir [default: /etc/rae-agent/config.toml].
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print JSON instead of text (`events`: one object per line).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List devices: session, MAC, IP, hostname, vendor, reachability, availability, last
    /// seen. Open sessions only unless --all.
    Devices {
        /// Include closed sessions (devices gone or forgotten), with when and why they closed.
        #[arg(long)]
        all: bool,
    },
    /// Show one device's whole record and its recent history with the evidence for each
    /// change. A MAC or IPv4 address picks the device's open session, else its newest
    /// closed one.
    Show {
        /// A MAC (aa:bb:cc:dd:ee:ff), an IPv4 address or a session id.
        device: DeviceQuery,
        /// How many of the newest history rows to show.
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: usize,
    },
    /// Print the newest history rows of all devices: what changed, when, and why.
    Events {
        /// How many of the newest rows to print first.
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: usize,
        /// Keep printing new rows as rae-agent commits them, until interrupted (Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Show what rae-agent last reported: capture counters, drops by reason, broker
    /// connection, publisher and probe counters; the outbox depth and the age of its oldest
    /// event; the store's counters; and how long ago the daemon last wrote status.
    Status,
}

/// How often `events --follow` looks for new rows.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// History rows read per query while following.
const FOLLOW_BATCH: usize = 500;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`raectl events | head`): nothing left to do.
        Err(CtlError::Output(err)) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("raectl: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<(), CtlError> {
    let choice = DbChoice {
        db: args.db,
        state_dir: args.state_dir,
        config: args.config,
    };
    let location = locate(&choice, DEFAULT_CONFIG_PATH.as_ref())?;
    // Signals are blocked before the database is opened and any thread exists, so that
    // every thread inherits the mask and only the waiting thread receives them.
    let stop = match &args.command {
        Command::Events { follow: true, .. } => Some(stop_on_signals()?),
        _ => None,
    };
    let reader = location.open()?;
    let mut out = io::stdout().lock();
    match args.command {
        Command::Devices { all } => {
            let rows = reader
                .devices(all)
                .map_err(CtlError::store(&location.path))?;
            let text = match args.json {
                true => pretty(&devices_json(&rows, &location.path, now_ms())),
                false => devices_table(&rows, all, now_ms()),
            };
            emit(&mut out, &text)
        }
        Command::Show { device, limit } => {
            show(&mut out, &reader, &location, device, limit, args.json)
        }
        Command::Events { limit, .. } => events(
            &mut out,
            &reader,
            &location,
            limit,
            args.json,
            stop.as_deref(),
        ),
        Command::Status => {
            let failed = CtlError::store(&location.path);
            let report = read_status(&reader).map_err(failed)?;
            let text = match args.json {
                true => pretty(&status_json(&report, &location.path, now_ms())),
                false => status_text(&report, &location.path, now_ms()),
            };
            emit(&mut out, &text)
        }
    }
}

fn show(
    out: &mut impl Write,
    reader: &StoreReader,
    location: &DbLocation,
    query: DeviceQuery,
    limit: usize,
    json: bool,
) -> Result<(), CtlError> {
    let found = reader
        .find(query)
        .map_err(CtlError::store(&location.path))?;
    let Some((row, record)) = found else {
        return Err(CtlError::UnknownDevice {
            query: query_text(query),
            path: location.path.clone(),
        });
    };
    let history = reader
        .history(row.session, limit)
        .map_err(CtlError::store(&location.path))?;
    let detail = DeviceDetail {
        row,
        record,
        history,
        history_limit: limit,
    };
    let text = match json {
        true => pretty(&show_json(&detail)),
        false => show_text(&detail, now_ms()),
    };
    emit(out, &text)
}

/// Prints the newest `limit` rows; with `stop`, keeps polling for newer rows until a signal
/// sets it.
fn events(
    out: &mut impl Write,
    reader: &StoreReader,
    location: &DbLocation,
    limit: usize,
    json: bool,
    stop: Option<&AtomicBool>,
) -> Result<(), CtlError> {
    let failed = || CtlError::store(&location.path);
    let mut macs = SessionMacs::default();
    let rows = reader.latest_events(limit).map_err(failed())?;
    // Following starts after the last row printed; with nothing printed, after the newest
    // row that exists (limit 0), or from the start (an empty history).
    let mut last_id = match (rows.last(), limit) {
        (Some(row), _) => row.id,
        (None, 0) => reader.latest_event_id().map_err(failed())?,
        (None, _) => 0,
    };
    print_events(out, reader, location, &mut macs, &rows, json)?;
    let Some(stop) = stop else {
        return Ok(());
    };
    while !stop.load(Ordering::Relaxed) {
        let rows = reader
            .events_since(last_id, FOLLOW_BATCH)
            .map_err(failed())?;
        if let Some(row) = rows.last() {
            last_id = row.id;
            print_events(out, reader, location, &mut macs, &rows, json)?;
            if rows.len() == FOLLOW_BATCH {
                continue;
            }
        }
        std::thread::sleep(FOLLOW_POLL);
    }
    Ok(())
}

fn print_events(
    out: &mut impl Write,
    reader: &StoreReader,
    location: &DbLocation,
    macs: &mut SessionMacs,
    rows: &[HistoryRow],
    json: bool,
) -> Result<(), CtlError> {
    if !macs.knows_all(rows) {
        let sessions = reader
            .devices(true)
            .map_err(CtlError::store(&location.path))?;
        *macs = SessionMacs::from_rows(&sessions);
    }
    for row in rows {
        let mac = macs.get(&row.session);
        let line = match json {
            true => event_json(row, mac).to_string(),
            false => event_line(row, mac),
        };
        writeln!(out, "{line}").map_err(CtlError::Output)?;
    }
    // Followers (`| grep`, a test) see each batch as soon as it is committed.
    out.flush().map_err(CtlError::Output)
}

fn read_status(reader: &StoreReader) -> Result<StatusReport, rae_agent::store::StoreError> {
    Ok(StatusReport {
        entries: reader.read_status()?,
        outbox: reader.outbox_stats()?,
        counters: reader.counters()?,
        serial: reader.serial()?,
    })
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread started later)
/// and sets the returned flag when one arrives, so that `--follow` ends between two polls
/// with its output flushed.
fn stop_on_signals() -> Result<Arc<AtomicBool>, CtlError> {
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    signals
        .thread_block()
        .map_err(|errno| CtlError::Signals(io::Error::from(errno)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // An error here only means no signal will end the loop; the process still ends
            // on a broken pipe or SIGKILL.
            if signals.wait().is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        })
        .map_err(CtlError::Signals)?;
    Ok(stop)
}

fn query_text(query: DeviceQuery) -> String {
    match query {
        DeviceQuery::Mac(mac) => mac.to_string(),
        DeviceQuery::Ipv4(ip) => ip.to_string(),
        DeviceQuery::Session(session) => session.to_string(),
    }
}

fn pretty(value: &serde_json::Value) -> String {
    // Serializing a Value cannot fail (its map keys are strings); fall back to compact form.
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    text.push('\n');
    text
}

fn emit(out: &mut impl Write, text: &str) -> Result<(), CtlError> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(CtlError::Output)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}
