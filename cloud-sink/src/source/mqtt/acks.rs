//! The order MQTT acknowledgements go out in; sans-IO.
//!
//! MQTT requires a client to send its PUBACKs in the order the PUBLISHes arrived, but lanes
//! finish their batches in any order. `AckQueue` holds every received message in arrival
//! order and releases acknowledgements only from the front, once a message and everything
//! before it is done. A message received on an earlier connection is never acknowledged on a
//! later one (the broker redelivers it there under the same packet id, which the new copy
//! acknowledges): its entry is released silently.
//!
//! [`AckOutbox`] holds released acknowledgements the client could not take yet, in order,
//! until it can: an acknowledgement is never given up while its connection lives.

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

    /// Whether `token` belongs to the current connection (it may still be sent).
    pub fn is_current(&self, token: &AckToken) -> bool {
        token.epoch == self.epoch
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

/// Acknowledgements released (in order) and not yet taken by the MQTT client.
///
/// The client's request channel can be full for a moment when the broker sent more than our
/// receive maximum; whatever it refuses waits here, in order, and is offered again (by
/// [`AckOutbox::send`]) until it is taken or its connection is gone.
#[derive(Debug, Default)]
pub(crate) struct AckOutbox {
    waiting: VecDeque<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    token: AckToken,
    /// Refused at least once (counted once as deferred).
    refused: bool,
}

/// What one [`AckOutbox::send`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Acknowledgements the client took.
    pub taken: usize,
    /// Acknowledgements refused for the first time (they wait for the next attempt).
    pub newly_deferred: usize,
}

impl AckOutbox {
    /// Queues released acknowledgements behind those waiting (arrival order is kept).
    pub fn extend(&mut self, acks: impl IntoIterator<Item = AckToken>) {
        self.waiting.extend(acks.into_iter().map(|token| Waiting {
            token,
            refused: false,
        }));
    }

    /// Offers the waiting acknowledgements to `offer` front first, until it refuses one
    /// (`false`): that one and those behind it wait for the next call.
    pub fn send(&mut self, mut offer: impl FnMut(AckToken) -> bool) -> Sent {
        let mut sent = Sent::default();
        while let Some(front) = self.waiting.front() {
            if !offer(front.token) {
                for w in self.waiting.iter_mut().rev() {
                    if w.refused {
                        break;
                    }
                    w.refused = true;
                    sent.newly_deferred += 1;
                }
                break;
            }
            self.waiting.pop_front();
            sent.taken += 1;
        }
        sent
    }

    /// Drops the acknowledgements `queue` no longer sends (their connection is gone and the
    /// broker redelivers those messages); returns how many.
    pub fn drop_stale(&mut self, queue: &AckQueue) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(|w| queue.is_current(&w.token));
        before - self.waiting.len()
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
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

    #[test]
    fn refused_acks_wait_in_order_and_go_once_the_client_takes_them() {
        let mut q = AckQueue::default();
        let ids: Vec<u64> = (1..=5).map(|p| q.push(QoS::AtLeastOnce, p)).collect();
        for id in &ids {
            q.complete(*id);
        }
        let mut outbox = AckOutbox::default();
        outbox.extend(q.release().acks);
        let mut room = 2;
        let mut wire = Vec::new();
        let mut offer = |t: AckToken, room: &mut usize| {
            if *room == 0 {
                return false;
            }
            *room -= 1;
            wire.push(t.pkid);
            true
        };
        let sent = outbox.send(|t| offer(t, &mut room));
        assert_eq!(
            sent,
            Sent {
                taken: 2,
                newly_deferred: 3
            }
        );
        // Refused again: not counted twice.
        let sent = outbox.send(|t| offer(t, &mut room));
        assert_eq!(
            sent,
            Sent {
                taken: 0,
                newly_deferred: 0
            }
        );
        room = 10;
        let sent = outbox.send(|t| offer(t, &mut room));
        assert_eq!(
            sent,
            Sent {
                taken: 3,
                newly_deferred: 0
            }
        );
        assert!(outbox.is_empty());
        assert_eq!(wire, vec![1, 2, 3, 4, 5], "arrival order kept");
    }

    #[test]
    fn acks_waiting_when_the_connection_is_lost_are_dropped_not_sent_on_the_next() {
        let mut q = AckQueue::default();
        let a = q.push(QoS::AtLeastOnce, 1);
        q.complete(a);
        let mut outbox = AckOutbox::default();
        outbox.extend(q.release().acks);
        assert_eq!(outbox.send(|_| false).newly_deferred, 1);
        q.new_epoch();
        let b = q.push(QoS::AtLeastOnce, 1);
        q.complete(b);
        outbox.extend(q.release().acks);
        assert_eq!(outbox.drop_stale(&q), 1);
        assert_eq!(outbox.len(), 1, "the new connection's ack stays");
    }
}
