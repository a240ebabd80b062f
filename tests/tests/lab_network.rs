//! The lab's LAN: real DHCP clients leased by dnsmasq, SLAAC, cable and address changes,
//! parallel labs, and cleanup (every test checks that what it created is gone).
//!
//! Needs root and dnsmasq, udhcpc, dhclient, busybox and iproute2.

use std::net::{IpAddr, Ipv4Addr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use rae_tests::netlab::{wait_until, Dut, DutKind, DutSpec, Footprint, Lab, LabConfig, MacAddr};
use rae_tests::sweep::{lab_etc_netns, lab_namespaces, netns_pids, process_info, sweep_stale};

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

fn udhcpc(name: &str, hostname: &str, client_id: Option<Vec<u8>>) -> DutSpec {
    DutSpec::new(
        name,
        DutKind::Udhcpc {
            hostname: Some(hostname.to_string()),
            vendor_class: Some("acme-phone 1.0".to_string()),
            client_id,
        },
    )
}

fn dhclient(name: &str, hostname: &str, vendor_class: Option<&str>) -> DutSpec {
    DutSpec::new(
        name,
        DutKind::Dhclient {
            hostname: Some(hostname.to_string()),
            vendor_class: vendor_class.map(str::to_string),
        },
    )
}

fn static_v4(name: &str, addr: Ipv4Addr) -> DutSpec {
    DutSpec::new(name, DutKind::StaticV4 { addr })
}

fn v4(dut: &Dut) -> Ipv4Addr {
    dut.ipv4()
        .unwrap()
        .unwrap_or_else(|| panic!("DUT {} has no IPv4 address", dut.name()))
}

fn assert_gone(footprint: &Footprint) {
    let left = footprint.remaining();
    assert!(
        left.is_empty(),
        "left behind by the lab in slot {}: {left:#?}",
        footprint.slot()
    );
}

/// Runs `test` with a lab and checks afterwards that everything the lab created is gone.
fn with_lab(test: impl FnOnce(&Lab) -> Footprint) {
    let lab = start_lab();
    let footprint = test(&lab);
    drop(lab);
    assert_gone(&footprint);
}

fn in_dhcp_range(lab: &Lab, ip: Ipv4Addr) -> bool {
    let (first, last) = lab.net().dhcp_range();
    first <= ip && ip <= last
}

#[test]
fn udhcpc_dut_is_leased_by_dnsmasq_with_its_hostname_vendor_class_and_client_id() {
    with_lab(|lab| {
        let client_id = vec![0x01, 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee];
        let dut = add(lab, udhcpc("phone", "phone-a", Some(client_id.clone())));
        let ip = v4(&dut);
        assert!(in_dhcp_range(lab, ip), "{ip} is outside the DHCP range");
        let lease = lab
            .wait_for_lease("the phone's MAC", |l| l.mac == dut.mac())
            .unwrap();
        assert_eq!(lease.ip, ip);
        assert_eq!(lease.hostname.as_deref(), Some("phone-a"));
        assert_eq!(lease.client_id, Some(client_id));
        assert!(
            lab.dnsmasq_log().contains("vendor class: acme-phone 1.0"),
            "dnsmasq did not see the vendor class:\n{}",
            lab.dnsmasq_log()
        );
        assert!(
            lab.ping(IpAddr::V4(ip)).unwrap(),
            "the leased address does not answer"
        );
        assert!(
            dut.ping(IpAddr::V4(lab.router_v4())).unwrap(),
            "the DUT cannot reach the router"
        );
        lab.footprint()
    });
}

#[test]
fn dhclient_dut_is_leased_with_its_hostname_and_vendor_class_and_keeps_host_resolv_conf() {
    let host_resolv = std::fs::read("/etc/resolv.conf").ok();
    with_lab(|lab| {
        let spec = DutSpec::new(
            "laptop",
            DutKind::Dhclient {
                hostname: Some("laptop-b".to_string()),
                vendor_class: Some("acme-laptop".to_string()),
            },
        );
        let dut = add(lab, spec);
        let ip = v4(&dut);
        let lease = lab
            .wait_for_lease("the laptop's MAC", |l| l.mac == dut.mac())
            .unwrap();
        assert_eq!(lease.ip, ip);
        assert_eq!(lease.hostname.as_deref(), Some("laptop-b"));
        assert!(
            lab.dnsmasq_log().contains("vendor class: acme-laptop"),
            "dnsmasq did not see the vendor class:\n{}",
            lab.dnsmasq_log()
        );
        assert!(lab.ping(IpAddr::V4(ip)).unwrap());
        let resolv = dut.exec(["cat", "/etc/resolv.conf"]).unwrap();
        assert!(
            resolv.contains("rae-lab DUT laptop"),
            "the DUT sees the host's resolv.conf: {resolv}"
        );
        lab.footprint()
    });
    assert_eq!(
        std::fs::read("/etc/resolv.conf").ok(),
        host_resolv,
        "the host's resolv.conf changed"
    );
}

#[test]
fn ipv6_only_dut_gets_a_slaac_address_from_the_lab_prefix() {
    with_lab(|lab| {
        let dut = add(lab, DutSpec::new("sensor", DutKind::Slaac));
        assert_eq!(dut.ipv4().unwrap(), None, "an IPv6-only DUT has IPv4");
        let addr = dut.slaac_addr().unwrap().expect("no SLAAC address");
        let (prefix, _) = lab.prefix_v6();
        assert_eq!(addr.segments()[..4], prefix.segments()[..4]);
        assert_eq!(
            addr.segments()[4..],
            dut.mac().eui64_interface_id(),
            "not the EUI-64 of the DUT's MAC"
        );
        assert!(
            lab.ping(IpAddr::V6(addr)).unwrap(),
            "{addr} does not answer"
        );
        assert!(
            dut.ping(IpAddr::V6(lab.router_v6())).unwrap(),
            "the DUT cannot reach the router"
        );
        assert!(
            lab.leases().unwrap().is_empty(),
            "an IPv6-only DUT asked for a DHCPv4 lease"
        );
        lab.footprint()
    });
}

#[test]
fn unplug_cuts_the_dut_off_and_replug_brings_it_back() {
    with_lab(|lab| {
        let mut duts = [
            add(lab, udhcpc("tv", "tv-c", None)),
            add(lab, dhclient("laptop", "laptop-c", None)),
            add(lab, static_v4("printer", lab.net().host_v4(20))),
        ];
        let ips: Vec<Ipv4Addr> = duts.iter().map(v4).collect();
        for ip in &ips {
            lab.wait_reachable(IpAddr::V4(*ip)).unwrap();
        }
        for dut in &duts {
            dut.unplug().unwrap();
            let host = dut.host_link_state().unwrap();
            assert!(
                !host.admin_up && !host.carrier,
                "{}: host end still up: {host:?}",
                dut.name()
            );
            assert!(
                !dut.link_state().unwrap().carrier,
                "{}: eth0 still has a carrier",
                dut.name()
            );
        }
        for ip in &ips {
            assert!(
                lab.unreachable(IpAddr::V4(*ip), 2).unwrap(),
                "{ip} answers while unplugged"
            );
        }
        for dut in &mut duts {
            dut.replug().unwrap();
        }
        for (dut, ip) in duts.iter().zip(&ips) {
            lab.wait_reachable(IpAddr::V4(*ip)).unwrap();
            assert!(dut.host_link_state().unwrap().admin_up && dut.link_state().unwrap().carrier);
            assert_eq!(
                v4(dut),
                *ip,
                "{} came back with another address",
                dut.name()
            );
        }
        lab.footprint()
    });
}

/// Waits until the root namespace resolves `ip` to `mac` after pinging it.
fn wait_neighbour(lab: &Lab, ip: Ipv4Addr, mac: MacAddr) {
    wait_until(
        format!("{ip} answering from {mac}"),
        Duration::from_secs(20),
        || {
            let answered = lab.ping(IpAddr::V4(ip))?;
            let seen = lab.neighbour_mac(IpAddr::V4(ip))?;
            Ok(if answered && seen == Some(mac) {
                Ok(())
            } else {
                Err(format!("ping {answered}, neighbour {seen:?}"))
            })
        },
    )
    .unwrap();
}

#[test]
fn mac_change_takes_effect_on_the_bridge_the_neighbour_table_and_the_lease() {
    with_lab(|lab| {
        let client_id = vec![0xff, 0x00, 0x00, 0x00, 0x07];
        let mut phone = add(lab, udhcpc("phone", "phone-d", Some(client_id.clone())));
        let mut fixed = add(lab, static_v4("camera", lab.net().host_v4(21)));
        for dut in [&mut phone, &mut fixed] {
            let ip = v4(dut);
            let old = dut.mac();
            wait_neighbour(lab, ip, old);
            let new = MacAddr([0x02, 0x99, 0, 0, lab.slot() as u8, old.0[5]]);
            dut.set_mac(new).unwrap();
            assert_eq!(dut.mac(), new);
            assert_eq!(
                v4(dut),
                ip,
                "{}: the address changed with the MAC",
                dut.name()
            );
            wait_neighbour(lab, ip, new);
            let fdb = lab.fdb_macs(dut.host_link()).unwrap();
            assert!(
                fdb.contains(&new),
                "{}: bridge has not learned {new} on {}: {fdb:?}",
                dut.name(),
                dut.host_link()
            );
        }
        let lease = lab
            .wait_for_lease("the phone's client id under its new MAC", |l| {
                l.client_id.as_ref() == Some(&client_id) && l.mac == phone.mac()
            })
            .unwrap();
        assert_eq!(lease.ip, v4(&phone));
        lab.footprint()
    });
}

#[test]
fn ip_change_takes_effect_for_static_udhcpc_and_dhclient_duts() {
    with_lab(|lab| {
        let net = lab.net();
        let mut duts = [
            (add(lab, static_v4("nas", net.host_v4(30))), net.host_v4(31)),
            (add(lab, udhcpc("phone", "phone-e", None)), net.host_v4(150)),
            (
                add(lab, dhclient("laptop", "laptop-e", None)),
                net.host_v4(160),
            ),
        ];
        for (dut, new) in &mut duts {
            let new = *new;
            let old = v4(dut);
            dut.set_ipv4(new).unwrap_or_else(|e| {
                panic!("{}: {e}\ndnsmasq log:\n{}", dut.name(), lab.dnsmasq_log())
            });
            assert_eq!(v4(dut), new);
            lab.wait_reachable(IpAddr::V4(new)).unwrap();
            assert!(
                lab.unreachable(IpAddr::V4(old), 2).unwrap(),
                "{}: old address {old} still answers",
                dut.name()
            );
            if !matches!(dut.kind(), DutKind::StaticV4 { .. }) {
                let mac = dut.mac();
                let lease = lab
                    .wait_for_lease(&format!("{new}"), |l| l.mac == mac && l.ip == new)
                    .unwrap();
                assert!(lease.hostname.is_some());
                let leases = lab.leases().unwrap();
                assert!(
                    !leases.iter().any(|l| l.ip == old),
                    "{}: {old} is still leased: {leases:?}",
                    dut.name()
                );
            }
        }
        let mut sensor = add(lab, DutSpec::new("sensor", DutKind::Slaac));
        assert!(
            sensor.set_ipv4(net.host_v4(40)).is_err(),
            "an IPv6-only DUT took an IPv4 address"
        );
        lab.footprint()
    });
}

#[test]
fn two_labs_started_at_once_get_their_own_slots_and_both_work() {
    let results = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for i in 0..2 {
            let results = &results;
            scope.spawn(move || {
                let lab = start_lab();
                let dut = add(&lab, udhcpc("phone", &format!("phone-{i}"), None));
                let ip = v4(&dut);
                assert!(
                    lab.net().contains(IpAddr::V4(ip)),
                    "{ip} is not in lab {}'s subnet",
                    lab.slot()
                );
                lab.wait_reachable(IpAddr::V4(ip)).unwrap();
                let leases = lab
                    .wait_for_lease("the phone", |l| l.mac == dut.mac())
                    .unwrap();
                assert_eq!(leases.hostname, Some(format!("phone-{i}")));
                let footprint = lab.footprint();
                results.lock().unwrap().push((
                    lab.slot(),
                    lab.bridge_name().to_string(),
                    lab.subnet_v4(),
                    footprint,
                ));
                // Both labs are up at the same time until both threads got here.
                wait_until("the other lab", Duration::from_secs(60), || {
                    Ok(if results.lock().unwrap().len() == 2 {
                        Ok(())
                    } else {
                        Err("not started".to_string())
                    })
                })
                .unwrap();
            });
        }
    });
    let results = results.into_inner().unwrap();
    assert_ne!(results[0].0, results[1].0, "same slot");
    assert_ne!(results[0].1, results[1].1, "same bridge");
    assert_ne!(results[0].2, results[1].2, "same subnet");
    for (_, _, _, footprint) in &results {
        assert_gone(footprint);
    }
}

#[test]
fn a_panic_inside_a_lab_still_removes_everything() {
    let footprint = Mutex::new(None);
    let spawned = Mutex::new(None);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let lab = start_lab();
        let dut = add(&lab, udhcpc("phone", "phone-f", None));
        let _static_dut = add(&lab, static_v4("printer", lab.net().host_v4(22)));
        let _v6 = add(&lab, DutSpec::new("sensor", DutKind::Slaac));
        let sleeper = dut.spawn(["sleep", "600"]).unwrap();
        let pid = sleeper.pid();
        assert!(
            netns_pids(dut.ns_name()).contains(&pid),
            "spawned process is not in the DUT's namespace"
        );
        *spawned.lock().unwrap() = process_info(pid);
        *footprint.lock().unwrap() = Some(lab.footprint());
        panic!("deliberate panic with a lab up");
    }));
    assert!(outcome.is_err(), "the closure should have panicked");
    let footprint = footprint
        .into_inner()
        .unwrap()
        .expect("the lab never came up");
    assert_gone(&footprint);
    let sleeper = spawned.into_inner().unwrap().expect("no spawned process");
    assert!(
        !matches!(process_info(sleeper.pid), Some(p) if p.start_time == sleeper.start_time),
        "the process spawned in the DUT survived"
    );
}

#[test]
fn exec_and_spawn_run_inside_the_dut_namespace() {
    with_lab(|lab| {
        let dut = add(lab, static_v4("box", lab.net().host_v4(23)));
        let links = dut.exec(["ip", "-o", "link", "show"]).unwrap();
        assert!(
            links.contains("eth0") && !links.contains(lab.bridge_name()),
            "exec ran outside the namespace: {links}"
        );
        assert!(
            dut.exec(["false"]).is_err(),
            "a failing command must be an error"
        );
        assert!(!dut.exec_output(["false"]).unwrap().status.success());
        let server = dut.spawn(["sleep", "600"]).unwrap();
        let pid = server.pid();
        assert!(netns_pids(dut.ns_name()).contains(&pid));
        drop(server);
        assert!(
            process_info(pid).is_none(),
            "the spawned process outlived its guard"
        );
        lab.footprint()
    });
}

/// A dead owner's pid: a process that has already exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn sweep_removes_what_a_crashed_lab_left_and_spares_running_labs() {
    let live = start_lab();
    let live_dut = add(&live, udhcpc("phone", "phone-g", None));
    // Fake a crashed lab: a slot's resources with no lock holder, and a process and a
    // directory of an owner that is dead.
    let slot = rae_tests::netlab::slot::SlotLock::claim_free().unwrap();
    let n = slot.slot();
    let ns = rae_tests::netlab::slot::ns_name(n, "ghost");
    let bridge = rae_tests::netlab::slot::bridge_name(n);
    let ip = |args: &[&str]| {
        assert!(
            Command::new("ip").args(args).status().unwrap().success(),
            "ip {args:?}"
        )
    };
    ip(&["netns", "add", &ns]);
    ip(&["link", "add", &bridge, "type", "bridge"]);
    std::fs::create_dir_all(format!("/etc/netns/{ns}")).unwrap();
    let ifindex = std::fs::read_to_string(format!("/sys/class/net/{bridge}/ifindex")).unwrap();
    let mut in_ns = Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "600"])
        .spawn()
        .unwrap();
    let owner = dead_pid();
    let dead_dir = format!("{}/{owner}-ghost-0", rae_tests::labdir::LAB_ROOT);
    std::fs::create_dir_all(&dead_dir).unwrap();
    let mut orphan = {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .args(["-c", &format!("sleep 600; : {dead_dir}/state")])
            .process_group(0)
            .spawn()
            .unwrap()
    };
    drop(slot);

    let report = sweep_stale();
    assert!(
        report.failed.is_empty(),
        "sweep failures: {:?}",
        report.failed
    );
    // Another lab may reuse the slot at once, so the bridge is checked by ifindex.
    assert!(
        std::fs::read_to_string(format!("/sys/class/net/{bridge}/ifindex")).ok() != Some(ifindex),
        "the stale bridge {bridge} is still there"
    );
    assert!(
        !lab_namespaces().contains(&ns),
        "the stale namespace {ns} is still there"
    );
    assert!(
        !lab_etc_netns().contains(&ns),
        "/etc/netns/{ns} is still there"
    );
    assert!(
        !std::path::Path::new(&dead_dir).exists(),
        "the dead owner's directory is still there"
    );
    let exited = |child: &mut std::process::Child| {
        wait_until("a swept process exiting", Duration::from_secs(5), || {
            Ok(child
                .try_wait()
                .unwrap()
                .map(drop)
                .ok_or_else(|| "running".to_string()))
        })
    };
    exited(&mut in_ns).expect("the process in the stale namespace survived the sweep");
    exited(&mut orphan).expect("the dead owner's process survived the sweep");

    // The running lab was left alone.
    assert!(lab_namespaces().contains(&live_dut.ns_name().to_string()));
    live.wait_reachable(IpAddr::V4(v4(&live_dut))).unwrap();
    let footprint = live.footprint();
    drop(live_dut);
    drop(live);
    assert_gone(&footprint);
}
