//! Identification on the lab LAN: the agent's SSDP search identifies a DUT running an
//! SSDP/UPnP/DIAL server (description fields, Netflix state and ESN), fetches each device once
//! per interval, never follows a LOCATION to another host; its mDNS browse finds a DUT's
//! python3-zeroconf services by type enumeration, with host name, address, port and TXT keys,
//! and sees them go.
//!
//! SSDP runs in the root namespace bound to the lab's router address, like the agent on the
//! RAE's LAN port. The mDNS browse runs in a namespace of its own on the lab bridge: `mdns-sd`
//! joins the mDNS group on every interface of its namespace when it starts, which in the root
//! namespace would send IGMP/MLD reports on the host's own interfaces.
//!
//! Needs root, iproute2, busybox, dnsmasq, udhcpc and Debian's `/usr/bin/python3` with the
//! zeroconf module (package python3-zeroconf).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use rae_agent::probe::{
    FetchLimits, Identified, MdnsBrowser, MdnsHost, MdnsSettings, SsdpSearch, SsdpSettings,
};
use rae_proto::{DialApp, DialAppState, Text, TxtEntry, UpnpDescription};
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Footprint, Lab, LabConfig, LabProcess};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(30);
const PYTHON: &str = "/usr/bin/python3";

fn responder(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("responders")
        .join(name)
}

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

fn start_lab() -> Lab {
    Lab::start(LabConfig::default()).unwrap_or_else(|e| panic!("starting the lab: {e}"))
}

fn add(lab: &Lab, spec: DutSpec) -> Dut {
    let name = spec.name.clone();
    lab.add_dut(spec).unwrap_or_else(|e| {
        panic!(
            "adding DUT {name}: {e}\ndnsmasq log:\n{}",
            lab.dnsmasq_log()
        )
    })
}

fn static_dut(lab: &Lab, name: &str, host: u8) -> (Dut, Ipv4Addr) {
    let addr = lab.net().host_v4(host);
    (
        add(lab, DutSpec::new(name, DutKind::StaticV4 { addr })),
        addr,
    )
}

fn log_of(process: &LabProcess) -> String {
    std::fs::read_to_string(process.log_path()).unwrap_or_default()
}

/// Waits until the responder's log has `needle`, failing at once if it died.
fn wait_for_line(process: &mut LabProcess, needle: &str) {
    let what = format!("`{needle}` in the log of `{}`", process.label());
    wait_until(what, WAIT, || {
        let log = log_of(process);
        if log.contains(needle) {
            return Ok(Ok(()));
        }
        process.ensure_running()?;
        Ok(Err(format!("log so far:\n{log}")))
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

fn spawn_responder(dut: &Dut, script: &str, args: &[&str]) -> LabProcess {
    let script = responder(script);
    let mut argv = vec![PYTHON.to_string(), script.display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let mut process = dut
        .spawn(&argv)
        .unwrap_or_else(|e| panic!("starting {argv:?} in {}: {e}", dut.name()));
    wait_for_line(&mut process, "READY");
    process
}

fn assert_gone(footprint: &Footprint) {
    let left = footprint.remaining();
    assert!(
        left.is_empty(),
        "left behind by the lab in slot {}: {left:#?}",
        footprint.slot()
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

#[test]
fn ssdp_search_identifies_a_dial_device_once_and_never_follows_a_foreign_location() {
    let lab = start_lab();
    let (tv, tv_ip) = static_dut(&lab, "tv", 20);
    let (liar, liar_ip) = static_dut(&lab, "liar", 21);
    let (bystander, bystander_ip) = static_dut(&lab, "bystander", 22);
    let (tv_s, liar_s, bystander_s) = (
        tv_ip.to_string(),
        liar_ip.to_string(),
        bystander_ip.to_string(),
    );
    #[rustfmt::skip]
    let mut tv_server = spawn_responder(&tv, "ssdp_dial_responder.py", &[
        "--ip", &tv_s, "--friendly-name", "Lab TV & Co", "--manufacturer", "Acme",
        "--model-name", "Acme Cast", "--model-number", "AC-1", "--serial", "SN-0001",
        "--udn", "uuid:00000000-0000-4000-8000-000000000020", "--netflix-state", "running",
        "--esn", "NFLAB-ESN-0001",
    ]);
    // Answers searches with a LOCATION on the bystander's address: must never be fetched.
    let liar_server = spawn_responder(
        &liar,
        "ssdp_dial_responder.py",
        &[
            "--ip",
            &liar_s,
            "--location-ip",
            &bystander_s,
            "--friendly-name",
            "Liar",
        ],
    );
    let bystander_server = spawn_responder(
        &bystander,
        "ssdp_dial_responder.py",
        &["--ip", &bystander_s, "--no-ssdp"],
    );

    let settings = SsdpSettings {
        mx: 1,
        search_every: Duration::from_secs(1),
        fetch: FetchLimits {
            refetch_after: Duration::from_secs(3600),
            ..FetchLimits::default()
        },
        ..SsdpSettings::default()
    };
    let search = SsdpSearch::bind(lab.router_v4(), settings)
        .unwrap_or_else(|e| panic!("binding the search socket: {e}"));
    let rt = runtime();
    let (out, mut identified) = mpsc::channel::<Identified>(16);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = rt.spawn(search.run(out, async {
        let _ = stopped.await;
    }));

    let found = rt.block_on(async {
        tokio::time::timeout(WAIT, identified.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no device identified within {WAIT:?}; tv log:\n{}",
                    log_of(&tv_server)
                )
            })
            .expect("the search task ended")
    });
    assert_eq!(found.ip, IpAddr::V4(tv_ip));
    assert_eq!(
        found.upnp,
        UpnpDescription {
            friendly_name: Some("Lab TV & Co".into()),
            manufacturer: Some("Acme".into()),
            model_name: Some("Acme Cast".into()),
            model_number: Some("AC-1".into()),
            serial_number: Some("SN-0001".into()),
            udn: Some("uuid:00000000-0000-4000-8000-000000000020".into()),
        }
    );
    assert_eq!(
        found.dial_apps,
        vec![DialApp {
            name: "Netflix".into(),
            state: DialAppState::Running,
            additional_data: Some("<esn>NFLAB-ESN-0001</esn><version>lab-1</version>".into()),
        }]
    );
    assert_eq!(found.esn.as_deref(), Some("NFLAB-ESN-0001"));

    // Let three more search rounds reach the TV: it answers each, and is fetched only once.
    let rounds_before = log_of(&tv_server).matches("st=ssdp:all").count();
    wait_until("three more SSDP searches reaching the TV", WAIT, || {
        tv_server.ensure_running()?;
        let rounds = log_of(&tv_server).matches("st=ssdp:all").count();
        Ok(if rounds >= rounds_before + 3 {
            Ok(())
        } else {
            Err(format!("{rounds} searches so far"))
        })
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // The window of the last answered search closes (MX 1 + 1 s) before the search stops.
    let last_window = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(3), identified.recv()).await });
    assert!(
        last_window.is_err(),
        "identified again within the refetch interval: {last_window:?}"
    );
    let _ = stop.send(());
    rt.block_on(task)
        .expect("the search task panicked")
        .unwrap_or_else(|e| panic!("the search failed: {e}"));
    assert!(
        identified.try_recv().is_err(),
        "another device was identified"
    );

    let tv_log = log_of(&tv_server);
    let router = lab.router_v4().to_string();
    assert_eq!(
        tv_log
            .matches(&format!("GET /dd.xml from {router}"))
            .count(),
        1,
        "description fetches:\n{tv_log}"
    );
    assert_eq!(
        tv_log
            .matches(&format!("GET /apps/Netflix from {router}"))
            .count(),
        1,
        "DIAL fetches:\n{tv_log}"
    );
    assert!(
        log_of(&liar_server).contains("MSEARCH from"),
        "the liar never saw a search:\n{}",
        log_of(&liar_server)
    );
    let bystander_log = log_of(&bystander_server);
    assert!(
        !bystander_log.contains("GET "),
        "the liar's LOCATION was followed to the bystander:\n{bystander_log}"
    );

    let footprint = lab.footprint();
    drop((tv_server, liar_server, bystander_server));
    drop((tv, liar, bystander));
    drop(lab);
    assert_gone(&footprint);
}

/// Starts the mDNS browser on `eth0` of `agent`'s namespace: the daemon thread is spawned
/// from a thread that entered it, and stays there.
fn browser_in(agent: &Dut, settings: MdnsSettings) -> MdnsBrowser {
    let ns_path = PathBuf::from("/run/netns").join(agent.ns_name());
    std::thread::spawn(move || {
        let ns =
            File::open(&ns_path).unwrap_or_else(|e| panic!("opening {}: {e}", ns_path.display()));
        setns(&ns, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering {}: {e}", ns_path.display()));
        MdnsBrowser::start("eth0", settings)
    })
    .join()
    .expect("the thread starting the browser panicked")
    .unwrap_or_else(|e| panic!("starting the mDNS browser: {e}"))
}

/// Receives host reports until `done` accepts one.
fn next_report(
    rt: &tokio::runtime::Runtime,
    reports: &mut mpsc::Receiver<MdnsHost>,
    what: &str,
    responder: &LabProcess,
    mut done: impl FnMut(&MdnsHost) -> bool,
) -> MdnsHost {
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, reports.recv()).await {
                Ok(Some(host)) if done(&host) => return host,
                Ok(Some(host)) => seen.push(host),
                Ok(None) => panic!("the browser ended while waiting for {what}"),
                Err(_) => panic!(
                    "no report of {what} within {WAIT:?}; reports: {seen:#?}\nresponder log:\n{}",
                    log_of(responder)
                ),
            }
        }
    })
}

#[test]
fn mdns_browse_finds_services_by_type_enumeration_with_hostname_and_txt() {
    require_python_zeroconf();
    let lab = start_lab();
    let cast = add(
        &lab,
        DutSpec::new(
            "cast",
            DutKind::Udhcpc {
                hostname: Some("lab-cast".into()),
                vendor_class: None,
                client_id: None,
            },
        ),
    );
    let cast_ip = cast
        .ipv4()
        .unwrap_or_else(|e| panic!("reading the cast DUT's address: {e}"))
        .expect("the cast DUT has no IPv4 address");
    let (agent, _) = static_dut(&lab, "rae", 2);
    let cast_s = cast_ip.to_string();
    #[rustfmt::skip]
    let mut zeroconf = spawn_responder(&cast, "mdns_responder.py", &[
        "--ip", &cast_s, "--type", "_googlecast._tcp.local.", "--instance", "Lab Cast",
        "--host", "lab-cast", "--port", "8009",
        "--txt", "md=Chromecast Ultra", "--txt", "cd=not-selected", "--txt", "fn=Lab Cast",
        "--txt", "id=0123abcd", "--txt", "ty",
        "--also", "_airplay._tcp.local.:Lab Cast:7000",
    ]);

    let settings = MdnsSettings {
        report_every: Duration::from_millis(500),
        ..MdnsSettings::default()
    };
    let browser = browser_in(&agent, settings);
    let rt = runtime();
    let (out, mut reports) = mpsc::channel::<MdnsHost>(16);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = rt.spawn(browser.run(out, async {
        let _ = stopped.await;
    }));

    let host = next_report(
        &rt,
        &mut reports,
        "lab-cast with two services",
        &zeroconf,
        |h| h.hostname == "lab-cast" && h.services.len() == 2,
    );
    assert_eq!(host.addresses, vec![IpAddr::V4(cast_ip)]);
    let airplay = &host.services[0];
    assert_eq!(airplay.service_type, "_airplay._tcp.local.");
    assert_eq!(airplay.instance, "Lab Cast");
    assert_eq!(airplay.port, 7000);
    assert!(airplay.txt.is_empty(), "{:?}", airplay.txt);
    let googlecast = &host.services[1];
    assert_eq!(googlecast.service_type, "_googlecast._tcp.local.");
    assert_eq!(googlecast.instance, "Lab Cast");
    assert_eq!(googlecast.port, 8009);
    let entry = |key: &str, value: Option<&str>| TxtEntry {
        key: key.into(),
        value: value.map(Text::from),
    };
    assert_eq!(
        googlecast.txt,
        vec![
            entry("md", Some("Chromecast Ultra")),
            entry("fn", Some("Lab Cast")),
            entry("id", Some("0123abcd")),
            entry("ty", None),
        ]
    );

    // The responder says goodbye: the host is reported without services.
    zeroconf
        .signal(nix::sys::signal::Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("stopping the responder: {e}"));
    wait_for_line(&mut zeroconf, "STOPPED");
    next_report(
        &rt,
        &mut reports,
        "lab-cast without services",
        &zeroconf,
        |h| h.hostname == "lab-cast" && h.services.is_empty(),
    );

    let _ = stop.send(());
    rt.block_on(task)
        .expect("the browser task panicked")
        .unwrap_or_else(|e| panic!("the browser failed: {e}"));
    let footprint = lab.footprint();
    drop(zeroconf);
    drop((cast, agent));
    drop(lab);
    assert_gone(&footprint);
}
