//! mDNS (DNS over UDP 5353) messages: just enough of RFC 1035 / 6762 to read PTR, SRV, TXT, A and AAAA records.
//!
//! [`Packet`] is the checked view of the fixed header; [`MdnsRepr::parse`] walks the whole
//! message once, checking every name and every record, and keeps borrowed [`Name`]s and record
//! data (the only allocation is the two `Vec`s of questions and records). Other record types
//! are kept as raw [`RecordData::Other`] bytes, skipped by their rdlength.
//!
//! Names are loop-safe: a compression pointer must point before the start of the run of labels
//! it ends (so every jump goes strictly backwards), at most [`MAX_POINTERS`] jumps are
//! followed, a label is at most 63 bytes and a name at most 255 bytes on the wire. A [`Name`]
//! that parsed can be walked again without any error path.
//!
//! [`emit_query`] writes the agent's own queries (no compression, no known answers).
//!
//! Limitations: EDNS(0) OPT records, NSEC and every other type are not decoded; records of a
//! message cut short by the capture are lost with the whole message (Truncated); messages with
//! an opcode or response code other than 0 are refused (RFC 6762 §18.3, §18.11).

use core::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::bytes;
use super::{Detail, DropReason, EmitError, Layer};

pub const HEADER_LEN: usize = 12;
/// Longest name on the wire, length bytes and the root label included (RFC 1035 §2.3.4).
pub const MAX_NAME_LEN: usize = 255;
pub const MAX_LABEL_LEN: usize = 63;
/// Compression pointers followed within one name. Every jump goes backwards, so a name
/// always ends; this bounds the work a hostile message can cause per name.
pub const MAX_POINTERS: usize = 32;

/// Record types the agent reads.
pub mod rtype {
    pub const A: u16 = 1;
    pub const PTR: u16 = 12;
    pub const TXT: u16 = 16;
    pub const AAAA: u16 = 28;
    pub const SRV: u16 = 33;
    pub const ANY: u16 = 255;
}

pub const CLASS_IN: u16 = 1;
/// The top bit of a record's class: cache flush (RFC 6762 §10.2); of a question's class:
/// unicast response wanted (§5.4).
const CLASS_TOP_BIT: u16 = 0x8000;

mod field {
    use crate::bytes::Field;

    pub const ID: Field = 0..2;
    pub const FLAGS: Field = 2..4;
    pub const QDCOUNT: Field = 4..6;
    pub const ANCOUNT: Field = 6..8;
    pub const NSCOUNT: Field = 8..10;
    pub const ARCOUNT: Field = 10..12;
}

mod flag {
    pub const QR: u16 = 0x8000;
    pub const OPCODE_SHIFT: u16 = 11;
    pub const OPCODE_MASK: u16 = 0x0f;
    pub const AA: u16 = 0x0400;
    pub const TC: u16 = 0x0200;
    pub const RCODE_MASK: u16 = 0x000f;
}

fn drop(detail: Detail) -> DropReason {
    DropReason::new(Layer::Mdns, detail)
}

fn truncated() -> DropReason {
    DropReason::truncated(Layer::Mdns)
}

/// A checked view of an mDNS message: after [`Packet::new_checked`] the header accessors
/// never fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self, DropReason> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(truncated());
        }
        Ok(Packet { buffer })
    }

    pub fn id(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::ID.start)
    }

    pub fn flags(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::FLAGS.start)
    }

    /// QR: a response (an answer or an unsolicited announcement), not a query.
    pub fn is_response(&self) -> bool {
        self.flags() & flag::QR != 0
    }

    pub fn opcode(&self) -> u8 {
        ((self.flags() >> flag::OPCODE_SHIFT) & flag::OPCODE_MASK) as u8
    }

    pub fn rcode(&self) -> u8 {
        (self.flags() & flag::RCODE_MASK) as u8
    }

    pub fn question_count(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::QDCOUNT.start)
    }

    pub fn answer_count(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::ANCOUNT.start)
    }

    pub fn authority_count(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::NSCOUNT.start)
    }

    pub fn additional_count(&self) -> u16 {
        bytes::u16_at(self.buffer.as_ref(), field::ARCOUNT.start)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// The fixed header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Header {
    pub id: u16,
    pub response: bool,
    pub authoritative: bool,
    /// TC: more known answers follow in another packet (queries only, RFC 6762 §18.5).
    pub truncated: bool,
}

/// A name inside a parsed message. It borrows the whole message, since compression pointers
/// may point anywhere before it; only [`MdnsRepr::parse`] makes one, after checking it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name<'a> {
    message: &'a [u8],
    start: usize,
}

/// Reads the name at `at`: the name, and the offset just behind it where it sits (behind its
/// first pointer, if it has one).
fn read_name(message: &[u8], at: usize) -> Result<(Name<'_>, usize), DropReason> {
    let mut pos = at;
    // Every pointer must land before the start of the labels it ends: jumps only go back.
    let mut segment_start = at;
    let mut wire_len = 0usize;
    let mut jumps = 0usize;
    let mut end = None;
    loop {
        let len = *message.get(pos).ok_or_else(truncated)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                wire_len += 1;
                if wire_len > MAX_NAME_LEN {
                    return Err(drop(Detail::BadName));
                }
                let end = end.unwrap_or(pos + 1);
                return Ok((Name { message, start: at }, end));
            }
            0x00 => {
                let label_end = pos + 1 + usize::from(len);
                if label_end > message.len() {
                    return Err(truncated());
                }
                wire_len += 1 + usize::from(len);
                if wire_len > MAX_NAME_LEN {
                    return Err(drop(Detail::BadName));
                }
                pos = label_end;
            }
            0xc0 => {
                let low = *message.get(pos + 1).ok_or_else(truncated)?;
                let target = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                end.get_or_insert(pos + 2);
                jumps += 1;
                if target >= segment_start || jumps > MAX_POINTERS {
                    return Err(drop(Detail::BadName));
                }
                segment_start = target;
                pos = target;
            }
            // 0x40 (extended label types, RFC 6891) and 0x80 are not used by mDNS.
            _ => return Err(drop(Detail::BadName)),
        }
    }
}

impl<'a> Name<'a> {
    /// The labels, first (leftmost) to last, without the root.
    pub fn labels(&self) -> Labels<'a> {
        Labels {
            message: self.message,
            pos: self.start,
            jumps: 0,
            done: false,
        }
    }

    pub fn label_count(&self) -> usize {
        self.labels().count()
    }

    /// Whether both names have the same labels, ASCII case ignored (RFC 1035 §2.3.3).
    pub fn eq_ignore_case(&self, other: &Name<'_>) -> bool {
        let mut mine = self.labels();
        let mut theirs = other.labels();
        loop {
            match (mine.next(), theirs.next()) {
                (None, None) => return true,
                (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => {}
                _ => return false,
            }
        }
    }

    /// Whether the last labels are `suffix`, ASCII case ignored.
    pub fn ends_with(&self, suffix: &[&[u8]]) -> bool {
        let count = self.label_count();
        let Some(skip) = count.checked_sub(suffix.len()) else {
            return false;
        };
        self.labels()
            .skip(skip)
            .zip(suffix)
            .all(|(a, b)| a.eq_ignore_ascii_case(b))
    }

    /// The name in master-file text: labels joined by `.`, a trailing `.`, a `.` or `\` inside
    /// a label escaped with `\`, bytes that are not UTF-8 replaced by U+FFFD.
    pub fn to_dotted(&self) -> String {
        let mut text = String::new();
        for label in self.labels() {
            for c in String::from_utf8_lossy(label).chars() {
                if c == '.' || c == '\\' {
                    text.push('\\');
                }
                text.push(c);
            }
            text.push('.');
        }
        if text.is_empty() {
            text.push('.');
        }
        text
    }
}

impl fmt::Debug for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({:?})", self.to_dotted())
    }
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_dotted())
    }
}

/// The labels of a [`Name`]. The name was checked when parsed; the walk is bounded anyway.
#[derive(Clone, Debug)]
pub struct Labels<'a> {
    message: &'a [u8],
    pos: usize,
    jumps: usize,
    done: bool,
}

impl<'a> Iterator for Labels<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.done {
            let Some(&len) = self.message.get(self.pos) else {
                break;
            };
            match len & 0xc0 {
                0x00 if len == 0 => break,
                0x00 => {
                    let start = self.pos + 1;
                    let end = start + usize::from(len);
                    let label = self.message.get(start..end);
                    self.pos = end;
                    if label.is_none() {
                        break;
                    }
                    return label;
                }
                0xc0 if self.jumps < MAX_POINTERS => {
                    let Some(&low) = self.message.get(self.pos + 1) else {
                        break;
                    };
                    self.jumps += 1;
                    self.pos = usize::from(u16::from_be_bytes([len & 0x3f, low]));
                }
                _ => break,
            }
        }
        self.done = true;
        None
    }
}

/// One question of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Question<'a> {
    pub name: Name<'a>,
    pub qtype: u16,
    /// The class without its top bit.
    pub qclass: u16,
    /// The QU bit: the querier asks for a unicast answer.
    pub unicast_response: bool,
}

/// The section a record came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Section {
    Answer,
    Authority,
    Additional,
}

/// One resource record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Record<'a> {
    pub section: Section,
    pub name: Name<'a>,
    pub rtype: u16,
    /// The class without its top bit.
    pub class: u16,
    /// The top bit of the class: this record replaces every cached one of its name and type.
    pub cache_flush: bool,
    /// Seconds; 0 is a goodbye (RFC 6762 §10.1).
    pub ttl: u32,
    pub data: RecordData<'a>,
}

/// The data of a record, decoded for the types the agent reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordData<'a> {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Ptr(Name<'a>),
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: Name<'a>,
    },
    Txt(Txt<'a>),
    /// Any other type, undecoded.
    Other(&'a [u8]),
}

/// TXT record data: a sequence of length-prefixed strings that exactly fills the rdata.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Txt<'a>(&'a [u8]);

/// One `key=value` (or bare `key`) string of a TXT record (RFC 6763 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TxtAttribute<'a> {
    pub key: &'a [u8],
    /// `None` for a bare key (a boolean attribute); `Some` (maybe empty) after a `=`.
    pub value: Option<&'a [u8]>,
}

impl<'a> Txt<'a> {
    fn checked(data: &'a [u8]) -> Result<Self, DropReason> {
        let mut rest = data;
        while let Some((&len, tail)) = rest.split_first() {
            rest = tail
                .get(usize::from(len)..)
                .ok_or(drop(Detail::BadLength))?;
        }
        Ok(Txt(data))
    }

    /// The raw strings, empty ones included.
    pub fn strings(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let (&len, tail) = rest.split_first()?;
            let string = tail.get(..usize::from(len))?;
            rest = tail.get(usize::from(len)..).unwrap_or_default();
            Some(string)
        })
    }

    /// The attributes in the order sent; empty strings and strings with an empty key are
    /// skipped (RFC 6763 §6.4).
    pub fn attributes(&self) -> impl Iterator<Item = TxtAttribute<'a>> + 'a {
        self.strings().filter_map(|string| {
            let (key, value) = match string.iter().position(|&b| b == b'=') {
                Some(at) => (&string[..at], string.get(at + 1..)),
                None => (string, None),
            };
            (!key.is_empty()).then_some(TxtAttribute { key, value })
        })
    }
}

/// A whole message, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnsRepr<'a> {
    pub header: Header,
    pub questions: Vec<Question<'a>>,
    /// Answers, then authority records, then additional records, in message order.
    pub records: Vec<Record<'a>>,
}

fn u16_from(message: &[u8], at: usize) -> Result<u16, DropReason> {
    let b = message.get(at..at + 2).ok_or_else(truncated)?;
    Ok(u16::from_be_bytes([b[0], b[1]]))
}

fn u32_from(message: &[u8], at: usize) -> Result<u32, DropReason> {
    let b = message.get(at..at + 4).ok_or_else(truncated)?;
    Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

impl<'a> MdnsRepr<'a> {
    /// Parses a message (a UDP payload).
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<Self, DropReason> {
        let message: &'a [u8] = packet.buffer;
        if packet.opcode() != 0 || packet.rcode() != 0 {
            return Err(drop(Detail::Operation));
        }
        let header = Header {
            id: packet.id(),
            response: packet.is_response(),
            authoritative: packet.flags() & flag::AA != 0,
            truncated: packet.flags() & flag::TC != 0,
        };
        let mut pos = HEADER_LEN;
        let mut questions = Vec::new();
        for _ in 0..packet.question_count() {
            let (name, end) = read_name(message, pos)?;
            let qtype = u16_from(message, end)?;
            let qclass = u16_from(message, end + 2)?;
            questions.push(Question {
                name,
                qtype,
                qclass: qclass & !CLASS_TOP_BIT,
                unicast_response: qclass & CLASS_TOP_BIT != 0,
            });
            pos = end + 4;
        }
        let sections = [
            (Section::Answer, packet.answer_count()),
            (Section::Authority, packet.authority_count()),
            (Section::Additional, packet.additional_count()),
        ];
        let mut records = Vec::new();
        for (section, count) in sections {
            for _ in 0..count {
                let (record, end) = read_record(message, pos, section)?;
                records.push(record);
                pos = end;
            }
        }
        Ok(MdnsRepr {
            header,
            questions,
            records,
        })
    }

    /// The answer and additional records (the authority section of a response is unused in
    /// mDNS; in a probe it holds proposed, not yet owned, records).
    pub fn answers_and_additionals(&self) -> impl Iterator<Item = &Record<'a>> {
        self.records
            .iter()
            .filter(|r| r.section != Section::Authority)
    }
}

fn read_record(
    message: &[u8],
    at: usize,
    section: Section,
) -> Result<(Record<'_>, usize), DropReason> {
    let (name, pos) = read_name(message, at)?;
    let rtype = u16_from(message, pos)?;
    let class = u16_from(message, pos + 2)?;
    let ttl = u32_from(message, pos + 4)?;
    let rdlength = usize::from(u16_from(message, pos + 8)?);
    let start = pos + 10;
    let end = start + rdlength;
    let rdata = message.get(start..end).ok_or_else(truncated)?;
    // A name inside rdata must end exactly where the rdata does.
    let name_in_rdata = |at: usize| -> Result<Name<'_>, DropReason> {
        let (name, name_end) = read_name(message, at)?;
        if name_end != end {
            return Err(drop(Detail::BadLength));
        }
        Ok(name)
    };
    let data = match rtype {
        rtype::A => RecordData::A(Ipv4Addr::from(
            <[u8; 4]>::try_from(rdata).map_err(|_| drop(Detail::BadLength))?,
        )),
        rtype::AAAA => RecordData::Aaaa(Ipv6Addr::from(
            <[u8; 16]>::try_from(rdata).map_err(|_| drop(Detail::BadLength))?,
        )),
        rtype::PTR => RecordData::Ptr(name_in_rdata(start)?),
        rtype::SRV => {
            if rdlength < 7 {
                return Err(drop(Detail::BadLength));
            }
            RecordData::Srv {
                priority: u16_from(message, start)?,
                weight: u16_from(message, start + 2)?,
                port: u16_from(message, start + 4)?,
                target: name_in_rdata(start + 6)?,
            }
        }
        rtype::TXT => RecordData::Txt(Txt::checked(rdata)?),
        _ => RecordData::Other(rdata),
    };
    let record = Record {
        section,
        name,
        rtype,
        class: class & !CLASS_TOP_BIT,
        cache_flush: class & CLASS_TOP_BIT != 0,
        ttl,
        data,
    };
    Ok((record, end))
}

/// A name in uncompressed wire form, checked, for the agent's own queries.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DnsName(Vec<u8>);

/// Why text is not a usable DNS name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty label in {name:?}")]
    EmptyLabel { name: String },
    #[error("label of {len} bytes in {name:?} (at most 63)")]
    LabelTooLong { name: String, len: usize },
    #[error("{name:?} is {len} bytes on the wire (at most 255)")]
    NameTooLong { name: String, len: usize },
}

impl DnsName {
    /// Reads master-file text (`_http._tcp.local.`; the trailing dot is optional, `\.` and
    /// `\\` put a dot or backslash inside a label, as [`Name::to_dotted`] writes them).
    pub fn from_dotted(text: &str) -> Result<Self, NameError> {
        let body = text.strip_suffix('.').unwrap_or(text);
        let mut wire = Vec::with_capacity(body.len() + 2);
        let mut labels: Vec<Vec<u8>> = vec![Vec::new()];
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            let c = match c {
                '\\' => chars.next().unwrap_or('\\'),
                '.' => {
                    labels.push(Vec::new());
                    continue;
                }
                c => c,
            };
            if let Some(label) = labels.last_mut() {
                let mut utf8 = [0u8; 4];
                label.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
        if body.is_empty() {
            labels.clear();
        }
        for label in labels {
            if label.is_empty() {
                return Err(NameError::EmptyLabel { name: text.into() });
            }
            let len = label.len();
            let len = u8::try_from(len)
                .ok()
                .filter(|l| usize::from(*l) <= MAX_LABEL_LEN)
                .ok_or(NameError::LabelTooLong {
                    name: text.into(),
                    len,
                })?;
            wire.push(len);
            wire.extend_from_slice(&label);
        }
        wire.push(0);
        if wire.len() > MAX_NAME_LEN {
            return Err(NameError::NameTooLong {
                name: text.into(),
                len: wire.len(),
            });
        }
        Ok(DnsName(wire))
    }

    /// The name as it goes on the wire.
    pub fn as_wire(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for DnsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match read_name(&self.0, 0) {
            Ok((name, _)) => write!(f, "DnsName({:?})", name.to_dotted()),
            Err(_) => write!(f, "DnsName({:02x?})", self.0),
        }
    }
}

/// Bytes of a query asking `qtype` for each of `names`.
pub fn query_len(names: &[DnsName]) -> usize {
    HEADER_LEN + names.iter().map(|n| n.0.len() + 4).sum::<usize>()
}

/// Writes a query (id 0, as RFC 6762 §18.1 asks, opcode QUERY) with one question of type
/// `qtype`, class IN and the QU bit clear per name, so that responders answer by multicast.
/// Returns the bytes written.
pub fn emit_query(names: &[DnsName], qtype: u16, buf: &mut [u8]) -> Result<usize, EmitError> {
    let len = query_len(names);
    EmitError::check(len, buf.len())?;
    let count = u16::try_from(names.len()).map_err(|_| EmitError::TooLong {
        layer: Layer::Mdns,
        len: names.len(),
    })?;
    bytes::put(buf, 0, &[0u8; HEADER_LEN]);
    bytes::put_u16(buf, field::QDCOUNT.start, count);
    let mut pos = HEADER_LEN;
    for name in names {
        bytes::put(buf, pos, &name.0);
        pos += name.0.len();
        bytes::put_u16(buf, pos, qtype);
        bytes::put_u16(buf, pos + 2, CLASS_IN);
        pos += 4;
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<MdnsRepr<'_>, DropReason> {
        MdnsRepr::parse(&Packet::new_checked(bytes)?)
    }

    fn response(answers: u16, body: &[u8]) -> Vec<u8> {
        let mut msg = vec![0, 0, 0x84, 0, 0, 0, 0, answers as u8, 0, 0, 0, 0];
        msg[6] = (answers >> 8) as u8;
        msg.extend_from_slice(body);
        msg
    }

    #[test]
    fn pointer_to_itself_or_forward_is_refused() {
        // Name at 12: label "a", then a pointer to 12 (its own start): a loop.
        let looped = response(
            1,
            &[1, b'a', 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4],
        );
        assert_eq!(parse(&looped), Err(drop(Detail::BadName)));
        // A pointer forward, to a valid name behind it.
        let forward = response(1, &[0xc0, 14, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&forward), Err(drop(Detail::BadName)));
    }

    #[test]
    fn labels_of_a_checked_name_follow_pointers() {
        // "local" at 12, then "tv" + pointer to 12 at 19.
        let mut body = vec![5, b'l', b'o', b'c', b'a', b'l', 0];
        body.extend_from_slice(&[0, 1, 0x80, 1, 0, 0, 0, 120, 0, 4, 198, 18, 0, 1]);
        body.extend_from_slice(&[2, b't', b'v', 0xc0, 12]);
        body.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 120, 0, 4, 198, 18, 0, 2]);
        let msg = response(2, &body);
        let repr = parse(&msg).unwrap();
        assert_eq!(repr.records.len(), 2);
        assert_eq!(repr.records[0].name.to_dotted(), "local.");
        assert!(repr.records[0].cache_flush);
        assert_eq!(repr.records[1].name.to_dotted(), "tv.local.");
        assert!(repr.records[1].name.ends_with(&[b"LOCAL"]));
        assert_eq!(
            repr.records[1].data,
            RecordData::A(Ipv4Addr::new(198, 18, 0, 2))
        );
    }

    #[test]
    fn dotted_names_round_trip_with_escapes() {
        let name = DnsName::from_dotted(r"Mr\. Smith\\TV._http._tcp.local.").unwrap();
        let (parsed, end) = read_name(name.as_wire(), 0).unwrap();
        assert_eq!(end, name.as_wire().len());
        assert_eq!(parsed.labels().next(), Some(&b"Mr. Smith\\TV"[..]));
        assert_eq!(parsed.to_dotted(), r"Mr\. Smith\\TV._http._tcp.local.");
        assert!(matches!(
            DnsName::from_dotted("a..local"),
            Err(NameError::EmptyLabel { .. })
        ));
        assert!(matches!(
            DnsName::from_dotted(&"x".repeat(64)),
            Err(NameError::LabelTooLong { len: 64, .. })
        ));
        let long = vec!["abcdefgh"; 32].join(".");
        assert!(matches!(
            DnsName::from_dotted(&long),
            Err(NameError::NameTooLong { len: 289, .. })
        ));
        assert_eq!(DnsName::from_dotted(".").unwrap().as_wire(), &[0]);
    }
}
