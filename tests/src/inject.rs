//! Frames sent from inside a DUT's namespace, as if from many devices behind its port.
//!
//! The socket is opened by a short-lived thread that first enters the DUT's network
//! namespace; the socket stays in that namespace, so frames leave through the DUT's `eth0`
//! and cross the lab bridge like any device's. Only the lab's own addresses are used.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use anyhow::{anyhow, Context, Result};
use nix::libc;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    sendto, socket, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike,
};
use rae_agent::wire::arp::{self, Operation};
use rae_agent::wire::{icmpv6, ArpRepr};
use rae_proto::Mac;

pub struct Injector {
    fd: OwnedFd,
    to: LinkAddr,
}

impl Injector {
    /// A raw socket on `ifname` inside network namespace `ns` (a name under /run/netns).
    pub fn open(ns: &str, ifname: &str) -> Result<Injector> {
        let path = format!("/run/netns/{ns}");
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<Injector> {
                    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
                    // Only this thread moves; it ends once the socket exists.
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering namespace {ns}"))?;
                    let index = nix::net::if_::if_nametoindex(ifname)
                        .with_context(|| format!("no {ifname} in namespace {ns}"))?;
                    // Protocol 0: the socket sends only, so it never queues received frames.
                    let fd = socket(
                        AddressFamily::Packet,
                        SockType::Raw,
                        SockFlag::SOCK_CLOEXEC,
                        None,
                    )
                    .context("opening an AF_PACKET socket")?;
                    // SAFETY: sockaddr_ll is plain integers and arrays; all zeroes is valid.
                    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    sll.sll_family = libc::AF_PACKET as u16;
                    sll.sll_ifindex = index as i32;
                    sll.sll_halen = 6;
                    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                    // SAFETY: `sll` is a fully initialised sockaddr_ll of `len` bytes, which
                    // is what LinkAddr wraps.
                    let to = unsafe {
                        LinkAddr::from_raw(
                            (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
                            Some(len),
                        )
                    }
                    .ok_or_else(|| anyhow!("building the link address of {ifname}"))?;
                    Ok(Injector { fd, to })
                })
                .join()
                .map_err(|_| anyhow!("the namespace thread panicked"))?
        })
    }

    pub fn send(&self, frame: &[u8]) -> Result<()> {
        sendto(self.fd.as_raw_fd(), frame, &self.to, MsgFlags::empty())
            .context("sending an injected frame")?;
        Ok(())
    }
}

/// A gratuitous ARP request (RFC 5227 announcement) of `ip` from `mac`, broadcast.
pub fn arp_announcement(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr {
        operation: Operation::Request,
        sender_mac: mac,
        sender_ip: ip,
        target_mac: Mac([0; 6]),
        target_ip: ip,
    };
    arp::build_frame(Mac([0xff; 6]), None, &repr)
}

/// A neighbour solicitation from `mac`/`ip` for `target` (e.g. the router), multicast.
pub fn neighbour_solicitation(mac: Mac, ip: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    icmpv6::neighbor_solicitation_frame(mac, ip, target, None, None)
}
