//! Devices under test: one network namespace each, its `eth0` one end of a veth pair
//! whose other end (`rlab<N>d<k>`) is a port of the lab bridge.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::client::{self, in_ns, Identity, DUT_IF};
use super::error::{LabError, Result};
use super::ipv6::{self, Ipv6AddrState};
use super::mac::MacAddr;
use super::process::LabProcess;
use super::sys::{
    addresses, ip, ip_json, output, ping_once, run, tool, v4_in, wait_until, write_sysctls,
};
use super::wire::WireRecord;
use super::{delete_link, delete_netns, link_state, slot, DutRecord, LabInner, LinkState};
use crate::sweep::pid_in_netns;

/// How long a DHCP client gets to release its lease and exit.
const CLIENT_GRACE: Duration = Duration::from_secs(5);

/// What runs in a DUT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DutKind {
    /// busybox `udhcpc`. `None` fields are not sent, except the vendor class, where
    /// udhcpc then sends its own (`udhcp 1.35.0`), and the client id, where it sends
    /// `01` + MAC.
    Udhcpc {
        hostname: Option<String>,
        vendor_class: Option<String>,
        client_id: Option<Vec<u8>>,
    },
    /// ISC `dhclient -4`; no client id (dnsmasq keys its lease by MAC).
    Dhclient {
        hostname: Option<String>,
        vendor_class: Option<String>,
    },
    /// A fixed IPv4 address inside the lab's /24, default route via the bridge.
    StaticV4 { addr: Ipv4Addr },
    /// IPv6 only: no IPv4 address, a SLAAC address from the lab's prefix.
    Slaac,
    /// IPv6 only: a fixed address inside the lab's /64 and no SLAAC (router
    /// advertisements ignored), the prefix on-link; no IPv4 address.
    StaticV6 { addr: Ipv6Addr },
}

impl DutKind {
    fn is_dhcp(&self) -> bool {
        matches!(self, DutKind::Udhcpc { .. } | DutKind::Dhclient { .. })
    }

    /// The kinds without IPv4, whose `eth0` always does IPv6.
    pub fn is_ipv6_only(&self) -> bool {
        matches!(self, DutKind::Slaac | DutKind::StaticV6 { .. })
    }
}

/// A DUT to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DutSpec {
    /// Lowercase letters, digits and `-`, at most 24; unique within the lab.
    pub name: String,
    pub kind: DutKind,
    /// `None`: a locally administered MAC derived from the lab slot and DUT index.
    pub mac: Option<MacAddr>,
    /// Whether `eth0` does IPv6 (link-local and SLAAC). Always on for the IPv6-only kinds;
    /// off by default for the IPv4 kinds so their traffic is IPv4 only.
    pub ipv6: bool,
    /// Duplicate Address Detection and neighbour discovery as the kernel does them by
    /// default: one DAD probe (a Neighbor Solicitation from `::` for the tentative
    /// address, RFC 4862 5.4) before each IPv6 address is used, and no unsolicited
    /// Neighbor Advertisements. Every IPv6 address then shows on the wire first in its DAD
    /// probe, and the DUT volunteers nothing else about an address it does not send from.
    /// Off by default: the lab skips DAD so DUTs are ready at once, and announces
    /// addresses (unsolicited NAs) when a DUT's MAC or link changes.
    pub dad: bool,
    /// Record the DUT's bridge port with tcpdump from before `eth0` comes up
    /// ([`Dut::take_wire_record`]).
    pub record_wire: bool,
}

impl DutSpec {
    pub fn new(name: &str, kind: DutKind) -> DutSpec {
        let ipv6 = kind.is_ipv6_only();
        DutSpec {
            name: name.to_string(),
            kind,
            mac: None,
            ipv6,
            dad: false,
            record_wire: false,
        }
    }

    pub fn with_dad(mut self, on: bool) -> DutSpec {
        self.dad = on;
        self
    }

    pub fn with_wire_record(mut self) -> DutSpec {
        self.record_wire = true;
        self
    }

    pub fn with_mac(mut self, mac: MacAddr) -> DutSpec {
        self.mac = Some(mac);
        self
    }

    pub fn with_ipv6(mut self, on: bool) -> DutSpec {
        self.ipv6 = on || self.kind.is_ipv6_only();
        self
    }

    fn validate(&self, lab: &LabInner) -> Result<()> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 24
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(LabError::Invalid {
                what: "DUT name",
                value: self.name.clone(),
                why: "use 1 to 24 of a-z, 0-9 and `-`, not starting with `-`",
            });
        }
        if let Some(mac) = self.mac {
            validate_mac(mac)?;
        }
        match self.kind {
            DutKind::StaticV4 { addr } => validate_static(lab, addr)?,
            DutKind::StaticV6 { addr } => ipv6::validate_static(&lab.net, addr)?,
            _ => {}
        }
        Ok(())
    }
}

fn validate_mac(mac: MacAddr) -> Result<()> {
    if mac.is_multicast() || mac.0 == [0; 6] {
        return Err(LabError::Invalid {
            what: "DUT MAC",
            value: mac.to_string(),
            why: "a device's MAC must be a non-zero unicast address",
        });
    }
    Ok(())
}

fn validate_static(lab: &LabInner, addr: Ipv4Addr) -> Result<()> {
    let (net, len) = lab.net.subnet_v4();
    let host = addr.octets()[3];
    if !v4_in(addr, net, len) || host == 0 || host == 255 || addr == lab.net.router_v4() {
        return Err(LabError::Invalid {
            what: "static DUT address",
            value: addr.to_string(),
            why: "must be a host address of the lab's /24 other than the router",
        });
    }
    Ok(())
}

/// A running DUT. Dropping it kills everything in its namespace and removes the
/// namespace, the veth pair, its `/etc/netns` entry and its directory.
#[derive(Debug)]
pub struct Dut {
    lab: Arc<LabInner>,
    name: String,
    ns: String,
    host_link: String,
    kind: DutKind,
    ipv6: bool,
    dad: bool,
    mac: MacAddr,
    client: Option<LabProcess>,
    wire: Option<WireRecord>,
    dir: PathBuf,
    etc_netns: PathBuf,
    spawned: AtomicU32,
}

impl Dut {
    pub(crate) fn create(lab: Arc<LabInner>, index: u32, spec: DutSpec) -> Result<Dut> {
        spec.validate(&lab)?;
        let slot = lab.net.slot;
        let ns = slot::ns_name(slot, &spec.name);
        let record = DutRecord {
            name: spec.name.clone(),
            ns: ns.clone(),
            host_link: slot::host_link_name(slot, index),
        };
        if !lab.register_dut(record.clone()) {
            return Err(LabError::Invalid {
                what: "DUT name",
                value: spec.name,
                why: "the lab already has a DUT with this name",
            });
        }
        let ipv6_only = spec.kind.is_ipv6_only();
        // From here on, dropping `dut` undoes whatever part of the setup happened.
        let mut dut = Dut {
            name: spec.name,
            host_link: record.host_link,
            kind: spec.kind,
            ipv6: spec.ipv6 || ipv6_only,
            dad: spec.dad,
            mac: spec.mac.unwrap_or_else(|| MacAddr::for_dut(slot, index)),
            client: None,
            wire: None,
            dir: lab.dir.path().join(format!("dut-{index}")),
            etc_netns: Path::new("/etc/netns").join(&ns),
            ns,
            spawned: AtomicU32::new(0),
            lab,
        };
        dut.plug_in(spec.record_wire)?;
        dut.start_client(None)?;
        dut.wait_configured(None)?;
        Ok(dut)
    }

    /// Creates the namespace and the veth pair, starts the wire record if asked, and
    /// applies the static configuration.
    fn plug_in(&mut self, record_wire: bool) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| LabError::io("creating a DUT directory", &self.dir, e))?;
        ip(None, &["netns", "add", &self.ns])?;
        // `ip netns exec` mounts this over /etc/resolv.conf: whatever a client in the
        // DUT writes there stays out of the host's file.
        let resolv = self.etc_netns.join("resolv.conf");
        std::fs::create_dir_all(&self.etc_netns)
            .map_err(|e| LabError::io("creating the namespace's /etc", &self.etc_netns, e))?;
        std::fs::write(
            &resolv,
            format!("# rae-lab DUT {}: the lab has no DNS server\n", self.name),
        )
        .map_err(|e| LabError::io("writing the namespace's resolv.conf", &resolv, e))?;
        let ipv6_off = if self.ipv6 { "0" } else { "1" };
        // DAD on: accept_dad 1 with one probe (the kernel's defaults); DAD is then the
        // only way an address the DUT does not send from reaches the wire, so nothing
        // announces addresses (ndisc_notify 0, also the kernel's default).
        let (accept_dad, notify) = if self.dad { ("1", "0") } else { ("0", "1") };
        // A static IPv6 DUT ignores the lab's router advertisements: no SLAAC address
        // beside its own, so it sends from that one.
        let accept_ra = if matches!(self.kind, DutKind::StaticV6 { .. }) {
            "0"
        } else {
            "1"
        };
        // Set as defaults before eth0 exists, so it starts with them: no DAD delay (unless
        // asked for), quick router solicitations, and announcements when its MAC or link
        // changes.
        write_sysctls(
            Some(&self.ns),
            &[
                ("net/ipv6/conf/all/accept_dad".to_string(), accept_dad),
                ("net/ipv6/conf/default/accept_dad".to_string(), accept_dad),
                ("net/ipv6/conf/default/dad_transmits".to_string(), "1"),
                ("net/ipv6/conf/default/accept_ra".to_string(), accept_ra),
                (
                    "net/ipv6/conf/default/router_solicitation_interval".to_string(),
                    "1",
                ),
                ("net/ipv6/conf/all/ndisc_notify".to_string(), notify),
                ("net/ipv6/conf/default/ndisc_notify".to_string(), notify),
                ("net/ipv6/conf/default/disable_ipv6".to_string(), ipv6_off),
                ("net/ipv4/conf/all/arp_notify".to_string(), "1"),
                ("net/ipv4/conf/default/arp_notify".to_string(), "1"),
            ],
        )?;
        let mac = self.mac.to_string();
        ip(
            None,
            &[
                "link",
                "add",
                &self.host_link,
                "type",
                "veth",
                "peer",
                "name",
                DUT_IF,
                "address",
                &mac,
                "netns",
                &self.ns,
            ],
        )?;
        // A bridge port needs no addresses; without this it would talk IPv6 to the DUT itself.
        write_sysctls(
            None,
            &[(
                format!("net/ipv6/conf/{}/disable_ipv6", self.host_link),
                "1",
            )],
        )?;
        ip(
            None,
            &[
                "link",
                "set",
                &self.host_link,
                "master",
                &self.lab.net.bridge,
                "up",
            ],
        )?;
        if record_wire {
            // The port is up (without carrier) while eth0 is still down: tcpdump can bind
            // to it now and sees the DUT's very first frame.
            self.wire = Some(WireRecord::start(
                &self.host_link,
                &self.dir.join("wire.pcap"),
                self.dir.join("tcpdump.log"),
                self.lab.config.ready_timeout,
            )?);
        }
        ip(Some(&self.ns), &["link", "set", "lo", "up"])?;
        ip(Some(&self.ns), &["link", "set", DUT_IF, "up"])?;
        match self.kind {
            DutKind::StaticV4 { addr } => self.apply_static(addr)?,
            DutKind::StaticV6 { addr } => self.apply_static_v6(addr)?,
            _ => {}
        }
        Ok(())
    }

    /// Adds the static IPv6 address. With DAD off it is added `nodad`, usable at once,
    /// as on a device whose stack skips DAD: it uses the address even if another device
    /// has it. With DAD on, the kernel probes first and gives the address up if another
    /// device answers.
    fn apply_static_v6(&self, addr: Ipv6Addr) -> Result<()> {
        let (_, len) = self.lab.net.prefix_v6();
        let cidr = format!("{addr}/{len}");
        let mut args = vec!["-6", "addr", "replace", &cidr, "dev", DUT_IF];
        if !self.dad {
            args.push("nodad");
        }
        ip(Some(&self.ns), &args)?;
        Ok(())
    }

    fn apply_static(&self, addr: Ipv4Addr) -> Result<()> {
        let (_, len) = self.lab.net.subnet_v4();
        ip(Some(&self.ns), &["-4", "addr", "flush", "dev", DUT_IF])?;
        ip(
            Some(&self.ns),
            &[
                "addr",
                "add",
                &format!("{addr}/{len}"),
                "broadcast",
                "+",
                "dev",
                DUT_IF,
            ],
        )?;
        let router = self.lab.net.router_v4().to_string();
        ip(
            Some(&self.ns),
            &["route", "replace", "default", "via", &router, "dev", DUT_IF],
        )?;
        Ok(())
    }

    fn identity(&self) -> Identity<'_> {
        match &self.kind {
            DutKind::Udhcpc {
                hostname,
                vendor_class,
                client_id,
            } => Identity {
                hostname: hostname.as_deref(),
                vendor_class: vendor_class.as_deref(),
                client_id: client_id.as_deref(),
            },
            DutKind::Dhclient {
                hostname,
                vendor_class,
            } => Identity {
                hostname: hostname.as_deref(),
                vendor_class: vendor_class.as_deref(),
                client_id: None,
            },
            DutKind::StaticV4 { .. } | DutKind::Slaac | DutKind::StaticV6 { .. } => {
                Identity::default()
            }
        }
    }

    fn start_client(&mut self, requested: Option<Ipv4Addr>) -> Result<()> {
        let id = self.identity();
        let process = match self.kind {
            DutKind::Udhcpc { .. } => client::start_udhcpc(&self.ns, &self.dir, &id, requested)?,
            DutKind::Dhclient { .. } => {
                client::start_dhclient(&self.ns, &self.dir, &id, requested)?
            }
            DutKind::StaticV4 { .. } | DutKind::Slaac | DutKind::StaticV6 { .. } => return Ok(()),
        };
        self.client = Some(process);
        Ok(())
    }

    /// Waits for the DHCP lease (`want_v4`: that address exactly) and the SLAAC address.
    fn wait_configured(&mut self, want_v4: Option<Ipv4Addr>) -> Result<()> {
        let timeout = self.lab.config.ready_timeout;
        if self.kind.is_dhcp() {
            let what = match want_v4 {
                Some(ip) => format!("DUT {} ({}) getting {ip} by DHCP", self.name, self.mac),
                None => format!("DUT {} ({}) getting a DHCP lease", self.name, self.mac),
            };
            wait_until(what, timeout, || {
                if let Some(client) = self.client.as_mut() {
                    client.ensure_running()?;
                }
                Ok(match (self.ipv4()?, want_v4) {
                    (Some(have), Some(want)) if have == want => Ok(()),
                    (Some(have), None) if self.lab.net.contains(IpAddr::V4(have)) => Ok(()),
                    (have, _) => Err(format!("eth0 has IPv4 {have:?}")),
                })
            })?;
        }
        if let DutKind::StaticV6 { addr } = self.kind {
            self.wait_ipv6_usable(&format!("its static address {addr}"), |s| s.addr == addr)?;
        } else if self.ipv6 {
            let net = &self.lab.net;
            self.wait_ipv6_usable("a SLAAC address", |s| net.contains(IpAddr::V6(s.addr)))?;
        }
        Ok(())
    }

    /// Waits until `eth0` has an address matching `wanted` that DAD (if on) has
    /// passed; an address whose DAD failed ends the wait at once.
    fn wait_ipv6_usable(&self, what: &str, wanted: impl Fn(&Ipv6AddrState) -> bool) -> Result<()> {
        let timeout = self.lab.config.ready_timeout;
        wait_until(format!("DUT {} getting {what}", self.name), timeout, || {
            ipv6::dad_outcome(&self.ipv6_states()?, &wanted)
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The DUT's network namespace, for `ip netns exec` or `ip -n`.
    pub fn ns_name(&self) -> &str {
        &self.ns
    }

    /// The root-namespace end of its veth pair, a port of the lab bridge.
    pub fn host_link(&self) -> &str {
        &self.host_link
    }

    pub fn kind(&self) -> &DutKind {
        &self.kind
    }

    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The DUT's own directory (client scripts, leases, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of its DHCP client, if it runs one.
    pub fn client_pid(&self) -> Option<u32> {
        self.client.as_ref().map(LabProcess::pid)
    }

    /// The end of its DHCP client's log.
    pub fn client_log(&self) -> Option<String> {
        self.client.as_ref().map(LabProcess::log_tail)
    }

    /// The IPv4 address on `eth0` now.
    pub fn ipv4(&self) -> Result<Option<Ipv4Addr>> {
        let json = ip_json(Some(&self.ns), &["-4", "addr", "show", "dev", DUT_IF])?;
        Ok(addresses(&json).into_iter().find_map(|(ip, _)| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }))
    }

    /// Every IPv6 address on `eth0` now, link-local included.
    pub fn ipv6_addrs(&self) -> Result<Vec<Ipv6Addr>> {
        let json = ip_json(Some(&self.ns), &["-6", "addr", "show", "dev", DUT_IF])?;
        Ok(addresses(&json)
            .into_iter()
            .filter_map(|(ip, _)| match ip {
                IpAddr::V6(v6) => Some(v6),
                IpAddr::V4(_) => None,
            })
            .collect())
    }

    /// Every IPv6 address on `eth0` now with its DAD state.
    pub fn ipv6_states(&self) -> Result<Vec<Ipv6AddrState>> {
        let json = ip_json(Some(&self.ns), &["-6", "addr", "show", "dev", DUT_IF])?;
        Ok(ipv6::states(&json))
    }

    /// The usable address `eth0` has from the lab's prefix (for [`DutKind::Slaac`] the
    /// one it configured from the advertised prefix, for [`DutKind::StaticV6`] its own).
    pub fn slaac_addr(&self) -> Result<Option<Ipv6Addr>> {
        Ok(self
            .ipv6_states()?
            .into_iter()
            .find(|s| s.usable() && self.lab.net.contains(IpAddr::V6(s.addr)))
            .map(|s| s.addr))
    }

    /// The usable link-local address of `eth0`.
    pub fn link_local_v6(&self) -> Result<Option<Ipv6Addr>> {
        Ok(self
            .ipv6_states()?
            .into_iter()
            .find(|s| s.usable() && ipv6::is_link_local(s.addr))
            .map(|s| s.addr))
    }

    /// One ping (one-second wait) to the lab router's link-local address, the one its
    /// router advertisements come from. The kernel picks the DUT's link-local address as
    /// the source (same scope as the destination, RFC 6724 rule 2), and resolves the
    /// router with a solicitation from that address too: nothing leaves from a global
    /// address.
    pub fn ping_router_link_local(&self) -> Result<bool> {
        let router = ipv6::bridge_link_local(&self.lab.net)?;
        ipv6::ping_link_local(&self.ns, DUT_IF, router)
    }

    /// The wire record started with [`DutSpec::with_wire_record`]; call
    /// [`WireRecord::finish`] on it to stop it and read the frames.
    pub fn take_wire_record(&mut self) -> Option<WireRecord> {
        self.wire.take()
    }

    /// State of `eth0` inside the namespace (no carrier while unplugged).
    pub fn link_state(&self) -> Result<LinkState> {
        link_state(Some(&self.ns), DUT_IF)
    }

    /// State of the host end of its veth pair.
    pub fn host_link_state(&self) -> Result<LinkState> {
        link_state(None, &self.host_link)
    }

    /// Pulls the cable: the bridge port goes down, `eth0` loses its carrier. The DUT's
    /// clients keep running and keep their addresses, as a real device's would.
    pub fn unplug(&self) -> Result<()> {
        ip(None, &["link", "set", &self.host_link, "down"])?;
        Ok(())
    }

    /// Plugs the cable back in. A DHCP DUT then confirms its lease, as devices do when
    /// their link comes back: udhcpc renews (SIGUSR1), dhclient is restarted and
    /// reboots from its lease file. Returns without waiting; poll for the effect.
    pub fn replug(&mut self) -> Result<()> {
        ip(None, &["link", "set", &self.host_link, "up"])?;
        match self.kind {
            DutKind::Udhcpc { .. } => {
                if let Some(client) = self.client.as_mut() {
                    client.signal(Signal::SIGUSR1)?;
                }
            }
            DutKind::Dhclient { .. } => {
                if let Some(client) = self.client.take() {
                    client.stop(CLIENT_GRACE)?;
                }
                self.start_client(None)?;
            }
            DutKind::StaticV4 { .. } | DutKind::Slaac | DutKind::StaticV6 { .. } => {}
        }
        Ok(())
    }

    /// Changes `eth0`'s MAC the way a device that randomizes its MAC does: link down,
    /// new address, link up (which announces it with a gratuitous ARP and an unsolicited
    /// NA). A DHCP DUT's client is killed without releasing and started again, so it
    /// leases under the new MAC: udhcpc with a fixed client id keeps its address,
    /// otherwise it is a new client to dnsmasq. Waits until the DUT is configured again.
    pub fn set_mac(&mut self, mac: MacAddr) -> Result<()> {
        validate_mac(mac)?;
        let dhcp = self.kind.is_dhcp();
        drop(self.client.take());
        ip(Some(&self.ns), &["link", "set", DUT_IF, "down"])?;
        if dhcp {
            ip(Some(&self.ns), &["-4", "addr", "flush", "dev", DUT_IF])?;
            self.forget_dhclient_lease()?;
        }
        ip(
            Some(&self.ns),
            &["link", "set", DUT_IF, "address", &mac.to_string()],
        )?;
        self.mac = mac;
        ip(Some(&self.ns), &["link", "set", DUT_IF, "up"])?;
        match self.kind {
            DutKind::StaticV4 { addr } => {
                // Link down took the default route with it.
                self.apply_static(addr)?;
                self.announce_ipv4(addr)?;
            }
            // Link down flushed the address (keep_addr_on_down is off).
            DutKind::StaticV6 { addr } => self.apply_static_v6(addr)?,
            _ => {}
        }
        self.start_client(None)?;
        self.wait_configured(None)
    }

    /// Gratuitous ARP for `addr` from `eth0`, as hosts send when their address or MAC
    /// changes, so neighbours update their caches now rather than after NUD times out.
    /// Two of them a second apart: a neighbour ignores an update within a second of the
    /// last (its `locktime`).
    fn announce_ipv4(&self, addr: Ipv4Addr) -> Result<()> {
        let busybox = tool("busybox", "busybox")?;
        let addr = addr.to_string();
        let arping: [&OsStr; 7] = [
            busybox.as_os_str(),
            "arping".as_ref(),
            "-U".as_ref(),
            "-c2".as_ref(),
            "-I".as_ref(),
            DUT_IF.as_ref(),
            addr.as_ref(),
        ];
        self.exec(arping).map(drop)
    }

    /// Changes the DUT's IPv4 address and waits until `eth0` has it.
    ///
    /// A static DUT gets `addr` in place of its old address and announces it with a
    /// gratuitous ARP. A DHCP DUT releases its lease and asks dnsmasq for `addr` (which
    /// must be in the DHCP range and free), as a device given a new reservation would.
    /// An IPv6-only DUT has no IPv4 to change.
    pub fn set_ipv4(&mut self, addr: Ipv4Addr) -> Result<()> {
        match self.kind {
            DutKind::Slaac | DutKind::StaticV6 { .. } => Err(LabError::Invalid {
                what: "IPv4 change",
                value: addr.to_string(),
                why: "an IPv6-only DUT has no IPv4 address",
            }),
            DutKind::StaticV4 { .. } => {
                validate_static(&self.lab, addr)?;
                self.apply_static(addr)?;
                self.kind = DutKind::StaticV4 { addr };
                self.announce_ipv4(addr)
            }
            DutKind::Udhcpc { .. } | DutKind::Dhclient { .. } => {
                let (first, last) = self.lab.net.dhcp_range();
                if addr < first || addr > last {
                    return Err(LabError::Invalid {
                        what: "requested DHCP address",
                        value: addr.to_string(),
                        why: "must be inside the lab's DHCP range (198.18.N.100..=249)",
                    });
                }
                self.release_lease()?;
                ip(Some(&self.ns), &["-4", "addr", "flush", "dev", DUT_IF])?;
                self.start_client(Some(addr))?;
                self.wait_configured(Some(addr))
            }
        }
    }

    /// Stops the DHCP client so that it tells dnsmasq it is done with its address.
    fn release_lease(&mut self) -> Result<()> {
        let client = self.client.take();
        match (&self.kind, client) {
            // Started with -R: SIGTERM makes udhcpc send DHCPRELEASE before exiting.
            (DutKind::Udhcpc { .. }, Some(client)) => client.stop(CLIENT_GRACE).map(drop),
            (DutKind::Dhclient { .. }, Some(mut client)) => {
                client::release_dhclient(&self.ns, &self.dir)?;
                client.wait_exit(CLIENT_GRACE).map(drop)
            }
            _ => Ok(()),
        }
    }

    fn forget_dhclient_lease(&self) -> Result<()> {
        let leases = self.dir.join("dhclient.leases");
        match std::fs::remove_file(&leases) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(LabError::io("removing dhclient's lease file", &leases, e))
            }
            _ => Ok(()),
        }
    }

    /// One ping (one-second wait) from inside the DUT. Lab addresses only.
    pub fn ping(&self, ip: IpAddr) -> Result<bool> {
        ping_once(Some(&self.ns), ip)
    }

    /// Runs a command inside the DUT's namespace to completion; its stdout, or an
    /// error with its stderr if it fails. It gets no time limit: use `timeout` or
    /// the command's own for anything that could hang.
    pub fn exec<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = in_ns(&self.ns)?;
        run(cmd.args(args))
    }

    /// Like [`Dut::exec`] but returns the output whatever the exit status.
    pub fn exec_output<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = in_ns(&self.ns)?;
        output(cmd.args(args))
    }

    /// Starts a long-running command inside the DUT's namespace, output to a log in the
    /// DUT's directory, and returns once it is inside the namespace (or has exited, which
    /// the guard then reports). The process (and its group) dies when the guard drops,
    /// and in any case when the DUT is dropped.
    pub fn spawn<I, S>(&self, args: I) -> Result<LabProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = in_ns(&self.ns)?;
        cmd.args(args);
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let mut process = LabProcess::spawn(cmd, self.dir.join(format!("spawned-{n}.log")))?;
        // Until `ip netns exec` has switched namespaces, the process is still in ours.
        let what = format!("`{}` entering namespace {}", process.label(), self.ns);
        wait_until(what, self.lab.config.ready_timeout, || {
            let entered =
                process.try_exit_status()?.is_some() || pid_in_netns(process.pid(), &self.ns);
            Ok(if entered {
                Ok(())
            } else {
                Err("still in the root namespace".to_string())
            })
        })?;
        Ok(process)
    }

    fn tear_down(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        drop(self.client.take());
        // Before its link goes, so tcpdump does not log the interface vanishing.
        drop(self.wire.take());
        let ns_path = Path::new("/run/netns").join(&self.ns);
        if ns_path.exists() {
            failures.extend(crate::sweep::kill_netns_processes(&self.ns));
        }
        if let Err(e) = delete_link(&self.host_link) {
            failures.push(format!("removing link {}: {e}", self.host_link));
        }
        if let Err(e) = delete_netns(&self.ns) {
            failures.push(format!("removing namespace {}: {e}", self.ns));
        }
        for (what, path) in [
            ("namespace /etc", &self.etc_netns),
            ("DUT directory", &self.dir),
        ] {
            match std::fs::remove_dir_all(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    failures.push(format!("removing {what} {}: {e}", path.display()))
                }
                _ => {}
            }
        }
        self.lab.forget_dut(&self.ns);
        failures
    }
}

impl Drop for Dut {
    fn drop(&mut self) {
        for failure in self.tear_down() {
            eprintln!("rae-lab: DUT {}: {failure}", self.name);
        }
    }
}
