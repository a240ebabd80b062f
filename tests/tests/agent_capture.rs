//! The agent's capture task on the lab LAN: real DHCP, ARP, neighbour discovery, mDNS and
//! SSDP reach it; bulk traffic between DUTs stays in the kernel; its interface going down,
//! away and back costs one log line per change and frames flow again afterwards.
//!
//! Needs root and dnsmasq, udhcpc, busybox, iperf3, python3 and iproute2.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rae_agent::capture::{self, Capture, CaptureConfig, CapturedFrame, PacketType};
use rae_agent::wire::dhcp::MessageType;
use rae_agent::wire::{Message, NdpRepr};
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Lab};
use rae_tests::sweep::lab_links;

#[path = "agent_capture/support.rs"]
mod support;

use support::*;

/// Sends from the DUT to `to`: first two datagrams the filter must drop (to 9999 and to
/// DNS), then an mDNS datagram (5353 -> 5353) and an SSDP reply (1900 -> 40000).
const UDP_SENDER: &str = r#"
import socket, sys
dst = sys.argv[1]
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
for sport, dport, data in [(40002, 9999, b"bulk"), (40003, 53, b"dns"),
                           (5353, 5353, b"mdns"),
                           (1900, 40000, b"HTTP/1.1 200 OK\r\nST: upnp:rootdevice\r\n\r\n")]:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", sport))
    s.sendto(data, (dst, dport))
    s.close()
"#;

fn send_udp(dut: &Dut, to: IpAddr) {
    dut.exec(["/usr/bin/python3", "-c", UDP_SENDER, &to.to_string()])
        .unwrap_or_else(|e| panic!("sending UDP from {}: {e}", dut.name()));
}

fn udp_ports(frame: &CapturedFrame) -> Option<(u16, u16)> {
    match frame.parse().ok()?.message {
        Message::Mdns { udp, .. } | Message::Ssdp { udp, .. } | Message::Dhcp { udp, .. } => {
            Some((udp.src_port, udp.dst_port))
        }
        _ => None,
    }
}

#[test]
fn dhcp_arp_nd_mdns_and_ssdp_from_real_clients_arrive_and_other_udp_does_not() {
    let lab = start_lab();
    let (capture, mut frames) = start_capture(lab.bridge_name(), false);

    let phone = add(&lab, udhcpc("phone", "phone-cap"));
    let mac = phone.mac().0;
    for kind in [MessageType::Discover, MessageType::Request] {
        let frame = frames.wait_for(&format!("DHCP {kind:?} from the phone"), 0, |_, f| {
            is_dhcp(f, kind, mac)
        });
        let parsed = frame.parse().unwrap();
        let Message::Dhcp { dhcp, .. } = parsed.message else {
            unreachable!()
        };
        assert_eq!(
            dhcp.hostname.and_then(|h| h.as_str()),
            Some("phone-cap"),
            "hostname of the {kind:?}"
        );
    }
    let ack = frames.wait_for("dnsmasq's DHCP ACK to the phone", 0, |_, f| {
        is_dhcp(f, MessageType::Ack, mac)
    });
    assert_eq!(
        ack.packet_type,
        PacketType::Outgoing,
        "dnsmasq runs on this host"
    );

    let printer_ip = lab.net().host_v4(20);
    let printer = add(&lab, static_v4("printer", printer_ip));
    lab.wait_reachable(IpAddr::V4(printer_ip)).unwrap();
    frames.wait_for("ARP from the printer", 0, |_, f| {
        is_arp_from(f, printer.mac().0)
    });

    let sensor = add(&lab, DutSpec::new("sensor", DutKind::Slaac));
    let sensor_ip = sensor.slaac_addr().unwrap().expect("no SLAAC address");
    lab.wait_reachable(IpAddr::V6(sensor_ip)).unwrap();
    let sensor_mac = sensor.mac().0;
    frames.wait_for("a router solicitation from the sensor", 0, |_, f| {
        f.ethernet.src.0 == sensor_mac
            && matches!(
                &f.message,
                Message::Ndp {
                    ndp: NdpRepr::RouterSolicit { .. },
                    ..
                }
            )
    });
    frames.wait_for("a router advertisement from dnsmasq", 0, |cf, f| {
        cf.packet_type == PacketType::Outgoing
            && matches!(
                &f.message,
                Message::Ndp {
                    ndp: NdpRepr::RouterAdvert { .. },
                    ..
                }
            )
    });
    frames.wait_for("a neighbour solicitation", 0, |_, f| {
        matches!(
            &f.message,
            Message::Ndp {
                ndp: NdpRepr::NeighborSolicit { .. },
                ..
            }
        )
    });
    frames.wait_for("a neighbour advertisement for the sensor", 0, |_, f| {
        matches!(&f.message, Message::Ndp { ndp: NdpRepr::NeighborAdvert { target, .. }, .. }
            if *target == sensor_ip)
    });

    for (dut, to) in [
        (&printer, IpAddr::V4(lab.router_v4())),
        (&sensor, IpAddr::V6(lab.router_v6())),
    ] {
        let from = frames.mark();
        send_udp(dut, to);
        let src = dut.mac().0;
        frames.wait_for(&format!("mDNS from {}", dut.name()), from, |_, f| {
            f.ethernet.src.0 == src && matches!(f.message, Message::Mdns { .. })
        });
        // Sent after the datagrams the filter must drop, over the same path: had those
        // passed, they would have been captured before this one.
        frames.wait_for(
            &format!("an SSDP reply from {}", dut.name()),
            from,
            |_, f| {
                f.ethernet.src.0 == src
                    && matches!(f.message, Message::Ssdp { udp, .. } if udp.src_port == 1900)
            },
        );
        let leaked: Vec<String> = frames.seen[from..]
            .iter()
            .filter(|f| matches!(udp_ports(f), Some((_, 9999 | 53))))
            .map(describe)
            .collect();
        assert!(leaked.is_empty(), "the filter passed {leaked:#?}");
    }

    let stats = capture.stats();
    let counters = capture.stop().unwrap();
    frames.drain();
    assert_eq!(
        counters.unparsable,
        0,
        "the kernel passed frames the parsers reject: {:?}",
        stats.parse_drops().iter().collect::<Vec<_>>()
    );
    let skipped = frames.seen.iter().filter(|f| f.csum_not_ready).count();
    eprintln!(
        "captured {} frames ({skipped} with the checksum left to offload): {counters:?}",
        frames.seen.len()
    );
    assert_eq!(counters.frames, frames.seen.len() as u64);
    assert_eq!(
        (
            counters.queue_full,
            counters.truncated,
            counters.read_errors
        ),
        (0, 0, 0)
    );
    assert!(counters.kernel_packets >= counters.frames, "{counters:?}");
    assert_eq!((counters.link_ups, counters.link_downs), (1, 0));
    assert!(!counters.link_up, "the socket is still open after stop");

    let footprint = lab.footprint();
    drop((phone, printer, sensor));
    drop(lab);
    assert_gone(&footprint);
}

#[test]
fn bulk_traffic_between_duts_stays_in_the_kernel() {
    let lab = start_lab();
    let server_ip = lab.net().host_v4(30);
    let server = add(&lab, static_v4("server", server_ip));
    let client = add(&lab, static_v4("client", lab.net().host_v4(31)));
    let bridge = lab.bridge_name().to_string();
    assert!(
        !is_promiscuous(&bridge),
        "the bridge is promiscuous already"
    );

    // Run by hand rather than with `spawn`, to learn the thread's id for its CPU time.
    logs::install();
    let (tx, rx) = sync_channel(4096);
    let mut config = CaptureConfig::new(&bridge);
    // Promiscuous, so frames between the DUTs reach the socket and the filter has to
    // drop them: the worst case.
    config.promiscuous = true;
    let capture = Capture::open(config, tx).unwrap();
    let stats = capture.stats();
    let shutdown = Arc::new(AtomicBool::new(false));
    let tid = Arc::new(Mutex::new(None));
    let thread = {
        let (shutdown, tid) = (Arc::clone(&shutdown), Arc::clone(&tid));
        std::thread::spawn(move || {
            *lock(&tid) = Some(nix::unistd::gettid().as_raw());
            capture.run(&shutdown);
        })
    };
    let tid = wait_until("the capture thread starting", WAIT, || {
        Ok(lock(&tid).ok_or_else(|| "not yet".to_string()))
    })
    .unwrap();
    assert!(
        is_promiscuous(&bridge),
        "the capture did not make the bridge promiscuous"
    );

    let mut iperf_server = server
        .spawn(["iperf3", "-s", "-1", "-B", &server_ip.to_string()])
        .unwrap();
    wait_until("iperf3 listening in the server DUT", WAIT, || {
        iperf_server.ensure_running()?;
        let listening = server.exec(["ss", "-Htln", "sport = :5201"])?;
        Ok(if listening.trim().is_empty() {
            Err("no listener".to_string())
        } else {
            Ok(())
        })
    })
    .unwrap();
    let frames_before = rx.try_iter().count();
    let before = stats.snapshot();
    let wire_before = rx_packets(client.host_link()) + rx_packets(server.host_link());
    let bytes_before = link_stat(client.host_link(), "rx_bytes");
    let cpu_before = thread_cpu_ms(tid);
    let started = Instant::now();

    let mut iperf_client = client
        .spawn(["iperf3", "-c", &server_ip.to_string(), "-t", "3", "-f", "m"])
        .unwrap();
    // A second capture opened mid-transfer: nothing unfiltered may slip in between the
    // socket's creation and the filter's attachment.
    wait_until("bulk traffic on the bridge", WAIT, || {
        let moved = rx_packets(client.host_link()) + rx_packets(server.host_link());
        Ok(if moved - wire_before > 2_000 {
            Ok(())
        } else {
            Err(format!("{} packets", moved - wire_before))
        })
    })
    .unwrap();
    let (late, mut late_frames) = start_capture(&bridge, true);
    let status = wait_until("iperf3 finishing", Duration::from_secs(60), || {
        Ok(iperf_client
            .try_exit_status()?
            .ok_or_else(|| "running".to_string()))
    })
    .unwrap();
    assert!(
        status.success(),
        "iperf3 failed: {}",
        iperf_client.log_tail()
    );
    let elapsed = started.elapsed();
    let wire = rx_packets(client.host_link()) + rx_packets(server.host_link()) - wire_before;
    let bytes = link_stat(client.host_link(), "rx_bytes") - bytes_before;
    let cpu_ms = thread_cpu_ms(tid) - cpu_before;
    let after = stats.snapshot();
    let delivered = after.frames - before.frames;
    let late_counters = late.stop().unwrap();
    late_frames.drain();

    let summary = iperf_client
        .log_tail()
        .lines()
        .filter(|l| l.contains("sender") || l.contains("receiver"))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!(
        "iperf3 -t 3 between two DUTs: {wire} packets (GSO batches) on the DUT ports in \
         {elapsed:?}, {bytes} bytes from the client, {} full-size frames' worth; \
         the capture read {delivered} frames ({:.6} of the packets) and used {cpu_ms} ms \
         of CPU; the capture opened mid-transfer read {}\n{summary}",
        bytes / 1514,
        delivered as f64 / wire.max(1) as f64,
        late_counters.frames
    );
    assert!(wire > 10_000, "too little traffic to tell: {wire} packets");
    assert!(
        delivered < 50,
        "{delivered} frames reached user space during the transfer: {after:?}"
    );
    // A TCP segment that slipped past the filter would not parse.
    assert_eq!(
        (late_counters.unparsable, late_frames.seen.len() as u64),
        (0, late_counters.frames),
        "the late capture read unfiltered frames: {late_counters:?}"
    );

    shutdown.store(true, Ordering::Relaxed);
    thread.join().expect("the capture thread panicked");
    let last = stats.snapshot();
    assert!(
        last.kernel_packets >= last.frames && last.kernel_drops == 0,
        "kernel counts: {last:?}"
    );
    let received = (frames_before + rx.try_iter().count()) as u64;
    assert_eq!(
        (last.frames, last.unparsable),
        (received, 0),
        "frames read vs. handed on: {last:?}"
    );
    assert!(
        !is_promiscuous(&bridge),
        "the bridge stayed promiscuous after both captures closed"
    );

    let footprint = lab.footprint();
    drop((iperf_server, iperf_client, server, client));
    drop(lab);
    assert_gone(&footprint);
}

/// ARP from `dut` towards the router, which shows up on its port and on the bridge.
fn arp_from(dut: &Dut, lab: &Lab) {
    let router = lab.router_v4().to_string();
    dut.exec_output([
        "busybox", "arping", "-c", "1", "-w", "1", "-I", "eth0", &router,
    ])
    .unwrap_or_else(|e| panic!("arping from {}: {e}", dut.name()));
}

#[test]
fn capture_on_a_port_that_is_unplugged_and_replugged_comes_back_with_two_log_lines() {
    let lab = start_lab();
    let mut phone = add(&lab, udhcpc("phone", "phone-flap"));
    let port = phone.host_link().to_string();
    let (capture, mut frames) = start_capture(&port, false);
    let mac = phone.mac().0;

    arp_from(&phone, &lab);
    frames.wait_for("ARP from the phone before the outage", 0, |_, f| {
        is_arp_from(f, mac)
    });

    phone.unplug().unwrap();
    let down = wait_counters(&capture, "the capture noticing the port went down", |c| {
        !c.link_up && c.link_downs == 1
    });
    assert_eq!(down.link_ups, 1);
    // Retries keep failing while the port is down; none of them is logged.
    wait_counters(&capture, "three failed attempts to reopen", |c| {
        c.open_failures >= 3
    });
    phone.replug().unwrap();
    wait_counters(&capture, "the capture reopening on the port", |c| {
        c.link_up && c.link_ups == 2
    });
    let from = frames.mark();
    arp_from(&phone, &lab);
    frames.wait_for("ARP from the phone after the outage", from, |_, f| {
        is_arp_from(f, mac)
    });

    let counters = capture.stop().unwrap();
    assert_eq!(
        (counters.link_ups, counters.link_downs),
        (2, 1),
        "{counters:?}"
    );
    assert_eq!(counters.read_errors, 0, "ENETDOWN is not a read error");
    assert_eq!(log_lines(&port), expected_outage_lines());
    let went = &logs::about(&port)[1];
    assert!(
        went.field("cause")
            .is_some_and(|c| c.contains("Network is down")),
        "cause of the outage: {went:?}"
    );

    let footprint = lab.footprint();
    drop(phone);
    drop(lab);
    assert_gone(&footprint);
}

#[test]
fn capture_on_an_interface_deleted_and_created_again_comes_back_with_two_log_lines() {
    let lab = start_lab();
    let pair = VethPair::create(&lab);
    let interface = pair.capture_end.clone();
    let (capture, mut frames) = start_capture(&interface, false);

    let mac = pair.send_arp(&lab);
    frames.wait_for("ARP through the veth pair", 0, |_, f| is_arp_from(f, mac));

    pair.delete();
    wait_counters(
        &capture,
        "the capture noticing the interface is gone",
        |c| !c.link_up && c.link_downs == 1,
    );
    wait_counters(&capture, "three failed attempts to reopen", |c| {
        c.open_failures >= 3
    });
    pair.add();
    wait_counters(
        &capture,
        "the capture reopening on the new interface",
        |c| c.link_up && c.link_ups == 2,
    );
    let from = frames.mark();
    let mac = pair.send_arp(&lab);
    frames.wait_for("ARP through the re-created pair", from, |_, f| {
        is_arp_from(f, mac)
    });

    let counters = capture.stop().unwrap();
    assert_eq!(
        (counters.link_ups, counters.link_downs),
        (2, 1),
        "{counters:?}"
    );
    assert_eq!(log_lines(&interface), expected_outage_lines());

    let footprint = lab.footprint();
    drop(pair);
    drop(lab);
    assert_gone(&footprint);
    let links = lab_links();
    assert!(
        !links.contains(&interface),
        "the veth pair is still there: {links:?}"
    );
}

#[test]
fn a_missing_interface_is_waited_for_and_logged_once() {
    let lab = start_lab();
    let pair = VethPair {
        capture_end: format!("rlab{}cap0", lab.slot()),
        sender_end: format!("rlab{}cap1", lab.slot()),
    };
    let interface = pair.capture_end.clone();
    logs::install();
    let (tx, mut frames) = {
        let (tx, rx) = sync_channel(64);
        (
            tx,
            Frames {
                rx,
                seen: Vec::new(),
            },
        )
    };
    let capture = capture::spawn(CaptureConfig::new(&interface), tx).unwrap();
    wait_counters(&capture, "three failed attempts to open", |c| {
        !c.link_up && c.open_failures >= 3
    });
    pair.add();
    wait_counters(
        &capture,
        "the capture opening once the interface exists",
        |c| c.link_up,
    );
    let mac = pair.send_arp(&lab);
    frames.wait_for("ARP on the new interface", 0, |_, f| is_arp_from(f, mac));
    let counters = capture.stop().unwrap();
    assert_eq!(
        (counters.link_ups, counters.link_downs),
        (1, 1),
        "{counters:?}"
    );
    let lines: BTreeMap<String, usize> =
        logs::about(&interface)
            .into_iter()
            .fold(BTreeMap::new(), |mut m, l| {
                *m.entry(l.message).or_default() += 1;
                m
            });
    assert_eq!(
        lines,
        BTreeMap::from([
            (
                "capture interface unavailable, waiting for it".to_string(),
                1
            ),
            ("capture interface is back".to_string(), 1),
        ])
    );
    let footprint = lab.footprint();
    drop(pair);
    drop(lab);
    assert_gone(&footprint);
    assert!(
        !lab_links().contains(&interface),
        "{interface} is still there"
    );
}

fn wall_clock_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.unwrap().as_millis() as i64
}

fn tagged(src: [u8; 6], vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let tci = vid.to_be_bytes();
    let ethertype = ethertype.to_be_bytes();
    [
        &[0xff; 6][..],
        &src,
        &[0x81, 0x00],
        &tci,
        &ethertype,
        payload,
    ]
    .concat()
}

fn arp_probe(mac: [u8; 6], target: Ipv4Addr) -> Vec<u8> {
    let header = [0, 1, 8, 0, 6, 4, 0, 1];
    [&header[..], &mac, &[0; 4], &[0; 6], &target.octets()].concat()
}

/// An IPv4 UDP datagram from `src`'s port 40000 to port 9999 (checksums left at zero:
/// the filter never reads them).
fn bulk_udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut packet = vec![0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0, 0];
    packet.extend(src.octets());
    packet.extend(dst.octets());
    packet.extend([0x9c, 0x40, 0x27, 0x0f, 0, 16, 0, 0]);
    packet.extend(b"bulkbulk");
    packet
}

#[test]
fn tagged_frames_arrive_with_their_vlan_and_tagged_bulk_does_not() {
    let lab = start_lab();
    let pair = VethPair::create(&lab);
    let (capture, mut frames) = start_capture(&pair.capture_end, false);
    let mac = pair.sender_mac();
    let (host, router) = (lab.net().host_v4(78), lab.router_v4());
    // The kernel takes the tag out before any packet socket sees the frame; the capture
    // must put it back, and the filter must still see what is behind it.
    let sent_ms = wall_clock_ms();
    pair.inject(&[
        tagged(mac, 100, 0x0800, &bulk_udp(host, router)),
        tagged(mac, 100, 0x0806, &arp_probe(mac, host)),
    ]);
    let frame = frames.wait_for("the tagged ARP probe", 0, |_, f| is_arp_from(f, mac));
    assert!(
        (sent_ms..=wall_clock_ms()).contains(&frame.at_ms),
        "read at {} ms, sent at {sent_ms} ms",
        frame.at_ms
    );
    assert_eq!(frame.vlan, Some(100));
    assert_eq!(frame.parse().unwrap().vlan_id(), Some(100));
    assert_eq!(&frame.bytes[12..16], &[0x81, 0x00, 0x00, 100]);

    let counters = capture.stop().unwrap();
    frames.drain();
    let not_arp: Vec<String> = frames
        .seen
        .iter()
        .filter(|f| !matches!(f.parse().map(|p| p.message), Ok(Message::Arp(_))))
        .map(describe)
        .collect();
    assert!(not_arp.is_empty(), "the filter passed {not_arp:#?}");
    assert_eq!(
        (counters.frames, counters.unparsable),
        (frames.seen.len() as u64, 0),
        "the tagged UDP datagram got past the filter: {counters:?}"
    );

    let footprint = lab.footprint();
    drop(pair);
    drop(lab);
    assert_gone(&footprint);
}
