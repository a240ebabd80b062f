//! The daemon: wires capture, parsers, registry core, store, probes and publisher together
//! (DESIGN section 4). One task owns each I/O resource; they talk over bounded channels:
//!
//! ```text
//! capture thread --frames--> core task (Engine: parse, observe, apply, tick) --Changes--> store thread
//! SSDP task --Identified--^        |--probe frames--> TxSocket (LAN port)        |
//! mDNS querier (queries only; answers come back through the capture)             v
//!                                   publisher task <--outbox watch-- store thread
//! ```
//!
//! The core task also writes the status entries `raectl status` shows, every few seconds,
//! and sends systemd's watchdog keep-alive, so a stuck core loop is what the watchdog sees.
//!
//! Time: the core task reads the core clock (`crate::clock`, monotonic) for every decision
//! and hands the wall clock's offset to the engine for the stamps, so a wall-clock step (a
//! first NTP sync) closes no session.
//!
//! Commands (cloud and `raectl`) come in as `control::Job`s over one channel and are carried
//! out here, by `control::Handler`, between frames: an effect is an ordinary Change.
//!
//! `raectl` actions come in over the control Unix socket (`control::socket`), which is
//! claimed at start-up (a second agent on the same socket stops there) and removed at the end.

pub mod engine;
mod mdns;
pub mod notify;
pub mod status;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::wall_ms;

use rae_proto::{Mac, NameError, Serial};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::capture::{self, CaptureConfig, CaptureError, CapturedFrame};
use crate::clock::CoreClock;
use crate::config::Config;
use crate::control;
use crate::probe::identify::interface_ipv4;
use crate::probe::liveness::{LanAddrs, Liveness, TxSocket};
use crate::probe::mdns_query::{MdnsQuerier, MdnsQuerySettings};
use crate::probe::{Identified, ProbeError, SsdpSearch, SsdpSettings};
use crate::publish::{self, PublishError, PublisherSettings, PublisherStatus};
use crate::registry::{Change, Core, CoreConfig, CoreConfigError, RestoredSession};
use crate::store::{StoreError, StoreHandle, StoreOptions, StoreThreadOptions};

use engine::Engine;
use notify::Notifier;
use status::AgentInfo;

/// The registry database inside the state directory.
pub const DATABASE_FILE: &str = "registry.db";

/// Frames queued between the capture thread and the core task.
const FRAME_QUEUE: usize = 4096;
/// Frames the core task takes per wake-up before it hands their Changes to the store.
const FRAME_BATCH: usize = 256;
/// How long shutdown waits for the publisher to say goodbye to the broker.
const PUBLISHER_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("agent.serial {serial:?}: {source}")]
    Serial { serial: String, source: NameError },
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry database")]
    Store(#[from] StoreError),
    #[error("registry settings")]
    Core(#[from] CoreConfigError),
    #[error("capture on the LAN interface")]
    Capture(#[from] CaptureError),
    #[error("probes")]
    Probe(#[from] ProbeError),
    #[error("publisher")]
    Publish(#[from] PublishError),
    #[error("control socket")]
    Control(#[from] control::socket::ControlError),
    #[error("the capture thread stopped on its own")]
    CaptureGone,
    #[error("the publisher's supervisor stopped on its own: {0}")]
    PublisherGone(String),
}

/// Runs the agent until `shutdown` turns true, then stops every part in order: the capture,
/// a last commit, the publisher's goodbye, the store.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env();
    let serial = Serial::new(&config.agent.serial).map_err(|source| DaemonError::Serial {
        serial: config.agent.serial.clone(),
        source,
    })?;
    let interface = config.agent.lan_interface.clone();
    let state_dir = &config.agent.state_dir;
    std::fs::create_dir_all(state_dir).map_err(|source| DaemonError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    let db = state_dir.join(DATABASE_FILE);
    let (store, recovery) =
        crate::store::open_checked(&db, StoreOptions::from_config(&config), wall_ms())?;
    if let Some(recovery) = &recovery {
        // Once per incident: the next start finds a good database. `raectl status` keeps it
        // (the `store.recovered_*` entries and the `integrity_recoveries` counter).
        tracing::error!(
            db = %db.display(),
            moved_to = %recovery.moved_to.display(),
            recoveries = recovery.recoveries,
            cause = %crate::error_chain(&recovery.cause),
            "registry database damaged: moved aside and replaced by a fresh one; \
             devices are rediscovered as new sessions"
        );
    }
    // The core clock starts at the wall clock, so the stored stamps read as core times; one
    // from "the future" (the wall clock went back while the agent was down) is taken as now,
    // or its device would stay online that much longer.
    let clock = CoreClock::start();
    let started = clock.read().core_ms;
    let restored: Vec<RestoredSession> = store
        .open_sessions()?
        .into_iter()
        .map(|s| {
            let mut record = s.record;
            record.last_seen_ms = record.last_seen_ms.min(started);
            record.first_seen_ms = record.first_seen_ms.min(record.last_seen_ms);
            RestoredSession {
                session: s.session,
                seq: s.last_seq,
                record,
            }
        })
        .collect();
    info!(db = %db.display(), sessions = restored.len(), "registry opened");

    let mut own_macs = local_macs();
    let core_config = CoreConfig::new(&config.registry, &config.publish, own_macs.clone());
    let core = Core::with_random_ids(&core_config, restored)?;
    let answer_window = Duration::from_secs(config.registry.probe_interval_secs);
    let mut engine = Engine::new(
        core,
        Liveness::new(config.probe.max_per_sec, answer_window),
        &own_macs,
    );

    let (store, store_thread) = StoreHandle::spawn(
        store,
        serial.clone(),
        StoreThreadOptions::from_config(&config),
    )?;

    // Commands: the publisher (cloud, `cmd/` topics) and the control socket (`raectl`) hand
    // Jobs to this task over one channel; `commands` decides every reply (see `control`).
    let (jobs_tx, mut jobs_rx) = control::channel();
    let mut commands = control::Handler::new(&config.control, serial, started);
    // `raectl` actions. Claimed before the capture starts: a second agent on the same paths
    // stops here.
    let control_socket = control::socket::serve(
        &control::socket::SocketSettings::from_config(&config),
        jobs_tx.clone(),
        shutdown.clone(),
    )?;

    // From the store, not the core: it lists only committed seqs (see the store thread).
    let inventory_rx = store.inventory_watch();
    let (pub_status_tx, pub_status_rx) = watch::channel(PublisherStatus::default());
    let publisher_settings = PublisherSettings {
        fault: publish::Fault::from_env()?,
        ..PublisherSettings::from_config(&config)?
    };
    // The supervisor restarts a failing publisher itself; if it ends before a shutdown, the
    // error is one a restart cannot cure and the daemon stops with it (see the loop below).
    let mut publisher = tokio::spawn(publish::supervise(
        publisher_settings,
        store.clone(),
        inventory_rx,
        pub_status_tx,
        shutdown.clone(),
        Some(publish::CommandLink {
            jobs: jobs_tx.clone(),
            counters: commands.counters(),
            inventory_now: commands.inventory_requests(),
        }),
    ));

    let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel::<CapturedFrame>(FRAME_QUEUE);
    let capture = capture::spawn(CaptureConfig::new(&interface), sync_tx)?;
    let (frames_tx, mut frames_rx) = mpsc::channel::<CapturedFrame>(FRAME_QUEUE);
    std::thread::Builder::new()
        .name("rae-frames".into())
        .spawn(move || {
            // Blocking here fills the capture's queue, which counts what it then drops.
            for frame in sync_rx {
                if frames_tx.blocking_send(frame).is_err() {
                    break;
                }
            }
        })
        .map_err(|source| ProbeError::Socket {
            what: "starting the frame relay thread",
            source,
        })?;

    let tx = TxSocket::open(&interface)?;
    let mut lan = read_lan(&interface, None);
    let (ssdp_tx, mut ssdp_rx) = mpsc::channel::<Identified>(64);
    let ssdp = start_ssdp(&config, &interface, ssdp_tx, shutdown.clone());
    let (types_tx, types_rx) = mpsc::channel::<Vec<String>>(16);
    let mdns = start_mdns(&config, &interface, types_rx, shutdown.clone());

    let agent = AgentInfo {
        version: env!("CARGO_PKG_VERSION"),
        pid: std::process::id(),
        started_ms: wall_ms(),
        interface: interface.clone(),
    };
    notifier.ready(&format!("watching {interface}"));
    info!(%interface, version = agent.version, "agent running");
    if let Some(warning) = config.identity_warning() {
        warn!("{warning}");
    }
    if let Some(warning) = config.probe_budget_warning() {
        warn!("{warning}");
    }

    let status_every = Duration::from_secs(config.agent.status_interval_secs);
    let mut housekeeping = tokio::time::interval(
        notifier
            .watchdog_interval()
            .map_or(status_every, |w| w.min(status_every)),
    );
    let mut next_status = Instant::now();
    let mut stop = shutdown.clone();
    let mut batch: Vec<CapturedFrame> = Vec::with_capacity(FRAME_BATCH);
    let mut ssdp_open = ssdp.is_some();
    let mut publisher_running = true;
    let outcome: Result<(), DaemonError> = loop {
        let now_ms = core_now(&clock, &mut engine);
        let wake = engine
            .next_deadline(now_ms)
            .map_or(Duration::from_secs(1), |at| {
                Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0))
            })
            .min(Duration::from_secs(1));
        let mut changes = Vec::new();
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break Ok(()),
            // The daemon holds a sender, so the channel stays open. Before the frames: a
            // flood on the LAN must not starve commands (which are rate-limited themselves).
            Some(job) = jobs_rx.recv() => {
                let now_ms = core_now(&clock, &mut engine);
                if let Err(err) = commands.handle(job, &mut engine, &store, now_ms).await {
                    break Err(err.into());
                }
            }
            ended = &mut publisher, if publisher_running => {
                publisher_running = false;
                break match ended {
                    Ok(Ok(())) => Err(DaemonError::PublisherGone("it returned".to_owned())),
                    Ok(Err(err)) => Err(err.into()),
                    Err(join) => Err(DaemonError::PublisherGone(join.to_string())),
                };
            }
            n = frames_rx.recv_many(&mut batch, FRAME_BATCH) => {
                if n == 0 {
                    break Err(DaemonError::CaptureGone);
                }
                let now = Instant::now();
                let now_ms = core_now(&clock, &mut engine);
                for frame in batch.drain(..) {
                    changes.extend(engine.frame(&frame, now_ms, now));
                }
            }
            found = ssdp_rx.recv(), if ssdp_open => match found {
                Some(found) => {
                    let now_ms = core_now(&clock, &mut engine);
                    changes.extend(engine.identified(found, now_ms));
                }
                None => ssdp_open = false,
            },
            _ = tokio::time::sleep(wake) => {
                let now_ms = core_now(&clock, &mut engine);
                let (due, frames) = engine.tick(now_ms, Instant::now(), lan.as_ref());
                changes.extend(due);
                for frame in frames {
                    if let Err(err) = tx.send(&frame.bytes) {
                        tracing::debug!(target = %frame.target, %err, "probe not sent");
                        engine.send_failed(frame.target);
                    }
                }
            }
            _ = housekeeping.tick() => {
                notifier.watchdog();
                if Instant::now() >= next_status {
                    next_status = Instant::now() + status_every;
                    lan = read_lan(&interface, lan);
                    let macs = local_macs();
                    if macs != own_macs {
                        let now_ms = core_now(&clock, &mut engine);
                        changes.extend(engine.set_own_macs(&macs, now_ms));
                        own_macs = macs;
                    }
                    let mut entries = status_entries(&agent, &engine, Some(&capture), &pub_status_rx);
                    entries.extend(commands.counters().entries());
                    entries.extend(control_socket.entries());
                    if let Err(err) = store.write_status(entries).await {
                        break Err(err.into());
                    }
                }
            }
        }
        let types = engine.take_new_mdns_types();
        if !types.is_empty() && types_tx.try_send(types).is_err() {
            // The querier is off or busy; it re-enumerates every interval anyway.
            tracing::debug!("mDNS types not handed to the querier");
        }
        if !changes.is_empty() {
            log_changes(&changes);
            if let Err(err) = store.submit(changes).await {
                break Err(err.into());
            }
        }
    };

    notifier.stopping();
    info!("agent stopping");
    // No command is carried out from here on: `raectl` sees its connection close, and the
    // socket file goes.
    let control_socket_entries = control_socket.entries();
    control_socket.stop().await;
    let counters = tokio::task::spawn_blocking(move || capture.stop())
        .await
        .ok()
        .and_then(Result::ok);
    let mut entries = status_entries(&agent, &engine, None, &pub_status_rx);
    entries.extend(commands.counters().entries());
    entries.extend(control_socket_entries);
    if let Some(c) = counters {
        entries.push(("capture.frames".into(), c.frames.to_string()));
    }
    let flushed = store.flush().await;
    let _ = store.write_status(entries).await;
    if publisher_running {
        stop_publisher(publisher).await;
    }
    for task in [ssdp, mdns].into_iter().flatten() {
        task.abort();
    }
    let closed = store.shutdown().await;
    let finished = store_thread.finished().await;
    outcome?;
    flushed?;
    closed?;
    finished?;
    info!("agent stopped");
    Ok(())
}

/// Sessions opening and closing are what an operator follows in the journal; the rest is
/// in `raectl events`.
/// The core clock now, with the engine's wall-clock offset brought up to date (stamps only;
/// see `crate::clock`).
fn core_now<I: crate::registry::SessionIds>(clock: &CoreClock, engine: &mut Engine<I>) -> i64 {
    let reading = clock.read();
    engine.set_wall_offset(reading.wall_offset_ms());
    reading.core_ms
}

pub(crate) fn log_changes(changes: &[Change]) {
    for change in changes {
        match change {
            Change::Opened {
                session,
                record,
                cause,
                ..
            } => info!(
                mac = %record.mac, ipv4 = ?record.ipv4, %session, cause = %cause.summary,
                "device session opened"
            ),
            Change::Closed {
                session,
                mac,
                reason,
                ..
            } => {
                info!(%mac, %session, ?reason, "device session closed")
            }
            Change::Updated {
                session,
                mac,
                fields,
                cause,
                ..
            } => tracing::debug!(
                %mac, %session, fields = fields.len(), cause = %cause.summary, "device updated"
            ),
            _ => {}
        }
    }
}

async fn stop_publisher(task: JoinHandle<Result<(), PublishError>>) {
    let abort = task.abort_handle();
    match tokio::time::timeout(PUBLISHER_GRACE, task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => {
            warn!(cause = %crate::error_chain(&err), "publisher ended with an error")
        }
        Ok(Err(err)) => warn!(%err, "publisher task failed"),
        Err(_) => {
            warn!("publisher did not stop in time; unacknowledged events stay in the outbox");
            abort.abort();
        }
    }
}

fn status_entries<I: crate::registry::SessionIds>(
    agent: &AgentInfo,
    engine: &Engine<I>,
    capture: Option<&capture::CaptureHandle>,
    publisher: &watch::Receiver<PublisherStatus>,
) -> Vec<(String, String)> {
    let mut drops = engine.drops().clone();
    if let Some(capture) = capture {
        drops.merge(&capture.stats().parse_drops());
    }
    let snapshot = status::Snapshot {
        agent,
        capture: capture.map(|c| c.counters()),
        drops,
        engine: engine.counters(),
        liveness: engine.liveness(),
        sessions_open: engine.core().sessions().count(),
        max_sessions: engine.core().max_sessions(),
        cap: engine.core().cap_counters(),
    };
    let mut entries = status::entries(&snapshot);
    entries.extend(publisher.borrow().entries());
    crate::log_limit::flush_summaries();
    entries.extend(crate::log_limit::status_entries());
    entries
}

fn start_ssdp(
    config: &Config,
    interface: &str,
    out: mpsc::Sender<Identified>,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if !config.probe.ssdp {
        return None;
    }
    let local = match interface_ipv4(interface) {
        Ok(ip) => ip,
        Err(err) => {
            warn!(%err, "SSDP identification off: the LAN port needs an IPv4 address to search from");
            return None;
        }
    };
    let settings = SsdpSettings {
        search_every: Duration::from_secs(config.probe.ssdp_search_interval_secs),
        ..SsdpSettings::default()
    };
    let search = match SsdpSearch::bind(local, settings) {
        Ok(search) => search,
        Err(err) => {
            warn!(cause = %crate::error_chain(&err), "SSDP identification off");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        let mut stop = shutdown;
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(err) = search.run(out, stopped).await {
            warn!(cause = %crate::error_chain(&err), "SSDP identification stopped");
        }
    }))
}

fn start_mdns(
    config: &Config,
    interface: &str,
    types: mpsc::Receiver<Vec<String>>,
    shutdown: watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    if !config.probe.mdns {
        return None;
    }
    let settings = MdnsQuerySettings {
        rebrowse_every: Duration::from_secs(config.probe.mdns_query_interval_secs),
        ..MdnsQuerySettings::default()
    };
    let querier = match MdnsQuerier::bind(interface, settings) {
        Ok(querier) => querier,
        Err(err) => {
            warn!(cause = %crate::error_chain(&err), "mDNS queries off (answers that devices announce are still read)");
            return None;
        }
    };
    // Answers come back through the capture (multicast, or unicast to this host), so the
    // socket's own copies are not needed.
    Some(tokio::spawn(async move {
        if let Err(err) = querier.run(types, None, shutdown).await {
            warn!(cause = %crate::error_chain(&err), "mDNS queries stopped");
        }
    }))
}

/// The LAN port's addresses; a failure keeps the last known ones (logged when it starts).
fn read_lan(interface: &str, last: Option<LanAddrs>) -> Option<LanAddrs> {
    match LanAddrs::read(interface) {
        Ok(addrs) => {
            if last.is_none() {
                info!(%interface, mac = %addrs.mac, ipv4 = ?addrs.ipv4, "LAN port addresses");
            }
            Some(addrs)
        }
        Err(err) => {
            if last.is_some() {
                warn!(%err, "cannot read the LAN port's addresses; probing with the last known");
            }
            last
        }
    }
}

/// Every MAC of this host's interfaces: frames from them are the agent's own.
fn local_macs() -> Vec<Mac> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut macs: Vec<Mac> = addrs
        .filter_map(|a| a.address?.as_link_addr()?.addr())
        .map(Mac)
        .filter(|m| m.is_unicast() && *m != Mac::ZERO)
        .collect();
    macs.sort();
    macs.dedup();
    macs
}
