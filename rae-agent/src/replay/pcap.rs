//! Capture files: classic libpcap (both byte orders, micro- and nanosecond timestamps) and
//! pcapng (section header, interface description, enhanced, simple and obsolete packet
//! blocks; other blocks are skipped). Ethernet link type only: it is all the agent captures.
//!
//! [`CaptureReader`] streams: one record in memory at a time, in a buffer reused for every
//! record, so a capture of any size replays in constant memory. Every error names the byte
//! offset where the file stopped making sense. A file that ends inside its last record (a
//! capture copied while tcpdump was still writing, or cut by a full disk) is not an error:
//! [`Next::Truncated`] says where, and the records before it stand.
//!
//! [`CaptureWriter`] writes classic pcap in any of its four variants; tests and the replay
//! benchmark use it to make captures.

use std::io::{self, Read, Write};

/// The largest record the reader accepts: libpcap's own limit for Ethernet (`MAXIMUM_SNAPLEN`).
/// A larger length field means the file is corrupt, and reading it would allocate whatever the
/// field says.
pub const MAX_RECORD_LEN: u32 = 262_144;
/// The largest pcapng block: a maximal packet plus generous room for options.
const MAX_BLOCK_LEN: u32 = MAX_RECORD_LEN + 64 * 1024;

pub const LINKTYPE_ETHERNET: u32 = 1;

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const CLASSIC_HEADER_LEN: usize = 24;
const CLASSIC_RECORD_HEADER_LEN: usize = 16;

mod block {
    pub const SECTION_HEADER: u32 = 0x0a0d_0d0a;
    pub const INTERFACE: u32 = 1;
    pub const OBSOLETE_PACKET: u32 = 2;
    pub const SIMPLE_PACKET: u32 = 3;
    pub const ENHANCED_PACKET: u32 = 6;
    pub const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;
    pub const OPT_END: u16 = 0;
    pub const OPT_IF_TSRESOL: u16 = 9;
    pub const OPT_IF_TSOFFSET: u16 = 14;
}

/// Why a capture file cannot be read (further).
#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("read failed at byte {offset}")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    #[error("not a pcap or pcapng file: magic number {magic:#010x} at byte 0")]
    BadMagic { magic: u32 },
    #[error("the file ends at byte {len}, inside its {needed}-byte file header")]
    TruncatedHeader { len: u64, needed: u64 },
    #[error("pcap version {major}.{minor} is not supported (2.4 is)")]
    Version { major: u16, minor: u16 },
    #[error("link type {link_type} (byte {offset}) is not Ethernet ({LINKTYPE_ETHERNET})")]
    LinkType { offset: u64, link_type: u32 },
    #[error(
        "record at byte {offset} claims {length} bytes, more than the {max} a record can hold"
    )]
    RecordTooLarge { offset: u64, length: u64, max: u64 },
    #[error("pcapng block at byte {offset}: {problem}")]
    BadBlock { offset: u64, problem: String },
    #[error("packet at byte {offset} names interface {interface}, but the section describes {described}")]
    UnknownInterface {
        offset: u64,
        interface: u32,
        described: usize,
    },
}

/// Which of the two file formats a capture is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureFormat {
    /// Classic libpcap; `nanos` for the nanosecond-timestamp variant.
    Pcap {
        big_endian: bool,
        nanos: bool,
    },
    Pcapng,
}

/// A record the file ends inside of: it starts at `offset` and needed `needed` bytes from
/// there, of which the file has `present`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub offset: u64,
    pub present: u64,
    pub needed: u64,
}

/// One captured frame, borrowed from the reader until its next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Where the record starts in the file.
    pub offset: u64,
    /// Capture time, unix milliseconds (fractions dropped).
    pub at_ms: i64,
    /// The frame's length on the wire; more than `data.len()` when the snap length cut it.
    pub original_len: u32,
    pub data: &'a [u8],
}

impl Packet<'_> {
    /// The capture kept less than the frame (`tcpdump -s`).
    pub fn is_cut_by_snaplen(&self) -> bool {
        (self.data.len() as u64) < u64::from(self.original_len)
    }
}

/// What the next read found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<'a> {
    Packet(Packet<'a>),
    /// The file ends inside a record; nothing follows.
    Truncated(Truncation),
    End,
}

#[derive(Clone, Copy, Debug)]
struct Interface {
    /// Timestamp units per second.
    units_per_sec: u128,
    offset_secs: i64,
}

#[derive(Clone, Copy, Debug)]
enum Layout {
    Pcap { big_endian: bool, nanos: bool },
    Pcapng { big_endian: bool },
}

/// A streaming reader of a capture file (see the module documentation).
#[derive(Debug)]
pub struct CaptureReader<R: Read> {
    src: R,
    layout: Layout,
    /// File offset of the next unread byte.
    offset: u64,
    buf: Vec<u8>,
    interfaces: Vec<Interface>,
    /// pcapng simple packets carry no time; they take the previous packet's.
    last_ms: i64,
    done: bool,
}

fn u16_from(bytes: &[u8], at: usize, big_endian: bool) -> u16 {
    let raw = [bytes[at], bytes[at + 1]];
    if big_endian {
        u16::from_be_bytes(raw)
    } else {
        u16::from_le_bytes(raw)
    }
}

fn u32_from(bytes: &[u8], at: usize, big_endian: bool) -> u32 {
    let raw = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
    if big_endian {
        u32::from_be_bytes(raw)
    } else {
        u32::from_le_bytes(raw)
    }
}

fn clamp_ms(ms: i128) -> i64 {
    i64::try_from(ms).unwrap_or(if ms < 0 { i64::MIN } else { i64::MAX })
}

impl<R: Read> CaptureReader<R> {
    /// Reads the file header (the first section header for pcapng).
    pub fn new(mut src: R) -> Result<Self, PcapError> {
        let mut head = [0u8; 4];
        let got = read_up_to(&mut src, &mut head, 0)?;
        if got < head.len() {
            return Err(PcapError::TruncatedHeader {
                len: got as u64,
                needed: CLASSIC_HEADER_LEN as u64,
            });
        }
        let mut reader = CaptureReader {
            src,
            layout: Layout::Pcapng { big_endian: false },
            offset: 4,
            buf: Vec::new(),
            interfaces: Vec::new(),
            last_ms: 0,
            done: false,
        };
        let le = u32::from_le_bytes(head);
        let be = u32::from_be_bytes(head);
        reader.layout = match (le, be) {
            (MAGIC_MICROS, _) => Layout::Pcap {
                big_endian: false,
                nanos: false,
            },
            (MAGIC_NANOS, _) => Layout::Pcap {
                big_endian: false,
                nanos: true,
            },
            (_, MAGIC_MICROS) => Layout::Pcap {
                big_endian: true,
                nanos: false,
            },
            (_, MAGIC_NANOS) => Layout::Pcap {
                big_endian: true,
                nanos: true,
            },
            (block::SECTION_HEADER, _) => {
                reader.read_section_header(0)?;
                return Ok(reader);
            }
            _ => return Err(PcapError::BadMagic { magic: be }),
        };
        reader.read_classic_header()?;
        Ok(reader)
    }

    pub fn format(&self) -> CaptureFormat {
        match self.layout {
            Layout::Pcap { big_endian, nanos } => CaptureFormat::Pcap { big_endian, nanos },
            Layout::Pcapng { .. } => CaptureFormat::Pcapng,
        }
    }

    /// The next packet, the truncated record the file ends in, or the end.
    pub fn next_packet(&mut self) -> Result<Next<'_>, PcapError> {
        if self.done {
            return Ok(Next::End);
        }
        match self.layout {
            Layout::Pcap { big_endian, nanos } => self.next_classic(big_endian, nanos),
            Layout::Pcapng { .. } => self.next_block(),
        }
    }

    /// Reads `len` bytes into the buffer; the count read, less than `len` only at the end.
    fn fill(&mut self, len: usize) -> Result<usize, PcapError> {
        self.buf.clear();
        self.buf.resize(len, 0);
        let got = read_up_to(&mut self.src, &mut self.buf, self.offset)?;
        self.offset += got as u64;
        Ok(got)
    }

    fn end_truncated(&mut self, start: u64, needed: usize) -> Next<'static> {
        self.done = true;
        Next::Truncated(Truncation {
            offset: start,
            present: self.offset - start,
            needed: needed as u64,
        })
    }

    fn read_classic_header(&mut self) -> Result<(), PcapError> {
        let rest = CLASSIC_HEADER_LEN - 4;
        if self.fill(rest)? < rest {
            return Err(PcapError::TruncatedHeader {
                len: self.offset,
                needed: CLASSIC_HEADER_LEN as u64,
            });
        }
        let Layout::Pcap { big_endian, .. } = self.layout else {
            return Ok(());
        };
        // The buffer holds the header from byte 4 on.
        let major = u16_from(&self.buf, 0, big_endian);
        let minor = u16_from(&self.buf, 2, big_endian);
        if major != 2 {
            return Err(PcapError::Version { major, minor });
        }
        // The upper bits of the link type field carry FCS information, not the type.
        let link_type = u32_from(&self.buf, 16, big_endian) & 0xffff;
        if link_type != LINKTYPE_ETHERNET {
            return Err(PcapError::LinkType {
                offset: 20,
                link_type,
            });
        }
        Ok(())
    }

    fn next_classic(&mut self, big_endian: bool, nanos: bool) -> Result<Next<'_>, PcapError> {
        let start = self.offset;
        let got = self.fill(CLASSIC_RECORD_HEADER_LEN)?;
        if got == 0 {
            self.done = true;
            return Ok(Next::End);
        }
        if got < CLASSIC_RECORD_HEADER_LEN {
            return Ok(self.end_truncated(start, CLASSIC_RECORD_HEADER_LEN));
        }
        let secs = i128::from(u32_from(&self.buf, 0, big_endian));
        let frac = i128::from(u32_from(&self.buf, 4, big_endian));
        let captured = u32_from(&self.buf, 8, big_endian);
        let original_len = u32_from(&self.buf, 12, big_endian);
        if captured > MAX_RECORD_LEN {
            return Err(PcapError::RecordTooLarge {
                offset: start,
                length: u64::from(captured),
                max: u64::from(MAX_RECORD_LEN),
            });
        }
        let at_ms = clamp_ms(secs * 1000 + frac / if nanos { 1_000_000 } else { 1_000 });
        let len = captured as usize;
        if self.fill(len)? < len {
            return Ok(self.end_truncated(start, CLASSIC_RECORD_HEADER_LEN + len));
        }
        Ok(Next::Packet(Packet {
            offset: start,
            at_ms,
            original_len,
            data: &self.buf,
        }))
    }

    fn big_endian(&self) -> bool {
        matches!(self.layout, Layout::Pcapng { big_endian: true })
    }

    fn bad_block(offset: u64, problem: impl Into<String>) -> PcapError {
        PcapError::BadBlock {
            offset,
            problem: problem.into(),
        }
    }

    /// Reads a section header whose type field (4 bytes) was read already; the byte order
    /// of everything in the section comes from its byte-order magic.
    fn read_section_header(&mut self, start: u64) -> Result<Option<Next<'static>>, PcapError> {
        const FIXED: usize = 28;
        let at_file_start = start == 0;
        let got = self.fill(8)?;
        if got < 8 {
            if at_file_start {
                return Err(PcapError::TruncatedHeader {
                    len: self.offset,
                    needed: FIXED as u64,
                });
            }
            return Ok(Some(self.end_truncated(start, FIXED)));
        }
        let big_endian =
            match u32::from_le_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) {
                block::BYTE_ORDER_MAGIC => false,
                magic if magic.swap_bytes() == block::BYTE_ORDER_MAGIC => true,
                _ => {
                    return Err(Self::bad_block(
                        start,
                        "section header without byte-order magic",
                    ))
                }
            };
        self.layout = Layout::Pcapng { big_endian };
        self.interfaces.clear();
        let total = u32_from(&self.buf, 0, big_endian);
        self.check_block_len(start, total, FIXED)?;
        let rest = total as usize - 12;
        if self.fill(rest)? < rest {
            if at_file_start {
                return Err(PcapError::TruncatedHeader {
                    len: self.offset,
                    needed: u64::from(total),
                });
            }
            return Ok(Some(self.end_truncated(start, total as usize)));
        }
        let major = u16_from(&self.buf, 0, big_endian);
        let minor = u16_from(&self.buf, 2, big_endian);
        if major != 1 {
            return Err(PcapError::Version { major, minor });
        }
        self.check_trailer(start, total)?;
        Ok(None)
    }

    fn check_block_len(&self, start: u64, total: u32, min: usize) -> Result<(), PcapError> {
        if (total as usize) < min || total % 4 != 0 {
            return Err(Self::bad_block(
                start,
                format!("block length {total} is invalid"),
            ));
        }
        if total > MAX_BLOCK_LEN {
            return Err(PcapError::RecordTooLarge {
                offset: start,
                length: u64::from(total),
                max: u64::from(MAX_BLOCK_LEN),
            });
        }
        Ok(())
    }

    /// The buffer ends with the block's trailing copy of its length, which must match.
    fn check_trailer(&self, start: u64, total: u32) -> Result<(), PcapError> {
        let end = self.buf.len() - 4;
        let trailer = u32_from(&self.buf, end, self.big_endian());
        if trailer != total {
            return Err(Self::bad_block(
                start,
                format!("length {total} at the start but {trailer} at the end"),
            ));
        }
        Ok(())
    }

    fn next_block(&mut self) -> Result<Next<'_>, PcapError> {
        loop {
            let start = self.offset;
            let got = self.fill(4)?;
            if got == 0 {
                self.done = true;
                return Ok(Next::End);
            }
            if got < 4 {
                return Ok(self.end_truncated(start, 12));
            }
            let kind_raw = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
            if u32::from_le_bytes(kind_raw) == block::SECTION_HEADER {
                if let Some(truncated) = self.read_section_header(start)? {
                    return Ok(truncated);
                }
                continue;
            }
            let big_endian = self.big_endian();
            let kind = u32_from(&kind_raw, 0, big_endian);
            if self.fill(4)? < 4 {
                return Ok(self.end_truncated(start, 12));
            }
            let total = u32_from(&self.buf, 0, big_endian);
            self.check_block_len(start, total, 12)?;
            let rest = total as usize - 8;
            if self.fill(rest)? < rest {
                return Ok(self.end_truncated(start, total as usize));
            }
            self.check_trailer(start, total)?;
            let body_len = rest - 4;
            match kind {
                block::INTERFACE => self.read_interface(start, body_len)?,
                block::ENHANCED_PACKET | block::OBSOLETE_PACKET | block::SIMPLE_PACKET => {
                    let (at, len, original_len) = self.packet_fields(start, kind, body_len)?;
                    return Ok(Next::Packet(Packet {
                        offset: start,
                        at_ms: self.last_ms,
                        original_len,
                        data: &self.buf[at..at + len],
                    }));
                }
                _ => {}
            }
        }
    }

    fn read_interface(&mut self, start: u64, body_len: usize) -> Result<(), PcapError> {
        let big_endian = self.big_endian();
        if body_len < 8 {
            return Err(Self::bad_block(start, "interface description too short"));
        }
        let link_type = u32::from(u16_from(&self.buf, 0, big_endian));
        if link_type != LINKTYPE_ETHERNET {
            return Err(PcapError::LinkType {
                offset: start + 8,
                link_type,
            });
        }
        let mut interface = Interface {
            units_per_sec: 1_000_000,
            offset_secs: 0,
        };
        let mut at = 8;
        while at + 4 <= body_len {
            let code = u16_from(&self.buf, at, big_endian);
            let len = usize::from(u16_from(&self.buf, at + 2, big_endian));
            let value = at + 4;
            if code == block::OPT_END {
                break;
            }
            if value + len > body_len {
                return Err(Self::bad_block(
                    start,
                    format!("option {code} runs past the block"),
                ));
            }
            match (code, len) {
                (block::OPT_IF_TSRESOL, 1) => {
                    let resol = self.buf[value];
                    let exponent = u32::from(resol & 0x7f);
                    let base: u128 = if resol & 0x80 != 0 { 2 } else { 10 };
                    interface.units_per_sec = base
                        .checked_pow(exponent)
                        .filter(|units| *units > 0 && *units <= u128::from(u64::MAX))
                        .ok_or_else(|| {
                            Self::bad_block(start, format!("if_tsresol {resol:#04x} out of range"))
                        })?;
                }
                (block::OPT_IF_TSOFFSET, 8) => {
                    let raw: [u8; 8] = self.buf[value..value + 8].try_into().unwrap_or([0; 8]);
                    interface.offset_secs = if big_endian {
                        i64::from_be_bytes(raw)
                    } else {
                        i64::from_le_bytes(raw)
                    };
                }
                _ => {}
            }
            // Option values are padded to 32 bits.
            at = value + len.div_ceil(4) * 4;
        }
        self.interfaces.push(interface);
        Ok(())
    }

    /// Where the packet data starts in the buffer, its captured and original lengths; sets
    /// `last_ms` from the block's timestamp.
    fn packet_fields(
        &mut self,
        start: u64,
        kind: u32,
        body_len: usize,
    ) -> Result<(usize, usize, u32), PcapError> {
        let big_endian = self.big_endian();
        if kind == block::SIMPLE_PACKET {
            if body_len < 4 {
                return Err(Self::bad_block(start, "simple packet too short"));
            }
            self.interface(start, 0)?;
            let original_len = u32_from(&self.buf, 0, big_endian);
            let len = (original_len as usize).min(body_len - 4);
            return Ok((4, len, original_len));
        }
        if body_len < 20 {
            return Err(Self::bad_block(start, "packet block too short"));
        }
        let id = if kind == block::OBSOLETE_PACKET {
            u32::from(u16_from(&self.buf, 0, big_endian))
        } else {
            u32_from(&self.buf, 0, big_endian)
        };
        let interface = self.interface(start, id)?;
        let high = u64::from(u32_from(&self.buf, 4, big_endian));
        let low = u64::from(u32_from(&self.buf, 8, big_endian));
        let captured = u32_from(&self.buf, 12, big_endian) as usize;
        let original_len = u32_from(&self.buf, 16, big_endian);
        if captured > body_len - 20 {
            return Err(Self::bad_block(
                start,
                format!("captured length {captured} runs past the block"),
            ));
        }
        let units = i128::from((high << 32) | low);
        let per_sec = interface.units_per_sec as i128;
        self.last_ms = clamp_ms(
            units / per_sec * 1000
                + units % per_sec * 1000 / per_sec
                + i128::from(interface.offset_secs) * 1000,
        );
        Ok((20, captured, original_len))
    }

    fn interface(&self, start: u64, id: u32) -> Result<Interface, PcapError> {
        self.interfaces
            .get(id as usize)
            .copied()
            .ok_or(PcapError::UnknownInterface {
                offset: start,
                interface: id,
                described: self.interfaces.len(),
            })
    }
}

/// Reads until `buf` is full or the source ends; the count read.
fn read_up_to<R: Read>(src: &mut R, buf: &mut [u8], offset: u64) -> Result<usize, PcapError> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(PcapError::Io {
                    offset: offset + got as u64,
                    source,
                })
            }
        }
    }
    Ok(got)
}

fn ordered32(value: u32, big_endian: bool) -> [u8; 4] {
    if big_endian {
        value.to_be_bytes()
    } else {
        value.to_le_bytes()
    }
}

/// Writes classic pcap with Ethernet link type.
#[derive(Debug)]
pub struct CaptureWriter<W: Write> {
    out: W,
    big_endian: bool,
    nanos: bool,
}

impl<W: Write> CaptureWriter<W> {
    /// Writes the file header; `snaplen` is only recorded (records are written as given).
    pub fn new(mut out: W, big_endian: bool, nanos: bool, snaplen: u32) -> io::Result<Self> {
        let magic = if nanos { MAGIC_NANOS } else { MAGIC_MICROS };
        let mut header = Vec::with_capacity(CLASSIC_HEADER_LEN);
        header.extend_from_slice(&ordered32(magic, big_endian));
        for half in [2u16, 4] {
            let bytes = if big_endian {
                half.to_be_bytes()
            } else {
                half.to_le_bytes()
            };
            header.extend_from_slice(&bytes);
        }
        for word in [0, 0, snaplen, LINKTYPE_ETHERNET] {
            header.extend_from_slice(&ordered32(word, big_endian));
        }
        out.write_all(&header)?;
        Ok(CaptureWriter {
            out,
            big_endian,
            nanos,
        })
    }

    /// Writes one record: `data` as captured, `original_len` as on the wire (`data.len()`
    /// unless a snap length cut it).
    pub fn write_packet(&mut self, at_ns: u64, data: &[u8], original_len: u32) -> io::Result<()> {
        let secs = u32::try_from(at_ns / 1_000_000_000).unwrap_or(u32::MAX);
        let nanos = (at_ns % 1_000_000_000) as u32;
        let frac = if self.nanos { nanos } else { nanos / 1_000 };
        let captured = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record too large"))?;
        let mut header = [0u8; CLASSIC_RECORD_HEADER_LEN];
        for (i, v) in [secs, frac, captured, original_len].into_iter().enumerate() {
            header[i * 4..i * 4 + 4].copy_from_slice(&ordered32(v, self.big_endian));
        }
        self.out.write_all(&header)?;
        self.out.write_all(data)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}
