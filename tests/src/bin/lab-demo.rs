//! `lab-demo`: what `./scripts/demo` runs.
//!
//! Brings up the virtual lab with a broker and the real `rae-agent` on the lab bridge (the
//! RAE's LAN port), then plugs in DUTs running real clients (udhcpc, dhclient, static, SLAAC,
//! an mDNS responder, an SSDP/UPnP/DIAL responder) and shows what a lab operator and the
//! cloud see: the Snapshots and Deltas on `rae/v1/#` as they arrive, `raectl devices`,
//! `raectl show`, `raectl status`, a DUT unplugged going offline after the configured misses,
//! the recorded LAN replayed through `rae-agent --pcap`, the Cloud Registry rows that
//! `cloud-sink mqtt` wrote into PostgreSQL, and the agent's `offline` status after SIGTERM. Everything is removed when it ends, on Ctrl-C too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rae_proto::{AgentState, Availability, Envelope, Event, Field, Liveness, Mac, Status};
use rae_tests::agent::{raectl, Agent, AgentSpec};
use rae_tests::mqtt_watch::MqttWatch;
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Lab, LabConfig, LabProcess};
use rae_tests::services::{Mosquitto, Postgres};
use rae_tests::sink::Sink;

const USAGE: &str = "usage: lab-demo [--hold]
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
    hold: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { hold: false };
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
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
    let agent_bin = agent_binary()?;

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
    let watch = MqttWatch::start(broker.host(), broker.port(), "lab-demo", &["rae/v1/#"])
        .context("subscribing to rae/v1/#")?;
    let postgres = Postgres::start().context("starting PostgreSQL")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    let database_url = runtime
        .block_on(postgres.create_database("cloud_registry"))
        .context("creating the Cloud Registry database")?;
    let sink_args: Vec<String> = [
        "mqtt",
        "--migrate",
        "--batch-max-wait-ms",
        "200",
        "--mqtt-port",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([broker.port().to_string()])
    .collect();
    let mut sink = Sink::start_mode(
        "cloud-sink",
        lab.dir(),
        &sink_args,
        &[
            ("CLOUD_SINK_MQTT_HOST", broker.host().to_string()),
            ("CLOUD_SINK_DATABASE_URL", database_url.clone()),
        ],
    )
    .context("starting cloud-sink")?;
    sink.wait_ready(Duration::from_secs(60))
        .with_context(|| format!("cloud-sink log:\n{}", sink.log_tail()))?;
    println!("   PostgreSQL (SERIALIZABLE, standing in for CockroachDB) with `cloud-sink mqtt` writing the Cloud Registry");

    let mut spec = AgentSpec::for_lab(
        SERIAL,
        lab.bridge_name(),
        &lab.dir().join("agent"),
        broker.host(),
        broker.port(),
    );
    spec.log_level = "info".into();
    println!(
        "\n== rae-agent on {} (probes every {} s, offline after {} misses, gone after {} s)",
        lab.bridge_name(),
        spec.probe_interval_secs,
        spec.offline_after_misses,
        spec.gone_after_secs
    );
    check_agent_config(&agent_bin, &spec)?;
    let mut agent = Agent::start(&spec).context("starting rae-agent")?;
    wait_status(&watch, AgentState::Online)
        .with_context(|| format!("agent log:\n{}", agent.log_tail()))?;
    println!(
        "   running (pid {}), retained status `online` on rae/v1/{SERIAL}/status",
        agent.pid()
    );

    println!(
        "\n== plugging in DUTs (real clients: udhcpc, dhclient, static, SLAAC, mDNS, SSDP/DIAL)"
    );
    let (duts, _responders) = plug_in_duts(&lab)?;
    for dut in &duts {
        // Static and SLAAC DUTs say nothing unprompted: one ping each to the router.
        let _ = dut.ping(lab.router_v4().into());
        let _ = dut.ping(lab.router_v6().into());
    }
    show_duts(&lab, &duts)?;

    println!(
        "\n== what the cloud receives on rae/v1/# (decoded), until every DUT has its Snapshot"
    );
    let macs: Vec<Mac> = duts.iter().map(|d| Mac(d.mac().0)).collect();
    let mut shown = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        shown = print_new(&watch, shown);
        let events = watch.events();
        let missing: Vec<&Mac> = macs
            .iter()
            .filter(|m| {
                !events
                    .iter()
                    .any(|e| matches!(&e.event, Event::Snapshot { record } if record.mac == **m))
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        agent.ensure_running().context("rae-agent stopped")?;
        if Instant::now() > deadline {
            bail!(
                "no Snapshot within 60 s for {missing:?}\nagent log:\n{}",
                agent.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Identification (mDNS, SSDP/DIAL) lands a moment after the Snapshot: give it the
    // agent's search interval to show up as Deltas.
    let until = Instant::now() + Duration::from_secs(spec.ssdp_search_interval_secs + 2);
    while Instant::now() < until {
        shown = print_new(&watch, shown);
        std::thread::sleep(Duration::from_millis(200));
    }

    println!(
        "\n== raectl devices   (reads {} read-only)",
        spec.database().display()
    );
    raectl_print(&spec, &["devices"])?;
    let tv = &duts[duts.len() - 1];
    println!("\n== raectl show {}   (the SSDP/DIAL DUT)", tv.mac());
    raectl_print(&spec, &["show", &tv.mac().to_string(), "--limit", "8"])?;

    control_plane(&spec, &broker, &watch, tv, &mut shown)?;

    let unplug = &duts[2];
    println!(
        "\n== unplugging {} ({}): offline after {} missed probes, not after one",
        unplug.name(),
        unplug.mac(),
        spec.offline_after_misses
    );
    let before = watch.messages().len();
    let unplugged = Instant::now();
    unplug.unplug().context("unplugging")?;
    let mac = Mac(unplug.mac().0);
    let session = watch
        .events()
        .iter()
        .find_map(|e| match &e.event {
            Event::Snapshot { record } if record.mac == mac => Some(e.session),
            _ => None,
        })
        .context("the unplugged DUT has no session")?;
    watch
        .wait_for("the offline Delta", Duration::from_secs(30), |m| {
            m[before..]
                .iter()
                .filter_map(|r| r.event())
                .find(|e| e.session == session && is_offline(e))
                .map(|_| ())
        })
        .context("waiting for the offline Delta")?;
    println!(
        "   offline Delta after {:.1} s:",
        unplugged.elapsed().as_secs_f64()
    );
    print_new(&watch, shown);

    println!("\n== raectl status");
    raectl_print(&spec, &["status"])?;

    println!("\n== the Cloud Registry: device_sessions in PostgreSQL, written by cloud-sink");
    let rows = runtime.block_on(cloud_rows(&database_url, macs.len()))?;
    for row in rows {
        println!("   {row}");
    }

    println!("\n== stopping rae-agent (SIGTERM): it commits, says `offline`, exits 0");
    let status = agent
        .terminate(Duration::from_secs(20))
        .context("stopping rae-agent")?;
    println!("   exit status: {status}");
    wait_status(&watch, AgentState::Offline).context("waiting for the offline status")?;
    println!("   retained status on rae/v1/{SERIAL}/status: offline");

    let pcap = capture.finish()?;
    println!(
        "\n== the LAN recorded meanwhile, replayed offline: rae-agent --pcap {} --quiet",
        pcap.display()
    );
    // The RAE's own MACs (the bridge takes a port's MAC as ports join): not devices.
    let own: Vec<String> = std::fs::read_dir("/sys/class/net")
        .context("listing interfaces")?
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("address")).ok())
        .map(|mac| mac.trim().to_string())
        .filter(|mac| mac.len() == 17 && mac != "00:00:00:00:00:00")
        .collect();
    let mut replay = Command::new(&agent_bin);
    replay.arg("--pcap").arg(&pcap).arg("--quiet");
    for mac in &own {
        replay.args(["--own-mac", mac]);
    }
    let out = replay.output().context("running rae-agent --pcap")?;
    println!(
        "   (own MACs passed with --own-mac; the bridge's MAC from before its ports joined no longer\n    \
         exists, and a capture file does not say which frames this host sent, so it counts as a device)"
    );
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("   {line}");
    }

    if args.hold {
        println!(
            "\n== holding the lab; try e.g. `ip netns exec {} ip addr`; Ctrl-C ends it",
            duts[0].ns_name()
        );
        wait_for_ctrl_c()?;
    }
    println!("\n== tearing down (namespaces, bridge, dnsmasq, clients, broker, sink, database)");
    let _ = sink.terminate(Duration::from_secs(20));
    drop(postgres);
    drop(duts);
    drop(watch);
    drop(broker);
    drop(lab);
    println!("   done");
    Ok(())
}

const SERIAL: &str = "DEMO-RAE-1";

/// Commands both ways: `raectl` actions over the control socket and the cloud's
/// `cloud-sink command` through the broker, each effect shown as the Delta the cloud gets.
fn control_plane(
    spec: &AgentSpec,
    broker: &Mosquitto,
    watch: &MqttWatch,
    tv: &Dut,
    shown: &mut usize,
) -> Result<()> {
    let mac = tv.mac().to_string();
    println!(
        "\n== the control plane: raectl over the control socket {}",
        spec.control_socket.display()
    );
    let socket = spec.control_socket.display().to_string();
    for action in [vec!["ping"], vec!["set", mac.as_str(), "in-test"]] {
        println!("   $ raectl {}", action.join(" "));
        let mut args = vec!["--socket", socket.as_str()];
        args.extend_from_slice(&action);
        raectl_print(spec, &args)?;
    }
    wait_delta(watch, "the in-test Delta", |f| {
        matches!(f, Field::Availability(Availability::InTest))
    })?;
    *shown = print_new(watch, *shown);

    println!("\n== the cloud's requester: cloud-sink command --serial {SERIAL} (request on rae/v1/{SERIAL}/cmd/..., reply on its reply/ topic)");
    let cloud_sink = agent_binary()?
        .parent()
        .map(|dir| dir.join("cloud-sink"))
        .context("locating cloud-sink")?;
    for args in [
        vec!["ping"],
        vec!["set-esn", mac.as_str(), "DEMO-ESN-0001"],
        vec!["set-availability", mac.as_str(), "available"],
    ] {
        println!(
            "   $ cloud-sink command --serial {SERIAL} {}",
            args.join(" ")
        );
        let out = Command::new(&cloud_sink)
            .args(["--log-filter", "warn", "command"])
            .args(["--mqtt-host", broker.host(), "--mqtt-port"])
            .arg(broker.port().to_string())
            .args(["--serial", SERIAL])
            .args(&args)
            .output()
            .context("running cloud-sink command")?;
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("     {line}");
        }
        if !out.status.success() {
            bail!(
                "cloud-sink command {} failed: {}",
                args.join(" "),
                out.status
            );
        }
    }
    wait_delta(watch, "the available Delta", |f| {
        matches!(f, Field::Availability(Availability::Available))
    })?;
    *shown = print_new(watch, *shown);
    println!("   $ raectl show {mac}   (the history names who did it)");
    raectl_print(spec, &["show", &mac, "--limit", "3"])?;
    Ok(())
}

/// Waits for a Delta carrying a field `wanted` accepts.
fn wait_delta(watch: &MqttWatch, what: &str, wanted: impl Fn(&Field) -> bool) -> Result<()> {
    watch
        .wait_for(what, Duration::from_secs(30), |messages| {
            messages
                .iter()
                .filter_map(|m| m.event())
                .find_map(|e| match &e.event {
                    Event::Delta { fields } if fields.iter().any(&wanted) => Some(()),
                    _ => None,
                })
        })
        .with_context(|| format!("waiting for {what}"))
}

/// The open sessions of the Cloud Registry, once it holds at least `want` of them (the sink
/// writes within its batch wait), as table lines.
async fn cloud_rows(url: &str, want: usize) -> Result<Vec<String>> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .context("connecting to the Cloud Registry")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = sqlx::query(
            "SELECT serial, session::TEXT AS session, mac, ipv4, \
                    convert_from(hostname, 'UTF8') AS hostname, reachability, seq_hw, needs_resync \
             FROM device_sessions WHERE closed_seq IS NULL ORDER BY mac",
        )
        .fetch_all(&pool)
        .await
        .context("querying device_sessions")?;
        if rows.len() >= want || Instant::now() > deadline {
            use sqlx::Row;
            let mut out = vec![format!(
                "{:<11} {:<10} {:<17} {:<15} {:<16} {:<8} {:>6} {}",
                "serial", "session", "mac", "ipv4", "hostname", "reach", "seq_hw", "needs_resync"
            )];
            for r in rows {
                let session: String = r.get("session");
                out.push(format!(
                    "{:<11} {:<10} {:<17} {:<15} {:<16} {:<8} {:>6} {}",
                    r.get::<String, _>("serial"),
                    format!("{}..", &session[..8]),
                    r.get::<Option<String>, _>("mac").unwrap_or_default(),
                    r.get::<Option<String>, _>("ipv4")
                        .unwrap_or_else(|| "-".into()),
                    r.get::<Option<String>, _>("hostname")
                        .unwrap_or_else(|| "-".into()),
                    r.get::<Option<String>, _>("reachability")
                        .unwrap_or_default(),
                    r.get::<i64, _>("seq_hw"),
                    r.get::<bool, _>("needs_resync"),
                ));
            }
            pool.close().await;
            return Ok(out);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_offline(e: &Envelope) -> bool {
    matches!(&e.event, Event::Delta { fields } if fields.iter().any(|f| matches!(f, Field::Reachability(r) if r.state == Liveness::Offline)))
}

fn wait_status(watch: &MqttWatch, state: AgentState) -> Result<()> {
    let topic = format!("rae/v1/{SERIAL}/status");
    watch
        .wait_for(
            format!("status {}", state.as_str()),
            Duration::from_secs(30),
            |m| {
                m.iter()
                    .rev()
                    .find(|r| r.topic == topic)
                    .filter(|r| Status::decode(&r.payload).is_ok_and(|s| s.state == state))
                    .map(|_| ())
            },
        )
        .map_err(Into::into)
}

/// Prints the messages after the first `from`; returns how many there are now.
fn print_new(watch: &MqttWatch, from: usize) -> usize {
    let messages = watch.messages();
    for m in messages.iter().skip(from) {
        let kind = m.topic.rsplit('/').nth(1).unwrap_or("");
        match m.event() {
            Some(e) => println!("   {}", describe(&e)),
            None if m.topic.ends_with("/status") => {
                let state = Status::decode(&m.payload)
                    .map(|s| s.state.as_str())
                    .unwrap_or("?");
                println!(
                    "   status   {state}{}",
                    if m.retain { " (retained)" } else { "" }
                );
            }
            None if m.topic.ends_with("/inventory") => {
                let n = rae_proto::Inventory::decode(&m.payload)
                    .map(|i| i.sessions.len())
                    .unwrap_or(0);
                println!("   inventory: {n} open sessions");
            }
            None => println!("   {} ({kind})", m.topic),
        }
    }
    messages.len()
}

fn describe(e: &Envelope) -> String {
    let session = e.session.to_string();
    let short = &session[..8];
    match &e.event {
        Event::Snapshot { record } => format!(
            "Snapshot session {short}.. seq {:<3} {} ipv4 {} hostname {}",
            e.seq,
            record.mac,
            record
                .ipv4
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            record
                .hostname
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        Event::Delta { fields } => {
            let names: Vec<String> = fields
                .iter()
                .filter(|f| !matches!(f, Field::LastSeen(_)))
                .map(short_field)
                .collect();
            format!(
                "Delta    session {short}.. seq {:<3} {}",
                e.seq,
                names.join(", ")
            )
        }
        Event::Closed { reason } => {
            format!("Closed   session {short}.. seq {:<3} {reason:?}", e.seq)
        }
    }
}

fn short_field(f: &Field) -> String {
    match f {
        Field::Ipv4(ip) => format!(
            "ipv4={}",
            ip.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
        ),
        Field::Ipv6(list) => format!("ipv6={list:?}"),
        Field::Hostname(h) => format!(
            "hostname={}",
            h.as_ref().map(|t| t.to_string()).unwrap_or_default()
        ),
        Field::MdnsServices(s) => format!(
            "mdns_services=[{}]",
            s.iter()
                .map(|s| format!("{} {}:{}", s.service_type, s.instance, s.port))
                .collect::<Vec<_>>()
                .join("; ")
        ),
        Field::Upnp(Some(u)) => format!(
            "upnp={:?} by {:?}",
            u.friendly_name.as_deref().unwrap_or("-"),
            u.manufacturer.as_deref().unwrap_or("-")
        ),
        Field::DialApps(apps) => format!(
            "dial_apps=[{}]",
            apps.iter()
                .map(|a| format!("{} {:?}", a.name, a.state))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Field::Esn(e) => format!("esn={}", e.as_deref().unwrap_or("-")),
        Field::Reachability(r) => format!("reachability={:?}", r.state),
        Field::Availability(a) => format!("availability={a:?}"),
        other => format!("{:?}", other.id()),
    }
}

fn raectl_print(spec: &AgentSpec, args: &[&str]) -> Result<()> {
    let (status, out, err) = raectl(spec, args).context("running raectl")?;
    for line in out.lines().chain(err.lines()) {
        println!("   {line}");
    }
    if !status.success() {
        bail!("raectl {} failed ({status})", args.join(" "));
    }
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

fn plug_in_duts(lab: &Lab) -> Result<(Vec<Dut>, Vec<LabProcess>)> {
    let cast_ip = lab.net().host_v4(21);
    let tv_ip = lab.net().host_v4(22);
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
        DutSpec::new("cast", DutKind::StaticV4 { addr: cast_ip }),
        DutSpec::new("dial-tv", DutKind::StaticV4 { addr: tv_ip }),
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
    let cast_s = cast_ip.to_string();
    let tv_s = tv_ip.to_string();
    #[rustfmt::skip]
    let responders = vec![
        responder(&duts[4], "mdns_responder.py", &[
            "--ip", &cast_s, "--type", "_googlecast._tcp.local.", "--instance", "Lab Cast",
            "--host", "lab-cast", "--port", "8009", "--txt", "md=Chromecast Ultra",
        ])?,
        responder(&duts[5], "ssdp_dial_responder.py", &[
            "--ip", &tv_s, "--friendly-name", "Lab TV", "--manufacturer", "Acme",
            "--model-name", "Acme Cast", "--serial", "SN-0001", "--netflix-state", "running",
            "--esn", "NFLAB-ESN-0001",
        ])?,
    ];
    println!(
        "   cast: python3-zeroconf announcing _googlecast._tcp; dial-tv: SSDP/UPnP/DIAL server"
    );
    Ok((duts, responders))
}

fn responder(dut: &Dut, script: &str, args: &[&str]) -> Result<LabProcess> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("responders")
        .join(script);
    let mut argv = vec!["/usr/bin/python3".to_string(), path.display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let process = dut
        .spawn(&argv)
        .with_context(|| format!("starting {script}"))?;
    wait_until(
        format!("{script} to be ready"),
        Duration::from_secs(30),
        || {
            let log = std::fs::read_to_string(process.log_path()).unwrap_or_default();
            Ok(if log.contains("READY") {
                Ok(())
            } else {
                Err(log)
            })
        },
    )?;
    Ok(process)
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
            DutKind::StaticV6 { .. } => "static6",
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

    /// Stops tcpdump (it flushes on SIGTERM) and returns the capture file.
    fn finish(mut self) -> Result<PathBuf> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
        Ok(self.path.clone())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn check_agent_config(agent: &Path, spec: &AgentSpec) -> Result<()> {
    std::fs::create_dir_all(&spec.state_dir).context("creating the agent's state dir")?;
    let config = spec.state_dir.join("config.toml");
    std::fs::write(&config, spec.toml()).context("writing the agent's config")?;
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

fn wait_for_ctrl_c() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a tokio runtime")?;
    runtime
        .block_on(tokio::signal::ctrl_c())
        .context("waiting for Ctrl-C")
}
