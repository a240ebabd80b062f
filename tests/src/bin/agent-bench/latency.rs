//! `latency`: how long after a device joins the cloud hears of it.
//!
//! A join is a DUT taking a new MAC and leasing with it from scratch (udhcpc, no client id),
//! which the agent sees as a new device: a new session. A small pool of DUT namespaces is
//! reused, one join at a time, so joins do not queue behind each other.
//!
//! Per join, on the bridge (kernel timestamps): the client's first DISCOVER and dnsmasq's
//! ACK; at the subscriber: the first Snapshot of the MAC's session, and the first event that
//! carries the ACKed address. The agent opens the session on the DISCOVER (the device
//! speaking), so the Snapshot usually comes before the ACK; the ACK's effect is the event
//! that carries the address.
//!
//! Over the whole run: what the agent wrote (`/proc/<pid>/io`) per event the subscriber
//! received, the flash cost of events that come one at a time.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rae_agent::wire::dhcp::MessageType;
use rae_proto::{Event, Field, Mac, SessionId};
use rae_tests::mqtt_watch::Received;
use rae_tests::netlab::{wait_until, DutKind, DutSpec, LabConfig, MacAddr};

use crate::bed::{summary, Bed, WAIT};
use crate::sniff::DhcpSniffer;
use rae_tests::procstat::writes;

/// DUT namespaces reused for the joins.
const POOL: usize = 4;
/// Addresses in the lab's DHCP range (.100..=.249); every join takes a new one.
const RANGE: usize = 150;

/// What the subscriber saw of one MAC's session.
struct Heard {
    snapshot: Instant,
    ipv4: Option<Instant>,
}

fn heard(messages: &[Received], since: Instant, mac: Mac, ip: Option<Ipv4Addr>) -> Option<Heard> {
    let mut session: Option<SessionId> = None;
    let mut snapshot = None;
    for m in messages.iter().filter(|m| m.at >= since) {
        let Some(envelope) = m.event() else { continue };
        let carries_ip = match (&envelope.event, session) {
            (Event::Snapshot { record }, _) if record.mac == mac => {
                session = Some(envelope.session);
                snapshot.get_or_insert(m.at);
                ip.is_some() && record.ipv4 == ip
            }
            (Event::Delta { fields }, Some(s)) if s == envelope.session => fields
                .iter()
                .any(|f| matches!(f, Field::Ipv4(Some(a)) if Some(*a) == ip)),
            _ => false,
        };
        if carries_ip {
            return snapshot.map(|snapshot| Heard {
                snapshot,
                ipv4: Some(m.at),
            });
        }
    }
    snapshot.map(|snapshot| Heard {
        snapshot,
        ipv4: None,
    })
}

fn ms(later: Instant, earlier: Instant) -> f64 {
    match later.checked_duration_since(earlier) {
        Some(d) => d.as_secs_f64() * 1e3,
        None => -(earlier.duration_since(later).as_secs_f64() * 1e3),
    }
}

pub fn run(agent_bin: &Path, joins: usize) -> Result<()> {
    if joins == 0 || joins + POOL > RANGE {
        bail!(
            "--joins must be 1..={} (each join leases a new address)",
            RANGE - POOL
        );
    }
    let bed = Bed::start(agent_bin, 3600, LabConfig::default())?;
    let sniffer = DhcpSniffer::start(bed.lab.bridge_name())?;
    println!("creating {POOL} udhcpc DUTs to reuse for {joins} joins");
    let mut duts = (0..POOL)
        .map(|i| {
            let kind = DutKind::Udhcpc {
                hostname: Some(format!("bench-{i}")),
                vendor_class: None,
                client_id: None,
            };
            bed.lab
                .add_dut(DutSpec::new(&format!("join{i}"), kind))
                .with_context(|| format!("adding DUT join{i}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let slot = (bed.lab.slot() & 0xff) as u8;
    let (mut ack_to_ip, mut disc_to_snap, mut ack_to_snap, mut disc_to_ack) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let started = Instant::now();
    let writes0 = writes(bed.agent.pid())?;
    for j in 0..joins {
        let mac = Mac([0x02, 0xb0, slot, 0x00, (j >> 8) as u8, (j & 0xff) as u8]);
        let since = Instant::now();
        let dut = &mut duts[j % POOL];
        dut.set_mac(MacAddr(mac.0))
            .with_context(|| format!("join {j}: {} taking {mac}", dut.name()))?;
        let (disc, ack, heard) = wait_until(
            format!("join {j} ({mac}): DISCOVER and ACK on the wire, Snapshot and address at the subscriber"),
            WAIT,
            || {
                let disc = sniffer.first(mac, MessageType::Discover);
                let ack = sniffer.first(mac, MessageType::Ack).filter(|s| s.reply);
                let heard = heard(
                    &bed.watch.messages(),
                    since,
                    mac,
                    ack.as_ref().map(|a| a.yiaddr),
                );
                Ok(match (disc, ack, heard) {
                    (Some(d), Some(a), Some(h)) if h.ipv4.is_some() => Ok((d, a, h)),
                    (d, a, h) => Err(format!(
                        "discover {}, ack {}, snapshot {}, address event {}",
                        d.is_some(),
                        a.is_some(),
                        h.is_some(),
                        h.is_some_and(|h| h.ipv4.is_some())
                    )),
                })
            },
        )?;
        let ipv4_at = heard.ipv4.context("address event")?;
        let row = (
            ms(ipv4_at, ack.at),
            ms(heard.snapshot, disc.at),
            ms(heard.snapshot, ack.at),
            ms(ack.at, disc.at),
        );
        println!(
            "join {:>3}/{joins} {mac} {:<15} ACK->address event {:>7.1} ms | DISCOVER->Snapshot {:>7.1} ms | ACK->Snapshot {:>8.1} ms | DISCOVER->ACK {:>7.1} ms",
            j + 1,
            ack.yiaddr,
            row.0,
            row.1,
            row.2,
            row.3
        );
        ack_to_ip.push(row.0);
        disc_to_snap.push(row.1);
        ack_to_snap.push(row.2);
        disc_to_ack.push(row.3);
    }
    let took = started.elapsed();
    let written = writes(bed.agent.pid())?.since(writes0);
    let events = bed
        .watch
        .messages()
        .iter()
        .filter(|m| m.at >= started && m.event().is_some())
        .count() as u64;
    println!(
        "\n{joins} joins in {:.0} s; DHCP messages seen on the bridge: {}",
        took.as_secs_f64(),
        sniffer.seen().len()
    );
    println!(
        "ACK on the wire -> event with the address at the subscriber: {}",
        summary(&ack_to_ip)
    );
    println!(
        "DISCOVER on the wire -> first Snapshot at the subscriber:   {}",
        summary(&disc_to_snap)
    );
    println!(
        "ACK on the wire -> first Snapshot at the subscriber:        {}",
        summary(&ack_to_snap)
    );
    println!(
        "(context) DISCOVER -> ACK, dnsmasq's own time:               {}",
        summary(&disc_to_ack)
    );
    println!("agent writes over the joins: {}", written.per_event(events));
    Ok(())
}
