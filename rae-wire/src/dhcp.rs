//! DHCPv4 messages (RFC 2131) and the options the registry reads (RFC 2132, 4702).
//!
//! Text options keep their raw bytes: DUT firmware sends hostnames in Latin-1, with trailing
//! NULs, or as garbage. [`Text::as_str`] gives a `&str` only when the bytes are UTF-8.
//!
//! Option handling:
//! - pad (0) is skipped, end (255) ends an area; an area that ends without `end` is accepted.
//! - an option whose length byte or value runs past its area is Malformed (`bad_option`), and
//!   so is a fixed-size option (50, 51, 52, 53, 54, 57) of the wrong size, a client id (61)
//!   shorter than 2 bytes or a client FQDN (81) shorter than 3.
//! - option overload (52) is honoured: the `file` field, then the `sname` field, are read as
//!   further option areas, as RFC 2131 section 4.1 orders.
//! - an option that appears more than once keeps its first value. RFC 3396 would concatenate
//!   the parts; none of the options read here needs more than the 255 bytes one part holds.
//! - empty hostname and vendor class options are accepted (as empty text) rather than
//!   dropping the whole message: a device with quirky firmware must still be seen.

use core::fmt;
use std::net::Ipv4Addr;

use super::bytes::{self, Field};
use super::drops::{Detail, DropReason, Layer};
use super::ethernet::MacAddr;
use super::EmitError;

mod field {
    use super::Field;
    pub const OP: usize = 0;
    pub const HTYPE: usize = 1;
    pub const HLEN: usize = 2;
    pub const HOPS: usize = 3;
    pub const XID: usize = 4;
    pub const SECS: usize = 8;
    pub const FLAGS: usize = 10;
    pub const CIADDR: usize = 12;
    pub const YIADDR: usize = 16;
    pub const SIADDR: usize = 20;
    pub const GIADDR: usize = 24;
    pub const CHADDR: Field = 28..44;
    pub const SNAME: Field = 44..108;
    pub const FILE: Field = 108..236;
    pub const MAGIC: usize = 236;
    pub const OPTIONS: usize = 240;
}

/// The fixed BOOTP part and the magic cookie.
pub const MIN_LEN: usize = field::OPTIONS;
pub const MAGIC_COOKIE: u32 = 0x6382_5363;
const FLAG_BROADCAST: u16 = 0x8000;
const HARDWARE_ETHERNET: u8 = 1;

/// Option codes.
pub mod option {
    pub const PAD: u8 = 0;
    pub const HOSTNAME: u8 = 12;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MESSAGE_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAMETER_REQUEST_LIST: u8 = 55;
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const CLIENT_FQDN: u8 = 81;
    pub const END: u8 = 255;
}

fn bad_option() -> DropReason {
    DropReason::new(Layer::Dhcp, Detail::BadOption)
}

/// BOOTP `op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BootOp {
    Request,
    Reply,
}

/// DHCP message type (option 53): RFC 2131, 3203, 4388, 6926, 7724.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
    ForceRenew,
    LeaseQuery,
    LeaseUnassigned,
    LeaseUnknown,
    LeaseActive,
    BulkLeaseQuery,
    LeaseQueryDone,
    ActiveLeaseQuery,
    LeaseQueryStatus,
    Tls,
    /// A code without a name here (0, or above 18).
    Other(u8),
}

const NAMED_TYPES: [MessageType; 18] = [
    MessageType::Discover,
    MessageType::Offer,
    MessageType::Request,
    MessageType::Decline,
    MessageType::Ack,
    MessageType::Nak,
    MessageType::Release,
    MessageType::Inform,
    MessageType::ForceRenew,
    MessageType::LeaseQuery,
    MessageType::LeaseUnassigned,
    MessageType::LeaseUnknown,
    MessageType::LeaseActive,
    MessageType::BulkLeaseQuery,
    MessageType::LeaseQueryDone,
    MessageType::ActiveLeaseQuery,
    MessageType::LeaseQueryStatus,
    MessageType::Tls,
];

impl MessageType {
    pub fn from_code(code: u8) -> Self {
        usize::from(code)
            .checked_sub(1)
            .and_then(|i| NAMED_TYPES.get(i).copied())
            .unwrap_or(MessageType::Other(code))
    }

    pub fn code(self) -> u8 {
        match self {
            MessageType::Other(code) => code,
            named => NAMED_TYPES
                .iter()
                .position(|t| *t == named)
                .and_then(|i| u8::try_from(i + 1).ok())
                .unwrap_or(0),
        }
    }
}

/// Bytes from a text option, kept as sent.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Text<'a>(pub &'a [u8]);

impl<'a> Text<'a> {
    pub fn as_bytes(&self) -> &'a [u8] {
        self.0
    }

    /// The text, if it is UTF-8 once trailing NULs (which some clients add) are cut.
    pub fn as_str(&self) -> Option<&'a str> {
        let end = self.0.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        core::str::from_utf8(self.0.get(..end)?).ok()
    }
}

impl fmt::Display for Text<'_> {
    /// UTF-8 as is, anything else byte by byte with escapes: safe for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(s) => write!(f, "{}", s.escape_debug()),
            None => write!(f, "{}", self.0.escape_ascii()),
        }
    }
}

impl fmt::Debug for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Client identifier (option 61): a type byte and the identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientId<'a> {
    /// 1 for an Ethernet address, 0 for free-form, 255 for an RFC 4361 IAID + DUID.
    pub kind: u8,
    pub id: &'a [u8],
}

impl ClientId<'_> {
    /// The MAC address, when the identifier is of Ethernet type.
    pub fn as_mac(&self) -> Option<MacAddr> {
        let octets: [u8; 6] = self.id.try_into().ok()?;
        (self.kind == HARDWARE_ETHERNET).then_some(MacAddr(octets))
    }
}

/// Client FQDN (option 81, RFC 4702).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientFqdn<'a> {
    pub flags: u8,
    pub rcode1: u8,
    pub rcode2: u8,
    /// The name as sent: DNS wire format when the E flag is set, else ASCII.
    pub name: &'a [u8],
}

impl ClientFqdn<'_> {
    pub const FLAG_S: u8 = 0x01;
    pub const FLAG_O: u8 = 0x02;
    pub const FLAG_E: u8 = 0x04;
    pub const FLAG_N: u8 = 0x08;

    pub fn is_wire_encoded(&self) -> bool {
        self.flags & Self::FLAG_E != 0
    }

    /// The name in dotted form, if it decodes (labels of at most 63 bytes, UTF-8, no
    /// compression pointers). A partial name (no root label) decodes too.
    pub fn dotted_name(&self) -> Option<String> {
        if !self.is_wire_encoded() {
            let text = Text(self.name).as_str()?;
            return Some(text.to_owned());
        }
        let mut labels = Vec::new();
        let mut rest = self.name;
        while let Some((&len, tail)) = rest.split_first() {
            if len == 0 {
                break;
            }
            if len > 63 {
                return None;
            }
            let (label, tail) = tail.split_at_checked(usize::from(len))?;
            labels.push(core::str::from_utf8(label).ok()?);
            rest = tail;
        }
        Some(labels.join("."))
    }
}

/// One option as found: its code and value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawOption<'a> {
    pub code: u8,
    pub value: &'a [u8],
}

/// The options of a message, in order: the options field, then `file` and `sname` if
/// option 52 says they hold options. Yields an error once and then stops.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    current: &'a [u8],
    in_options_field: bool,
    file: &'a [u8],
    sname: &'a [u8],
    queued: [Option<&'a [u8]>; 2],
    failed: bool,
}

impl<'a> Options<'a> {
    fn next_area(&mut self) -> bool {
        self.in_options_field = false;
        for slot in self.queued.iter_mut() {
            if let Some(area) = slot.take() {
                self.current = area;
                return true;
            }
        }
        false
    }
}

impl<'a> Iterator for Options<'a> {
    type Item = Result<RawOption<'a>, DropReason>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            let Some((&code, rest)) = self.current.split_first() else {
                if self.next_area() {
                    continue;
                }
                return None;
            };
            match code {
                option::PAD => self.current = rest,
                option::END => {
                    self.current = &[];
                    if !self.next_area() {
                        return None;
                    }
                }
                _ => {
                    let value = rest
                        .split_first()
                        .and_then(|(&len, tail)| tail.split_at_checked(usize::from(len)));
                    let Some((value, tail)) = value else {
                        self.failed = true;
                        return Some(Err(bad_option()));
                    };
                    self.current = tail;
                    if self.in_options_field && code == option::OVERLOAD {
                        // RFC 2131 4.1: `file` is read before `sname`.
                        self.queued = match value {
                            [1] => [Some(self.file), None],
                            [2] => [Some(self.sname), None],
                            [3] => [Some(self.file), Some(self.sname)],
                            _ => [None, None],
                        };
                    }
                    return Some(Ok(RawOption { code, value }));
                }
            }
        }
    }
}

/// A checked view of a DHCP message: the fixed part and the magic cookie are there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        let packet = Packet::new_unchecked(buffer);
        packet.check_len()?;
        Ok(packet)
    }

    pub fn check_len(&self) -> Result<(), DropReason> {
        if self.buffer.as_ref().len() < MIN_LEN {
            return Err(DropReason::truncated(Layer::Dhcp));
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn ip_at(&self, at: usize) -> Ipv4Addr {
        Ipv4Addr::from(bytes::array::<4>(self.buffer.as_ref(), at))
    }

    pub fn op(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::OP)
    }

    pub fn hardware_type(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::HTYPE)
    }

    pub fn hardware_len(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::HLEN)
    }

    pub fn hops(&self) -> u8 {
        bytes::u8_at(self.buffer.as_ref(), field::HOPS)
    }

    pub fn xid(&self) -> u32 {
        bytes::u32_at(self.buffer.as_ref(), field::XID)
    }

    pub fn secs(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::SECS)
    }

    pub fn flags(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::FLAGS)
    }

    pub fn ciaddr(&self) -> Ipv4Addr {
        self.ip_at(field::CIADDR)
    }

    pub fn yiaddr(&self) -> Ipv4Addr {
        self.ip_at(field::YIADDR)
    }

    pub fn siaddr(&self) -> Ipv4Addr {
        self.ip_at(field::SIADDR)
    }

    pub fn giaddr(&self) -> Ipv4Addr {
        self.ip_at(field::GIADDR)
    }

    /// All 16 bytes of `chaddr`; an Ethernet client uses the first 6.
    pub fn chaddr(&self) -> &[u8] {
        bytes::slice(self.buffer.as_ref(), field::CHADDR)
    }

    pub fn magic_cookie(&self) -> u32 {
        bytes::u32_at(self.buffer.as_ref(), field::MAGIC)
    }
}

impl<'a> Packet<&'a [u8]> {
    /// The `sname` field: a server name, or options when overloaded.
    pub fn sname(&self) -> &'a [u8] {
        bytes::slice(self.buffer, field::SNAME)
    }

    /// The `file` field: a boot file name, or options when overloaded.
    pub fn file(&self) -> &'a [u8] {
        bytes::slice(self.buffer, field::FILE)
    }

    pub fn options(&self) -> Options<'a> {
        Options {
            current: bytes::rest(self.buffer, field::OPTIONS),
            in_options_field: true,
            file: self.file(),
            sname: self.sname(),
            queued: [None, None],
            failed: false,
        }
    }
}

/// A parsed DHCP message with the options the registry reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DhcpRepr<'a> {
    pub op: BootOp,
    pub message_type: MessageType,
    pub xid: u32,
    pub secs: u16,
    pub broadcast: bool,
    pub hops: u8,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: MacAddr,
    /// Option 12.
    pub hostname: Option<Text<'a>>,
    /// Option 50.
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 51, seconds.
    pub lease_time: Option<u32>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 55, order kept: the order is part of a client's fingerprint.
    pub parameter_request_list: Option<&'a [u8]>,
    /// Option 57.
    pub max_message_size: Option<u16>,
    /// Option 60.
    pub vendor_class: Option<Text<'a>>,
    /// Option 61.
    pub client_id: Option<ClientId<'a>>,
    /// Option 81.
    pub client_fqdn: Option<ClientFqdn<'a>>,
}

fn fixed<const N: usize>(value: &[u8]) -> Result<[u8; N], DropReason> {
    value.try_into().map_err(|_| bad_option())
}

fn set_once<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

impl<'a> DhcpRepr<'a> {
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<Self, DropReason> {
        let packet = Packet::new_checked(packet.buffer)?;
        let op = match packet.op() {
            1 => BootOp::Request,
            2 => BootOp::Reply,
            _ => return Err(DropReason::new(Layer::Dhcp, Detail::BadOpcode)),
        };
        if packet.hardware_type() != HARDWARE_ETHERNET {
            return Err(DropReason::new(Layer::Dhcp, Detail::HardwareType));
        }
        if packet.hardware_len() != 6 {
            return Err(DropReason::new(Layer::Dhcp, Detail::BadAddressLength));
        }
        if packet.magic_cookie() != MAGIC_COOKIE {
            return Err(DropReason::new(Layer::Dhcp, Detail::BadMagicCookie));
        }
        let mut repr = DhcpRepr {
            op,
            message_type: MessageType::Other(0),
            xid: packet.xid(),
            secs: packet.secs(),
            broadcast: packet.flags() & FLAG_BROADCAST != 0,
            hops: packet.hops(),
            ciaddr: packet.ciaddr(),
            yiaddr: packet.yiaddr(),
            siaddr: packet.siaddr(),
            giaddr: packet.giaddr(),
            chaddr: MacAddr(bytes::array(packet.buffer, field::CHADDR.start)),
            hostname: None,
            requested_ip: None,
            lease_time: None,
            server_id: None,
            parameter_request_list: None,
            max_message_size: None,
            vendor_class: None,
            client_id: None,
            client_fqdn: None,
        };
        let mut message_type = None;
        for raw in packet.options() {
            let RawOption { code, value } = raw?;
            match code {
                option::MESSAGE_TYPE => {
                    let [code] = fixed(value)?;
                    set_once(&mut message_type, MessageType::from_code(code));
                }
                option::HOSTNAME => set_once(&mut repr.hostname, Text(value)),
                option::REQUESTED_IP => {
                    set_once(&mut repr.requested_ip, Ipv4Addr::from(fixed::<4>(value)?));
                }
                option::LEASE_TIME => {
                    set_once(&mut repr.lease_time, u32::from_be_bytes(fixed(value)?));
                }
                option::SERVER_ID => {
                    set_once(&mut repr.server_id, Ipv4Addr::from(fixed::<4>(value)?));
                }
                option::PARAMETER_REQUEST_LIST => {
                    set_once(&mut repr.parameter_request_list, value);
                }
                option::MAX_MESSAGE_SIZE => {
                    set_once(
                        &mut repr.max_message_size,
                        u16::from_be_bytes(fixed(value)?),
                    );
                }
                option::VENDOR_CLASS => set_once(&mut repr.vendor_class, Text(value)),
                option::CLIENT_ID => {
                    let (&kind, id) = value
                        .split_first()
                        .filter(|(_, id)| !id.is_empty())
                        .ok_or_else(bad_option)?;
                    set_once(&mut repr.client_id, ClientId { kind, id });
                }
                option::CLIENT_FQDN => {
                    let [flags, rcode1, rcode2, name @ ..] = value else {
                        return Err(bad_option());
                    };
                    let fqdn = ClientFqdn {
                        flags: *flags,
                        rcode1: *rcode1,
                        rcode2: *rcode2,
                        name,
                    };
                    set_once(&mut repr.client_fqdn, fqdn);
                }
                option::OVERLOAD if !matches!(value, [1..=3]) => return Err(bad_option()),
                _ => {}
            }
        }
        repr.message_type = message_type.ok_or(DropReason::new(Layer::Dhcp, Detail::Bootp))?;
        Ok(repr)
    }

    /// The options [`DhcpRepr::emit`] writes, as (code, value) pairs.
    fn emitted_options(&self) -> Vec<(u8, Vec<u8>)> {
        let mut out = vec![(option::MESSAGE_TYPE, vec![self.message_type.code()])];
        let mut add = |code: u8, value: Option<Vec<u8>>| {
            if let Some(value) = value {
                out.push((code, value));
            }
        };
        add(
            option::CLIENT_ID,
            self.client_id.map(|c| [&[c.kind], c.id].concat()),
        );
        add(
            option::REQUESTED_IP,
            self.requested_ip.map(|ip| ip.octets().to_vec()),
        );
        add(
            option::SERVER_ID,
            self.server_id.map(|ip| ip.octets().to_vec()),
        );
        add(
            option::LEASE_TIME,
            self.lease_time.map(|t| t.to_be_bytes().to_vec()),
        );
        add(
            option::MAX_MESSAGE_SIZE,
            self.max_message_size.map(|s| s.to_be_bytes().to_vec()),
        );
        add(
            option::PARAMETER_REQUEST_LIST,
            self.parameter_request_list.map(<[u8]>::to_vec),
        );
        add(option::HOSTNAME, self.hostname.map(|t| t.0.to_vec()));
        add(
            option::VENDOR_CLASS,
            self.vendor_class.map(|t| t.0.to_vec()),
        );
        add(
            option::CLIENT_FQDN,
            self.client_fqdn
                .map(|f| [&[f.flags, f.rcode1, f.rcode2], f.name].concat()),
        );
        out
    }

    /// Bytes [`DhcpRepr::emit`] writes: fixed part, cookie, options, end.
    pub fn buffer_len(&self) -> usize {
        self.emitted_options()
            .iter()
            .fold(MIN_LEN + 1, |len, (_, value)| len + 2 + value.len())
    }

    /// Writes the message at the start of `buf` (used to build test traffic and fixtures;
    /// the agent itself never sends DHCP). Returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, EmitError> {
        let options = self.emitted_options();
        let need = self.buffer_len();
        EmitError::check(need, buf.len())?;
        let msg = bytes::slice_mut(buf, 0..need);
        msg.fill(0);
        let op = match self.op {
            BootOp::Request => 1,
            BootOp::Reply => 2,
        };
        bytes::put_u8(msg, field::OP, op);
        bytes::put_u8(msg, field::HTYPE, HARDWARE_ETHERNET);
        bytes::put_u8(msg, field::HLEN, 6);
        bytes::put_u8(msg, field::HOPS, self.hops);
        bytes::put_u32(msg, field::XID, self.xid);
        bytes::put_u16(msg, field::SECS, self.secs);
        let flags = if self.broadcast { FLAG_BROADCAST } else { 0 };
        bytes::put_u16(msg, field::FLAGS, flags);
        bytes::put(msg, field::CIADDR, &self.ciaddr.octets());
        bytes::put(msg, field::YIADDR, &self.yiaddr.octets());
        bytes::put(msg, field::SIADDR, &self.siaddr.octets());
        bytes::put(msg, field::GIADDR, &self.giaddr.octets());
        bytes::put(msg, field::CHADDR.start, &self.chaddr.0);
        bytes::put_u32(msg, field::MAGIC, MAGIC_COOKIE);
        let mut at = field::OPTIONS;
        for (code, value) in &options {
            let len = u8::try_from(value.len()).map_err(|_| EmitError::TooLong {
                layer: Layer::Dhcp,
                len: value.len(),
            })?;
            bytes::put(msg, at, &[*code, len]);
            bytes::put(msg, at + 2, value);
            at += 2 + value.len();
        }
        bytes::put_u8(msg, at, option::END);
        Ok(need)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(options: &[u8]) -> Vec<u8> {
        let mut msg = vec![0u8; MIN_LEN];
        msg[..4].copy_from_slice(&[1, 1, 6, 0]);
        msg[field::MAGIC..MIN_LEN].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        msg.extend_from_slice(options);
        msg
    }

    #[test]
    fn message_type_codes_map_both_ways() {
        for code in 0..=u8::MAX {
            assert_eq!(MessageType::from_code(code).code(), code);
        }
        assert_eq!(MessageType::from_code(1), MessageType::Discover);
        assert_eq!(MessageType::from_code(8), MessageType::Inform);
        assert_eq!(MessageType::from_code(18), MessageType::Tls);
        assert_eq!(MessageType::from_code(19), MessageType::Other(19));
    }

    #[test]
    fn options_yield_one_error_then_stop() {
        let msg = message(&[53, 1, 1, 12, 9, b'x']);
        let packet = Packet::new_checked(&msg[..]).unwrap();
        let mut options = packet.options();
        assert_eq!(
            options.next(),
            Some(Ok(RawOption {
                code: 53,
                value: &[1]
            }))
        );
        assert_eq!(options.next(), Some(Err(bad_option())));
        assert_eq!(options.next(), None);
    }

    #[test]
    fn overload_outside_the_options_field_is_ignored() {
        // An option 52 found inside `file` must not queue more areas (it could loop).
        let mut msg = message(&[53, 1, 1, 52, 1, 1, 255]);
        msg[field::FILE.start..field::FILE.start + 4].copy_from_slice(&[52, 1, 3, 255]);
        let packet = Packet::new_checked(&msg[..]).unwrap();
        let codes: Vec<u8> = packet.options().map(|o| o.unwrap().code).collect();
        assert_eq!(codes, vec![53, 52, 52]);
    }

    #[test]
    fn text_reads_utf8_and_escapes_the_rest() {
        assert_eq!(Text(b"tv\0\0").as_str(), Some("tv"));
        assert_eq!(Text(b"\0").as_str(), Some(""));
        assert_eq!(Text(b"a\xffb").as_str(), None);
        assert_eq!(Text(b"a\xffb").to_string(), "a\\xffb");
        assert_eq!(Text(b"line\nbreak").to_string(), "line\\nbreak");
        assert_eq!(format!("{:?}", Text(b"tv")), "\"tv\"");
    }

    #[test]
    fn emit_refuses_a_small_buffer_and_overlong_options() {
        let msg = message(&[53, 1, 1, 255]);
        let repr = DhcpRepr::parse(&Packet::new_checked(&msg[..]).unwrap()).unwrap();
        let mut small = vec![0u8; repr.buffer_len() - 1];
        assert!(matches!(
            repr.emit(&mut small),
            Err(EmitError::BufferTooSmall { .. })
        ));
        let long = [b'x'; 300];
        let repr = DhcpRepr {
            hostname: Some(Text(&long)),
            ..repr
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        assert!(matches!(
            repr.emit(&mut buf),
            Err(EmitError::TooLong {
                layer: Layer::Dhcp,
                ..
            })
        ));
    }
}
