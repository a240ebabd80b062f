//! The real DHCP clients a DUT runs: busybox `udhcpc` and ISC `dhclient`.
//!
//! Both get a script of ours instead of their distribution's: it applies the lease to the
//! DUT's `eth0` and nothing else (no resolv.conf, no hooks), so a client can never change
//! the host. Their pid, lease and config files live in the DUT's directory.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use super::error::{LabError, Result};
use super::process::LabProcess;
use super::sys::{run, tool};

/// The DUT's interface inside its namespace.
pub(crate) const DUT_IF: &str = "eth0";

/// What a DHCP client says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Identity<'a> {
    pub hostname: Option<&'a str>,
    pub vendor_class: Option<&'a str>,
    pub client_id: Option<&'a [u8]>,
}

const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
# rae-lab udhcpc script: applies the lease to $interface in this namespace only.
case "$1" in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set dev "$interface" up
    ;;
bound|renew)
    for old in $(ip -4 -o addr show dev "$interface" | awk '{print $4}'); do
        [ "${old%/*}" = "$ip" ] || ip addr del "$old" dev "$interface"
    done
    ip addr replace "$ip/$mask" broadcast + dev "$interface"
    if [ -n "$router" ]; then
        set -- $router
        ip route replace default via "$1" dev "$interface"
    fi
    ;;
esac
exit 0
"#;

const DHCLIENT_SCRIPT: &str = r#"#!/bin/sh
# rae-lab dhclient script: applies the lease to $interface in this namespace only.
case "$reason" in
PREINIT)
    ip link set dev "$interface" up
    ;;
BOUND|RENEW|REBIND|REBOOT)
    for old in $(ip -4 -o addr show dev "$interface" | awk '{print $4}'); do
        [ "${old%/*}" = "$new_ip_address" ] || ip addr del "$old" dev "$interface"
    done
    ip addr replace "$new_ip_address/$new_subnet_mask" broadcast + dev "$interface"
    if [ -n "$new_routers" ]; then
        set -- $new_routers
        ip route replace default via "$1" dev "$interface"
    fi
    ;;
EXPIRE|FAIL|RELEASE|STOP)
    ip -4 addr flush dev "$interface"
    ;;
esac
exit 0
"#;

/// Starts `udhcpc` in namespace `ns`, asking for `requested` if given. It runs in the
/// foreground, retries every second, and releases its lease when stopped with SIGTERM.
pub(crate) fn start_udhcpc(
    ns: &str,
    dir: &Path,
    id: &Identity,
    requested: Option<Ipv4Addr>,
) -> Result<LabProcess> {
    let script = write_script(dir, "udhcpc.script", UDHCPC_SCRIPT)?;
    let mut cmd = in_ns(ns)?;
    cmd.arg(tool("udhcpc", "udhcpc")?)
        .args(["-f", "-R", "-t", "30", "-T", "1", "-A", "1", "-i", DUT_IF])
        .arg("-s")
        .arg(&script)
        .arg("-p")
        .arg(dir.join("udhcpc.pid"));
    if let Some(hostname) = id.hostname {
        cmd.arg("-x").arg(format!("hostname:{hostname}"));
    }
    if let Some(vendor) = id.vendor_class {
        cmd.arg("-V").arg(vendor);
    }
    if let Some(client_id) = id.client_id {
        let hex = client_id.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        cmd.arg("-x").arg(format!("0x3d:{hex}"));
    }
    if let Some(ip) = requested {
        cmd.arg("-r").arg(ip.to_string());
    }
    LabProcess::spawn(cmd, dir.join("udhcpc.log"))
}

/// Starts `dhclient -4` in the foreground in namespace `ns`, with its own config, lease,
/// pid and DUID files in `dir`.
pub(crate) fn start_dhclient(
    ns: &str,
    dir: &Path,
    id: &Identity,
    requested: Option<Ipv4Addr>,
) -> Result<LabProcess> {
    let conf = dir.join("dhclient.conf");
    std::fs::write(&conf, dhclient_config(id, requested)?)
        .map_err(|e| LabError::io("writing the dhclient config", &conf, e))?;
    let mut cmd = dhclient(ns, dir)?;
    cmd.args(["-d", "-v", DUT_IF]);
    LabProcess::spawn(cmd, dir.join("dhclient.log"))
}

/// Releases dhclient's lease the way its man page says to (`dhclient -r`), which also
/// stops the running instance through its pid file; then forgets the lease.
pub(crate) fn release_dhclient(ns: &str, dir: &Path) -> Result<()> {
    let mut cmd = dhclient(ns, dir)?;
    cmd.args(["-r", DUT_IF]);
    run(&mut cmd)?;
    let leases = dir.join("dhclient.leases");
    match std::fs::remove_file(&leases) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(LabError::io("removing dhclient's lease file", &leases, e))
        }
        _ => Ok(()),
    }
}

fn dhclient(ns: &str, dir: &Path) -> Result<Command> {
    let script = write_script(dir, "dhclient.script", DHCLIENT_SCRIPT)?;
    let mut cmd = in_ns(ns)?;
    cmd.arg(tool("dhclient", "isc-dhcp-client")?)
        .arg("-4")
        .arg("-cf")
        .arg(dir.join("dhclient.conf"))
        .arg("-lf")
        .arg(dir.join("dhclient.leases"))
        .arg("-pf")
        .arg(dir.join("dhclient.pid"))
        .arg("-df")
        .arg(dir.join("dhclient.duid"))
        .arg("-sf")
        .arg(script);
    Ok(cmd)
}

/// dhclient.conf: what it sends, and short retry intervals (defaults wait 10 s and more).
fn dhclient_config(id: &Identity, requested: Option<Ipv4Addr>) -> Result<String> {
    let mut conf = String::from("initial-interval 1;\nbackoff-cutoff 2;\nreboot 2;\n");
    if let Some(hostname) = id.hostname {
        let _ = writeln!(
            conf,
            "send host-name \"{}\";",
            config_string("hostname", hostname)?
        );
    }
    if let Some(vendor) = id.vendor_class {
        let _ = writeln!(
            conf,
            "send vendor-class-identifier \"{}\";",
            config_string("vendor class", vendor)?
        );
    }
    if let Some(ip) = requested {
        let _ = writeln!(conf, "send dhcp-requested-address {ip};");
    }
    conf.push_str("request subnet-mask, broadcast-address, routers;\n");
    Ok(conf)
}

/// A value that can go between quotes in dhclient.conf as is.
fn config_string<'a>(what: &'static str, value: &'a str) -> Result<&'a str> {
    if value.is_empty()
        || !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        || value.contains(['"', '\\'])
    {
        return Err(LabError::Invalid {
            what,
            value: value.to_string(),
            why: "dhclient DUTs take non-empty printable ASCII without quotes or backslashes",
        });
    }
    Ok(value)
}

/// `ip netns exec <ns>`: runs a program in the DUT's namespace (and, through
/// /etc/netns/<ns>/, with the DUT's own resolv.conf).
pub(crate) fn in_ns(ns: &str) -> Result<Command> {
    let mut cmd = Command::new(tool("ip", "iproute2")?);
    cmd.args(["netns", "exec", ns]);
    Ok(cmd)
}

fn write_script(dir: &Path, name: &str, text: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)
        .map_err(|e| LabError::io("writing a DHCP client script", &path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| LabError::io("making a DHCP client script executable", &path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhclient_config_sends_identity_and_requested_address() {
        let id = Identity {
            hostname: Some("tv-1"),
            vendor_class: Some("acme tv"),
            client_id: None,
        };
        let conf = dhclient_config(&id, Some("198.18.4.150".parse().unwrap())).unwrap();
        assert!(conf.contains("send host-name \"tv-1\";"), "{conf}");
        assert!(
            conf.contains("send vendor-class-identifier \"acme tv\";"),
            "{conf}"
        );
        assert!(
            conf.contains("send dhcp-requested-address 198.18.4.150;"),
            "{conf}"
        );
    }

    #[test]
    fn dhclient_config_rejects_quotes() {
        let id = Identity {
            hostname: Some("a\"; b"),
            ..Identity::default()
        };
        assert!(dhclient_config(&id, None).is_err());
    }
}
