//! Frames on the control socket: a u32 big-endian length, then that many bytes of a rae-proto
//! encoding (a [`CommandRequest`](rae_proto::CommandRequest) from `raectl`, a
//! [`CommandReply`](rae_proto::CommandReply) back). A connection carries one request or
//! several in sequence, each answered before the next is read.
//!
//! The length is checked against the reader's limit before any body byte is read, so a peer
//! cannot make either side allocate more than that limit.

use std::io::{self, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// The largest request the agent reads. Requests are a device reference and at most an ESN of
/// 128 bytes; this leaves room for later commands and refuses anything that is clearly not one.
pub const MAX_REQUEST_FRAME: usize = 4096;
/// The largest reply `raectl` reads: the largest payload rae-proto encodes (a resync of every
/// open session at the session cap is well below it).
pub const MAX_REPLY_FRAME: usize = rae_proto::MAX_PAYLOAD_BYTES;

/// Why a frame was not read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the reader accepts.
    #[error("frame of {len} bytes announced, at most {max} are accepted")]
    Oversize { len: usize, max: usize },
    /// A zero length: no encoding is empty (the version byte comes first).
    #[error("empty frame")]
    Empty,
    /// The peer closed the connection inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    #[error("reading a frame")]
    Io(#[source] io::Error),
}

/// The length prefix and `payload`, ready to write in one call.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    // Payloads are bounded far below u32::MAX by rae-proto (MAX_PAYLOAD_BYTES).
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// The body length a header announces, checked against `max`.
pub fn body_len(header: [u8; HEADER_LEN], max: usize) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    match len {
        0 => Err(FrameError::Empty),
        len if len > max => Err(FrameError::Oversize { len, max }),
        len => Ok(len),
    }
}

/// Reads one frame's body; `Ok(None)` when the peer closed the connection between frames
/// (the clean end of a connection).
pub async fn read_async<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match reader.read(&mut header[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(FrameError::Io(err)),
        }
    }
    let len = body_len(header, max)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await.map_err(truncated)?;
    Ok(Some(body))
}

/// Blocking twin of [`read_async`] for `raectl`. Returns `Err(Truncated)` when the peer closed
/// before a whole frame, including before its first byte (a client always expects a reply).
pub fn read_blocking<R: Read>(reader: &mut R, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    reader.read_exact(&mut header).map_err(truncated)?;
    let len = body_len(header, max)?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).map_err(truncated)?;
    Ok(body)
}

/// Writes one frame (blocking, for `raectl`).
pub fn write_blocking<W: Write>(writer: &mut W, payload: &[u8]) -> io::Result<()> {
    writer.write_all(&encode(payload))?;
    writer.flush()
}

fn truncated(err: io::Error) -> FrameError {
    match err.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_the_big_endian_length_then_the_payload() {
        assert_eq!(encode(b"abc"), [0, 0, 0, 3, b'a', b'b', b'c']);
        let body = vec![7u8; 300];
        let frame = encode(&body);
        assert_eq!(&frame[..4], &[0, 0, 1, 44]);
        assert_eq!(read_blocking(&mut &frame[..], 300).unwrap(), body);
    }

    #[test]
    fn lengths_are_checked_before_the_body_is_read() {
        assert_eq!(body_len([0, 0, 16, 0], MAX_REQUEST_FRAME).unwrap(), 4096);
        assert!(matches!(
            body_len([0, 0, 16, 1], MAX_REQUEST_FRAME),
            Err(FrameError::Oversize {
                len: 4097,
                max: 4096
            })
        ));
        assert!(matches!(
            body_len([0xff; 4], MAX_REQUEST_FRAME),
            Err(FrameError::Oversize { .. })
        ));
        assert!(matches!(body_len([0; 4], 10), Err(FrameError::Empty)));
        // Announced huge, nothing follows: refused from the header alone.
        let frame = [0xffu8, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_blocking(&mut &frame[..], MAX_REPLY_FRAME),
            Err(FrameError::Oversize { .. })
        ));
    }

    #[test]
    fn a_short_read_is_truncated() {
        assert!(matches!(
            read_blocking(&mut &[0u8, 0][..], 10),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_blocking(&mut &[0u8, 0, 0, 5, 1, 2][..], 10),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_blocking(&mut &[][..], 10),
            Err(FrameError::Truncated)
        ));
    }

    #[tokio::test]
    async fn the_async_reader_tells_a_clean_end_from_a_cut_frame() {
        let mut two = encode(b"one");
        two.extend(encode(b"two"));
        let mut reader = &two[..];
        assert_eq!(
            read_async(&mut reader, 10).await.unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            read_async(&mut reader, 10).await.unwrap().as_deref(),
            Some(&b"two"[..])
        );
        assert!(read_async(&mut reader, 10).await.unwrap().is_none());
        assert!(matches!(
            read_async(&mut &[0u8, 0, 0][..], 10).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_async(&mut &[0u8, 0, 0, 4, 1][..], 10).await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read_async(&mut &[0u8, 0, 0, 11][..], 10).await,
            Err(FrameError::Oversize { len: 11, max: 10 })
        ));
    }
}
