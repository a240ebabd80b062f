//! Helpers of the capture lab test: a log recorder, a frame collector that waits for
//! frames with a deadline, lab shortcuts, and a veth pair owned by the lab's slot.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rae_agent::capture::{self, CaptureConfig, CaptureCounters, CaptureHandle, CapturedFrame};
use rae_agent::wire::dhcp::MessageType;
use rae_agent::wire::{Frame, Message};
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Footprint, Lab, LabConfig};

pub const WAIT: Duration = Duration::from_secs(30);

/// Log lines of the capture module, recorded by a subscriber installed for this binary.
pub mod logs {
    use std::fmt::Debug;
    use std::sync::{Mutex, Once};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Metadata, Subscriber};

    #[derive(Clone, Debug)]
    pub struct Line {
        pub level: Level,
        pub message: String,
        pub fields: Vec<(String, String)>,
    }

    impl Line {
        pub fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());

    struct Recorder;

    struct Fields<'a>(&'a mut Line);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
            self.record_str(field, &format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.0.message = value.to_string();
            } else {
                self.0
                    .fields
                    .push((field.name().to_string(), value.to_string()));
            }
        }
    }

    impl Subscriber for Recorder {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.target().starts_with("rae_agent::capture")
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut line = Line {
                level: *event.metadata().level(),
                message: String::new(),
                fields: Vec::new(),
            };
            event.record(&mut Fields(&mut line));
            eprintln!("log: {} {} {:?}", line.level, line.message, line.fields);
            super::lock(&LINES).push(line);
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    pub fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            tracing::subscriber::set_global_default(Recorder)
                .expect("another tracing subscriber is installed");
        });
    }

    /// Every line logged about `interface`, in order.
    pub fn about(interface: &str) -> Vec<Line> {
        super::lock(&LINES)
            .iter()
            .filter(|l| l.field("interface") == Some(interface))
            .cloned()
            .collect()
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Frames the capture delivered, kept in arrival order.
pub struct Frames {
    pub rx: Receiver<CapturedFrame>,
    pub seen: Vec<CapturedFrame>,
}

pub fn describe(frame: &CapturedFrame) -> String {
    match frame.parse() {
        Err(e) => format!("unparsable ({e:?}): {:02x?}", frame.bytes),
        Ok(parsed) => {
            let what = match &parsed.message {
                Message::Arp(arp) => format!("ARP {:?} from {:?}", arp.operation, arp.sender_ip),
                Message::Dhcp { dhcp, .. } => format!("DHCP {:?}", dhcp.message_type),
                Message::Ndp { ndp, .. } => format!("ND {ndp:?}"),
                Message::Mdns { udp, ip, .. } => format!("mDNS {} {udp:?}", ip.src()),
                Message::Ssdp { udp, ip, .. } => format!("SSDP {} {udp:?}", ip.src()),
            };
            format!(
                "{what} ({:?}, src {:?})",
                frame.packet_type, parsed.ethernet.src
            )
        }
    }
}

impl Frames {
    /// Takes whatever has arrived; the number of new frames.
    pub fn drain(&mut self) -> usize {
        let before = self.seen.len();
        self.seen.extend(self.rx.try_iter());
        self.seen.len() - before
    }

    /// A position in the arrival order, to wait for frames that come after it.
    pub fn mark(&mut self) -> usize {
        self.drain();
        self.seen.len()
    }

    /// Waits for a frame at or after `from` that parses and satisfies `wanted`.
    pub fn wait_for(
        &mut self,
        what: &str,
        from: usize,
        wanted: impl Fn(&CapturedFrame, &Frame<'_>) -> bool,
    ) -> CapturedFrame {
        let deadline = Instant::now() + WAIT;
        let mut checked = from;
        loop {
            for frame in &self.seen[checked..] {
                if frame.parse().is_ok_and(|parsed| wanted(frame, &parsed)) {
                    return frame.clone();
                }
            }
            checked = self.seen.len().max(from);
            let now = Instant::now();
            if now >= deadline {
                let seen: Vec<String> = self.seen[from.min(checked)..]
                    .iter()
                    .map(describe)
                    .collect();
                panic!("no {what} within {WAIT:?}; captured instead: {seen:#?}");
            }
            if let Ok(frame) = self.rx.recv_timeout(deadline - now) {
                self.seen.push(frame);
                self.drain();
            }
        }
    }
}

pub fn start_capture(interface: &str, promiscuous: bool) -> (CaptureHandle, Frames) {
    logs::install();
    let (tx, rx) = sync_channel(4096);
    let mut config = CaptureConfig::new(interface);
    config.promiscuous = promiscuous;
    let handle = capture::spawn(config, tx)
        .unwrap_or_else(|e| panic!("starting the capture on {interface}: {e}"));
    wait_counters(&handle, "the capture socket open", |c| c.link_up);
    (
        handle,
        Frames {
            rx,
            seen: Vec::new(),
        },
    )
}

pub fn wait_counters(
    capture: &CaptureHandle,
    what: &str,
    wanted: impl Fn(&CaptureCounters) -> bool,
) -> CaptureCounters {
    wait_until(what, WAIT, || {
        let now = capture.counters();
        Ok(if wanted(&now) {
            Ok(now)
        } else {
            Err(format!("{now:?}"))
        })
    })
    .unwrap()
}

pub fn start_lab() -> Lab {
    Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"))
}

pub fn add(lab: &Lab, spec: DutSpec) -> Dut {
    let name = spec.name.clone();
    lab.add_dut(spec).unwrap_or_else(|e| {
        panic!(
            "adding DUT {name}: {e}\ndnsmasq log:\n{}",
            lab.dnsmasq_log()
        )
    })
}

pub fn udhcpc(name: &str, hostname: &str) -> DutSpec {
    DutSpec::new(
        name,
        DutKind::Udhcpc {
            hostname: Some(hostname.to_string()),
            vendor_class: None,
            client_id: None,
        },
    )
}

pub fn static_v4(name: &str, addr: Ipv4Addr) -> DutSpec {
    DutSpec::new(name, DutKind::StaticV4 { addr })
}

pub fn assert_gone(footprint: &Footprint) {
    let left = footprint.remaining();
    assert!(
        left.is_empty(),
        "left behind by the lab in slot {}: {left:#?}",
        footprint.slot()
    );
}

pub fn is_dhcp(frame: &Frame<'_>, kind: MessageType, mac: [u8; 6]) -> bool {
    matches!(&frame.message, Message::Dhcp { dhcp, .. }
        if dhcp.message_type == kind && dhcp.chaddr.0 == mac)
}

pub fn is_arp_from(frame: &Frame<'_>, mac: [u8; 6]) -> bool {
    matches!(&frame.message, Message::Arp(arp) if arp.sender_mac.0 == mac)
}

pub fn rx_packets(link: &str) -> u64 {
    link_stat(link, "rx_packets")
}

pub fn link_stat(link: &str, name: &str) -> u64 {
    let path = format!("/sys/class/net/{link}/statistics/{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.trim().parse().unwrap()
}

pub fn is_promiscuous(link: &str) -> bool {
    let path = format!("/sys/class/net/{link}/flags");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let flags = u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).unwrap();
    flags & 0x100 != 0
}

/// Milliseconds of CPU a thread of this process has used (utime + stime).
pub fn thread_cpu_ms(tid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap_or(100) as u64;
    ticks * 1000 / hz
}

/// The log lines about `interface` from the capture, as (level, message) pairs.
pub fn log_lines(interface: &str) -> Vec<(String, String)> {
    logs::about(interface)
        .into_iter()
        .map(|l| (l.level.to_string(), l.message))
        .collect()
}

pub fn expected_outage_lines() -> Vec<(String, String)> {
    [
        ("INFO", "capture started"),
        ("WARN", "capture interface went away, waiting for it"),
        ("INFO", "capture interface is back"),
    ]
    .into_iter()
    .map(|(l, m)| (l.to_string(), m.to_string()))
    .collect()
}

/// A veth pair of the lab's slot, so a crashed run's sweep removes it; deleted on drop.
pub struct VethPair {
    pub capture_end: String,
    pub sender_end: String,
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl VethPair {
    pub fn create(lab: &Lab) -> VethPair {
        let pair = VethPair {
            capture_end: format!("rlab{}cap0", lab.slot()),
            sender_end: format!("rlab{}cap1", lab.slot()),
        };
        pair.add();
        pair
    }

    pub fn add(&self) {
        ip(&[
            "link",
            "add",
            &self.capture_end,
            "type",
            "veth",
            "peer",
            "name",
            &self.sender_end,
        ]);
        for end in [&self.capture_end, &self.sender_end] {
            // No IPv6 chatter (MLD, RS) of its own on the pair.
            let path = format!("/proc/sys/net/ipv6/conf/{end}/disable_ipv6");
            std::fs::write(&path, "1").unwrap_or_else(|e| panic!("writing {path}: {e}"));
            ip(&["link", "set", end, "up"]);
        }
    }

    pub fn delete(&self) {
        if std::path::Path::new("/sys/class/net")
            .join(&self.capture_end)
            .exists()
        {
            ip(&["link", "del", &self.capture_end]);
        }
    }

    /// An ARP probe (sender 0.0.0.0, so no address is needed) for a lab address out of
    /// the sender end; returns the MAC it came from.
    pub fn send_arp(&self, lab: &Lab) -> [u8; 6] {
        let target = lab.net().host_v4(77).to_string();
        let out = Command::new("busybox")
            .args([
                "arping",
                "-D",
                "-c",
                "1",
                "-w",
                "1",
                "-I",
                &self.sender_end,
                &target,
            ])
            .output()
            .expect("running busybox arping");
        assert!(
            out.status.success(),
            "arping: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.sender_mac()
    }

    pub fn sender_mac(&self) -> [u8; 6] {
        let path = format!("/sys/class/net/{}/address", self.sender_end);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(text.trim().split(':')) {
            *byte = u8::from_str_radix(part, 16).unwrap();
        }
        mac
    }

    /// Sends raw frames out of the sender end, in this order.
    pub fn inject(&self, frames: &[Vec<u8>]) {
        const SEND: &str = "import socket, sys\n\
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
            s.bind((sys.argv[1], 0))\n\
            for frame in sys.argv[2:]:\n    s.send(bytes.fromhex(frame))\n";
        let hex: Vec<String> = frames
            .iter()
            .map(|f| f.iter().map(|b| format!("{b:02x}")).collect())
            .collect();
        let out = Command::new("/usr/bin/python3")
            .args(["-c", SEND, &self.sender_end])
            .args(&hex)
            .output()
            .expect("running python3");
        assert!(
            out.status.success(),
            "injecting frames: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        if std::path::Path::new("/sys/class/net")
            .join(&self.capture_end)
            .exists()
        {
            let _ = Command::new("ip")
                .args(["link", "del", &self.capture_end])
                .status();
        }
    }
}
