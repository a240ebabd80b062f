//! `lab-demo`: what `./scripts/demo` runs.
//!
//! Brings up the virtual lab with a handful of DUTs and a broker, records the LAN while the
//! DUTs join, and shows: each DUT with its addresses and lease, what the agent's frame
//! parsers make of the recorded traffic, the agent's configuration check for this lab, and
//! a raw MQTT subscription to `rae/v1/#` (which stays empty until the agent publishes).
//! Everything is removed when it ends, on Ctrl-C too.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rae_agent::wire::{self, Message, UdpChecksum};
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Lab, LabConfig};
use rae_tests::services::Mosquitto;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, Incoming, MqttOptions};

const USAGE: &str = "usage: lab-demo [--watch SECS] [--hold]
  --watch SECS  how long to watch the raw MQTT subscription (default 10)
  --hold        keep the lab up until Ctrl-C, to explore it with `ip netns exec`";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lab-demo: {err:#}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    watch: Duration,
    hold: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        watch: Duration::from_secs(10),
        hold: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--watch" => {
                let secs = it.next().context("--watch needs a number of seconds")?;
                let secs: u64 = secs
                    .parse()
                    .with_context(|| format!("--watch {secs:?} is not a number of seconds"))?;
                args.watch = Duration::from_secs(secs);
            }
            "--hold" => args.hold = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

fn run() -> Result<()> {
    let args = parse_args()?;
    if !nix::unistd::Uid::effective().is_root() {
        bail!("must run as root (network namespaces)");
    }
    let agent = agent_binary()?;

    println!("== starting the virtual lab");
    let lab = Lab::start(LabConfig::default()).context("starting the lab")?;
    let (subnet, len) = lab.subnet_v4();
    let (prefix, plen) = lab.prefix_v6();
    println!(
        "   bridge {} (the RAE's LAN port), dnsmasq serving {subnet}/{len} and RAs for {prefix}/{plen}",
        lab.bridge_name()
    );
    let capture = Capture::start(&lab)?;
    let broker = Mosquitto::start().context("starting mosquitto")?;
    println!("   mosquitto on {}", broker.url());

    println!("== plugging in DUTs (real clients: udhcpc, dhclient, static, SLAAC)");
    let duts = plug_in_duts(&lab)?;
    let frames = capture.finish()?;

    println!("\n== the DUTs as the lab sees them");
    show_duts(&lab, &duts)?;

    println!(
        "\n== what rae-agent's frame parsers make of the LAN traffic ({} frames)",
        frames.len()
    );
    show_parsed(&frames);

    println!("\n== rae-agent --check-config for this lab");
    check_agent_config(&agent, &lab, &broker)?;

    println!(
        "\n== raw MQTT subscription to rae/v1/# on {} for {} s",
        broker.url(),
        args.watch.as_secs()
    );
    let seen = watch_mqtt(&broker, args.watch)?;
    if seen == 0 {
        println!(
            "   no messages: the agent does not capture or publish yet (it arrives with issue 3);\n   \
             once it does, its Snapshots for the DUTs above appear here"
        );
    }

    if args.hold {
        println!(
            "\n== holding the lab; try e.g. `ip netns exec {} ip addr`; Ctrl-C ends it",
            duts[0].ns_name()
        );
        wait_for_ctrl_c()?;
    }
    println!("\n== tearing down (namespaces, bridge, dnsmasq, clients, broker)");
    drop(duts);
    drop(broker);
    drop(lab);
    println!("   done");
    Ok(())
}

fn agent_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating lab-demo")?;
    let agent = exe.with_file_name("rae-agent");
    if !agent.exists() {
        bail!(
            "{} is missing: build the workspace first (`cargo build --workspace`)",
            agent.display()
        );
    }
    Ok(agent)
}

fn plug_in_duts(lab: &Lab) -> Result<Vec<Dut>> {
    let specs = [
        DutSpec::new(
            "living-room-tv",
            DutKind::Udhcpc {
                hostname: Some("living-room-tv".into()),
                vendor_class: Some("android-dhcp-12".into()),
                client_id: Some(b"\x01tv-0042".to_vec()),
            },
        ),
        DutSpec::new(
            "stick",
            DutKind::Dhclient {
                hostname: Some("streaming-stick".into()),
                vendor_class: Some("stick-os 7.1".into()),
            },
        ),
        DutSpec::new(
            "stb",
            DutKind::StaticV4 {
                addr: lab.net().host_v4(20),
            },
        ),
        DutSpec::new("v6-player", DutKind::Slaac),
    ];
    let mut duts = Vec::new();
    for spec in specs {
        let name = spec.name.clone();
        let started = Instant::now();
        let dut = lab
            .add_dut(spec)
            .with_context(|| format!("plugging in {name}\ndnsmasq log:\n{}", lab.dnsmasq_log()))?;
        println!(
            "   {name:<15} up in {:>5} ms",
            started.elapsed().as_millis()
        );
        duts.push(dut);
    }
    Ok(duts)
}

fn show_duts(lab: &Lab, duts: &[Dut]) -> Result<()> {
    let leases = lab.leases().context("reading dnsmasq's leases")?;
    println!(
        "   {:<15} {:<9} {:<17} {:<15} {:<26} lease hostname",
        "name", "kind", "mac", "ipv4", "ipv6"
    );
    for dut in duts {
        let kind = match dut.kind() {
            DutKind::Udhcpc { .. } => "udhcpc",
            DutKind::Dhclient { .. } => "dhclient",
            DutKind::StaticV4 { .. } => "static",
            DutKind::Slaac => "slaac",
        };
        let ipv4 = dut
            .ipv4()?
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let ipv6 = dut
            .slaac_addr()?
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into());
        let lease = leases
            .iter()
            .find(|l| l.mac == dut.mac())
            .and_then(|l| l.hostname.clone())
            .unwrap_or_else(|| "-".into());
        println!(
            "   {:<15} {kind:<9} {:<17} {ipv4:<15} {ipv6:<26} {lease}",
            dut.name(),
            dut.mac().to_string()
        );
    }
    Ok(())
}

/// tcpdump on the bridge while the DUTs join, so the parsers can be shown real traffic.
struct Capture {
    child: Child,
    path: PathBuf,
}

impl Capture {
    fn start(lab: &Lab) -> Result<Capture> {
        let path = lab.dir().join("lan.pcap");
        let child = Command::new("tcpdump")
            // Immediate mode: without it frames wait in the kernel's ring for a block
            // timeout and are lost when tcpdump is stopped.
            .args([
                "--immediate-mode",
                "-U",
                "-s",
                "2048",
                "-i",
                lab.bridge_name(),
                "-w",
            ])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting tcpdump (Debian package tcpdump)")?;
        wait_until(
            "tcpdump to open its capture file",
            Duration::from_secs(10),
            || {
                Ok(if path.exists() {
                    Ok(())
                } else {
                    Err("no capture file yet".to_string())
                })
            },
        )
        .context("waiting for tcpdump")?;
        Ok(Capture { child, path })
    }

    /// Stops tcpdump (it flushes on SIGTERM) and returns the recorded frames.
    fn finish(mut self) -> Result<Vec<Vec<u8>>> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        read_pcap(&self.path)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A classic little-endian pcap with Ethernet frames, as tcpdump writes it here.
fn read_pcap(path: &Path) -> Result<Vec<Vec<u8>>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < 24 || bytes[..4] != [0xd4, 0xc3, 0xb2, 0xa1] {
        bail!("{} is not a little-endian pcap file", path.display());
    }
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen =
            u32::from_le_bytes([bytes[at + 8], bytes[at + 9], bytes[at + 10], bytes[at + 11]])
                as usize;
        let start = at + 16;
        let Some(frame) = bytes.get(start..start + caplen) else {
            break; // the last record was cut off when tcpdump stopped
        };
        frames.push(frame.to_vec());
        at = start + caplen;
    }
    Ok(frames)
}

fn show_parsed(frames: &[Vec<u8>]) {
    let mut drops = wire::DropCounters::default();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for frame in frames {
        // tcpdump records frames before the kernel fills in UDP checksums it offloads, so
        // they cannot be verified here; the agent reads the kernel's flag for that instead.
        match wire::parse_frame_with(frame, UdpChecksum::Skip) {
            Ok(parsed) => {
                let kind = match &parsed.message {
                    Message::Arp(_) => "arp",
                    Message::Dhcp { .. } => "dhcp",
                    Message::Ndp { .. } => "ndp",
                    Message::Mdns { .. } => "mdns",
                    Message::Ssdp { .. } => "ssdp",
                };
                *counts.entry(kind).or_default() += 1;
                if let Message::Dhcp { dhcp, .. } = &parsed.message {
                    let text = |t: Option<wire::dhcp::Text<'_>>| {
                        t.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
                    };
                    println!(
                        "   DHCP {:<9} client {} hostname {:<16} vendor class {:<16} params {:?}",
                        format!("{:?}", dhcp.message_type),
                        dhcp.chaddr,
                        text(dhcp.hostname),
                        text(dhcp.vendor_class),
                        dhcp.parameter_request_list.unwrap_or_default()
                    );
                }
            }
            Err(reason) => drops.record(reason),
        }
    }
    let summary: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("   parsed: {}", summary.join(", "));
    if drops.total() > 0 {
        let reasons: Vec<String> = drops.iter().map(|(r, n)| format!("{r} x{n}")).collect();
        println!(
            "   not for the registry (counted by reason): {}",
            reasons.join(", ")
        );
    }
}

fn check_agent_config(agent: &Path, lab: &Lab, broker: &Mosquitto) -> Result<()> {
    let config = lab.dir().join("rae-agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nserial = \"DEMO-RAE-1\"\nlan_interface = \"{}\"\nstate_dir = \"{}\"\n\
             [mqtt]\nhost = \"{}\"\nport = {}\n",
            lab.bridge_name(),
            lab.dir().display(),
            broker.host(),
            broker.port()
        ),
    )
    .context("writing the agent's config")?;
    let out = Command::new(agent)
        .arg("--check-config")
        .arg("--config")
        .arg(&config)
        .output()
        .with_context(|| format!("running {}", agent.display()))?;
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("   {line}");
    }
    if !out.status.success() {
        bail!("rae-agent rejected the lab's configuration");
    }
    Ok(())
}

fn watch_mqtt(broker: &Mosquitto, watch: Duration) -> Result<usize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    runtime.block_on(async {
        let mut options = MqttOptions::new("lab-demo", broker.host(), broker.port());
        options.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        client
            .subscribe("rae/v1/#", QoS::AtLeastOnce)
            .await
            .context("subscribing")?;
        let deadline = tokio::time::Instant::now() + watch;
        let mut seen = 0;
        loop {
            let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
                Err(_) => break,
                Ok(event) => event.context("MQTT connection to the lab's broker")?,
            };
            if let Event::Incoming(Incoming::Publish(publish)) = event {
                seen += 1;
                let topic = String::from_utf8_lossy(&publish.topic).into_owned();
                let decoded = match topic.parse::<rae_proto::Topic>() {
                    Ok(rae_proto::Topic::Device { .. }) => {
                        format!("{:?}", rae_proto::Envelope::decode(&publish.payload))
                    }
                    Ok(other) => format!("{other:?}, {} bytes", publish.payload.len()),
                    Err(err) => format!("not a RAE topic: {err}"),
                };
                println!("   {topic}: {decoded}");
            }
        }
        let _ = client.disconnect().await;
        Ok(seen)
    })
}

fn wait_for_ctrl_c() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    runtime
        .block_on(tokio::signal::ctrl_c())
        .context("waiting for Ctrl-C")
}
