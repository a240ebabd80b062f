//! Identification on the lab LAN: the agent's SSDP search identifies a DUT running an
//! SSDP/UPnP/DIAL server (description fields, Netflix state and ESN), fetches each device once
//! per interval, and never follows a LOCATION to another host. (mDNS is in `agent_mdns`.)
//!
//! SSDP runs in the root namespace bound to the lab's router address, like the agent on the
//! RAE's LAN port.
//!
//! Needs root, iproute2, busybox, dnsmasq, udhcpc and Debian's `/usr/bin/python3` with the
//! zeroconf module (package python3-zeroconf).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use rae_agent::probe::{FetchLimits, Identified, SsdpSearch, SsdpSettings};
use rae_proto::{DialApp, DialAppState, UpnpDescription};
use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Footprint, Lab, LabConfig, LabProcess};
use tokio::sync::{mpsc, oneshot};

const WAIT: Duration = Duration::from_secs(30);
const PYTHON: &str = "/usr/bin/python3";

fn responder(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("responders")
        .join(name)
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
