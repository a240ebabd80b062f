//! Where new session ids come from. The core takes its randomness from a [`SessionIds`]
//! source it is given, so that a replay with the same source gives the same Changes.

use rae_proto::SessionId;
use uuid::Uuid;

/// A source of fresh session ids.
pub trait SessionIds {
    fn next_id(&mut self) -> SessionId;
}

/// Production ids: random (v4) UUIDs from the operating system's generator.
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomSessionIds;

impl SessionIds for RandomSessionIds {
    fn next_id(&mut self) -> SessionId {
        SessionId::from(Uuid::new_v4())
    }
}

/// Reproducible ids for tests and replays: v4-shaped UUIDs from a SplitMix64 stream, so
/// their bits are as well spread as random ones (the core derives probe and snapshot phases
/// from them).
#[derive(Clone, Debug)]
pub struct SeededSessionIds {
    state: u64,
}

impl SeededSessionIds {
    pub fn new(seed: u64) -> Self {
        SeededSessionIds { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl SessionIds for SeededSessionIds {
    fn next_id(&mut self) -> SessionId {
        let high = self.next_u64().to_be_bytes();
        let low = self.next_u64().to_be_bytes();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&high);
        bytes[8..].copy_from_slice(&low);
        SessionId::from(uuid::Builder::from_random_bytes(bytes).into_uuid())
    }
}

impl<F: FnMut() -> SessionId> SessionIds for F {
    fn next_id(&mut self) -> SessionId {
        self()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_per_seed_and_look_like_v4() {
        let mut a = SeededSessionIds::new(7);
        let mut b = SeededSessionIds::new(7);
        let first = a.next_id();
        assert_eq!(first, b.next_id());
        assert_ne!(first, a.next_id());
        assert_eq!(first.as_uuid().get_version_num(), 4);
        assert_ne!(SeededSessionIds::new(8).next_id(), first);
    }

    #[test]
    fn random_ids_are_v4() {
        let id = RandomSessionIds.next_id();
        assert_eq!(id.as_uuid().get_version_num(), 4);
    }
}
