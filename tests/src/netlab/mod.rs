//! The lab's LAN: a bridge in the root namespace with dnsmasq on it, and DUTs as network
//! namespaces on veth pairs running real clients.
//!
//! The bridge stands in for the RAE's LAN port: it has the router addresses
//! `198.18.N.1/24` and `2001:db8:N::1/64` (N = the lab's [slot](slot)), dnsmasq hands out
//! `198.18.N.100..=249` and advertises `2001:db8:N::/64` for SLAAC, and a sniffer or
//! agent in the root namespace sees every DUT frame on it. A [`Lab`] and each [`Dut`]
//! remove what they created when dropped, on panic too; `Lab::start` first sweeps what
//! crashed runs left behind. Labs in parallel threads or processes get different slots.
//!
//! DUTs run DHCP clients, static IPv4, SLAAC or static IPv6, optionally with Duplicate
//! Address Detection as the kernel does it by default; a DUT's bridge port can be
//! recorded with tcpdump from before it comes up ([`WireRecord`]), to check what it really
//! sent.
//!
//! Limitations: needs root; DUTs use `ip netns exec`, so their processes see the host's
//! filesystem (with their own `/etc/resolv.conf` from `/etc/netns/<ns>/`).

mod client;
mod dnsmasq;
mod dut;
mod error;
mod footprint;
mod ipv6;
mod mac;
mod process;
pub mod slot;
mod sys;
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use dnsmasq::{parse_leases, Lease};
pub use dut::{Dut, DutKind, DutSpec};
pub use error::{LabError, Result};
pub use footprint::Footprint;
pub use ipv6::Ipv6AddrState;
pub use mac::MacAddr;
pub use process::LabProcess;
pub use sys::{is_lab_address, wait_until};
pub use wire::{Ipv6Frame, Wire, WireFrame, WireRecord};

use crate::labdir::OwnedDir;
use dnsmasq::Dnsmasq;
use slot::SlotLock;
use sys::{bridge_json, ip, ip_json, ping_once, write_sysctls};

/// Settings of a lab.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// How long to wait for anything the lab starts to become ready: dnsmasq, a DUT's
    /// lease or SLAAC address, a replugged DUT answering.
    pub ready_timeout: Duration,
    /// DHCP lease time dnsmasq grants, in seconds (dnsmasq's minimum is 120).
    pub lease_secs: u32,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            ready_timeout: Duration::from_secs(30),
            lease_secs: 3600,
        }
    }
}

/// The addresses and names of one slot's LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabNet {
    pub slot: u16,
    pub bridge: String,
}

impl LabNet {
    pub fn new(slot: u16) -> LabNet {
        LabNet {
            slot,
            bridge: slot::bridge_name(slot),
        }
    }

    fn third_octet(&self) -> u8 {
        // Slots are at most MAX_SLOT (250), so this never truncates.
        (self.slot & 0xff) as u8
    }

    /// `198.18.N.0/24`.
    pub fn subnet_v4(&self) -> (Ipv4Addr, u8) {
        (Ipv4Addr::new(198, 18, self.third_octet(), 0), 24)
    }

    /// The bridge's address, `198.18.N.1`, which is also the DHCP router option.
    pub fn router_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.third_octet(), 1)
    }

    /// `198.18.N.<host>`, e.g. for a static DUT.
    pub fn host_v4(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.third_octet(), host)
    }

    /// The first and last address dnsmasq hands out; `.2..=.99` are for static DUTs.
    pub fn dhcp_range(&self) -> (Ipv4Addr, Ipv4Addr) {
        let n = self.third_octet();
        (
            Ipv4Addr::new(198, 18, n, 100),
            Ipv4Addr::new(198, 18, n, 249),
        )
    }

    /// `2001:db8:N::/64`, advertised for SLAAC.
    pub fn prefix_v6(&self) -> (Ipv6Addr, u8) {
        (Ipv6Addr::new(0x2001, 0xdb8, self.slot, 0, 0, 0, 0, 0), 64)
    }

    /// The bridge's global IPv6 address, `2001:db8:N::1`.
    pub fn router_v6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, self.slot, 0, 0, 0, 0, 1)
    }

    /// `2001:db8:N::<host>`, e.g. for a static IPv6 DUT (SLAAC interface ids come from
    /// MACs, far from these).
    pub fn host_v6(&self, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, self.slot, 0, 0, 0, 0, host)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                let (net, len) = self.subnet_v4();
                sys::v4_in(v4, net, len)
            }
            IpAddr::V6(v6) => {
                let (net, len) = self.prefix_v6();
                sys::v6_in(v6, net, len)
            }
        }
    }
}

/// Administrative and carrier state of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Set up by `ip link set up`.
    pub admin_up: bool,
    /// The kernel sees a carrier (for a veth: the other end is up too).
    pub carrier: bool,
}

/// A running lab LAN. Cheap to share by reference between threads; DUTs keep what they
/// need of it alive, so the bridge goes away when the lab and all its DUTs are dropped.
#[derive(Debug)]
pub struct Lab {
    inner: Arc<LabInner>,
}

/// A DUT's names, as the lab keeps track of them for [`Lab::footprint`].
#[derive(Clone, Debug)]
pub(crate) struct DutRecord {
    pub name: String,
    pub ns: String,
    pub host_link: String,
}

#[derive(Debug)]
pub(crate) struct LabInner {
    pub net: LabNet,
    pub config: LabConfig,
    dnsmasq: Mutex<Option<Dnsmasq>>,
    duts: Mutex<Vec<DutRecord>>,
    next_index: AtomicU32,
    // Dropped in this order after `Drop::drop`: the directory, then the slot, so the
    // slot is free only when everything of the lab is gone.
    pub dir: OwnedDir,
    slot: SlotLock,
}

impl Lab {
    /// Sweeps leftovers of dead labs, claims a free slot, and brings up the bridge with
    /// dnsmasq on it.
    pub fn start(config: LabConfig) -> Result<Lab> {
        let report = crate::sweep::sweep_stale();
        for failure in &report.failed {
            eprintln!("rae-lab: sweeping leftovers: {failure}");
        }
        let slot = SlotLock::claim_free()?;
        // We own the slot now: anything carrying its prefix is a dead lab's.
        let mut purge = crate::sweep::SweepReport::default();
        crate::sweep::purge_slot(&slot, &mut purge);
        for failure in &purge.failed {
            eprintln!("rae-lab: purging slot {}: {failure}", slot.slot());
        }
        let dir = OwnedDir::create("netlab")
            .map_err(|e| LabError::io("creating the lab directory", crate::labdir::LAB_ROOT, e))?;
        let inner = LabInner {
            net: LabNet::new(slot.slot()),
            config,
            dnsmasq: Mutex::new(None),
            duts: Mutex::new(Vec::new()),
            next_index: AtomicU32::new(0),
            dir,
            slot,
        };
        inner.bring_up_bridge()?;
        let dnsmasq = Dnsmasq::start(
            inner.dir.path(),
            &inner.net,
            inner.config.lease_secs,
            inner.config.ready_timeout,
        )?;
        *lock(&inner.dnsmasq) = Some(dnsmasq);
        Ok(Lab {
            inner: Arc::new(inner),
        })
    }

    pub fn slot(&self) -> u16 {
        self.inner.slot.slot()
    }

    pub fn net(&self) -> &LabNet {
        &self.inner.net
    }

    pub fn config(&self) -> &LabConfig {
        &self.inner.config
    }

    /// The bridge in the root namespace: the interface to sniff.
    pub fn bridge_name(&self) -> &str {
        &self.inner.net.bridge
    }

    pub fn router_v4(&self) -> Ipv4Addr {
        self.inner.net.router_v4()
    }

    pub fn router_v6(&self) -> Ipv6Addr {
        self.inner.net.router_v6()
    }

    pub fn subnet_v4(&self) -> (Ipv4Addr, u8) {
        self.inner.net.subnet_v4()
    }

    pub fn prefix_v6(&self) -> (Ipv6Addr, u8) {
        self.inner.net.prefix_v6()
    }

    /// The lab's own directory (dnsmasq's config, leases and log; one subdirectory per DUT).
    pub fn dir(&self) -> &Path {
        self.inner.dir.path()
    }

    pub fn lease_file(&self) -> PathBuf {
        self.inner.dir.path().join(dnsmasq::LEASE_FILE)
    }

    /// dnsmasq's current leases.
    pub fn leases(&self) -> Result<Vec<Lease>> {
        let path = self.lease_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_leases(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(LabError::io("reading dnsmasq's lease file", &path, e)),
        }
    }

    /// Waits until dnsmasq's lease file has a lease matching `wanted` (described by
    /// `what` in the timeout error, which also lists the leases seen).
    pub fn wait_for_lease(&self, what: &str, wanted: impl Fn(&Lease) -> bool) -> Result<Lease> {
        wait_until(
            format!("a dnsmasq lease for {what}"),
            self.inner.config.ready_timeout,
            || {
                self.ensure_dnsmasq_running()?;
                let leases = self.leases()?;
                Ok(leases
                    .iter()
                    .find(|l| wanted(l))
                    .cloned()
                    .ok_or_else(|| format!("leases {leases:?}")))
            },
        )
    }

    /// dnsmasq's pid.
    pub fn dnsmasq_pid(&self) -> Option<u32> {
        lock(&self.inner.dnsmasq).as_ref().map(|d| d.process.pid())
    }

    /// The end of dnsmasq's log (it logs every DHCP exchange).
    pub fn dnsmasq_log(&self) -> String {
        process::log_tail(&self.inner.dir.path().join("dnsmasq.log"))
    }

    fn ensure_dnsmasq_running(&self) -> Result<()> {
        match lock(&self.inner.dnsmasq).as_mut() {
            Some(d) => d.process.ensure_running(),
            None => Ok(()),
        }
    }

    /// Creates a DUT and waits until it is configured: a DHCP DUT has its lease on
    /// `eth0`, a static one its address, and a DUT with IPv6 its SLAAC address.
    pub fn add_dut(&self, spec: DutSpec) -> Result<Dut> {
        let index = self.inner.next_index.fetch_add(1, Ordering::Relaxed);
        Dut::create(Arc::clone(&self.inner), index, spec)
    }

    /// One ping (one-second wait) from the root namespace. Lab addresses only.
    pub fn ping(&self, ip: IpAddr) -> Result<bool> {
        ping_once(None, ip)
    }

    /// Pings `ip` from the root namespace until it answers.
    pub fn wait_reachable(&self, ip: IpAddr) -> Result<()> {
        wait_until(
            format!("{ip} answering ping from the root namespace"),
            self.inner.config.ready_timeout,
            || {
                Ok(if self.ping(ip)? {
                    Ok(())
                } else {
                    Err("no reply".to_string())
                })
            },
        )
    }

    /// `true` when none of `tries` pings (one second each) gets a reply.
    pub fn unreachable(&self, ip: IpAddr, tries: u32) -> Result<bool> {
        for _ in 0..tries {
            if self.ping(ip)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The MAC the root namespace's neighbour table has for `ip` on the bridge.
    pub fn neighbour_mac(&self, ip: IpAddr) -> Result<Option<MacAddr>> {
        let json = ip_json(
            None,
            &[
                "neigh",
                "show",
                "to",
                &ip.to_string(),
                "dev",
                self.bridge_name(),
            ],
        )?;
        Ok(json
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.get("lladdr")?.as_str()?.parse().ok())
            .next())
    }

    /// MACs the bridge has learned behind `port` (its forwarding database).
    pub fn fdb_macs(&self, port: &str) -> Result<Vec<MacAddr>> {
        let json = bridge_json(&["fdb", "show", "br", self.bridge_name()])?;
        Ok(json
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e.get("ifname").and_then(|v| v.as_str()) == Some(port))
            .filter(|e| e.get("state").and_then(|v| v.as_str()) != Some("permanent"))
            .filter_map(|e| e.get("mac")?.as_str()?.parse().ok())
            .collect())
    }

    /// State of a link in the root namespace (the bridge or a DUT's host end).
    pub fn link_state(&self, link: &str) -> Result<LinkState> {
        link_state(None, link)
    }

    /// Everything the lab has created so far, to check after drop that it is all gone.
    pub fn footprint(&self) -> Footprint {
        let duts = lock(&self.inner.duts).clone();
        Footprint::capture(
            &self.inner.net,
            self.inner.dir.path(),
            self.dnsmasq_pid(),
            &duts,
        )
    }
}

impl LabInner {
    fn bring_up_bridge(&self) -> Result<()> {
        let br = self.net.bridge.as_str();
        // No STP and no multicast snooping: ports forward at once, and mDNS, SSDP and
        // neighbour discovery reach every DUT like on a dumb switch.
        ip(
            None,
            &[
                "link",
                "add",
                br,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        )?;
        let conf = format!("net/ipv6/conf/{br}");
        write_sysctls(
            None,
            &[
                (format!("{conf}/accept_dad"), "0"),
                (format!("{conf}/accept_ra"), "0"),
            ],
        )?;
        let (_, len4) = self.net.subnet_v4();
        let (_, len6) = self.net.prefix_v6();
        ip(
            None,
            &[
                "addr",
                "add",
                &format!("{}/{len4}", self.net.router_v4()),
                "dev",
                br,
            ],
        )?;
        ip(
            None,
            &[
                "addr",
                "add",
                &format!("{}/{len6}", self.net.router_v6()),
                "dev",
                br,
                "nodad",
            ],
        )?;
        ip(None, &["link", "set", br, "up"])?;
        Ok(())
    }

    /// Records a new DUT; `false` if the lab already has one of that name.
    pub(crate) fn register_dut(&self, record: DutRecord) -> bool {
        let mut duts = lock(&self.duts);
        if duts.iter().any(|d| d.name == record.name) {
            return false;
        }
        duts.push(record);
        true
    }

    pub(crate) fn forget_dut(&self, ns: &str) {
        lock(&self.duts).retain(|d| d.ns != ns);
    }
}

impl Drop for LabInner {
    fn drop(&mut self) {
        drop(lock(&self.dnsmasq).take());
        if let Err(e) = delete_link(&self.net.bridge) {
            eprintln!("rae-lab: removing bridge {}: {e}", self.net.bridge);
        }
    }
}

/// Deletes a root-namespace link; one that is already gone is fine.
pub(crate) fn delete_link(name: &str) -> Result<()> {
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    match ip(None, &["link", "del", name]) {
        Err(LabError::Command { stderr, .. }) if stderr.contains("Cannot find device") => Ok(()),
        other => other.map(drop),
    }
}

/// Deletes a named network namespace; one that is already gone is fine.
pub(crate) fn delete_netns(name: &str) -> Result<()> {
    if !Path::new("/run/netns").join(name).exists() {
        return Ok(());
    }
    ip(None, &["netns", "del", name]).map(drop)
}

pub(crate) fn link_state(ns: Option<&str>, link: &str) -> Result<LinkState> {
    let json = ip_json(ns, &["link", "show", "dev", link])?;
    let flags: Vec<&str> = json
        .get(0)
        .and_then(|l| l.get("flags"))
        .and_then(|f| f.as_array())
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str())
        .collect();
    Ok(LinkState {
        admin_up: flags.contains(&"UP"),
        carrier: flags.contains(&"LOWER_UP"),
    })
}

/// Locks a mutex even if a panicking thread poisoned it: the lab must still clean up.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable<T: Send + Sync>() {}

    #[test]
    fn labs_and_duts_can_move_between_threads() {
        shareable::<Lab>();
        shareable::<Dut>();
    }

    #[test]
    fn addresses_of_a_slot() {
        let net = LabNet::new(12);
        assert_eq!(net.bridge, "rlab12br");
        assert_eq!(net.router_v4(), Ipv4Addr::new(198, 18, 12, 1));
        assert_eq!(net.host_v4(20), Ipv4Addr::new(198, 18, 12, 20));
        assert_eq!(
            net.router_v6(),
            "2001:db8:c::1".parse::<Ipv6Addr>().unwrap()
        );
        assert!(net.contains(IpAddr::V4(net.dhcp_range().1)));
        assert!(!net.contains("198.18.13.1".parse().unwrap()));
        assert!(net.contains("2001:db8:c::99".parse().unwrap()));
    }
}
