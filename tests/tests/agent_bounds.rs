//! The agent's hard bounds with the real binary, real mosquitto and the virtual lab:
//! - a flood of 100,000 random source MACs on the bridge within 60 s while two real DUTs
//!   (udhcpc) are on the LAN: the agent stays up, its RSS and its database stay within bounds
//!   derived from the configuration, `raectl status` shows the evictions and refusals of the
//!   session cap, and the real DUTs are still tracked;
//! - a broker outage long enough for the outbox to exceed its quota: coalescing happens and is
//!   counted, and after the broker returns the subscriber's stream (a coalesced Snapshot may
//!   close a gap, nothing else may) folds to what `raectl devices --all --json` shows;
//! - a MAC flood during an outage: evicted sessions the cloud never heard of vanish whole,
//!   counted, the quota holds throughout, and the stream still folds to the registry.
//!
//! Needs root, iproute2, dnsmasq and mosquitto, and the workspace built (`cargo build`).

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rae_proto::Mac;
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::inject::{arp_announcement, Injector};
use rae_tests::mqtt_watch::MqttWatch;
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Lab, LabConfig, LabError};
use rae_tests::procstat::{memory, mib};
use rae_tests::services::{Mosquitto, MosquittoOptions};
use rae_tests::stream_check::Stream;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// A small xorshift: the flood is random but reproducible from the seed it prints.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A unicast, locally administered MAC.
    fn mac(&mut self) -> Mac {
        let b = self.next().to_be_bytes();
        Mac([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }

    /// An address of 198.19.0.0/16: inside the lab range 198.18.0.0/15, outside every lab's
    /// own /24 (those are 198.18.x.0/24), so no real DUT's address is claimed.
    fn lab_v4(&mut self) -> Ipv4Addr {
        let b = self.next().to_be_bytes();
        Ipv4Addr::new(198, 19, b[6], b[7].clamp(1, 254))
    }
}

fn status_json(spec: &AgentSpec) -> Result<Value, String> {
    let (status, out, err) = raectl(spec, &["status", "--json"]).map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("raectl status failed: {err}"));
    }
    serde_json::from_str(&out).map_err(|e| format!("raectl status --json: {e}"))
}

fn number(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_str()?.parse().ok())
}

fn status_value(json: &Value, section: &str, name: &str) -> Option<u64> {
    number(&json["status"][section][name])
}

fn counter(json: &Value, key: &str) -> u64 {
    number(&json["counters"][key]).unwrap_or(0)
}

fn devices(spec: &AgentSpec, all: bool) -> Result<Value, String> {
    let args: &[&str] = if all {
        &["devices", "--all", "--json"]
    } else {
        &["devices", "--json"]
    };
    let (status, out, err) = raectl(spec, args).map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("raectl devices failed: {err}"));
    }
    serde_json::from_str(&out).map_err(|e| format!("raectl devices --json: {e}"))
}

/// The open session of `mac` in `raectl devices --json`: (session, reachability, ipv4).
fn open_session(spec: &AgentSpec, mac: Mac) -> Option<(String, String, Option<String>)> {
    let doc = devices(spec, false).ok()?;
    doc["devices"].as_array()?.iter().find_map(|row| {
        (row["mac"].as_str()? == mac.to_string()).then(|| {
            (
                row["session"].as_str().unwrap_or_default().to_owned(),
                row["reachability"].as_str().unwrap_or_default().to_owned(),
                row["ipv4"].as_str().map(str::to_owned),
            )
        })
    })
}

fn lab_error(what: &str, detail: String) -> LabError {
    LabError::Parse {
        what: what.to_owned(),
        detail,
    }
}

fn udhcpc(lab: &Lab, name: &str) -> Dut {
    lab.add_dut(DutSpec::new(
        name,
        DutKind::Udhcpc {
            hostname: Some(name.to_owned()),
            vendor_class: None,
            client_id: None,
        },
    ))
    .unwrap_or_else(|e| panic!("adding DUT {name}: {e}"))
}

/// Waits until the DUT has an open session, online, with its DHCP address; pings the bridge
/// meanwhile so the DUT talks.
fn wait_tracked(lab: &Lab, agent: &mut Agent, dut: &Dut, what: &str) -> String {
    let mac = Mac(dut.mac().0);
    let spec = agent.spec().clone();
    wait_until(what, WAIT, || {
        agent.ensure_running()?;
        let _ = dut.ping(IpAddr::V4(lab.router_v4()));
        let want = dut.ipv4()?.map(|ip| ip.to_string());
        Ok(match open_session(&spec, mac) {
            Some((session, reach, ipv4)) if reach == "online" && want.is_some() && ipv4 == want => {
                Ok(session)
            }
            other => Err(format!("{mac}: {other:?}, DUT address {want:?}")),
        })
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()))
}

/// Bytes of `registry.db` and its `-wal`.
fn database_bytes(spec: &AgentSpec) -> u64 {
    let db = spec.database();
    let wal = db.with_file_name("registry.db-wal");
    [db, wal]
        .iter()
        .map(|path| std::fs::metadata(path).map_or(0, |m| m.len()))
        .sum()
}

const FLOOD_MACS: usize = 100_000;
const FLOOD_SECS: u64 = 50;
const CAP: u64 = 512;
/// The store's defaults (`StoreOptions`): closed sessions and history rows kept.
const CLOSED_KEPT: u64 = 10_000;
const HISTORY_KEPT: u64 = 10_000;
const QUOTA: u64 = 16 * 1024 * 1024;

#[test]
fn a_flood_of_random_macs_is_bounded_and_real_duts_stay_tracked() {
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let broker = Mosquitto::start().unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
    let watch = MqttWatch::start(broker.host(), broker.port(), "cloud-watch", &["rae/v1/#"])
        .unwrap_or_else(|e| panic!("subscribing: {e}"));
    let mut spec = AgentSpec::for_lab(
        "LAB-RAE-FLOOD",
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    spec.max_sessions = Some(CAP);
    // Every open session probed once a second: the real DUTs are never left unprobed.
    spec.probes_per_sec = Some(2_000);
    spec.ssdp = false;
    spec.mdns = false;
    spec.log_level = "info".to_owned();
    let (mut agent, agent_started) = Agent::start_online(&spec, &watch, WAIT)
        .unwrap_or_else(|e| panic!("starting rae-agent: {e}"));

    let duts = [udhcpc(&lab, "tv-1"), udhcpc(&lab, "stick-2")];
    let before: Vec<String> = duts
        .iter()
        .map(|dut| wait_tracked(&lab, &mut agent, dut, "a real DUT tracked before the flood"))
        .collect();
    let baseline = memory(agent.pid()).expect("the agent's memory");

    let flooder = lab
        .add_dut(DutSpec::new(
            "flooder",
            DutKind::StaticV4 {
                addr: lab.net().host_v4(200),
            },
        ))
        .unwrap_or_else(|e| panic!("adding the flooding DUT: {e}"));
    let injector = Injector::open(flooder.ns_name(), "eth0")
        .unwrap_or_else(|e| panic!("opening the injector: {e}"));
    let seed = 0x9e37_79b9_7f4a_7c15 ^ u64::from(lab.slot());
    println!("flood: {FLOOD_MACS} MACs in {FLOOD_SECS} s, seed {seed:#x}");
    let mut rng = Rng(seed);
    // Paced: one batch every 50 ms, so the flood spans the window the way a broken switch
    // or a MAC-randomizing bug would, rather than one burst the capture drops.
    let batches = FLOOD_SECS * 20;
    let per_batch = FLOOD_MACS.div_ceil(batches as usize);
    let started = Instant::now();
    let mut peak_rss = baseline.rss_kib;
    let mut sent = 0usize;
    for batch in 0..batches {
        for _ in 0..per_batch.min(FLOOD_MACS - sent) {
            let frame = arp_announcement(rng.mac(), rng.lab_v4());
            injector
                .send(&frame)
                .unwrap_or_else(|e| panic!("injecting frame {sent}: {e}"));
            sent += 1;
        }
        if batch % 20 == 0 {
            agent
                .ensure_running()
                .unwrap_or_else(|e| panic!("the agent died in the flood: {e}"));
            peak_rss = peak_rss.max(memory(agent.pid()).map_or(0, |m| m.rss_kib));
        }
        let next = started + Duration::from_millis(50 * (batch + 1));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let flood_secs = started.elapsed().as_secs_f64();
    println!("flood sent: {sent} frames in {flood_secs:.1} s");
    assert!(flood_secs < 60.0, "the flood took {flood_secs:.1} s");

    // The cap's counters show in `raectl status`, and the cap held.
    let status = wait_until(
        "raectl status showing the session cap at work",
        WAIT,
        || {
            agent.ensure_running()?;
            let json = status_json(&spec).map_err(|e| lab_error("raectl status", e))?;
            let evicted = status_value(&json, "registry", "sessions_evicted").unwrap_or(0);
            let refused = status_value(&json, "registry", "sessions_refused").unwrap_or(0);
            Ok(if evicted > 0 && refused > 0 {
                Ok(json)
            } else {
                Err(format!("evicted {evicted}, refused {refused}"))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let registry = &status["status"]["registry"];
    println!("after the flood: registry {registry}");
    println!("log limit: {}", status["status"]["log"]);
    println!("capture: {}", status["status"]["capture"]);
    assert_eq!(status_value(&status, "registry", "max_sessions"), Some(CAP));
    let open = status_value(&status, "registry", "sessions_open").unwrap_or(u64::MAX);
    assert!(open <= CAP, "{open} sessions open, over the cap of {CAP}");
    assert!(
        status_value(&status, "log", "suppressed").unwrap_or(0) > 0,
        "the refusal warnings were rate-limited and counted: {}",
        status["status"]["log"]
    );

    // Log volume: per kind (refused, evicted) at most `log.max_per_minute` (10) lines in each
    // minute the agent ran, plus one summary line per kind and minute.
    let log = agent.log();
    let cap_lines = log
        .lines()
        .filter(|l| l.contains("session cap reached"))
        .count();
    let minutes = agent_started.elapsed().as_secs() / 60 + 1;
    let allowed = 2 * (10 + 1) * minutes as usize;
    println!("log: {cap_lines} session-cap lines in {minutes} minute windows (at most {allowed})");
    assert!(
        cap_lines <= allowed,
        "{cap_lines} session-cap warnings in the log, more than 2 kinds x 11 x {minutes} minutes"
    );

    // The real DUTs are still tracked: the same sessions, online, with their addresses.
    for (dut, session) in duts.iter().zip(&before) {
        let now = wait_tracked(&lab, &mut agent, dut, "a real DUT tracked after the flood");
        assert_eq!(
            &now,
            session,
            "{} kept its session through the flood",
            dut.name()
        );
    }

    // Memory: what the agent had with the two DUTs, plus a generous per-session budget for
    // the cap's sessions (record, indexes, probe state; measured well under 4 KiB each), plus
    // SQLite's page cache (2 MiB per connection by default) and the bounded queues (frame
    // queue, store channel) with room: 32 MiB in all.
    let rss = memory(agent.pid()).expect("the agent's memory");
    let rss_bound = baseline.rss_kib + CAP * 16 + 32 * 1024;
    println!(
        "RSS: baseline {:.1} MiB, peak sampled {:.1} MiB, after {rss}; bound {:.1} MiB",
        mib(baseline.rss_kib),
        mib(peak_rss),
        mib(rss_bound)
    );
    assert!(
        rss.hwm_kib <= rss_bound,
        "VmHWM {:.1} MiB over the bound: baseline {:.1} MiB + {CAP} sessions x 16 KiB + 32 MiB",
        mib(rss.hwm_kib),
        mib(baseline.rss_kib)
    );

    // Database: session rows (open at the cap plus the closed ones kept) at 2 KiB each with
    // their indexes, history rows at 1 KiB (an eighth more between trims), the outbox quota,
    // and a WAL of SQLite's auto-checkpoint (1000 pages of 4 KiB) twice over.
    let db = database_bytes(&spec);
    let db_bound =
        (CAP + CLOSED_KEPT) * 2048 + HISTORY_KEPT * 9 / 8 * 1024 + QUOTA + 8 * 1024 * 1024;
    println!(
        "database: {:.1} MiB (registry.db + -wal); bound {:.1} MiB",
        db as f64 / 1048576.0,
        db_bound as f64 / 1048576.0
    );
    assert!(
        db <= db_bound,
        "registry.db + -wal {db} bytes over the bound {db_bound}: ({CAP} open + {CLOSED_KEPT} \
         closed sessions) x 2 KiB + {HISTORY_KEPT} x 9/8 history rows x 1 KiB + outbox quota \
         {QUOTA} + 8 MiB WAL"
    );
    agent
        .ensure_running()
        .unwrap_or_else(|e| panic!("the agent died: {e}"));
    let exit = agent.terminate(Duration::from_secs(20)).expect("SIGTERM");
    assert!(exit.success(), "exit status {exit}");
}

/// Devices the injector plays in the outage test.
const OUTAGE_MACS: u16 = 200;
/// IPv4 changes per device during the outage.
const CHANGES: u16 = 6;
const SMALL_QUOTA: u64 = 64 * 1024;

fn outage_mac(k: u16) -> Mac {
    let [hi, lo] = k.to_be_bytes();
    Mac([0x02, 0xb0, 0x0b, 0x00, hi, lo])
}

/// Distinct per device and round (k < 200, round < 256).
fn outage_ip(k: u16, round: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, round as u8, (k + 1) as u8)
}

#[test]
fn an_outage_over_the_quota_coalesces_counts_and_converges_at_the_subscriber() {
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: true,
        auth: None,
    })
    .unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
    // A persistent session: the broker keeps the subscription across its restart.
    let watch = MqttWatch::start_with_session(
        broker.host(),
        broker.port(),
        "cloud-sub",
        &["rae/v1/#"],
        false,
    )
    .unwrap_or_else(|e| panic!("subscribing: {e}"));
    let mut spec = AgentSpec::for_lab(
        "LAB-RAE-QUOTA",
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    spec.outbox_max_bytes = Some(SMALL_QUOTA);
    spec.ssdp = false;
    spec.mdns = false;
    // Long enough that no injected device closes while the test looks at it.
    spec.gone_after_secs = 600;
    spec.log_level = "info".to_owned();
    let (mut agent, _) = Agent::start_online(&spec, &watch, WAIT)
        .unwrap_or_else(|e| panic!("starting rae-agent: {e}"));
    let dut = udhcpc(&lab, "tv-outage");
    wait_tracked(&lab, &mut agent, &dut, "the real DUT tracked");

    let injector_dut = lab
        .add_dut(DutSpec::new(
            "injector",
            DutKind::StaticV4 {
                addr: lab.net().host_v4(200),
            },
        ))
        .unwrap_or_else(|e| panic!("adding the injecting DUT: {e}"));
    let injector = Injector::open(injector_dut.ns_name(), "eth0")
        .unwrap_or_else(|e| panic!("opening the injector: {e}"));
    let send = |k: u16, round: u16| {
        injector
            .send(&arp_announcement(outage_mac(k), outage_ip(k, round)))
            .unwrap_or_else(|e| panic!("injecting: {e}"));
    };
    // Half the devices are known to the cloud before the outage.
    for k in 0..OUTAGE_MACS / 2 {
        send(k, 0);
    }
    wait_until("the first half published, the outbox empty", WAIT, || {
        agent.ensure_running()?;
        let json = status_json(&spec).map_err(|e| lab_error("raectl status", e))?;
        let open = status_value(&json, "registry", "sessions_open").unwrap_or(0);
        let rows = number(&json["outbox"]["rows"]).unwrap_or(u64::MAX);
        Ok(if open > u64::from(OUTAGE_MACS / 2) && rows == 0 {
            Ok(())
        } else {
            Err(format!("{open} sessions open, {rows} rows pending"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));

    broker
        .stop()
        .unwrap_or_else(|e| panic!("stopping mosquitto: {e}"));
    // During the outage: the other half appears, and every device changes its address
    // several times, until the outbox is over its quota and coalesces.
    let mut round = 0;
    let status = wait_until("coalescing counted in raectl status", WAIT, || {
        agent.ensure_running()?;
        if round < CHANGES {
            round += 1;
            for k in 0..OUTAGE_MACS {
                send(k, round);
            }
        }
        let json = status_json(&spec).map_err(|e| lab_error("raectl status", e))?;
        let coalesced = counter(&json, "outbox_coalesced_events");
        Ok(if coalesced > 0 && round == CHANGES {
            Ok(json)
        } else {
            Err(format!(
                "round {round}, coalesced {coalesced}, outbox {}",
                json["outbox"]
            ))
        })
    })
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    let bytes = number(&status["outbox"]["bytes"]).unwrap_or(u64::MAX);
    println!(
        "outage: outbox {} ; counters {}",
        status["outbox"], status["counters"]
    );
    assert!(
        bytes <= SMALL_QUOTA,
        "the outbox ({bytes} bytes) holds its quota of {SMALL_QUOTA} after coalescing"
    );
    assert_eq!(
        counter(&status, "outbox_quota_unmet"),
        0,
        "the quota was met"
    );

    broker
        .start_again()
        .unwrap_or_else(|e| panic!("restarting mosquitto: {e}"));
    // Converged: the outbox drained and the stream folds to the registry. Devices keep
    // changing (they go offline: nobody answers their probes), so both are read until they
    // agree.
    let stream = wait_until(
        "the subscriber's folded stream equal to raectl devices --all --json",
        Duration::from_secs(90),
        || {
            agent.ensure_running()?;
            let json = status_json(&spec).map_err(|e| lab_error("raectl status", e))?;
            let rows = number(&json["outbox"]["rows"]).unwrap_or(u64::MAX);
            if rows != 0 {
                return Ok(Err(format!("{rows} rows still pending")));
            }
            let registry = devices(&spec, true).map_err(|e| lab_error("raectl devices", e))?;
            let stream = match Stream::check_coalesced(&watch.messages()) {
                Ok(stream) => stream,
                Err(problems) => return Ok(Err(format!("stream check: {problems}"))),
            };
            Ok(match stream.matches_registry(&registry.to_string()) {
                Ok(()) => Ok(stream),
                Err(problems) => Err(problems),
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    println!(
        "stream: {} events, {} sessions, {} duplicates, {} gaps closed by coalesced Snapshots",
        stream.events,
        stream.sessions.len(),
        stream.duplicates,
        stream.gaps_closed
    );
    assert!(
        stream.gaps_closed > 0,
        "the subscriber saw coalesced Snapshots close gaps"
    );
    let exit = agent.terminate(Duration::from_secs(20)).expect("SIGTERM");
    assert!(exit.success(), "exit status {exit}");
}

/// A MAC flood during a broker outage: the session cap evicts the flood's sessions once they
/// are offline, and each evicted session the cloud never heard of vanishes whole from the
/// outbox when it is over its quota, so the quota holds (nothing counted as unmet); after the
/// broker returns the stream folds to the registry, which no longer lists them either.
#[test]
fn a_mac_flood_during_an_outage_holds_the_quota_by_vanishing_unpublished_sessions() {
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let mut broker = Mosquitto::start_with(MosquittoOptions {
        persistence: true,
        auth: None,
    })
    .unwrap_or_else(|e| panic!("starting mosquitto: {e}"));
    let watch = MqttWatch::start_with_session(
        broker.host(),
        broker.port(),
        "cloud-sub",
        &["rae/v1/#"],
        false,
    )
    .unwrap_or_else(|e| panic!("subscribing: {e}"));
    let mut spec = AgentSpec::for_lab(
        "LAB-RAE-CHURN",
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    let cap = 128;
    spec.max_sessions = Some(cap);
    spec.outbox_max_bytes = Some(SMALL_QUOTA);
    spec.probes_per_sec = Some(2_000);
    spec.ssdp = false;
    spec.mdns = false;
    spec.log_level = "info".to_owned();
    let (mut agent, _) = Agent::start_online(&spec, &watch, WAIT)
        .unwrap_or_else(|e| panic!("starting rae-agent: {e}"));
    let dut = udhcpc(&lab, "tv-churn");
    let session = wait_tracked(&lab, &mut agent, &dut, "the real DUT tracked");
    let injector_dut = lab
        .add_dut(DutSpec::new(
            "injector",
            DutKind::StaticV4 {
                addr: lab.net().host_v4(200),
            },
        ))
        .unwrap_or_else(|e| panic!("adding the injecting DUT: {e}"));
    let injector = Injector::open(injector_dut.ns_name(), "eth0")
        .unwrap_or_else(|e| panic!("opening the injector: {e}"));

    broker
        .stop()
        .unwrap_or_else(|e| panic!("stopping mosquitto: {e}"));
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(lab.slot()));
    // 50 new MACs per look at the status until sessions vanished: the flood's sessions go
    // offline after three missed probe rounds, are evicted for newer ones, and vanish over the
    // quota.
    let mut sent = 0u64;
    let status = wait_until(
        "closed unpublished sessions vanishing, counted",
        WAIT,
        || {
            agent.ensure_running()?;
            for _ in 0..50 {
                injector
                    .send(&arp_announcement(rng.mac(), rng.lab_v4()))
                    .map_err(|e| lab_error("injecting", e.to_string()))?;
                sent += 1;
            }
            let json = status_json(&spec).map_err(|e| lab_error("raectl status", e))?;
            let vanished = counter(&json, "outbox_vanished_sessions");
            let bytes = number(&json["outbox"]["bytes"]).unwrap_or(u64::MAX);
            assert!(
                bytes <= SMALL_QUOTA,
                "after {sent} MACs the outbox holds {bytes} bytes, over its quota {SMALL_QUOTA}"
            );
            Ok(if vanished > 0 {
                Ok(json)
            } else {
                Err(format!(
                    "{sent} MACs sent, evicted {:?}, outbox {}",
                    status_value(&json, "registry", "sessions_evicted"),
                    json["outbox"]
                ))
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    println!(
        "churn: {sent} MACs; registry {}; outbox {}; counters {}",
        status["status"]["registry"], status["outbox"], status["counters"]
    );
    assert_eq!(
        counter(&status, "outbox_quota_unmet"),
        0,
        "the quota was met"
    );
    assert!(status_value(&status, "registry", "sessions_evicted").unwrap_or(0) > 0);

    broker
        .start_again()
        .unwrap_or_else(|e| panic!("restarting mosquitto: {e}"));
    let stream = wait_until(
        "the subscriber's folded stream equal to raectl devices --all --json",
        Duration::from_secs(90),
        || {
            agent.ensure_running()?;
            let json = status_json(&spec).map_err(|e| lab_error("raectl status", e))?;
            let rows = number(&json["outbox"]["rows"]).unwrap_or(u64::MAX);
            if rows != 0 {
                return Ok(Err(format!("{rows} rows still pending")));
            }
            let registry = devices(&spec, true).map_err(|e| lab_error("raectl devices", e))?;
            let stream = match Stream::check_coalesced(&watch.messages()) {
                Ok(stream) => stream,
                Err(problems) => return Ok(Err(format!("stream check: {problems}"))),
            };
            Ok(match stream.matches_registry(&registry.to_string()) {
                Ok(()) => Ok(stream),
                Err(problems) => Err(problems),
            })
        },
    )
    .unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", agent.log_tail()));
    println!(
        "stream: {} events, {} sessions, {} gaps closed",
        stream.events,
        stream.sessions.len(),
        stream.gaps_closed
    );
    let now = wait_tracked(
        &lab,
        &mut agent,
        &dut,
        "the real DUT tracked after the churn",
    );
    assert_eq!(now, session, "the real DUT kept its session");
    let exit = agent.terminate(Duration::from_secs(20)).expect("SIGTERM");
    assert!(exit.success(), "exit status {exit}");
}
