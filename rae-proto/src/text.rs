//! Text as the device sent it.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Bytes that are usually text but come from a device that may not send UTF-8 (DHCP hostnames
/// and vendor classes often are Latin-1 or binary). The exact bytes are kept; display is lossy.
/// On the wire: a length-prefixed byte string.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Text(Vec<u8>);

impl Text {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// The exact bytes received.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// The text, when the bytes are valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// For display and logs: invalid sequences become U+FFFD.
    pub fn to_string_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self(text.as_bytes().to_vec())
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self(text.into_bytes())
    }
}

impl From<Vec<u8>> for Text {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl From<&[u8]> for Text {
    fn from(bytes: &[u8]) -> Self {
        Self(bytes.to_vec())
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_str() {
            Some(text) => write!(f, "Text({text:?})"),
            None => write!(f, "Text(b\"{}\")", self.0.escape_ascii()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_non_utf8_bytes_and_displays_lossily() {
        let latin1 = Text::new(b"caf\xe9-tv".to_vec());
        assert_eq!(latin1.as_bytes(), b"caf\xe9-tv");
        assert_eq!(latin1.as_str(), None);
        assert_eq!(latin1.to_string(), "caf\u{fffd}-tv");
        assert_eq!(format!("{latin1:?}"), "Text(b\"caf\\xe9-tv\")");

        let utf8 = Text::from("living-room");
        assert_eq!(utf8.as_str(), Some("living-room"));
        assert_eq!(format!("{utf8:?}"), "Text(\"living-room\")");
    }

    #[test]
    fn wire_form_is_length_prefixed_bytes() {
        let bytes = postcard::to_allocvec(&Text::new(vec![0xff, 0x00])).unwrap();
        assert_eq!(bytes, [2, 0xff, 0x00]);
    }
}
