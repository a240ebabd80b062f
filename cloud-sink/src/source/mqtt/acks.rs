//! The order MQTT acknowledgements go out in; sans-IO.
//!
//! MQTT requires a client to send its PUBACKs in the order the PUBLISHes arrived, but lanes
//! finish their batches in any order. `AckQueue` holds every received message in arrival
//! order and releases acknowledgements only from the front, once a message and everything
//! before it is done. A message received on an earlier connection is never acknowledged on a
//! later one (the broker redelivers it there under the same packet id, which the new copy
//! acknowledges): its entry is released silently.

use std::collections::VecDeque;

use rumqttc::v5::mqttbytes::QoS;

/// The acknowledgement one message needs, on the connection it arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckToken {
    pub qos: QoS,
    pub pkid: u16,
    epoch: u64,
}

#[derive(Debug)]
struct Entry {
    /// `None` for QoS 0: nothing to acknowledge, but it still keeps its place.
    token: Option<AckToken>,
    done: bool,
}

/// What [`AckQueue::release`] let go, in arrival order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Released {
    /// Acknowledgements to send now, in this order.
    pub acks: Vec<AckToken>,
    /// Messages of an earlier connection: the broker redelivers them instead.
    pub stale: usize,
    /// Entries released in all (acks, stale ones and QoS 0 messages).
    pub entries: usize,
}

#[derive(Debug, Default)]
pub(crate) struct AckQueue {
    entries: VecDeque<Entry>,
    /// The id of `entries[0]`; ids grow by one per received message.
    first_id: u64,
    epoch: u64,
    /// Entries of the current connection that need an acknowledgement.
    unacked_now: usize,
}

impl AckQueue {
    /// A new connection: what arrived before it is no longer acknowledged.
    pub fn new_epoch(&mut self) {
        self.epoch += 1;
        self.unacked_now = 0;
    }

    /// A message arrived; returns its id for [`AckQueue::complete`].
    pub fn push(&mut self, qos: QoS, pkid: u16) -> u64 {
        let token = match qos {
            QoS::AtMostOnce => None,
            _ => Some(AckToken {
                qos,
                pkid,
                epoch: self.epoch,
            }),
        };
        if token.is_some() {
            self.unacked_now += 1;
        }
        self.entries.push_back(Entry { token, done: false });
        self.first_id + self.entries.len() as u64 - 1
    }

    /// The message `id` is handled (its batch committed, or Kafka acknowledged it). Ids
    /// already released (stale ones) are ignored.
    pub fn complete(&mut self, id: u64) {
        let Some(index) = id.checked_sub(self.first_id) else {
            return;
        };
        if let Some(entry) = usize::try_from(index)
            .ok()
            .and_then(|i| self.entries.get_mut(i))
        {
            entry.done = true;
        }
    }

    /// Takes the front of the queue that may go: done entries, and entries of an earlier
    /// connection whether done or not (their lane still writes them; the redelivered copy
    /// gets the acknowledgement).
    pub fn release(&mut self) -> Released {
        let mut out = Released::default();
        while let Some(front) = self.entries.front() {
            let stale = front.token.is_some_and(|t| t.epoch != self.epoch);
            if !front.done && !stale {
                break;
            }
            if let Some(token) = front.token {
                if stale {
                    out.stale += 1;
                } else {
                    out.acks.push(token);
                    self.unacked_now -= 1;
                }
            }
            out.entries += 1;
            self.entries.pop_front();
            self.first_id += 1;
        }
        out
    }

    /// Messages received and not released yet.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Messages of the current connection not yet acknowledged: what the broker counts
    /// against our receive maximum.
    pub fn unacked_now(&self) -> usize {
        self.unacked_now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkids(r: &Released) -> Vec<u16> {
        r.acks.iter().map(|t| t.pkid).collect()
    }

    #[test]
    fn acks_go_out_in_arrival_order_whatever_order_lanes_finish_in() {
        let mut q = AckQueue::default();
        let a = q.push(QoS::AtLeastOnce, 1);
        let b = q.push(QoS::AtLeastOnce, 2);
        let c = q.push(QoS::AtLeastOnce, 3);
        q.complete(c);
        assert!(q.release().acks.is_empty(), "3 must wait for 1 and 2");
        q.complete(a);
        assert_eq!(pkids(&q.release()), vec![1]);
        q.complete(b);
        assert_eq!(q.unacked_now(), 2);
        assert_eq!(pkids(&q.release()), vec![2, 3]);
        assert_eq!(q.len(), 0);
        assert_eq!(q.unacked_now(), 0);
        // Completing an already released id is harmless.
        q.complete(a);
        assert_eq!(q.release(), Released::default());
    }

    #[test]
    fn qos0_messages_keep_their_place_but_need_no_ack() {
        let mut q = AckQueue::default();
        let a = q.push(QoS::AtMostOnce, 0);
        let b = q.push(QoS::AtLeastOnce, 7);
        q.complete(b);
        assert!(q.release().acks.is_empty());
        q.complete(a);
        let r = q.release();
        assert_eq!(pkids(&r), vec![7]);
        assert_eq!(r.entries, 2);
    }

    #[test]
    fn messages_of_an_earlier_connection_are_never_acked_on_a_later_one() {
        let mut q = AckQueue::default();
        let old_done = q.push(QoS::AtLeastOnce, 1);
        let old_open = q.push(QoS::AtLeastOnce, 2);
        q.complete(old_done);
        q.new_epoch();
        assert_eq!(q.unacked_now(), 0);
        let new = q.push(QoS::AtLeastOnce, 2);
        assert_eq!(q.unacked_now(), 1);
        let r = q.release();
        assert!(r.acks.is_empty());
        assert_eq!(r.stale, 2, "both old entries go without an ack");
        // The old lane finishing later changes nothing.
        q.complete(old_open);
        q.complete(new);
        let r = q.release();
        assert_eq!(pkids(&r), vec![2]);
        assert_eq!(r.stale, 0);
    }
}
