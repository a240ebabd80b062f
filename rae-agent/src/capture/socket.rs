//! The AF_PACKET socket: small safe wrappers over the libc calls, nothing else.
//!
//! Opening order matters. `socket(AF_PACKET, SOCK_RAW, 0)` (protocol 0) receives nothing
//! until bound, so the filter is attached before any frame can be queued and there is
//! nothing unfiltered to drain; only `bind` with `ETH_P_ALL` starts the flow, already
//! filtered. Frames sent by this host are kept (no `PACKET_IGNORE_OUTGOING`): a DHCP
//! server on the RAE answers from here, and [`PacketType::Outgoing`] lets the consumer
//! tell them apart.
//!
//! Binding to a down interface succeeds but leaves `ENETDOWN` pending (`SO_ERROR`), and a
//! bound socket whose interface goes down or away returns `ENETDOWN` once and then only
//! times out, even when the interface comes back with a new index: so the capture closes
//! the socket on that error and opens a new one.

use std::ffi::CString;
use std::io;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use super::error::CaptureError;
use super::filter::Insn;

/// How the kernel classified a frame (`sll_pkttype`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// Addressed to this host.
    Host,
    Broadcast,
    Multicast,
    /// Addressed to another host (seen because the interface is promiscuous).
    OtherHost,
    /// Sent by this host.
    Outgoing,
    /// Any other kernel value (loopback, user, kernel).
    Other(u8),
}

impl PacketType {
    fn from_raw(raw: u8) -> PacketType {
        match raw {
            libc::PACKET_HOST => PacketType::Host,
            libc::PACKET_BROADCAST => PacketType::Broadcast,
            libc::PACKET_MULTICAST => PacketType::Multicast,
            libc::PACKET_OTHERHOST => PacketType::OtherHost,
            libc::PACKET_OUTGOING => PacketType::Outgoing,
            other => PacketType::Other(other),
        }
    }
}

/// What the socket needs to open.
pub(crate) struct SocketOptions<'a> {
    pub interface: &'a str,
    pub program: &'a [Insn],
    pub promiscuous: bool,
    pub read_timeout: Duration,
    pub recv_buffer_bytes: usize,
}

/// One read: the frame is in the caller's buffer, `len` bytes of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Received {
    pub len: usize,
    /// The frame's length on the wire (more than `len` if it was cut short).
    pub wire_len: usize,
    /// `tp_status` from the auxiliary data (`TP_STATUS_*`).
    pub status: u32,
    /// TPID and TCI of the tag the kernel took out of the frame.
    pub vlan: Option<(u16, u16)>,
    pub packet_type: PacketType,
}

#[derive(Debug)]
pub(crate) struct PacketSocket {
    fd: OwnedFd,
}

/// Multicast MACs of 224.0.0.251 and ff02::fb (mDNS) and 239.255.255.250 (SSDP).
const LISTENED_GROUPS: [[u8; 6]; 3] = [
    [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb],
    [0x33, 0x33, 0x00, 0x00, 0x00, 0xfb],
    [0x01, 0x00, 0x5e, 0x7f, 0xff, 0xfa],
];

fn os_error(interface: &str, step: &'static str) -> CaptureError {
    CaptureError::Socket {
        interface: interface.to_string(),
        step,
        source: io::Error::last_os_error(),
    }
}

fn set_option<T>(fd: &OwnedFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live, initialised `T` and the length passed is its size;
    // the kernel only reads (copies) it during the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads an option into `value`, which must be a plain-integer struct of the option's size.
fn get_option<T>(fd: &OwnedFd, level: i32, name: i32, value: &mut T) -> io::Result<()> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` is valid for writes of `len` bytes, and the kernel writes at most
    // `len` bytes and updates `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *mut T).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<T>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "option {level}/{name}: {len} bytes, {} expected",
                size_of::<T>()
            ),
        ));
    }
    Ok(())
}

impl PacketSocket {
    pub fn open(options: &SocketOptions<'_>) -> Result<PacketSocket, CaptureError> {
        let interface = options.interface;
        let at = |step| {
            move |source| CaptureError::Socket {
                interface: interface.to_string(),
                step,
                source,
            }
        };
        let name = CString::new(interface).map_err(|_| CaptureError::InterfaceName {
            name: interface.to_string(),
        })?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(CaptureError::NoSuchInterface {
                interface: interface.to_string(),
            });
        }
        let ifindex = i32::try_from(ifindex).map_err(|_| CaptureError::NoSuchInterface {
            interface: interface.to_string(),
        })?;

        // SAFETY: a plain syscall without pointer arguments.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os_error(interface, "socket(AF_PACKET)"));
        }
        // SAFETY: `raw` is a descriptor we just created and nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let mut filter: Vec<libc::sock_filter> =
            options.program.iter().map(|i| i.to_sock_filter()).collect();
        let len = u16::try_from(filter.len()).map_err(|_| CaptureError::Socket {
            interface: interface.to_string(),
            step: "SO_ATTACH_FILTER",
            source: io::Error::new(io::ErrorKind::InvalidInput, "filter too long"),
        })?;
        let program = libc::sock_fprog {
            len,
            filter: filter.as_mut_ptr(),
        };
        // The kernel copies the program during the call; `filter` outlives it.
        set_option(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &program)
            .map_err(at("SO_ATTACH_FILTER"))?;
        set_option(&fd, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, &1i32)
            .map_err(at("SO_LOCK_FILTER"))?;
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, &1i32)
            .map_err(at("PACKET_AUXDATA"))?;
        let rcvbuf = i32::try_from(options.recv_buffer_bytes).unwrap_or(i32::MAX);
        // FORCE goes past net.core.rmem_max but needs CAP_NET_ADMIN; without it the
        // kernel clamps to rmem_max, which is still better than nothing.
        if set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf).is_err() {
            set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcvbuf).map_err(at("SO_RCVBUF"))?;
        }
        let timeout = libc::timeval {
            tv_sec: options
                .read_timeout
                .as_secs()
                .try_into()
                .unwrap_or(i32::MAX.into()),
            tv_usec: options.read_timeout.subsec_micros().into(),
        };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout)
            .map_err(at("SO_RCVTIMEO"))?;

        // SAFETY: sockaddr_ll is plain integers, for which all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = ifindex;
        // SAFETY: `addr` is a valid sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of_val(&addr) as libc::socklen_t,
            )
        };
        if rc < 0 {
            let source = io::Error::last_os_error();
            return Err(match source.raw_os_error() {
                Some(libc::ENODEV) | Some(libc::ENXIO) => CaptureError::NoSuchInterface {
                    interface: interface.to_string(),
                },
                _ => CaptureError::Socket {
                    interface: interface.to_string(),
                    step: "bind",
                    source,
                },
            });
        }
        if options.promiscuous {
            // Membership belongs to the socket: the kernel drops it when the socket closes.
            let request = libc::packet_mreq {
                mr_ifindex: ifindex,
                mr_type: libc::PACKET_MR_PROMISC as u16,
                mr_alen: 0,
                mr_address: [0; 8],
            };
            set_option(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &request)
                .map_err(at("PACKET_ADD_MEMBERSHIP"))?;
        }
        // The groups the registry reads (mDNS v4/v6, SSDP): a plain NIC's hardware filter
        // passes their frames only once someone asked for them. Link-layer membership sends
        // no IGMP/MLD report, unlike joining the IP group would.
        for group in LISTENED_GROUPS {
            let mut mr_address = [0u8; 8];
            mr_address[..6].copy_from_slice(&group);
            let request = libc::packet_mreq {
                mr_ifindex: ifindex,
                mr_type: libc::PACKET_MR_MULTICAST as u16,
                mr_alen: 6,
                mr_address,
            };
            set_option(&fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &request)
                .map_err(at("PACKET_ADD_MEMBERSHIP (multicast)"))?;
        }
        let mut pending = 0i32;
        get_option(&fd, libc::SOL_SOCKET, libc::SO_ERROR, &mut pending).map_err(at("SO_ERROR"))?;
        if pending == libc::ENETDOWN {
            return Err(CaptureError::InterfaceDown {
                interface: interface.to_string(),
            });
        }
        Ok(PacketSocket { fd })
    }

    /// Waits up to the read timeout for a frame; `None` if none came (or a signal
    /// interrupted the wait).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Received>> {
        // SAFETY: all-zero is a valid sockaddr_ll and msghdr (null pointers, zero lengths).
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // u64 elements give the alignment cmsghdr needs; 64 bytes hold one auxdata message.
        let mut control = [0u64; 8];
        // SAFETY: as above.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = size_of_val(&addr) as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control) as _;
        // SAFETY: every pointer in `msg` refers to a live local or to `buf`, with the
        // lengths set to their sizes; the kernel writes within them. MSG_TRUNC makes the
        // return value the frame's full (snapped) length even if `buf` were shorter.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_TRUNC) };
        if n < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(error),
            };
        }
        let len = n as usize;
        let mut received = Received {
            len: len.min(buf.len()),
            wire_len: len,
            status: 0,
            vlan: None,
            packet_type: PacketType::from_raw(addr.sll_pkttype),
        };
        if let Some(aux) = auxdata(&msg) {
            received.status = aux.tp_status;
            received.wire_len = received.wire_len.max(aux.tp_len as usize);
            if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                    aux.tp_vlan_tpid
                } else {
                    0x8100
                };
                received.vlan = Some((tpid, aux.tp_vlan_tci));
            }
        }
        Ok(Some(received))
    }

    /// Packets the filter passed and packets dropped since the last call (the kernel
    /// resets both on every read).
    pub fn take_statistics(&self) -> io::Result<(u64, u64)> {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        get_option(
            &self.fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut stats,
        )?;
        Ok((stats.tp_packets.into(), stats.tp_drops.into()))
    }
}

/// The `PACKET_AUXDATA` control message of a received frame, if the kernel sent one.
fn auxdata(msg: &libc::msghdr) -> Option<libc::tpacket_auxdata> {
    // SAFETY: `msg` was filled in by recvmsg, so its control pointer and length describe
    // the control messages the kernel wrote; CMSG_FIRSTHDR/NXTHDR stay within them.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points at a header inside the control buffer.
        let header = unsafe { &*cmsg };
        let wanted = size_of::<libc::tpacket_auxdata>();
        // SAFETY: CMSG_LEN only does arithmetic.
        let full = unsafe { libc::CMSG_LEN(wanted as u32) } as usize;
        if header.cmsg_level == libc::SOL_PACKET
            && header.cmsg_type == libc::PACKET_AUXDATA
            && header.cmsg_len as usize >= full
        {
            // SAFETY: the message is long enough for a tpacket_auxdata, which the kernel
            // wrote after the header; read_unaligned because the data need not be aligned.
            return Some(unsafe {
                std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::tpacket_auxdata>())
            });
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    None
}

/// Whether an error means the interface is gone or down rather than a fault.
pub(crate) fn is_link_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ENETDOWN) | Some(libc::ENODEV) | Some(libc::ENXIO)
    )
}
