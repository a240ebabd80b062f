//! `rae-agent --pcap FILE`: replays a capture through the same parsers and registry core,
//! without root, for debugging and benchmarks.
//!
//! Every frame of the file goes the way a live one does: a frame the snap length cut is
//! counted and skipped (as the capture thread does), the rest are parsed by
//! [`wire::parse_frame_with`], mapped by [`observations_from_frame`] and applied to a
//! [`Core`] at the frame's capture time. Time is the capture's: before each frame the core is
//! ticked at every deadline ([`Core::next_deadline`]) the frame's timestamp has passed, at the
//! deadline itself, so offline and gone transitions and periodic Snapshots come out at the
//! capture time they would have had live; a last tick runs at the last frame's time.
//!
//! Choices, each because a file is not a socket:
//! - UDP checksums are not verified by default ([`ReplayOptions::verify_checksums`] turns
//!   it on). Live, the kernel says which frames carry a checksum left to offload
//!   (`TP_STATUS_CSUMNOTREADY`); a capture file does not, and every datagram a local socket
//!   sent over a veth or from the capturing host is such a frame.
//! - Session ids come from [`SeededSessionIds`] with [`REPLAY_SEED`]: the same file gives
//!   the same output, byte for byte.
//! - The agent's own MACs are none unless given ([`ReplayOptions::own_macs`]): a capture
//!   taken on the RAE shows the RAE's own frames as a device.
//! - Timestamps that go backwards (merged captures) do not move the core's clock back; the
//!   observation keeps its own time, which the core caps at its clock.
//! - A file that ends inside its last record ends the replay normally, reported as
//!   `truncated_record`; a corrupt header or record is an error that names its byte offset.
//!
//! Limitations: no probes are sent, so a device that is quiet in the capture goes offline
//! where live it might have answered a probe; mDNS and SSDP payloads are classified, not
//! decoded, as on the live path (the names and services come from the active probes).

pub mod pcap;
mod render;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rae_proto::{DeviceRecord, Mac, SessionId};

use crate::config::Config;
use crate::registry::{
    observations_from_frame, Change, Core, CoreConfig, CoreConfigError, SeededSessionIds,
};
use crate::wire::{self, DropCounters, UdpChecksum};
pub use pcap::{CaptureFormat, CaptureReader, CaptureWriter, Next, Packet, PcapError, Truncation};

/// The seed of the replay's session ids.
pub const REPLAY_SEED: u64 = 0x5241_455f_7265_706c;

/// How far each frame goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayStage {
    /// Read and parse only (a benchmark of the parsers).
    Parse,
    /// Parse, map to observations and apply to the registry core.
    #[default]
    Apply,
}

/// What `--pcap` was asked to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// One JSON object per line instead of text.
    pub json: bool,
    /// Only the summary, no line per Change.
    pub quiet: bool,
    /// Verify UDP checksums (see the module documentation for why not by default).
    pub verify_checksums: bool,
    /// The RAE's own interfaces, which the core never takes for devices.
    pub own_macs: Vec<Mac>,
    pub stage: ReplayStage,
}

/// Changes the core made, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeCounts {
    pub opened: u64,
    pub updated: u64,
    pub snapshot: u64,
    pub closed: u64,
    pub seen: u64,
    pub conflict: u64,
}

impl ChangeCounts {
    fn count(&mut self, change: &Change) {
        let slot = match change {
            Change::Opened { .. } => &mut self.opened,
            Change::Updated { .. } => &mut self.updated,
            Change::Snapshot { .. } => &mut self.snapshot,
            Change::Closed { .. } => &mut self.closed,
            Change::Seen { .. } => &mut self.seen,
            Change::Conflict { .. } => &mut self.conflict,
        };
        *slot += 1;
    }

    pub fn total(&self) -> u64 {
        self.opened + self.updated + self.snapshot + self.closed + self.seen + self.conflict
    }
}

/// A session still open when the capture ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSession {
    pub session: SessionId,
    pub seq: u64,
    pub record: DeviceRecord,
}

/// What a replay did. Every frame read is accounted for exactly once:
/// `frames_read == snap_truncated + parsed + drops.total()`, and with
/// [`ReplayStage::Apply`], `parsed == observations + without_observation`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    pub format: CaptureFormat,
    pub stage: ReplayStage,
    pub frames_read: u64,
    pub bytes_read: u64,
    /// Frames the capture's snap length cut: not parsed, as the live capture does.
    pub snap_truncated: u64,
    pub parsed: u64,
    /// Frames the parsers refused, by reason.
    pub drops: DropCounters,
    pub observations: u64,
    /// Parsed frames that say nothing about a device: server replies other than an ACK,
    /// router advertisements, relayed DHCP, SSDP from a multicast source, ...
    pub without_observation: u64,
    pub changes: ChangeCounts,
    pub ticks: u64,
    pub sessions_opened: u64,
    /// By MAC.
    pub open_sessions: Vec<OpenSession>,
    /// The record the file ends inside of, if it does.
    pub truncated_record: Option<Truncation>,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Wall time of the replay, output included.
    pub elapsed: Duration,
}

impl ReplayReport {
    fn new(format: CaptureFormat, stage: ReplayStage) -> Self {
        ReplayReport {
            format,
            stage,
            frames_read: 0,
            bytes_read: 0,
            snap_truncated: 0,
            parsed: 0,
            drops: DropCounters::new(),
            observations: 0,
            without_observation: 0,
            changes: ChangeCounts::default(),
            ticks: 0,
            sessions_opened: 0,
            open_sessions: Vec::new(),
            truncated_record: None,
            first_ms: None,
            last_ms: None,
            elapsed: Duration::ZERO,
        }
    }

    pub fn dropped(&self) -> u64 {
        self.drops.total()
    }

    pub fn frames_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.frames_read as f64 / secs
        } else {
            0.0
        }
    }
}

/// Why a replay could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot open capture {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("capture {}", path.display())]
    Capture {
        path: PathBuf,
        #[source]
        source: PcapError,
    },
    #[error("registry settings")]
    Core(#[from] CoreConfigError),
    #[error("cannot write the replay output")]
    Output(#[source] io::Error),
}

/// Replays the capture at `path` (see the module documentation), writing one line per
/// Change (unless `quiet`) and a summary to `out`.
pub fn replay(
    path: &Path,
    config: &Config,
    options: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<ReplayReport, ReplayError> {
    let file = File::open(path).map_err(|source| ReplayError::Open {
        path: path.to_owned(),
        source,
    })?;
    let core_config = CoreConfig::new(&config.registry, &config.publish, Vec::new());
    replay_from(
        BufReader::with_capacity(1 << 16, file),
        &core_config,
        options,
        out,
    )
    .map_err(|err| match err {
        ReplayError::Capture { source, .. } => ReplayError::Capture {
            path: path.to_owned(),
            source,
        },
        other => other,
    })
}

/// [`replay`] from any reader, with the core's settings given directly
/// ([`ReplayOptions::own_macs`] are added to theirs).
pub fn replay_from<R: io::Read>(
    src: R,
    core_config: &CoreConfig,
    options: &ReplayOptions,
    out: &mut dyn Write,
) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let capture_err = |source| ReplayError::Capture {
        path: PathBuf::new(),
        source,
    };
    let mut reader = CaptureReader::new(src).map_err(capture_err)?;
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let mut core_config = core_config.clone();
    core_config
        .own_macs
        .extend(options.own_macs.iter().copied());
    let core = Core::new(&core_config, Vec::new(), SeededSessionIds::new(REPLAY_SEED))?;
    let mut run = Run {
        report: ReplayReport::new(reader.format(), options.stage),
        options,
        core,
        next_deadline: None,
        ticked_at: None,
        clock: None,
        macs: HashMap::new(),
    };
    let checksum = if options.verify_checksums {
        UdpChecksum::Verify
    } else {
        UdpChecksum::Skip
    };
    loop {
        match reader.next_packet().map_err(capture_err)? {
            Next::Packet(packet) => run.frame(&packet, checksum, &mut out)?,
            Next::Truncated(truncation) => {
                run.report.truncated_record = Some(truncation);
                break;
            }
            Next::End => break,
        }
    }
    run.finish(&mut out)?;
    let mut report = run.report;
    report.elapsed = started.elapsed();
    render::summary(&report, options.json, &mut out).map_err(ReplayError::Output)?;
    out.flush().map_err(ReplayError::Output)?;
    Ok(report)
}

/// The state of one replay.
struct Run<'o> {
    report: ReplayReport,
    options: &'o ReplayOptions,
    core: Core<SeededSessionIds>,
    /// The core's next deadline as of the last time it could have moved earlier (a Change
    /// other than `Seen`, or a tick); a `Seen` only moves the device's deadlines later, so a
    /// cached value is at worst early, and an early tick does nothing.
    next_deadline: Option<i64>,
    ticked_at: Option<i64>,
    clock: Option<i64>,
    /// Open sessions' MACs, for the lines of Changes that carry only the session.
    macs: HashMap<SessionId, Mac>,
}

impl Run<'_> {
    fn frame(
        &mut self,
        packet: &Packet<'_>,
        checksum: UdpChecksum,
        out: &mut dyn Write,
    ) -> Result<(), ReplayError> {
        let report = &mut self.report;
        report.frames_read += 1;
        report.bytes_read += packet.data.len() as u64;
        report.first_ms.get_or_insert(packet.at_ms);
        report.last_ms = Some(packet.at_ms);
        let now = self
            .clock
            .map_or(packet.at_ms, |clock| clock.max(packet.at_ms));
        self.clock = Some(now);
        let apply = self.options.stage == ReplayStage::Apply;
        if apply {
            self.catch_up(now, out)?;
        }
        if packet.is_cut_by_snaplen() {
            self.report.snap_truncated += 1;
            return Ok(());
        }
        let frame = match wire::parse_frame_with(packet.data, checksum) {
            Ok(frame) => frame,
            Err(reason) => {
                self.report.drops.record(reason);
                return Ok(());
            }
        };
        self.report.parsed += 1;
        if !apply {
            return Ok(());
        }
        let Some(observation) = observations_from_frame(&frame, packet.at_ms) else {
            self.report.without_observation += 1;
            return Ok(());
        };
        self.report.observations += 1;
        let changes = self.core.apply(observation, now);
        if changes.iter().any(|c| !matches!(c, Change::Seen { .. })) {
            self.next_deadline = self.core.next_deadline(now);
        }
        self.emit(&changes, out)
    }

    /// Ticks the core at each deadline up to `now`, in order.
    fn catch_up(&mut self, now: i64, out: &mut dyn Write) -> Result<(), ReplayError> {
        while let Some(due) = self.next_deadline {
            // Each tick is at a later millisecond than the last, so this loop ends even if
            // the core kept reporting a deadline it had already handled.
            let at = match self.ticked_at {
                Some(last) if due <= last => last.saturating_add(1),
                _ => due,
            };
            if at > now {
                break;
            }
            self.tick(at, out)?;
        }
        Ok(())
    }

    fn tick(&mut self, at: i64, out: &mut dyn Write) -> Result<(), ReplayError> {
        let changes = self.core.tick(at);
        self.report.ticks += 1;
        self.ticked_at = Some(at);
        self.next_deadline = self.core.next_deadline(at);
        self.emit(&changes, out)
    }

    fn finish(&mut self, out: &mut dyn Write) -> Result<(), ReplayError> {
        if self.options.stage == ReplayStage::Apply {
            if let Some(now) = self.clock {
                self.catch_up(now, out)?;
                if self.ticked_at != Some(now) {
                    self.tick(now, out)?;
                }
            }
        }
        self.report.open_sessions = self
            .core
            .sessions()
            .map(|view| OpenSession {
                session: view.session,
                seq: view.seq,
                record: view.record.clone(),
            })
            .collect();
        Ok(())
    }

    fn emit(&mut self, changes: &[Change], out: &mut dyn Write) -> Result<(), ReplayError> {
        for change in changes {
            self.report.changes.count(change);
            match change {
                Change::Opened {
                    session, record, ..
                } => {
                    self.report.sessions_opened += 1;
                    self.macs.insert(*session, record.mac);
                }
                Change::Closed { session, .. } => {
                    self.macs.remove(session);
                }
                _ => {}
            }
            if !self.options.quiet {
                let mac = self.macs.get(&change.session()).copied();
                render::change(change, mac, self.options.json, out).map_err(ReplayError::Output)?;
            }
        }
        Ok(())
    }
}
