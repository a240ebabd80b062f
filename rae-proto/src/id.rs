//! Identities that appear in topics and payloads: the RAE [`Serial`], a device [`SessionId`] and
//! the [`RequesterId`] that names a command's reply topic.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// The longest serial or requester id, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Why a serial or requester id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is {len} bytes long, at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    #[error("contains {ch:?} at byte {index}; only A-Z, a-z, 0-9, `_` and `-` are allowed")]
    InvalidChar { ch: char, index: usize },
}

/// The rule shared by serials and requester ids: `[A-Za-z0-9_-]{1,64}`. It keeps MQTT wildcards
/// (`+`, `#`) and level separators (`/`) out of topic levels.
fn validate_name(text: &str) -> Result<(), NameError> {
    if text.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some((index, ch)) = text
        .char_indices()
        .find(|&(_, ch)| !(ch.is_ascii_alphanumeric() || ch == '_' || ch == '-'))
    {
        return Err(NameError::InvalidChar { ch, index });
    }
    if text.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            len: text.len(),
            max: MAX_NAME_LEN,
        });
    }
    Ok(())
}

macro_rules! validated_name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `text` against `[A-Za-z0-9_-]{1,64}`.
            pub fn new(text: impl Into<String>) -> Result<Self, NameError> {
                let text = text.into();
                validate_name(&text)?;
                Ok(Self(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(text: &str) -> Result<Self, NameError> {
                Self::new(text)
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(text: String) -> Result<Self, NameError> {
                Self::new(text)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = NameError;
            fn try_from(text: &str) -> Result<Self, NameError> {
                Self::new(text)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                Self::new(text).map_err(serde::de::Error::custom)
            }
        }
    };
}

validated_name!(
    /// An RAE's serial number, `[A-Za-z0-9_-]{1,64}`. It is the first topic level after `rae/v1/`
    /// and the CN of the RAE's client certificate, which the broker's ACLs match against.
    Serial
);

validated_name!(
    /// Names a command's requester, the last level of its reply topic
    /// `rae/v1/{serial}/reply/{requester}`. Same rule as [`Serial`]: `[A-Za-z0-9_-]{1,64}`.
    RequesterId
);

/// Why a text is not a session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("session id must be a lowercase hyphenated UUID (8-4-4-4-12 hex digits, e.g. 67e55044-10b1-426f-9247-bb680e5fe0c8)")]
pub struct SessionIdError;

/// One device session: the lifetime of one device (MAC) on one RAE, from its first sighting to
/// its `Closed` event. Its text form is only ever the lowercase hyphenated UUID, so that a
/// session has exactly one topic; on the wire in a payload it is the UUID's 16 bytes.
///
/// The agent makes new ids from random UUIDs (`SessionId::from(Uuid::new_v4())`); this crate
/// takes randomness from its caller rather than reading it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(Uuid);

impl SessionId {
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }

    /// Parses the canonical text form only. Uppercase, braced, URN and simple (no hyphens)
    /// forms are rejected: each would name a different topic for the same session.
    pub fn parse(text: &str) -> Result<Self, SessionIdError> {
        let bytes = text.as_bytes();
        if bytes.len() != 36 {
            return Err(SessionIdError);
        }
        let canonical = bytes.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
        if !canonical {
            return Err(SessionIdError);
        }
        Uuid::parse_str(text).map(Self).map_err(|_| SessionIdError)
    }
}

impl From<Uuid> for SessionId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl From<SessionId> for Uuid {
    fn from(session: SessionId) -> Self {
        session.0
    }
}

impl FromStr for SessionId {
    type Err = SessionIdError;
    fn from_str(text: &str) -> Result<Self, SessionIdError> {
        Self::parse(text)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Uuid's Display is the lowercase hyphenated form, the only one `parse` accepts.
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_accepts_the_documented_charset() {
        for ok in ["A", "rae-0001", "RAE_lab_7", &"x".repeat(64)] {
            assert_eq!(Serial::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn serial_rejects_with_a_typed_reason() {
        assert_eq!(Serial::new(""), Err(NameError::Empty));
        assert_eq!(
            Serial::new("x".repeat(65)),
            Err(NameError::TooLong { len: 65, max: 64 })
        );
        assert_eq!(
            Serial::new("rae/1"),
            Err(NameError::InvalidChar { ch: '/', index: 3 })
        );
        assert_eq!(
            Serial::new("+"),
            Err(NameError::InvalidChar { ch: '+', index: 0 })
        );
        assert_eq!(
            Serial::new("raé"),
            Err(NameError::InvalidChar { ch: 'é', index: 2 })
        );
        assert!(RequesterId::new("a b").is_err());
    }

    #[test]
    fn session_text_form_is_strict() {
        let text = "67e55044-10b1-426f-9247-bb680e5fe0c8";
        let session = SessionId::parse(text).unwrap();
        assert_eq!(session.to_string(), text);
        for bad in [
            "67E55044-10B1-426F-9247-BB680E5FE0C8",
            "{67e55044-10b1-426f-9247-bb680e5fe0c8}",
            "67e5504410b1426f9247bb680e5fe0c8",
            "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "67e55044-10b1-426f-9247-bb680e5fe0c",
            "67e55044-10b1-426f-9247_bb680e5fe0c8",
            "g7e55044-10b1-426f-9247-bb680e5fe0c8",
            "",
        ] {
            assert_eq!(SessionId::parse(bad), Err(SessionIdError), "{bad}");
        }
    }

    #[test]
    fn serial_decoding_validates() {
        let bytes = postcard::to_allocvec("bad serial").unwrap();
        assert!(postcard::from_bytes::<Serial>(&bytes).is_err());
        let bytes = postcard::to_allocvec("rae-1").unwrap();
        assert_eq!(
            postcard::from_bytes::<Serial>(&bytes).unwrap(),
            Serial::new("rae-1").unwrap()
        );
    }
}
