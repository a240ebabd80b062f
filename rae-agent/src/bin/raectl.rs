//! `raectl`: inspect the RAE's device registry, and steer the running agent.
//!
//! The read commands (`devices`, `show`, `events`, `status`) open the registry database
//! read-only, so they work while rae-agent runs (SQLite WAL readers see the last commit and
//! never block the daemon) and while it is stopped. The actions (`set`, `esn`, `resync`,
//! `forget`, `ping`) are requests to the running agent over its control socket
//! (`rae_agent::ctl::action`); the agent carries them out as it does cloud commands. raectl
//! never writes the database.
//!
//! Exit codes: 0 done; 1 failed or refused (the message says why); 2 bad usage, or, for an
//! action, rae-agent not running.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{SigSet, Signal};
use rae_agent::config::DEFAULT_CONFIG_PATH;
use rae_agent::ctl::action;
use rae_agent::ctl::{
    devices_json, devices_table, event_json, event_line, locate, show_json, show_text, status_json,
    status_text, CtlError, DbChoice, DbLocation, DeviceDetail, SessionMacs, StatusReport,
};
use rae_agent::error_chain;
use rae_agent::store::{DeviceQuery, HistoryRow, StoreReader};
use rae_proto::{Availability, CommandRequest, DeviceRef};

/// Inspects rae-agent's device registry on this RAE and steers the running agent.
///
/// The read commands (devices, show, events, status) read the registry database
/// (STATE_DIR/registry.db) directly and read-only: they work whether or not rae-agent is
/// running. The database is `--db FILE`, else `--state-dir DIR`/registry.db, else the state_dir
/// of the agent configuration (`-c FILE`, default /etc/rae-agent/config.toml), else, when that
/// file does not exist, /var/lib/rae-agent/registry.db.
///
/// The actions (set, esn, resync, forget, ping) ask the running agent over its control socket:
/// `--socket PATH`, else agent.control_socket of the configuration, else
/// /run/rae-agent/control.sock. The agent carries an action out like a cloud command (a new
/// event with the next seq, in the history "by raectl (uid N)"); raectl itself never writes
/// the database. Using the socket takes root or membership in its group
/// (agent.control_group).
///
/// Exit codes: 0 done; 1 failed or refused (the message says why); 2 bad usage, or, for an
/// action, rae-agent not running.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    opts: Options,
    #[command(subcommand)]
    command: Command,
}

/// The flags every command takes (each uses those that concern it).
#[derive(Debug, clap::Args)]
struct Options {
    /// Read this registry database file.
    #[arg(long, global = true, value_name = "FILE")]
    db: Option<PathBuf>,
    /// Read DIR/registry.db.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The agent configuration naming the state dir and the control socket
    /// [default: /etc/rae-agent/config.toml].
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print JSON instead of text (`events`: one object per line).
    #[arg(long, global = true)]
    json: bool,
    /// Actions: the agent's control socket [default: agent.control_socket of the config, else
    /// /run/rae-agent/control.sock].
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Actions: how long to wait for the agent's reply, in seconds.
    #[arg(long, global = true, value_name = "SECS", default_value_t = action::DEFAULT_REPLY_TIMEOUT.as_secs())]
    timeout: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Read(ReadCommand),
    #[command(flatten)]
    Action(ActionCommand),
}

/// The commands that read the database.
#[derive(Debug, Subcommand)]
enum ReadCommand {
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

/// The commands the running agent carries out.
#[derive(Debug, Subcommand)]
enum ActionCommand {
    /// Action: set a device's availability for testing (an event carries it to the cloud).
    Set {
        /// A MAC (aa:bb:cc:dd:ee:ff; its open session) or a session id.
        device: DeviceRef,
        availability: AvailabilityArg,
    },
    /// Action: set a device's ESN (1 to 128 printable ASCII characters, no spaces), or clear
    /// it with --clear.
    Esn {
        /// A MAC (its open session) or a session id.
        device: DeviceRef,
        /// The ESN.
        #[arg(required_unless_present = "clear", conflicts_with = "clear")]
        esn: Option<String>,
        /// Remove the device's ESN.
        #[arg(long)]
        clear: bool,
    },
    /// Action: publish a Snapshot of one device now, or of every open session without a
    /// device (for a cloud that missed events).
    Resync {
        /// A MAC (its open session) or a session id; none: every open session.
        device: Option<DeviceRef>,
    },
    /// Action: close a device's session (Closed, reason forgotten) and drop it from the
    /// registry; seen again, it gets a new session.
    Forget {
        /// A MAC (its open session) or a session id.
        device: DeviceRef,
    },
    /// Action: ask the agent whether it runs: its version, uptime and open sessions.
    Ping,
}

/// The availability values as typed on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum AvailabilityArg {
    /// Free for testing.
    Available,
    /// Under test.
    #[value(alias = "in_test")]
    InTest,
    /// Out of service.
    Maintenance,
}

impl ActionCommand {
    /// The request the action sends.
    fn request(&self) -> CommandRequest {
        match self {
            ActionCommand::Set {
                device,
                availability,
            } => CommandRequest::SetAvailability {
                device: *device,
                availability: match availability {
                    AvailabilityArg::Available => Availability::Available,
                    AvailabilityArg::InTest => Availability::InTest,
                    AvailabilityArg::Maintenance => Availability::Maintenance,
                },
            },
            ActionCommand::Esn { device, esn, .. } => CommandRequest::SetEsn {
                device: *device,
                esn: esn.clone(),
            },
            ActionCommand::Resync { device } => CommandRequest::Resync { device: *device },
            ActionCommand::Forget { device } => CommandRequest::Forget { device: *device },
            ActionCommand::Ping => CommandRequest::Ping,
        }
    }
}

/// How often `events --follow` looks for new rows.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// History rows read per query while following.
const FOLLOW_BATCH: usize = 500;

fn main() -> ExitCode {
    let Args { opts, command } = Args::parse();
    let read = match command {
        Command::Action(action) => return act(&opts, &action.request()),
        Command::Read(read) => read,
    };
    match run(opts, read) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`raectl events | head`): nothing left to do.
        Err(CtlError::Output(err)) if err.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("raectl: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

/// Sends one action to the agent and says how it went (see the exit codes above).
fn act(args: &Options, request: &CommandRequest) -> ExitCode {
    let sent = action::locate_socket(
        args.socket.as_deref(),
        args.config.as_deref(),
        DEFAULT_CONFIG_PATH.as_ref(),
    )
    .and_then(|(path, _)| action::send(&path, request, Duration::from_secs(args.timeout)));
    let mut out = io::stdout().lock();
    match sent {
        Ok(body) => {
            let text = match args.json {
                true => pretty(&action::reply_json(request, &body)),
                false => action::reply_text(request, &body),
            };
            // Done either way; only the report could not be printed (a closed pipe).
            let _ = emit(&mut out, &text);
            ExitCode::SUCCESS
        }
        Err(err) => {
            if args.json {
                let _ = emit(&mut out, &pretty(&action::error_json(request, &err)));
            }
            eprintln!("raectl: {}", error_chain(&err));
            ExitCode::from(err.exit_code())
        }
    }
}

fn run(args: Options, command: ReadCommand) -> Result<(), CtlError> {
    let choice = DbChoice {
        db: args.db,
        state_dir: args.state_dir,
        config: args.config,
    };
    let location = locate(&choice, DEFAULT_CONFIG_PATH.as_ref())?;
    // Signals are blocked before the database is opened and any thread exists, so that
    // every thread inherits the mask and only the waiting thread receives them.
    let stop = match &command {
        ReadCommand::Events { follow: true, .. } => Some(stop_on_signals()?),
        _ => None,
    };
    let reader = location.open()?;
    let mut out = io::stdout().lock();
    match command {
        ReadCommand::Devices { all } => {
            let rows = reader
                .devices(all)
                .map_err(CtlError::store(&location.path))?;
            let text = match args.json {
                true => pretty(&devices_json(&rows, &location.path, now_ms())),
                false => devices_table(&rows, all, now_ms()),
            };
            emit(&mut out, &text)
        }
        ReadCommand::Show { device, limit } => {
            show(&mut out, &reader, &location, device, limit, args.json)
        }
        ReadCommand::Events { limit, .. } => events(
            &mut out,
            &reader,
            &location,
            limit,
            args.json,
            stop.as_deref(),
        ),
        ReadCommand::Status => {
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
