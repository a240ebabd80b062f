//! SSDP messages (UPnP Device Architecture 1.1 §1): the M-SEARCH the agent sends, and the
//! search responses and NOTIFYs devices send, which also arrive through capture.
//!
//! Only the headers identification needs are kept: LOCATION, ST (or NT), USN, SERVER,
//! CACHE-CONTROL's max-age and NTS. Header names are case-insensitive, values are trimmed,
//! bytes that are not UTF-8 become U+FFFD. Nothing here does I/O.

use std::net::{Ipv4Addr, SocketAddrV4};

/// The SSDP multicast group and port.
pub const SSDP_GROUP_V4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);
/// Every device and service answers this search target.
pub const ST_ALL: &str = "ssdp:all";
/// The search target of DIAL servers; their description response carries `Application-URL`.
pub const ST_DIAL: &str = "urn:dial-multiscreen-org:service:dial:1";

/// Longest SSDP datagram accepted; real ones are well under 1 KiB.
pub const MAX_MESSAGE: usize = 8 * 1024;
/// Longest header value kept.
const MAX_VALUE: usize = 512;

/// What kind of SSDP message a datagram is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SsdpKind {
    /// `HTTP/1.1 <status>`: a reply to an M-SEARCH.
    Response { status: u16 },
    /// `NOTIFY * HTTP/1.1`, with its NTS (`ssdp:alive`, `ssdp:byebye`, `ssdp:update`).
    Notify { nts: Option<String> },
    /// `M-SEARCH * HTTP/1.1` from another control point.
    Search,
}

/// One parsed SSDP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsdpMessage {
    pub kind: SsdpKind,
    /// Where the device description is.
    pub location: Option<String>,
    /// ST of a response or M-SEARCH; NT of a NOTIFY.
    pub target: Option<String>,
    pub usn: Option<String>,
    pub server: Option<String>,
    /// CACHE-CONTROL `max-age`, seconds.
    pub max_age: Option<u32>,
}

/// Why a datagram is not an SSDP message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SsdpError {
    #[error("datagram of {len} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLong { len: usize },
    #[error("not an SSDP start line")]
    UnknownStartLine,
    #[error("malformed SSDP message: {0}")]
    Malformed(&'static str),
}

impl SsdpMessage {
    pub fn parse(datagram: &[u8]) -> Result<Self, SsdpError> {
        if datagram.len() > MAX_MESSAGE {
            return Err(SsdpError::TooLong {
                len: datagram.len(),
            });
        }
        let text = String::from_utf8_lossy(datagram);
        let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let start = lines.next().unwrap_or_default();
        let kind = parse_start_line(start)?;
        let mut message = SsdpMessage {
            kind,
            location: None,
            target: None,
            usn: None,
            server: None,
            max_age: None,
        };
        let mut nts = None;
        // The datagram bounds the message: a missing final empty line (some devices omit
        // it) costs nothing.
        for line in lines {
            if line.is_empty() {
                break;
            }
            // Folded continuation lines are obsolete and carry nothing we use.
            if line.starts_with([' ', '\t']) {
                continue;
            }
            let (name, value) = line
                .split_once(':')
                .ok_or(SsdpError::Malformed("header line without `:`"))?;
            let name = name.trim();
            let value = bounded(value.trim());
            let slot = if name.eq_ignore_ascii_case("location") {
                &mut message.location
            } else if name.eq_ignore_ascii_case("st") || name.eq_ignore_ascii_case("nt") {
                &mut message.target
            } else if name.eq_ignore_ascii_case("usn") {
                &mut message.usn
            } else if name.eq_ignore_ascii_case("server") {
                &mut message.server
            } else if name.eq_ignore_ascii_case("nts") {
                &mut nts
            } else {
                if name.eq_ignore_ascii_case("cache-control") {
                    message.max_age = message.max_age.or_else(|| max_age(&value));
                }
                continue;
            };
            if slot.is_none() && !value.is_empty() {
                *slot = Some(value);
            }
        }
        if let SsdpKind::Notify { nts: slot } = &mut message.kind {
            *slot = nts;
        }
        Ok(message)
    }
}

fn parse_start_line(line: &str) -> Result<SsdpKind, SsdpError> {
    let mut parts = line.split_ascii_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(version), Some(status), _) if version.starts_with("HTTP/1.") => {
            let status = status
                .parse::<u16>()
                .ok()
                .filter(|s| (100..600).contains(s))
                .ok_or(SsdpError::Malformed("bad status code"))?;
            Ok(SsdpKind::Response { status })
        }
        (Some(method), Some("*"), Some(version)) if version.starts_with("HTTP/1.") => {
            if method.eq_ignore_ascii_case("NOTIFY") {
                Ok(SsdpKind::Notify { nts: None })
            } else if method.eq_ignore_ascii_case("M-SEARCH") {
                Ok(SsdpKind::Search)
            } else {
                Err(SsdpError::UnknownStartLine)
            }
        }
        _ => Err(SsdpError::UnknownStartLine),
    }
}

/// `max-age=1800` (or `max-age = 1800`) among the cache directives.
fn max_age(cache_control: &str) -> Option<u32> {
    cache_control.split(',').find_map(|directive| {
        let (name, value) = directive.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("max-age") {
            value.trim().trim_matches('"').parse().ok()
        } else {
            None
        }
    })
}

fn bounded(value: &str) -> String {
    match value.char_indices().nth(MAX_VALUE) {
        Some((at, _)) => value[..at].to_owned(),
        None => value.to_owned(),
    }
}

/// The M-SEARCH datagram for `target`; devices answer within `mx` seconds (UDA: 1 to 5).
pub fn m_search(target: &str, mx: u8) -> Vec<u8> {
    format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: {SSDP_GROUP_V4}\r\nMAN: \"ssdp:discover\"\r\nMX: {}\r\n\
         ST: {target}\r\nUSER-AGENT: Linux UPnP/1.1 rae-agent/{}\r\n\r\n",
        mx.clamp(1, 5),
        env!("CARGO_PKG_VERSION"),
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Chromecast-style reply to the DIAL search.
    const DIAL_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
CACHE-CONTROL: max-age=1800\r\n\
DATE: Thu, 01 Jan 1970 00:00:00 GMT\r\n\
EXT:\r\n\
LOCATION: http://198.18.1.20:8008/ssdp/device-desc.xml\r\n\
OPT: \"http://schemas.upnp.org/upnp/1/0/\"; ns=01\r\n\
SERVER: Linux/3.8.13+, UPnP/1.0, Portable SDK for UPnP devices/1.6.18\r\n\
ST: urn:dial-multiscreen-org:service:dial:1\r\n\
USN: uuid:3e1cc7c3-f4d5-2c4f-a2ae-a2bca1e6d3a1::urn:dial-multiscreen-org:service:dial:1\r\n\
\r\n";

    const NOTIFY: &[u8] = b"NOTIFY * HTTP/1.1\r\n\
host: 239.255.255.250:1900\r\n\
cache-control: no-cache, max-age = 120\r\n\
location: http://198.18.1.30:49152/description.xml\r\n\
nt: upnp:rootdevice\r\n\
nts: ssdp:alive\r\n\
server: Linux/5.10 UPnP/1.0 TV/1.0\r\n\
usn: uuid:abc::upnp:rootdevice\r\n\
\r\n";

    #[test]
    fn search_response() {
        let m = SsdpMessage::parse(DIAL_RESPONSE).unwrap();
        assert_eq!(m.kind, SsdpKind::Response { status: 200 });
        assert_eq!(
            m.location.as_deref(),
            Some("http://198.18.1.20:8008/ssdp/device-desc.xml")
        );
        assert_eq!(m.target.as_deref(), Some(ST_DIAL));
        assert_eq!(
            m.usn.as_deref(),
            Some("uuid:3e1cc7c3-f4d5-2c4f-a2ae-a2bca1e6d3a1::urn:dial-multiscreen-org:service:dial:1")
        );
        assert!(m.server.as_deref().unwrap().starts_with("Linux/3.8.13+"));
        assert_eq!(m.max_age, Some(1800));
    }

    #[test]
    fn notify_with_lowercase_headers_and_spaced_max_age() {
        let m = SsdpMessage::parse(NOTIFY).unwrap();
        assert_eq!(
            m.kind,
            SsdpKind::Notify {
                nts: Some("ssdp:alive".into())
            }
        );
        assert_eq!(m.target.as_deref(), Some("upnp:rootdevice"));
        assert_eq!(m.max_age, Some(120));
        assert_eq!(m.usn.as_deref(), Some("uuid:abc::upnp:rootdevice"));
    }

    #[test]
    fn bare_newlines_are_accepted() {
        let text = String::from_utf8(NOTIFY.to_vec())
            .unwrap()
            .replace("\r\n", "\n");
        assert_eq!(
            SsdpMessage::parse(text.as_bytes()).unwrap(),
            SsdpMessage::parse(NOTIFY).unwrap()
        );
    }

    #[test]
    fn m_search_round_trips() {
        let bytes = m_search(ST_DIAL, 2);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.starts_with("M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"));
        assert!(text.contains("\r\nMAN: \"ssdp:discover\"\r\n"));
        assert!(text.contains("\r\nMX: 2\r\n"));
        let m = SsdpMessage::parse(&bytes).unwrap();
        assert_eq!(m.kind, SsdpKind::Search);
        assert_eq!(m.target.as_deref(), Some(ST_DIAL));
        // MX outside 1..=5 is clamped: some devices ignore searches with MX > 5.
        assert!(std::str::from_utf8(&m_search(ST_ALL, 0))
            .unwrap()
            .contains("MX: 1\r\n"));
    }

    #[test]
    fn not_ssdp() {
        assert_eq!(
            SsdpMessage::parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(SsdpError::UnknownStartLine)
        );
        assert_eq!(SsdpMessage::parse(b""), Err(SsdpError::UnknownStartLine));
        assert!(matches!(
            SsdpMessage::parse(b"HTTP/1.1 200 OK\r\nLOCATION\r\n\r\n"),
            Err(SsdpError::Malformed(_))
        ));
        // Without the final empty line: still a message.
        let m = SsdpMessage::parse(b"HTTP/1.1 200 OK\r\nLOCATION: x").unwrap();
        assert_eq!(m.location.as_deref(), Some("x"));
        assert!(matches!(
            SsdpMessage::parse(b"HTTP/1.1 abc OK\r\n\r\n"),
            Err(SsdpError::Malformed(_))
        ));
        assert!(matches!(
            SsdpMessage::parse(&vec![b'a'; MAX_MESSAGE + 1]),
            Err(SsdpError::TooLong { .. })
        ));
    }

    #[test]
    fn non_utf8_server_header_is_kept_lossily() {
        let mut raw = b"HTTP/1.1 200 OK\r\nSERVER: TV \xe9\r\nST: ssdp:all\r\n\r\n".to_vec();
        let m = SsdpMessage::parse(&raw).unwrap();
        assert_eq!(m.server.as_deref(), Some("TV \u{fffd}"));
        raw.truncate(20);
        assert!(SsdpMessage::parse(&raw).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = SsdpMessage::parse(&bytes);
        }

        #[test]
        fn arbitrary_headers_never_panic(text in "\\PC{0,400}") {
            let _ = SsdpMessage::parse(format!("HTTP/1.1 200 OK\r\n{text}").as_bytes());
            let _ = SsdpMessage::parse(format!("NOTIFY * HTTP/1.1\r\n{text}\r\n\r\n").as_bytes());
        }
    }
}
