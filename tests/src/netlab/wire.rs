//! What a DUT put on the wire and received, recorded by `tcpdump` on its bridge port (the
//! host end of its veth pair) from before its `eth0` comes up, so a test can check what
//! the device really said, independently of the agent's parsers.
//!
//! The recording is a classic pcap file read back here with a small reader of its own: the
//! Ethernet addresses, and for IPv6 the source, destination and, for Neighbor
//! Solicitations and Advertisements, the target. IPv6 extension headers other than
//! Hop-by-Hop Options (which MLD reports carry) are not followed.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::error::{LabError, Result};
use super::mac::MacAddr;
use super::process::LabProcess;
use super::sys::{tool, wait_until};

/// How long tcpdump gets to flush and print its counters after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// ICMPv6 types of Neighbor Discovery (RFC 4861).
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

/// A running recording of one link.
#[derive(Debug)]
pub struct WireRecord {
    tcpdump: LabProcess,
    path: PathBuf,
}

/// A finished recording: the frames in capture order and what tcpdump said it lost.
#[derive(Clone, Debug)]
pub struct Wire {
    pub frames: Vec<WireFrame>,
    /// From tcpdump's closing counters; `None` when it printed none.
    pub dropped_by_kernel: Option<u64>,
    pub path: PathBuf,
}

/// One captured frame, as far as the lab's checks need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireFrame {
    pub src: MacAddr,
    pub dst: MacAddr,
    pub ipv6: Option<Ipv6Frame>,
}

/// The IPv6 part of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Frame {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// ICMPv6 type, when the upper layer is ICMPv6.
    pub icmpv6: Option<u8>,
    /// The target of a Neighbor Solicitation or Advertisement.
    pub nd_target: Option<Ipv6Addr>,
}

impl WireFrame {
    /// Whether this frame shows `addr` as an address of its sender: sent from it, or a
    /// Neighbor Advertisement for it. A DAD probe (a solicitation from `::`) does not: it
    /// asks whether anyone else has the address.
    pub fn vouches_for(&self, addr: Ipv6Addr) -> bool {
        self.ipv6.as_ref().is_some_and(|ip| {
            ip.src == addr
                || (ip.icmpv6 == Some(ICMPV6_NEIGHBOR_ADVERT) && ip.nd_target == Some(addr))
        })
    }

    /// A Duplicate Address Detection probe for `addr` (RFC 4862 5.4): a Neighbor
    /// Solicitation from `::` whose target is the tentative address.
    pub fn is_dad_probe_for(&self, addr: Ipv6Addr) -> bool {
        self.ipv6.as_ref().is_some_and(|ip| {
            ip.src.is_unspecified()
                && ip.icmpv6 == Some(ICMPV6_NEIGHBOR_SOLICIT)
                && ip.nd_target == Some(addr)
        })
    }

    /// A frame that asks for `addr`: sent to it, or a solicitation for it from a
    /// specified source (address resolution or reachability, not DAD).
    pub fn asks_for(&self, addr: Ipv6Addr) -> bool {
        self.ipv6.as_ref().is_some_and(|ip| {
            ip.dst == addr
                || (ip.icmpv6 == Some(ICMPV6_NEIGHBOR_SOLICIT)
                    && ip.nd_target == Some(addr)
                    && !ip.src.is_unspecified())
        })
    }

    pub fn ipv6_src(&self) -> Option<Ipv6Addr> {
        self.ipv6.as_ref().map(|ip| ip.src)
    }
}

impl WireRecord {
    /// Starts tcpdump on root-namespace link `link` (which must be administratively up)
    /// writing to `path`, and returns once it is capturing.
    pub(crate) fn start(link: &str, path: &Path, log: PathBuf, ready: Duration) -> Result<Self> {
        let mut cmd = Command::new(tool("tcpdump", "tcpdump")?);
        // Immediate mode and -U: every frame reaches the file as it is captured, none
        // waits in a kernel block or a stdio buffer. -Z root: Debian's tcpdump would
        // otherwise switch to its own user before opening the file in the lab directory.
        cmd.args([
            "--immediate-mode",
            "-U",
            "-n",
            "-Z",
            "root",
            "-i",
            link,
            "-w",
        ])
        .arg(path);
        let tcpdump = LabProcess::spawn(cmd, log)?;
        let mut record = WireRecord {
            tcpdump,
            path: path.to_path_buf(),
        };
        let what = format!("tcpdump capturing on {link}");
        wait_until(what, ready, || {
            record.tcpdump.ensure_running()?;
            let log = record.tcpdump.log_tail();
            Ok(if log.contains("listening on") {
                Ok(())
            } else {
                Err(format!("log: {log:?}"))
            })
        })?;
        Ok(record)
    }

    /// Stops tcpdump (it writes out what it has and its counters on SIGTERM) and reads
    /// the recording.
    pub fn finish(self) -> Result<Wire> {
        let log_path = self.tcpdump.log_path().to_path_buf();
        self.tcpdump.stop(STOP_GRACE)?;
        let bytes = std::fs::read(&self.path)
            .map_err(|e| LabError::io("reading a wire recording", &self.path, e))?;
        let frames = parse_pcap(&bytes).map_err(|detail| LabError::Parse {
            what: format!("wire recording {}", self.path.display()),
            detail,
        })?;
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        Ok(Wire {
            frames,
            dropped_by_kernel: counter(&log, "packets dropped by kernel"),
            path: self.path,
        })
    }
}

/// `N <what>` from tcpdump's closing lines.
fn counter(log: &str, what: &str) -> Option<u64> {
    log.lines()
        .find_map(|line| line.trim().strip_suffix(what)?.trim().parse().ok())
}

const LINKTYPE_ETHERNET: u32 = 1;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMPV6: u8 = 58;

/// Frames of a classic pcap file (either byte order, micro- or nanosecond stamps) with an
/// Ethernet link type. A record cut short at the end is an error: the recording is read
/// only after tcpdump has exited.
pub fn parse_pcap(bytes: &[u8]) -> std::result::Result<Vec<WireFrame>, String> {
    let magic = bytes.get(..4).ok_or("shorter than a pcap header")?;
    let big_endian = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
        other => return Err(format!("not a classic pcap file (magic {other:02x?})")),
    };
    let word = |at: usize| -> std::result::Result<u32, String> {
        let b: [u8; 4] = bytes
            .get(at..at + 4)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| format!("cut short at byte {at}"))?;
        Ok(if big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    let link_type = word(20)?;
    if link_type != LINKTYPE_ETHERNET {
        return Err(format!("link type {link_type}, not Ethernet"));
    }
    let mut frames = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        let captured = usize::try_from(word(at + 8)?).map_err(|e| e.to_string())?;
        let start = at + 16;
        let data = bytes
            .get(start..start + captured)
            .ok_or_else(|| format!("record at byte {at} cut short"))?;
        frames.push(parse_frame(data).ok_or_else(|| format!("frame at byte {at} too short"))?);
        at = start + captured;
    }
    Ok(frames)
}

fn v6(bytes: &[u8]) -> Option<Ipv6Addr> {
    let octets: [u8; 16] = bytes.get(..16)?.try_into().ok()?;
    Some(Ipv6Addr::from(octets))
}

fn mac(bytes: &[u8]) -> Option<MacAddr> {
    Some(MacAddr(bytes.get(..6)?.try_into().ok()?))
}

fn parse_frame(data: &[u8]) -> Option<WireFrame> {
    let dst = mac(data)?;
    let src = mac(data.get(6..)?)?;
    let ethertype = u16::from_be_bytes([*data.get(12)?, *data.get(13)?]);
    let ipv6 = if ethertype == ETHERTYPE_IPV6 {
        parse_ipv6(data.get(14..)?)
    } else {
        None
    };
    Some(WireFrame { src, dst, ipv6 })
}

/// A truncated IPv6 header gives `None`; a truncated upper layer just leaves it unknown.
fn parse_ipv6(packet: &[u8]) -> Option<Ipv6Frame> {
    let src = v6(packet.get(8..)?)?;
    let dst = v6(packet.get(24..)?)?;
    let mut next = *packet.get(6)?;
    let mut at = 40;
    if next == IPPROTO_HOPOPTS {
        let header = packet.get(at..at + 2);
        next = header.map_or(u8::MAX, |h| h[0]);
        at += header.map_or(0, |h| (usize::from(h[1]) + 1) * 8);
    }
    let (mut icmpv6, mut nd_target) = (None, None);
    if next == IPPROTO_ICMPV6 {
        icmpv6 = packet.get(at).copied();
        if matches!(
            icmpv6,
            Some(ICMPV6_NEIGHBOR_SOLICIT | ICMPV6_NEIGHBOR_ADVERT)
        ) {
            nd_target = packet.get(at + 8..).and_then(v6);
        }
    }
    Some(Ipv6Frame {
        src,
        dst,
        icmpv6,
        nd_target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap_le(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        for f in frames {
            out.extend_from_slice(&[0; 8]);
            let len = u32::try_from(f.len()).unwrap();
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(f);
        }
        out
    }

    fn nd(src: Ipv6Addr, kind: u8, target: Ipv6Addr, hop_by_hop: bool) -> Vec<u8> {
        let mut f = vec![0x33, 0x33, 0xff, 0, 0, 5, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 32]);
        f.push(if hop_by_hop { 0 } else { 58 });
        f.push(255);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&"ff02::1:ff00:5".parse::<Ipv6Addr>().unwrap().octets());
        if hop_by_hop {
            f.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0]);
        }
        f.extend_from_slice(&[kind, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&target.octets());
        f
    }

    #[test]
    fn dad_probes_answers_and_questions_are_told_apart() {
        let addr: Ipv6Addr = "2001:db8:3::5".parse().unwrap();
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let file = pcap_le(&[
            nd(Ipv6Addr::UNSPECIFIED, ICMPV6_NEIGHBOR_SOLICIT, addr, false),
            nd(ll, ICMPV6_NEIGHBOR_SOLICIT, addr, true),
            nd(addr, ICMPV6_NEIGHBOR_ADVERT, addr, false),
            vec![0xff; 14],
        ]);
        let frames = parse_pcap(&file).unwrap();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].src, MacAddr([2, 0, 0, 0, 0, 1]));
        assert!(frames[0].is_dad_probe_for(addr) && !frames[0].vouches_for(addr));
        assert!(!frames[0].asks_for(addr));
        assert_eq!(frames[1].ipv6.as_ref().unwrap().nd_target, Some(addr));
        assert!(frames[1].asks_for(addr) && !frames[1].is_dad_probe_for(addr));
        assert!(frames[2].vouches_for(addr));
        assert_eq!(frames[3].ipv6, None);
    }

    #[test]
    fn a_cut_record_is_an_error() {
        let mut file = pcap_le(&[vec![0; 20]]);
        file.truncate(file.len() - 1);
        assert!(parse_pcap(&file).is_err());
        assert!(parse_pcap(b"nope").is_err());
    }

    #[test]
    fn tcpdump_counters_are_read_from_its_log() {
        let log = "3 packets captured\n3 packets received by filter\n0 packets dropped by kernel\n";
        assert_eq!(counter(log, "packets dropped by kernel"), Some(0));
        assert_eq!(counter("", "packets dropped by kernel"), None);
    }
}
