//! Which publish each PUBACK answers.
//!
//! rumqttc picks the packet id of a publish when its event loop writes it, and reports that as
//! `Outgoing::Publish(pkid)`; requests are written in the order they were queued. So a FIFO of
//! what was queued, matched against those events, maps every packet id back to its outbox row.
//! When the broker acks out of order, rumqttc may hold one publish whose packet id is still
//! taken (`Outgoing::AwaitAck`) and write it once that id is free; that one waits aside.
//!
//! Pure bookkeeping: the publisher feeds it events, no I/O.

use std::collections::{HashMap, VecDeque};

use rae_proto::AgentState;

/// What a queued publish carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    /// An outbox row, by id.
    Row(i64),
    Status(AgentState),
    Inventory,
    /// A command reply (`commands.rs`).
    Reply,
}

/// The event stream no longer matches what was queued: the mapping cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlightError {
    #[error("the MQTT client wrote packet {pkid} but nothing was queued")]
    NothingQueued { pkid: u16 },
    #[error("the MQTT client reused packet {pkid} while it was still unacknowledged")]
    PacketIdInUse { pkid: u16 },
}

/// Publishes queued to the client and not yet acknowledged.
#[derive(Debug, Default)]
pub struct Flight {
    queued: VecDeque<Item>,
    written: HashMap<u16, Item>,
    held: Option<(u16, Item)>,
    rows: usize,
}

impl Flight {
    /// A publish was handed to the client.
    pub fn queue(&mut self, item: Item) {
        if matches!(item, Item::Row(_)) {
            self.rows += 1;
        }
        self.queued.push_back(item);
    }

    /// `Outgoing::Publish(pkid)`: the oldest queued publish (or the held one) went out.
    pub fn written(&mut self, pkid: u16) -> Result<(), FlightError> {
        let item = match self.held.take() {
            Some((held, item)) if held == pkid => item,
            other => {
                self.held = other;
                self.queued
                    .pop_front()
                    .ok_or(FlightError::NothingQueued { pkid })?
            }
        };
        match self.written.insert(pkid, item) {
            Some(_) => Err(FlightError::PacketIdInUse { pkid }),
            None => Ok(()),
        }
    }

    /// `Outgoing::AwaitAck(pkid)`: the oldest queued publish waits for `pkid` to be acked.
    pub fn held_back(&mut self, pkid: u16) -> Result<(), FlightError> {
        let item = self
            .queued
            .pop_front()
            .ok_or(FlightError::NothingQueued { pkid })?;
        self.held = Some((pkid, item));
        Ok(())
    }

    /// A PUBACK for `pkid`; `None` for an id nothing was written under.
    pub fn acked(&mut self, pkid: u16) -> Option<Item> {
        let item = self.written.remove(&pkid)?;
        if matches!(item, Item::Row(_)) {
            self.rows -= 1;
        }
        Some(item)
    }

    /// The connection is gone: nothing queued will be acknowledged any more.
    pub fn clear(&mut self) {
        *self = Flight::default();
    }

    /// Outbox rows queued and not yet acknowledged.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty() && self.written.is_empty() && self.held.is_none()
    }

    /// Whether `item` is queued or waits for its PUBACK.
    pub fn contains(&self, item: Item) -> bool {
        self.queued.contains(&item)
            || self.written.values().any(|i| *i == item)
            || self.held.is_some_and(|(_, i)| i == item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_ids_map_back_in_queue_order() {
        let mut flight = Flight::default();
        flight.queue(Item::Status(AgentState::Online));
        flight.queue(Item::Row(7));
        flight.queue(Item::Row(8));
        assert_eq!(flight.rows(), 2);
        flight.written(1).unwrap();
        flight.written(2).unwrap();
        flight.written(3).unwrap();
        assert_eq!(flight.acked(2), Some(Item::Row(7)));
        assert_eq!(flight.acked(2), None, "an ack is used once");
        assert_eq!(flight.acked(1), Some(Item::Status(AgentState::Online)));
        assert_eq!(flight.rows(), 1);
        assert!(flight.contains(Item::Row(8)));
        assert_eq!(flight.acked(3), Some(Item::Row(8)));
        assert!(flight.is_empty());
    }

    #[test]
    fn a_held_publish_goes_out_under_its_own_id() {
        let mut flight = Flight::default();
        for id in 1..=3 {
            flight.queue(Item::Row(id));
        }
        flight.written(1).unwrap();
        flight.written(2).unwrap();
        // The broker acked 2 first; packet id 1 comes round again for row 3.
        assert_eq!(flight.acked(2), Some(Item::Row(2)));
        flight.held_back(1).unwrap();
        flight.queue(Item::Inventory);
        assert_eq!(flight.acked(1), Some(Item::Row(1)));
        flight.written(1).unwrap();
        flight.written(2).unwrap();
        assert_eq!(flight.acked(1), Some(Item::Row(3)));
        assert_eq!(flight.acked(2), Some(Item::Inventory));
        assert!(flight.is_empty());
    }

    #[test]
    fn events_that_match_nothing_are_errors() {
        let mut flight = Flight::default();
        assert_eq!(
            flight.written(4),
            Err(FlightError::NothingQueued { pkid: 4 })
        );
        flight.queue(Item::Row(1));
        flight.queue(Item::Row(2));
        flight.written(1).unwrap();
        assert_eq!(
            flight.written(1),
            Err(FlightError::PacketIdInUse { pkid: 1 })
        );
        flight.clear();
        assert!(flight.is_empty());
        assert_eq!(flight.rows(), 0);
    }
}
