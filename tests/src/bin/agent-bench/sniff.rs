//! A DHCP sniffer on the lab bridge that dates each frame with the kernel's receive time.
//!
//! The kernel stamps the frame (`SO_TIMESTAMPNS`, wall clock) when it passes the bridge, so
//! the time this thread is scheduled later does not count. The stamp is turned into an
//! `Instant` (the clock the MQTT subscriber dates messages with) by subtracting the frame's
//! age on the wall clock from `Instant::now()` at read time.

use std::io::IoSliceMut;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use nix::sys::socket::{
    recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, LinkAddr, MsgFlags,
    SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;
use rae_agent::wire::dhcp::{BootOp, MessageType};
use rae_agent::wire::{self, Message, UdpChecksum};
use rae_proto::Mac;

/// One DHCP message seen on the bridge.
#[derive(Clone, Debug)]
pub struct DhcpSeen {
    pub chaddr: Mac,
    pub reply: bool,
    pub kind: MessageType,
    pub yiaddr: Ipv4Addr,
    pub at: Instant,
}

pub struct DhcpSniffer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<DhcpSeen>>>,
    thread: Option<JoinHandle<()>>,
}

impl DhcpSniffer {
    /// Starts reading every frame on `bridge`.
    pub fn start(bridge: &str) -> Result<DhcpSniffer> {
        let ifindex = nix::net::if_::if_nametoindex(bridge)
            .with_context(|| format!("no interface {bridge}"))? as usize;
        let fd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .context("opening an AF_PACKET socket")?;
        setsockopt(&fd, sockopt::ReceiveTimestampns, &true).context("SO_TIMESTAMPNS")?;
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 200_000))
            .context("SO_RCVTIMEO")?;
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
            std::thread::Builder::new()
                .name("dhcp-sniffer".into())
                .spawn(move || read_loop(&fd, ifindex, &stop, &seen))
                .context("starting the sniffer thread")?
        };
        Ok(DhcpSniffer {
            stop,
            seen,
            thread: Some(thread),
        })
    }

    pub fn seen(&self) -> Vec<DhcpSeen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first message of `kind` for `chaddr`.
    pub fn first(&self, chaddr: Mac, kind: MessageType) -> Option<DhcpSeen> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| s.chaddr == chaddr && s.kind == kind)
            .cloned()
    }
}

impl Drop for DhcpSniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn read_loop(fd: &OwnedFd, ifindex: usize, stop: &AtomicBool, seen: &Mutex<Vec<DhcpSeen>>) {
    let mut buf = vec![0u8; 65536];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    while !stop.load(Ordering::Relaxed) {
        let (len, from, stamp) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = match recvmsg::<LinkAddr>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            ) {
                Ok(msg) => msg,
                // Timeouts let the loop notice `stop`; other errors are transient here.
                Err(_) => continue,
            };
            let stamp = msg.cmsgs().ok().and_then(|mut cmsgs| {
                cmsgs.find_map(|c| match c {
                    ControlMessageOwned::ScmTimestampns(ts) => Some(ts),
                    _ => None,
                })
            });
            (msg.bytes, msg.address.map(|a| a.ifindex()), stamp)
        };
        let (now_instant, now_wall) = (Instant::now(), SystemTime::now());
        if from != Some(ifindex) {
            continue;
        }
        let Ok(frame) = wire::parse_frame_with(&buf[..len], UdpChecksum::Skip) else {
            continue;
        };
        let Message::Dhcp { dhcp, .. } = frame.message else {
            continue;
        };
        let at = stamp
            .and_then(|ts| {
                let kernel = UNIX_EPOCH
                    + Duration::new(u64::try_from(ts.tv_sec()).ok()?, ts.tv_nsec() as u32);
                let age = now_wall.duration_since(kernel).unwrap_or_default();
                now_instant.checked_sub(age)
            })
            .unwrap_or(now_instant);
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(DhcpSeen {
                chaddr: dhcp.chaddr,
                reply: dhcp.op == BootOp::Reply,
                kind: dhcp.message_type,
                yiaddr: dhcp.yiaddr,
                at,
            });
    }
}
