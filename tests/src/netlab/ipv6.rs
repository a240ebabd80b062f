//! IPv6 on a DUT: its addresses with their Duplicate Address Detection state, the lab
//! bridge's link-local address, and link-local pings to it.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv6Addr};
use std::process::Command;

use super::error::{LabError, Result};
use super::sys::{ip_json, output, tool};
use super::LabNet;

/// One IPv6 address on an interface, as `ip -j addr` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6AddrState {
    pub addr: Ipv6Addr,
    pub prefix_len: u8,
    /// Duplicate Address Detection still runs: the kernel neither uses nor answers for it.
    pub tentative: bool,
    /// DAD heard another device claim it; the kernel will never use it.
    pub dad_failed: bool,
}

impl Ipv6AddrState {
    /// Whether the kernel may send from and answer for it.
    pub fn usable(&self) -> bool {
        !self.tentative && !self.dad_failed
    }
}

/// The IPv6 addresses in `ip -j -6 addr` output.
pub(crate) fn states(json: &serde_json::Value) -> Vec<Ipv6AddrState> {
    let flag = |info: &serde_json::Value, name: &str| {
        info.get(name).and_then(serde_json::Value::as_bool) == Some(true)
    };
    json.as_array()
        .into_iter()
        .flatten()
        .filter_map(|link| link.get("addr_info")?.as_array())
        .flatten()
        .filter_map(|info| {
            let addr: Ipv6Addr = info.get("local")?.as_str()?.parse().ok()?;
            let prefix_len = u8::try_from(info.get("prefixlen")?.as_u64()?).ok()?;
            Some(Ipv6AddrState {
                addr,
                prefix_len,
                tentative: flag(info, "tentative"),
                dad_failed: flag(info, "dadfailed"),
            })
        })
        .collect()
}

/// For a wait on an address matching `wanted`: done once one is usable, still waiting
/// while it is tentative or missing, an error if its DAD failed.
pub(crate) fn dad_outcome(
    states: &[Ipv6AddrState],
    wanted: impl Fn(&Ipv6AddrState) -> bool,
) -> Result<std::result::Result<(), String>> {
    if let Some(failed) = states.iter().find(|s| wanted(s) && s.dad_failed) {
        return Err(LabError::Invalid {
            what: "DUT IPv6 address",
            value: failed.addr.to_string(),
            why: "Duplicate Address Detection failed: another device on the lab has it",
        });
    }
    Ok(match states.iter().any(|s| wanted(s) && s.usable()) {
        true => Ok(()),
        false => Err(format!("eth0 has IPv6 {states:?}")),
    })
}

/// Whether `addr` can be a static DUT's: inside the lab's /64, neither the router nor the
/// prefix itself (the subnet-router anycast address).
pub(crate) fn validate_static(net: &LabNet, addr: Ipv6Addr) -> Result<()> {
    let (prefix, _) = net.prefix_v6();
    if !net.contains(IpAddr::V6(addr)) || addr == net.router_v6() || addr == prefix {
        return Err(LabError::Invalid {
            what: "static DUT IPv6 address",
            value: addr.to_string(),
            why: "must be a host address of the lab's 2001:db8:N::/64 other than the router",
        });
    }
    Ok(())
}

/// `fe80::/10`.
pub(crate) fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// The bridge's link-local address: the router address a DUT learns from the lab's
/// router advertisements.
pub(crate) fn bridge_link_local(net: &LabNet) -> Result<Ipv6Addr> {
    let json = ip_json(
        None,
        &["-6", "addr", "show", "dev", &net.bridge, "scope", "link"],
    )?;
    states(&json)
        .into_iter()
        .map(|s| s.addr)
        .find(|a| is_link_local(*a))
        .ok_or_else(|| LabError::Parse {
            what: format!("link-local address of bridge {}", net.bridge),
            detail: "the bridge has none".to_string(),
        })
}

/// One ping (one-second wait) from namespace `ns` out of `dev` to link-local `target`.
///
/// Lab traffic otherwise goes to 2001:db8::/32 only; a link-local destination is allowed
/// here because it is scoped to `dev`, the DUT's veth into the lab bridge, and the callers
/// only pass the bridge's own address, so the packet cannot reach anything the lab did
/// not create.
pub(crate) fn ping_link_local(ns: &str, dev: &str, target: Ipv6Addr) -> Result<bool> {
    if !is_link_local(target) {
        return Err(LabError::Invalid {
            what: "link-local ping target",
            value: target.to_string(),
            why: "must be in fe80::/10",
        });
    }
    let busybox = tool("busybox", "busybox")?;
    let scoped = format!("{target}%{dev}");
    let mut cmd = Command::new(tool("ip", "iproute2")?);
    cmd.args(["netns", "exec", ns]).args([
        busybox.as_os_str(),
        OsStr::new("ping"),
        OsStr::new("-c1"),
        OsStr::new("-W1"),
        OsStr::new(&scoped),
    ]);
    Ok(output(&mut cmd)?.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dad_state_comes_out_of_ip_json() {
        let json = serde_json::json!([{"ifname":"eth0","addr_info":[
            {"family":"inet6","local":"2001:db8:3::5","prefixlen":64,"tentative":true},
            {"family":"inet6","local":"2001:db8:3::6","prefixlen":64,
             "tentative":true,"dadfailed":true},
            {"family":"inet6","local":"fe80::1","prefixlen":64}]}]);
        let got = states(&json);
        assert_eq!(got.len(), 3);
        assert!(got[0].tentative && !got[0].dad_failed && !got[0].usable());
        assert!(got[1].dad_failed && !got[1].usable());
        assert!(got[2].usable() && is_link_local(got[2].addr));
        assert!(!is_link_local(got[0].addr));
        let is = |a: &str| {
            let a: Ipv6Addr = a.parse().unwrap();
            move |s: &Ipv6AddrState| s.addr == a
        };
        assert!(matches!(dad_outcome(&got, is("2001:db8:3::5")), Ok(Err(_))));
        assert!(dad_outcome(&got, is("2001:db8:3::6")).is_err());
        assert!(matches!(dad_outcome(&got, is("fe80::1")), Ok(Ok(()))));
    }

    #[test]
    fn static_addresses_stay_inside_the_lab_prefix() {
        let net = LabNet::new(4);
        assert!(validate_static(&net, "2001:db8:4::20".parse().unwrap()).is_ok());
        for bad in [
            "2001:db8:4::1",
            "2001:db8:4::",
            "2001:db8:5::20",
            "fe80::20",
        ] {
            assert!(
                validate_static(&net, bad.parse().unwrap()).is_err(),
                "{bad}"
            );
        }
    }
}
