//! Running the system tools the lab is built from (`ip`, `bridge`, `busybox`), writing
//! sysctls inside a namespace, and waiting for effects with a deadline.

use std::ffi::OsStr;
use std::fmt::Display;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use super::error::{LabError, Result};

/// Directories searched after `$PATH`: test runners often start without the sbin ones.
const EXTRA_PATH: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The absolute path of a tool, or an error naming the Debian package that provides it.
pub(crate) fn tool(name: &str, package: &'static str) -> Result<PathBuf> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(EXTRA_PATH.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or(LabError::MissingTool {
            tool: name.to_string(),
            package,
        })
}

/// `cmd` as a person would type it, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` to completion; its output whatever the exit status.
pub(crate) fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output().map_err(|source| LabError::Spawn {
        command: describe(cmd),
        source,
    })
}

/// Runs `cmd` and returns its stdout; a non-zero exit is an error carrying stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(LabError::Command {
            command: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` in the root namespace, or in `ns` with `ip -n`.
pub(crate) fn ip(ns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(tool("ip", "iproute2")?);
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    run(cmd.args(args))
}

/// `ip -j <args>` parsed as JSON (an empty answer is an empty list).
pub(crate) fn ip_json(ns: Option<&str>, args: &[&str]) -> Result<serde_json::Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    parse_json(&format!("ip {}", args.join(" ")), &ip(ns, &full)?)
}

/// `bridge -j <args>` parsed as JSON.
pub(crate) fn bridge_json(args: &[&str]) -> Result<serde_json::Value> {
    let mut cmd = Command::new(tool("bridge", "iproute2")?);
    cmd.arg("-j").args(args);
    parse_json(&format!("bridge {}", args.join(" ")), &run(&mut cmd)?)
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value> {
    if text.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(text).map_err(|e| LabError::Parse {
        what: format!("output of `{what}`"),
        detail: e.to_string(),
    })
}

/// Writes `/proc/sys/<key>` values inside network namespace `ns` (or the root one).
///
/// `/proc/sys/net` shows the namespace of the thread that opens it, so a short-lived
/// thread joins the namespace and writes; no process per setting.
pub(crate) fn write_sysctls(ns: Option<&str>, settings: &[(String, &str)]) -> Result<()> {
    let write_all = || -> Result<()> {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key);
            std::fs::write(&path, value).map_err(|e| LabError::io("writing a sysctl", &path, e))?;
        }
        Ok(())
    };
    let Some(ns) = ns else {
        return write_all();
    };
    let ns_path = Path::new("/run/netns").join(ns);
    let handle = File::open(&ns_path)
        .map_err(|e| LabError::io("opening a network namespace", &ns_path, e))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&handle, CloneFlags::CLONE_NEWNET).map_err(|source| LabError::Setns {
                    ns: ns.to_string(),
                    source,
                })?;
                write_all()
            })
            .join()
            .unwrap_or_else(|_| {
                Err(LabError::Parse {
                    what: format!("sysctl writer thread for {ns}"),
                    detail: "panicked".to_string(),
                })
            })
    })
}

/// Polls `probe` until it yields a value or `timeout` passes. The probe returns
/// `Ok(Err(seen))` to keep waiting, where `seen` says what it found instead; the last
/// one ends up in the timeout error. Hard errors from the probe end the wait at once.
pub fn wait_until<T>(
    what: impl Display,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<Result<T, String>>,
) -> Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        let seen = match probe()? {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(LabError::Timeout {
                what: what.to_string(),
                waited,
                last: seen,
            });
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Whether `ip` is one the lab may send test traffic to: 198.18.0.0/15 or 2001:db8::/32.
pub fn is_lab_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            a == 198 && (b == 18 || b == 19)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            seg[0] == 0x2001 && seg[1] == 0x0db8
        }
    }
}

pub(crate) fn require_lab_address(ip: IpAddr) -> Result<()> {
    if is_lab_address(ip) {
        Ok(())
    } else {
        Err(LabError::Invalid {
            what: "address",
            value: ip.to_string(),
            why: "the lab only uses 198.18.0.0/15 and 2001:db8::/32",
        })
    }
}

/// One `ping` with a one-second wait, from the root namespace or from inside `ns`.
/// Only lab addresses are accepted, so test traffic never leaves the lab.
pub(crate) fn ping_once(ns: Option<&str>, ip: IpAddr) -> Result<bool> {
    require_lab_address(ip)?;
    let busybox = tool("busybox", "busybox")?;
    let target = ip.to_string();
    let ping = [
        busybox.as_os_str(),
        OsStr::new("ping"),
        OsStr::new("-c1"),
        OsStr::new("-W1"),
        OsStr::new(&target),
    ];
    let mut cmd = match ns {
        Some(ns) => {
            let mut cmd = Command::new(tool("ip", "iproute2")?);
            cmd.args(["netns", "exec", ns]).args(ping);
            cmd
        }
        None => {
            let mut cmd = Command::new(&busybox);
            cmd.args(&ping[1..]);
            cmd
        }
    };
    Ok(output(&mut cmd)?.status.success())
}

/// The `local` addresses in `ip -j addr` output.
pub(crate) fn addresses(json: &serde_json::Value) -> Vec<(IpAddr, u8)> {
    json.as_array()
        .into_iter()
        .flatten()
        .filter_map(|link| link.get("addr_info")?.as_array())
        .flatten()
        .filter_map(|info| {
            let ip: IpAddr = info.get("local")?.as_str()?.parse().ok()?;
            let len = u8::try_from(info.get("prefixlen")?.as_u64()?).ok()?;
            Some((ip, len))
        })
        .collect()
}

/// `true` when `ip` is inside `net/len`.
pub(crate) fn v4_in(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

pub(crate) fn v6_in(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_documentation_ranges_are_lab_addresses() {
        for ok in [
            "198.18.0.1",
            "198.19.255.254",
            "2001:db8::1",
            "2001:db8:ffff::9",
        ] {
            assert!(is_lab_address(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "198.17.255.255",
            "198.20.0.1",
            "10.0.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "2001:db9::1",
            "fe80::1",
            "::1",
        ] {
            assert!(!is_lab_address(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn prefix_membership() {
        let net: Ipv4Addr = "198.18.7.0".parse().unwrap();
        assert!(v4_in("198.18.7.200".parse().unwrap(), net, 24));
        assert!(!v4_in("198.18.8.1".parse().unwrap(), net, 24));
        let net6: Ipv6Addr = "2001:db8:7::".parse().unwrap();
        assert!(v6_in("2001:db8:7::99".parse().unwrap(), net6, 64));
        assert!(!v6_in("2001:db8:8::1".parse().unwrap(), net6, 64));
    }

    #[test]
    fn addresses_come_out_of_ip_json() {
        let json = serde_json::json!([{"ifname":"eth0","addr_info":[
            {"family":"inet","local":"198.18.3.100","prefixlen":24},
            {"family":"inet6","local":"fe80::1","prefixlen":64}]}]);
        assert_eq!(
            addresses(&json),
            vec![
                ("198.18.3.100".parse().unwrap(), 24),
                ("fe80::1".parse().unwrap(), 64)
            ]
        );
    }

    #[test]
    fn waiting_reports_what_was_seen_last() {
        let mut n = 0;
        let err = wait_until("the answer", Duration::from_millis(50), || {
            n += 1;
            Ok(Err::<(), _>(format!("try {n}")))
        })
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("the answer") && text.contains("try"),
            "{text}"
        );
    }
}
