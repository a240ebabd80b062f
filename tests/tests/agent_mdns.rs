//! Passive mDNS with an active querier on the lab LAN: the agent's capture on the lab bridge
//! plus [`MdnsQuerier`] bound to that bridge find a python3-zeroconf DUT's host name and
//! services (type enumeration, then a PTR query per type), and see a service withdrawn.
//! The querier joins no multicast group and is bound to the bridge, so nothing leaves on the
//! host's other interfaces.
//!
//! Two ways the answers come: with port 5353 free on the bridge the querier sends from it and
//! the responder answers by multicast; with 5353 taken by a socket that does not share it,
//! the querier sends from an ephemeral port and the responder answers by unicast (a legacy
//! query), which both the capture and the querier's socket see.
//!
//! Needs root, iproute2, busybox, dnsmasq and Debian's `/usr/bin/python3` with the zeroconf
//! module (package python3-zeroconf).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use nix::sys::socket::{self as sock, sockopt};
use rae_agent::capture::{self, CaptureConfig, CaptureHandle, CapturedFrame, PacketType};
use rae_agent::probe::mdns_query::{MdnsQuerier, MdnsQuerySettings, SocketAnswer};
use rae_agent::registry::mdns::{mdns_decode, MdnsDecodeSettings};
use rae_agent::registry::{Observation, ObservationKind};
use rae_agent::wire::mdns::{MdnsRepr, Packet};
use rae_agent::wire::{Message, MDNS_PORT};
use rae_proto::{Mac, MdnsService, Text, TxtEntry};
use rae_tests::netlab::{Dut, DutKind, DutSpec, Lab, LabConfig, LabProcess};
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(30);
const PYTHON: &str = "/usr/bin/python3";

fn require_python_zeroconf() {
    let status = std::process::Command::new(PYTHON)
        .args(["-c", "import zeroconf"])
        .status()
        .unwrap_or_else(|e| panic!("running {PYTHON}: {e} (install python3)"));
    assert!(
        status.success(),
        "{PYTHON} has no zeroconf module: install Debian's python3-zeroconf"
    );
}

fn log_of(process: &LabProcess) -> String {
    std::fs::read_to_string(process.log_path()).unwrap_or_default()
}

fn wait_for_line(process: &mut LabProcess, needle: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = log_of(process);
        if log.contains(needle) {
            return;
        }
        if let Err(e) = process.ensure_running() {
            panic!(
                "`{}` died waiting for `{needle}`: {e}\n{log}",
                process.label()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log of `{}` within {WAIT:?}:\n{log}",
            process.label()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_zeroconf(dut: &Dut, ip: Ipv4Addr) -> LabProcess {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("responders/mdns_responder.py");
    let ip = ip.to_string();
    #[rustfmt::skip]
    let argv = [
        PYTHON, &script.display().to_string(), "--ip", &ip,
        "--type", "_googlecast._tcp.local.", "--instance", "Lab Cast. Kitchen",
        "--host", "lab-cast", "--port", "8009",
        "--txt", "md=Chromecast Ultra", "--txt", "cd=not-selected", "--txt", "fn=Lab Cast",
        "--txt", "id=0123abcd", "--txt", "ty",
        "--also", "_airplay._tcp.local.:Lab Cast:7000",
    ];
    let mut process = dut
        .spawn(argv)
        .unwrap_or_else(|e| panic!("starting the responder in {}: {e}", dut.name()));
    wait_for_line(&mut process, "READY");
    process
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// What the capture and the querier's socket delivered, decoded as the daemon would.
struct Seen {
    frames: Receiver<CapturedFrame>,
    answers: mpsc::Receiver<SocketAnswer>,
    types_tx: mpsc::Sender<Vec<String>>,
    settings: MdnsDecodeSettings,
    /// Observations from captured frames.
    captured: Vec<Observation>,
    /// Observations from datagrams the querier's socket received.
    from_socket: Vec<Observation>,
    types: Vec<String>,
    /// Our own queries, seen leaving on the bridge: (source port, questions).
    queries_out: Vec<(u16, Vec<String>)>,
    decode_errors: Vec<String>,
}

impl Seen {
    fn learn(&mut self, types: Vec<String>) {
        let new: Vec<String> = types
            .into_iter()
            .filter(|t| !self.types.contains(t))
            .collect();
        if !new.is_empty() {
            self.types.extend(new.iter().cloned());
            self.types_tx
                .try_send(new)
                .unwrap_or_else(|e| panic!("handing types to the querier: {e}"));
        }
    }

    fn pump(&mut self, dut_mac: Mac, dut_ip: Ipv4Addr) {
        while let Ok(frame) = self.frames.try_recv() {
            let Ok(parsed) = frame.parse() else { continue };
            let Message::Mdns { udp, payload, .. } = parsed.message else {
                continue;
            };
            if frame.packet_type == PacketType::Outgoing {
                let questions = Packet::new_checked(payload)
                    .and_then(|p| MdnsRepr::parse(&p))
                    .map(|r| r.questions.iter().map(|q| q.name.to_dotted()).collect())
                    .unwrap_or_default();
                self.queries_out.push((udp.src_port, questions));
                continue;
            }
            match mdns_decode(parsed.ethernet.src, payload, frame.at_ms, &self.settings) {
                Ok(decoded) => {
                    self.captured.extend(decoded.observations);
                    self.learn(decoded.types);
                }
                Err(e) => self.decode_errors.push(format!("{e}")),
            }
        }
        while let Ok(answer) = self.answers.try_recv() {
            // The socket knows only the sender's address; the daemon maps it to a MAC.
            assert_eq!(
                answer.src.ip(),
                IpAddr::V4(dut_ip),
                "answer from a stranger"
            );
            match mdns_decode(dut_mac, &answer.payload, 0, &self.settings) {
                Ok(decoded) => {
                    self.from_socket.extend(decoded.observations);
                    self.learn(decoded.types);
                }
                Err(e) => self.decode_errors.push(format!("socket: {e}")),
            }
        }
    }

    fn wait(
        &mut self,
        what: &str,
        dut_mac: Mac,
        dut_ip: Ipv4Addr,
        responder: &LabProcess,
        done: impl Fn(&Seen) -> bool,
    ) {
        let deadline = Instant::now() + WAIT;
        loop {
            self.pump(dut_mac, dut_ip);
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {WAIT:?}; types {:?}, captured {:?}, from the socket {:?}, \
                 our queries {:?}, decode errors {:?}\nresponder log:\n{}",
                self.types,
                describe(&self.captured),
                describe(&self.from_socket),
                self.queries_out,
                self.decode_errors,
                log_of(responder)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn describe(observations: &[Observation]) -> Vec<String> {
    observations
        .iter()
        .map(|o| format!("{}: {:?}", o.mac, o.kind))
        .collect()
}

fn has_service(observations: &[Observation], mac: Mac, wanted: &MdnsService) -> bool {
    observations
        .iter()
        .any(|o| o.mac == mac && o.kind == ObservationKind::MdnsService(wanted.clone()))
}

fn entry(key: &str, value: Option<&str>) -> TxtEntry {
    TxtEntry {
        key: key.into(),
        value: value.map(Text::from),
    }
}

fn googlecast() -> MdnsService {
    MdnsService {
        service_type: "_googlecast._tcp.local.".into(),
        instance: "Lab Cast. Kitchen".into(),
        port: 8009,
        txt: vec![
            entry("md", Some("Chromecast Ultra")),
            entry("fn", Some("Lab Cast")),
            entry("id", Some("0123abcd")),
            entry("ty", None),
        ],
    }
}

fn airplay() -> MdnsService {
    MdnsService {
        service_type: "_airplay._tcp.local.".into(),
        instance: "Lab Cast".into(),
        port: 7000,
        txt: Vec::new(),
    }
}

fn start_capture(interface: &str) -> (CaptureHandle, Receiver<CapturedFrame>) {
    let (tx, rx) = sync_channel(4096);
    let handle = capture::spawn(CaptureConfig::new(interface), tx)
        .unwrap_or_else(|e| panic!("starting the capture on {interface}: {e}"));
    let deadline = Instant::now() + WAIT;
    while !handle.counters().link_up {
        assert!(
            Instant::now() < deadline,
            "the capture on {interface} never opened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (handle, rx)
}

/// A socket on 5353 bound to `interface` that does not share the port: the querier must fall
/// back to an ephemeral port on that interface.
fn occupy_mdns_port(interface: &str) -> UdpSocket {
    let fd: OwnedFd = sock::socket(
        sock::AddressFamily::Inet,
        sock::SockType::Datagram,
        sock::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("creating a UDP socket");
    sock::setsockopt(&fd, sockopt::BindToDevice, &interface.into())
        .expect("binding the blocker to the bridge");
    let any = sock::SockaddrIn::from(std::net::SocketAddrV4::new(
        Ipv4Addr::UNSPECIFIED,
        MDNS_PORT,
    ));
    sock::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &any)
        .unwrap_or_else(|e| panic!("binding 5353 on {interface}: {e}"));
    UdpSocket::from(fd)
}

fn scenario(port_taken: bool) {
    require_python_zeroconf();
    let lab = Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"));
    let bridge = lab.bridge_name().to_owned();
    let cast_ip = lab.net().host_v4(20);
    let cast = lab
        .add_dut(DutSpec::new("cast", DutKind::StaticV4 { addr: cast_ip }))
        .unwrap_or_else(|e| panic!("adding the cast DUT: {e}"));
    let cast_mac = Mac(cast.mac().0);
    // Started before the capture: its announcements are over, so what the capture sees of
    // its services is what the querier's questions brought.
    let mut zeroconf = spawn_zeroconf(&cast, cast_ip);

    let (capture, frames) = start_capture(&bridge);
    let blocker = port_taken.then(|| occupy_mdns_port(&bridge));
    let querier = MdnsQuerier::bind(&bridge, MdnsQuerySettings::default())
        .unwrap_or_else(|e| panic!("binding the querier to {bridge}: {e}"));
    assert_eq!(
        querier.bound_device().expect("reading SO_BINDTODEVICE"),
        bridge,
        "the querier's socket must be bound to the LAN bridge"
    );
    let ports: Vec<u16> = querier.local_addrs().iter().map(SocketAddr::port).collect();
    if port_taken {
        // Taken for IPv4 only: the IPv6 socket still gets 5353.
        assert_ne!(ports[0], MDNS_PORT, "5353 was taken, yet bound: {ports:?}");
    } else {
        assert!(
            ports.iter().all(|p| *p == MDNS_PORT),
            "not on 5353: {ports:?}"
        );
    }
    let stats = querier.stats();
    let rt = runtime();
    let (types_tx, types_rx) = mpsc::channel(16);
    let (answers_tx, answers_rx) = mpsc::channel(64);
    let (stop, stopped) = watch::channel(false);
    let task = rt.spawn(querier.run(types_rx, Some(answers_tx), stopped));

    let mut seen = Seen {
        frames,
        answers: answers_rx,
        types_tx,
        settings: MdnsDecodeSettings::default(),
        captured: Vec::new(),
        from_socket: Vec::new(),
        types: Vec::new(),
        queries_out: Vec::new(),
        decode_errors: Vec::new(),
    };
    seen.wait(
        "host name and both services from captured frames",
        cast_mac,
        cast_ip,
        &zeroconf,
        |s| {
            let host = ObservationKind::MdnsHost {
                hostname: Text::from("lab-cast"),
            };
            s.captured
                .iter()
                .any(|o| o.mac == cast_mac && o.kind == host)
                && has_service(&s.captured, cast_mac, &googlecast())
                && has_service(&s.captured, cast_mac, &airplay())
        },
    );
    let mut types = seen.types.clone();
    types.sort();
    assert_eq!(types, ["_airplay._tcp.local.", "_googlecast._tcp.local."]);
    assert!(seen.decode_errors.is_empty(), "{:?}", seen.decode_errors);
    // Our queries left on the bridge, from the port the querier bound, asking the
    // enumeration first and then each type.
    let asked: Vec<&String> = seen.queries_out.iter().flat_map(|(_, q)| q).collect();
    assert!(
        seen.queries_out
            .iter()
            .all(|(port, _)| ports.contains(port)),
        "{:?}",
        seen.queries_out
    );
    for name in [
        "_services._dns-sd._udp.local.",
        "_googlecast._tcp.local.",
        "_airplay._tcp.local.",
    ] {
        assert!(
            asked.iter().any(|q| *q == name),
            "{name} not asked: {asked:?}"
        );
    }
    if port_taken {
        // Legacy queries are answered by unicast, and the socket hands those on too.
        assert!(
            has_service(&seen.from_socket, cast_mac, &googlecast()),
            "no service from the socket: {:#?}",
            seen.from_socket
        );
    }
    let sent = stats
        .queries_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    let failed = stats
        .send_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent >= 2, "queries sent: {sent}");
    assert_eq!(failed, 0, "send failures");

    // The responder says goodbye: both services are withdrawn.
    zeroconf
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("stopping the responder: {e}"));
    wait_for_line(&mut zeroconf, "STOPPED");
    seen.wait("both services withdrawn", cast_mac, cast_ip, &zeroconf, |s| {
        ["_googlecast._tcp.local.", "_airplay._tcp.local."]
            .iter()
            .all(|ty| {
                s.captured.iter().any(|o| {
                    o.mac == cast_mac
                        && matches!(&o.kind, ObservationKind::MdnsServiceGone { service_type, .. } if service_type == ty)
                })
            })
    });

    stop.send(true).expect("stopping the querier");
    rt.block_on(task)
        .expect("the querier task panicked")
        .unwrap_or_else(|e| panic!("the querier failed: {e}"));
    capture.stop().expect("stopping the capture");
    drop(blocker);
    let footprint = lab.footprint();
    drop(zeroconf);
    drop(cast);
    drop(lab);
    let left = footprint.remaining();
    assert!(left.is_empty(), "left behind by the lab: {left:#?}");
}

#[test]
fn querier_on_port_5353_brings_multicast_answers_to_the_capture() {
    scenario(false);
}

#[test]
fn querier_on_an_ephemeral_port_gets_unicast_answers_on_capture_and_socket() {
    scenario(true);
}
