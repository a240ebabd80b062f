//! What the publisher knows about the packets it sends: their size as the broker counts it,
//! the reason codes of the answers, the topic kinds it logs by, and which rows went out
//! before. Pure, no I/O.

use std::collections::HashSet;
use std::sync::Mutex;

use rumqttc::v5::mqttbytes::v5::PubAckReason;

use super::flight::Item;

/// Outbox rows published and not yet acknowledged, across connections and restarts of the
/// publisher, so that a row published again counts as `resent` (rows no longer leave in id
/// order, so a high-water mark cannot tell).
#[derive(Debug, Default)]
pub(super) struct SentRows(Mutex<HashSet<i64>>);

impl SentRows {
    /// Bounds the set should acks go missing (a row deleted by other means): it only feeds a
    /// counter, so forgetting it costs at most some uncounted re-sends.
    const MAX: usize = 1 << 16;

    /// Records that row `id` was published; true when it had been before.
    pub(super) fn published(&self, id: i64) -> bool {
        let mut rows = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if rows.len() >= Self::MAX {
            rows.clear();
        }
        !rows.insert(id)
    }

    /// Row `id` was acknowledged, or left the outbox otherwise.
    pub(super) fn done(&self, id: i64) {
        let mut rows = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        rows.remove(&id);
    }
}

/// Topic kinds, for logging refusals once per kind and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Devices = 0,
    Status = 1,
    Inventory = 2,
    Reply = 3,
}

impl Kind {
    pub(super) fn of(item: Item) -> Kind {
        match item {
            Item::Row(_) => Kind::Devices,
            Item::Status(_) => Kind::Status,
            Item::Inventory => Kind::Inventory,
            Item::Reply => Kind::Reply,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Devices => "devices",
            Kind::Status => "status",
            Kind::Inventory => "inventory",
            Kind::Reply => "reply",
        }
    }
}

/// The size of the whole MQTT v5 PUBLISH packet (QoS 1, no properties) that rumqttc writes
/// for `topic_len` and `payload_len` bytes, as the broker's Maximum Packet Size counts it.
pub(super) fn publish_packet_size(topic_len: usize, payload_len: usize) -> usize {
    // Topic length prefix and topic, packet id, property length (0), payload.
    let remaining = 2 + topic_len + 2 + 1 + payload_len;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// The MQTT v5 reason code, as operators and broker logs write it.
pub(super) fn reason_code(reason: PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::Publish;
    use rumqttc::v5::mqttbytes::QoS;

    #[test]
    fn the_packet_size_is_what_rumqttc_writes() {
        for (topic, payload) in [
            (0, 0),
            (10, 100),
            (60, 65),
            (60, 200),
            (40, 16_300),
            (9, 3_000_000),
        ] {
            let mut publish = Publish::new(
                "t".repeat(topic),
                QoS::AtLeastOnce,
                vec![7u8; payload],
                None,
            );
            publish.pkid = 1;
            assert_eq!(
                publish_packet_size(topic, payload),
                publish.size(),
                "topic {topic} payload {payload}"
            );
        }
    }
}
