//! dnsmasq as the lab's DHCPv4 server and IPv6 router advertiser, and its lease file.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::error::{LabError, Result};
use super::mac::MacAddr;
use super::process::LabProcess;
use super::sys::{tool, wait_until};
use super::LabNet;

/// Name of dnsmasq's lease file in the lab directory.
pub(crate) const LEASE_FILE: &str = "dnsmasq.leases";

/// The running server and where it keeps its state (all inside the lab directory, so its
/// command line names that directory and a sweep can find it).
#[derive(Debug)]
pub(crate) struct Dnsmasq {
    pub(crate) process: LabProcess,
}

impl Dnsmasq {
    /// Writes the config, starts dnsmasq in the foreground and waits until it has bound
    /// its sockets (it writes its pid file only after that).
    pub(crate) fn start(
        dir: &Path,
        net: &LabNet,
        lease_secs: u32,
        timeout: Duration,
    ) -> Result<Dnsmasq> {
        let conf = dir.join("dnsmasq.conf");
        let leases = dir.join(LEASE_FILE);
        let pid_file = dir.join("dnsmasq.pid");
        std::fs::write(&conf, config(net, lease_secs, &leases, &pid_file))
            .map_err(|e| LabError::io("writing the dnsmasq config", &conf, e))?;
        let mut cmd = Command::new(tool("dnsmasq", "dnsmasq-base")?);
        cmd.arg(format!("--conf-file={}", conf.display()))
            .arg("--keep-in-foreground")
            .arg("--log-facility=-");
        let mut process = LabProcess::spawn(cmd, dir.join("dnsmasq.log"))?;
        wait_until("dnsmasq writing its pid file", timeout, || {
            process.ensure_running()?;
            Ok(if pid_file.exists() {
                Ok(())
            } else {
                Err("no pid file yet".to_string())
            })
        })?;
        Ok(Dnsmasq { process })
    }
}

/// The dnsmasq config for a lab. DNS is off (`port=0`): the lab only needs DHCP and RA,
/// and must not answer or forward queries.
fn config(net: &LabNet, lease_secs: u32, leases: &Path, pid_file: &Path) -> String {
    let (first, last) = net.dhcp_range();
    let (prefix, prefix_len) = net.prefix_v6();
    format!(
        "# rae-lab slot {slot}: DHCPv4 and router advertisements on {bridge} only.\n\
         interface={bridge}\n\
         bind-interfaces\n\
         except-interface=lo\n\
         port=0\n\
         # The lab directory is root's; dnsmasq must be able to rewrite its lease file there.\n\
         user=root\n\
         group=root\n\
         dhcp-authoritative\n\
         # dnsmasq otherwise pings each address for 3 s before offering it.\n\
         no-ping\n\
         dhcp-range={first},{last},255.255.255.0,{lease_secs}\n\
         dhcp-option=option:router,{router}\n\
         enable-ra\n\
         dhcp-range={prefix},ra-only,{prefix_len}\n\
         dhcp-leasefile={leases}\n\
         pid-file={pid}\n\
         log-dhcp\n",
        slot = net.slot,
        bridge = net.bridge,
        router = net.router_v4(),
        leases = leases.display(),
        pid = pid_file.display(),
    )
}

/// One DHCPv4 lease as dnsmasq records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Expiry, seconds since the epoch.
    pub expires: u64,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    /// The name the client sent (option 12), if any.
    pub hostname: Option<String>,
    /// The client identifier (option 61) bytes, if the client sent one.
    pub client_id: Option<Vec<u8>>,
}

/// Parses a dnsmasq lease file: `<expiry> <mac> <ip> <hostname|*> <client-id|*>` per
/// lease. DHCPv6 lines (the `duid` line and IPv6 leases) are skipped: the lab does RA only.
pub fn parse_leases(text: &str) -> Result<Vec<Lease>> {
    let mut leases = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = |why: &str| LabError::Parse {
            what: "dnsmasq lease line".to_string(),
            detail: format!("{why}: {line:?}"),
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&"duid") {
            continue;
        }
        let [expires, mac, ip, hostname, client_id] = fields[..] else {
            return Err(bad("expected 5 fields"));
        };
        if ip.contains(':') {
            continue;
        }
        let client_id = match client_id {
            "*" => None,
            hex => Some(
                hex.split(':')
                    .map(|b| u8::from_str_radix(b, 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| bad("bad client id"))?,
            ),
        };
        leases.push(Lease {
            expires: expires.parse().map_err(|_| bad("bad expiry"))?,
            mac: mac.parse().map_err(|_| bad("bad MAC"))?,
            ip: ip.parse().map_err(|_| bad("bad IPv4 address"))?,
            hostname: (hostname != "*").then(|| hostname.to_string()),
            client_id,
        });
    }
    Ok(leases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lines_parse_with_and_without_optional_fields() {
        let text = "1795680674 02:72:6c:fa:00:00 198.18.250.100 phone-a 01:aa:bb:cc\n\
                    1795680700 02:72:6c:fa:00:01 198.18.250.101 * *\n\
                    duid 00:01:00:01:2c:2b:1f:00:02:72:6c:fa:00:00\n";
        let leases = parse_leases(text).unwrap();
        assert_eq!(
            leases,
            vec![
                Lease {
                    expires: 1_795_680_674,
                    mac: "02:72:6c:fa:00:00".parse().unwrap(),
                    ip: "198.18.250.100".parse().unwrap(),
                    hostname: Some("phone-a".to_string()),
                    client_id: Some(vec![1, 0xaa, 0xbb, 0xcc]),
                },
                Lease {
                    expires: 1_795_680_700,
                    mac: "02:72:6c:fa:00:01".parse().unwrap(),
                    ip: "198.18.250.101".parse().unwrap(),
                    hostname: None,
                    client_id: None,
                },
            ]
        );
    }

    #[test]
    fn malformed_lease_lines_are_errors() {
        for bad in [
            "1 02:72:6c:fa:00:00 198.18.250.100",
            "x 02:72:6c:fa:00:00 198.18.250.100 a *",
            "1 nope 198.18.250.100 a *",
        ] {
            assert!(parse_leases(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_keeps_dnsmasq_on_the_bridge_without_dns() {
        let net = LabNet::new(9);
        let text = config(
            &net,
            600,
            Path::new("/tmp/rae-lab/1-netlab-0/l"),
            Path::new("/tmp/rae-lab/1-netlab-0/p"),
        );
        for line in [
            "interface=rlab9br",
            "bind-interfaces",
            "port=0",
            "dhcp-range=198.18.9.100,198.18.9.249,255.255.255.0,600",
            "dhcp-range=2001:db8:9::,ra-only,64",
            "enable-ra",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
    }
}
