//! A minimal HTTP/1.1 GET client for device descriptions: one request per connection,
//! `Connection: close`, bodies framed by Content-Length, chunked encoding or the close, and
//! every size and time bounded.
//!
//! Only IP-literal URLs are accepted and only to the device being probed: the agent never
//! resolves names and never follows a URL a device hands out to another host (a LOCATION or an
//! Application-URL pointing elsewhere would make the router a scanner for whoever answers
//! SSDP). Redirects are not followed: the caller sees the 3xx status.
//!
//! A full HTTP stack (hyper, ureq) would bring TLS, pools and redirects the agent must not use,
//! and several hundred KiB to the router's binary; this file is what the probes need.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Time and size limits of one GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    pub connect_timeout: Duration,
    /// For the whole exchange, connect included.
    pub total_timeout: Duration,
    /// Status line and headers.
    pub max_head: usize,
    /// Decoded body.
    pub max_body: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(5),
            max_head: 8 * 1024,
            max_body: 64 * 1024,
        }
    }
}

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("unusable URL {url:?}: {why}")]
    InvalidUrl { url: String, why: &'static str },
    #[error("URL host {host} is not the device {device}: not followed")]
    ForeignHost { host: IpAddr, device: IpAddr },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("GET from {addr}: no complete response within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("malformed HTTP response: {why}")]
    Malformed { why: &'static str },
    #[error("response headers longer than {limit} bytes")]
    HeadTooLarge { limit: usize },
    #[error("response body longer than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("connection closed before the response was complete")]
    Truncated,
}

fn malformed(why: &'static str) -> HttpError {
    HttpError::Malformed { why }
}

/// An `http://` URL whose host is an IP literal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: IpAddr,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let invalid = |why| HttpError::InvalidUrl {
            url: url.chars().take(256).collect(),
            why,
        };
        let text = url.trim();
        let rest = match text.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case("http://") => &text[7..],
            _ => return Err(invalid("not an http:// URL")),
        };
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(invalid("user info is not accepted"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| invalid("unclosed `[`"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| invalid("junk after `]`"))?,
                ),
            };
            let host = host
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| invalid("host is not an IPv6 address"))?;
            (IpAddr::V6(host), port)
        } else {
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            let host = host
                .parse::<std::net::Ipv4Addr>()
                .map_err(|_| invalid("host is not an IP address (names are never resolved)"))?;
            (IpAddr::V4(host), port)
        };
        let port = match port {
            None | Some("") => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("bad port"))?,
        };
        // The fragment is never sent.
        let path = path.split('#').next().unwrap_or_default();
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(invalid("path has spaces or control characters"));
        }
        Ok(Self { host, port, path })
    }

    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Fails unless the URL points at `device` itself.
    pub fn check_host(&self, device: IpAddr) -> Result<(), HttpError> {
        if self.host == device {
            Ok(())
        } else {
            Err(HttpError::ForeignHost {
                host: self.host,
                device,
            })
        }
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.socket_addr(), self.path)
    }
}

/// A complete response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Names as sent; look them up with [`HttpResponse::header`].
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Most headers a response may have.
const MAX_HEADERS: usize = 64;

/// Parses what has been received so far. `Ok(None)`: incomplete, read more (only when
/// `at_eof` is false). A body without Content-Length or chunked encoding ends at the close.
pub fn parse_response(
    buf: &[u8],
    at_eof: bool,
    limits: &HttpLimits,
) -> Result<Option<HttpResponse>, HttpError> {
    let head_end = match find(buf, b"\r\n\r\n") {
        Some(at) => at,
        None if buf.len() > limits.max_head => {
            return Err(HttpError::HeadTooLarge {
                limit: limits.max_head,
            })
        }
        None if at_eof => return Err(HttpError::Truncated),
        None => return Ok(None),
    };
    if head_end > limits.max_head {
        return Err(HttpError::HeadTooLarge {
            limit: limits.max_head,
        });
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| malformed("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or_default())?;
    let mut headers = Vec::new();
    for line in lines {
        if headers.len() == MAX_HEADERS {
            return Err(malformed("too many headers"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| malformed("header line without `:`"))?;
        if name.is_empty() || name.bytes().any(|b| b <= b' ') {
            return Err(malformed("bad header name"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut response = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let body = &buf[head_end + 4..];
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Some(response));
    }
    let chunked = response.header("transfer-encoding").is_some_and(|te| {
        te.rsplit(',')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("chunked")
    });
    if chunked {
        return match decode_chunked(body, limits.max_body)? {
            Some(decoded) => {
                response.body = decoded;
                Ok(Some(response))
            }
            None if at_eof => Err(HttpError::Truncated),
            None => Ok(None),
        };
    }
    if let Some(length) = response.header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| malformed("bad Content-Length"))?;
        if length > limits.max_body {
            return Err(HttpError::BodyTooLarge {
                limit: limits.max_body,
            });
        }
        return match body.get(..length) {
            Some(complete) => {
                response.body = complete.to_vec();
                Ok(Some(response))
            }
            None if at_eof => Err(HttpError::Truncated),
            None => Ok(None),
        };
    }
    if body.len() > limits.max_body {
        return Err(HttpError::BodyTooLarge {
            limit: limits.max_body,
        });
    }
    if !at_eof {
        return Ok(None);
    }
    response.body = body.to_vec();
    Ok(Some(response))
}

fn parse_status_line(line: &str) -> Result<u16, HttpError> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(malformed("not an HTTP/1.x status line"));
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 {
        return Err(malformed("bad status code"));
    }
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| malformed("bad status code"))
}

/// Decodes a chunked body; `Ok(None)` while the last chunk or the trailer is missing.
fn decode_chunked(mut buf: &[u8], max_body: usize) -> Result<Option<Vec<u8>>, HttpError> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(buf, b"\r\n") else {
            // A size line is a few hex digits; a long one without CRLF is not HTTP.
            return if buf.len() > 1024 {
                Err(malformed("chunk size line too long"))
            } else {
                Ok(None)
            };
        };
        let line =
            std::str::from_utf8(&buf[..line_end]).map_err(|_| malformed("chunk size not ASCII"))?;
        let digits = line.split(';').next().unwrap_or_default().trim();
        if digits.is_empty() || digits.len() > 8 {
            return Err(malformed("bad chunk size"));
        }
        let size = usize::from_str_radix(digits, 16).map_err(|_| malformed("bad chunk size"))?;
        buf = &buf[line_end + 2..];
        if size == 0 {
            return skip_trailer(buf).map(|done| done.then_some(body));
        }
        if body.len() + size > max_body {
            return Err(HttpError::BodyTooLarge { limit: max_body });
        }
        let Some(data) = buf.get(..size) else {
            return Ok(None);
        };
        match buf.get(size..size + 2) {
            Some(b"\r\n") => {}
            Some(_) => return Err(malformed("chunk not followed by CRLF")),
            None => return Ok(None),
        }
        body.extend_from_slice(data);
        buf = &buf[size + 2..];
    }
}

/// Whether the trailer section (header lines up to an empty line) is complete.
fn skip_trailer(mut buf: &[u8]) -> Result<bool, HttpError> {
    for _ in 0..=MAX_HEADERS {
        match find(buf, b"\r\n") {
            Some(0) => return Ok(true),
            Some(at) => buf = &buf[at + 2..],
            None => return Ok(false),
        }
    }
    Err(malformed("too many trailer lines"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The request line and headers of a GET for `url`.
pub fn request(url: &HttpUrl) -> Vec<u8> {
    let host = match url.host {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: rae-agent/{} UPnP/1.1\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        url.path,
        url.port,
        env!("CARGO_PKG_VERSION"),
    )
    .into_bytes()
}

/// GETs `url`, which must point at `device`. With `local`, the connection leaves from that
/// address (the LAN side of the router).
pub async fn get(
    url: &HttpUrl,
    device: IpAddr,
    local: Option<IpAddr>,
    limits: &HttpLimits,
) -> Result<HttpResponse, HttpError> {
    url.check_host(device)?;
    let addr = url.socket_addr();
    match tokio::time::timeout(limits.total_timeout, exchange(url, local, limits)).await {
        Ok(result) => result,
        Err(_) => Err(HttpError::Timeout {
            addr,
            timeout: limits.total_timeout,
        }),
    }
}

async fn exchange(
    url: &HttpUrl,
    local: Option<IpAddr>,
    limits: &HttpLimits,
) -> Result<HttpResponse, HttpError> {
    let addr = url.socket_addr();
    let mut stream = match tokio::time::timeout(limits.connect_timeout, connect(addr, local)).await
    {
        Ok(stream) => stream?,
        Err(_) => {
            return Err(HttpError::ConnectTimeout {
                addr,
                timeout: limits.connect_timeout,
            })
        }
    };
    let io = |source| HttpError::Io { addr, source };
    stream.write_all(&request(url)).await.map_err(io)?;
    let cap = limits.max_head + limits.max_body + 16 * 1024;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.map_err(io)?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(response) = parse_response(&buf, n == 0, limits)? {
            return Ok(response);
        }
        if buf.len() > cap {
            return Err(HttpError::BodyTooLarge {
                limit: limits.max_body,
            });
        }
    }
}

async fn connect(addr: SocketAddr, local: Option<IpAddr>) -> Result<TcpStream, HttpError> {
    let err = |source| HttpError::Connect { addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(err)?;
    if let Some(local) = local {
        socket.bind(SocketAddr::new(local, 0)).map_err(err)?;
    }
    socket.connect(addr).await.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            max_head: 256,
            max_body: 64,
            ..HttpLimits::default()
        }
    }

    fn complete(bytes: &[u8]) -> HttpResponse {
        parse_response(bytes, false, &limits())
            .unwrap()
            .expect("complete")
    }

    #[test]
    fn url_with_ipv4_port_and_path() {
        let url = HttpUrl::parse("http://198.18.1.20:49152/dd.xml?x=1#frag").unwrap();
        assert_eq!(url.to_string(), "http://198.18.1.20:49152/dd.xml?x=1");
        assert_eq!(url.host, IpAddr::from([198, 18, 1, 20]));
        assert_eq!(url.port, 49152);
        assert_eq!(url.path, "/dd.xml?x=1");
        let url = HttpUrl::parse("HTTP://198.18.1.20").unwrap();
        assert_eq!((url.port, url.path.as_str()), (80, "/"));
        let url = HttpUrl::parse("http://[2001:db8:1::20]:8008/apps").unwrap();
        assert_eq!(url.host, "2001:db8:1::20".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn urls_the_agent_refuses() {
        for bad in [
            "https://198.18.1.20/",
            "http://tv.local/dd.xml",
            "http://user@198.18.1.20/",
            "http://198.18.1.20:0/",
            "http://198.18.1.20:99999/",
            "http://198.18.1.20/a b",
            "http://198.18.1.20/a\r\nX: y",
            "http://[2001:db8::1/",
            "ftp://198.18.1.20/",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn foreign_host_is_refused() {
        let url = HttpUrl::parse("http://198.18.1.22:80/dd.xml").unwrap();
        let device = IpAddr::from([198, 18, 1, 21]);
        assert!(matches!(
            url.check_host(device),
            Err(HttpError::ForeignHost { .. })
        ));
        assert!(url.check_host(IpAddr::from([198, 18, 1, 22])).is_ok());
    }

    #[test]
    fn request_bytes() {
        let url = HttpUrl::parse("http://198.18.1.20:8008/apps/Netflix").unwrap();
        let text = String::from_utf8(request(&url)).unwrap();
        assert!(text.starts_with("GET /apps/Netflix HTTP/1.1\r\nHost: 198.18.1.20:8008\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn content_length_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nApplication-URL: http://198.18.1.20:8008/apps/\r\nContent-Length: 5\r\n\r\nhello";
        let r = complete(raw);
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert_eq!(
            r.header("application-url"),
            Some("http://198.18.1.20:8008/apps/")
        );
        // Every prefix is incomplete, never an error.
        for cut in 0..raw.len() {
            assert_eq!(parse_response(&raw[..cut], false, &limits()).unwrap(), None);
            assert!(parse_response(&raw[..cut], true, &limits()).is_err());
        }
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(complete(raw).body, b"Wikipedia");
        for cut in 0..raw.len() {
            assert_eq!(parse_response(&raw[..cut], false, &limits()).unwrap(), None);
        }
    }

    #[test]
    fn close_delimited_body() {
        let raw = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\n<root/>";
        assert_eq!(parse_response(raw, false, &limits()).unwrap(), None);
        let r = parse_response(raw, true, &limits()).unwrap().unwrap();
        assert_eq!(r.body, b"<root/>");
    }

    #[test]
    fn not_found_and_redirect_are_responses() {
        let r = complete(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status, 404);
        let r = complete(
            b"HTTP/1.1 302 Found\r\nLocation: http://203.0.113.9/\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(r.status, 302);
    }

    #[test]
    fn limits_are_enforced() {
        let big = b"HTTP/1.1 200 OK\r\nContent-Length: 65\r\n\r\n";
        assert!(matches!(
            parse_response(big, false, &limits()),
            Err(HttpError::BodyTooLarge { .. })
        ));
        let chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n41\r\n";
        assert!(matches!(
            parse_response(chunks, false, &limits()),
            Err(HttpError::BodyTooLarge { .. })
        ));
        let mut long_head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long_head.extend(std::iter::repeat(b'a').take(300));
        assert!(matches!(
            parse_response(&long_head, false, &limits()),
            Err(HttpError::HeadTooLarge { .. })
        ));
        let mut close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        close.extend(std::iter::repeat(b'a').take(65));
        assert!(matches!(
            parse_response(&close, false, &limits()),
            Err(HttpError::BodyTooLarge { .. })
        ));
    }

    #[test]
    fn malformed_responses() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 999 Nope\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX\r\n",
        ] {
            assert!(
                matches!(
                    parse_response(bad, true, &limits()),
                    Err(HttpError::Malformed { .. })
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512), eof: bool) {
            let _ = parse_response(&bytes, eof, &limits());
        }

        #[test]
        fn arbitrary_text_after_a_status_line_never_panics(text in "\\PC{0,300}", eof: bool) {
            let raw = format!("HTTP/1.1 200 OK\r\n{text}");
            let _ = parse_response(raw.as_bytes(), eof, &limits());
        }

        #[test]
        fn arbitrary_urls_never_panic(text in "\\PC{0,80}") {
            let _ = HttpUrl::parse(&text);
            let _ = HttpUrl::parse(&format!("http://{text}"));
        }
    }

    #[tokio::test]
    async fn get_from_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut req = vec![0u8; 1024];
            let n = conn.read(&mut req).await.unwrap();
            req.truncate(n);
            conn.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
            String::from_utf8(req).unwrap()
        });
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/dd.xml")).unwrap();
        let device = IpAddr::from([127, 0, 0, 1]);
        let r = get(&url, device, Some(device), &HttpLimits::default())
            .await
            .unwrap();
        assert_eq!(r.body, b"abc");
        assert!(server
            .await
            .unwrap()
            .starts_with("GET /dd.xml HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = HttpUrl::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        let limits = HttpLimits {
            total_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        };
        let device = IpAddr::from([127, 0, 0, 1]);
        // Accepted by the kernel's backlog, never answered.
        let result = get(&url, device, None, &limits).await;
        assert!(
            matches!(result, Err(HttpError::Timeout { .. })),
            "{result:?}"
        );
        drop(listener);
    }
}
