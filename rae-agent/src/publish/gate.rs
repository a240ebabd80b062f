//! At most one unacknowledged row per session: the order a session's events reach the broker
//! cannot be changed by a refusal or a lost connection.
//!
//! Why one: with several rows of a session in flight, a refused row k (PUBACK 0x87) is
//! followed by acks of k+1, k+2 that the broker already delivered, and the retry of k lands
//! after them. With one, the rows behind k are not sent until k is acknowledged, so whatever
//! happens to k (refused, lost with the link), it is re-sent before them. Other sessions keep
//! the pipeline full meanwhile.
//!
//! Rows of a session that is busy wait here, in outbox order, so that the cursor over the
//! outbox can move on to other sessions' rows; the rows waiting are bounded ([`SessionGate::room`]),
//! and the publisher stops peeking while the gate is full. When a session's row is
//! acknowledged, its next waiting row becomes ready and is sent before anything new is peeked.
//!
//! Pure bookkeeping, no I/O: the publisher tells it what it peeked and what was acked.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// Sessions with a row in flight, and the rows that wait for them.
#[derive(Debug)]
pub struct SessionGate<K, R> {
    /// Sessions with a row in flight, or with a row released to `ready` on their behalf.
    busy: HashSet<K>,
    waiting: HashMap<K, VecDeque<R>>,
    /// Rows whose session's previous row was acknowledged: to be sent next.
    ready: VecDeque<R>,
    /// Rows in `waiting` and `ready`.
    held: usize,
    cap: usize,
}

impl<K: Hash + Eq + Copy, R> SessionGate<K, R> {
    /// A gate that holds at most `cap` rows back (at least one).
    pub fn new(cap: usize) -> Self {
        SessionGate {
            busy: HashSet::new(),
            waiting: HashMap::new(),
            ready: VecDeque::new(),
            held: 0,
            cap: cap.max(1),
        }
    }

    /// A row peeked from the outbox, in outbox order. Returns it when it may be sent now (its
    /// session has nothing in flight; the session is busy from then on), `None` when it waits.
    /// Only call while [`SessionGate::room`] is above zero, so that the bound holds.
    pub fn admit(&mut self, session: K, row: R) -> Option<R> {
        if self.busy.insert(session) {
            return Some(row);
        }
        self.waiting.entry(session).or_default().push_back(row);
        self.held += 1;
        None
    }

    /// The session's row in flight was acknowledged: its next waiting row becomes ready (the
    /// session stays busy on its behalf), or the session is free.
    pub fn settled(&mut self, session: K) {
        let next = match self.waiting.get_mut(&session) {
            Some(queue) => {
                let next = queue.pop_front();
                if queue.is_empty() {
                    self.waiting.remove(&session);
                }
                next
            }
            None => None,
        };
        match next {
            Some(row) => self.ready.push_back(row),
            None => {
                self.busy.remove(&session);
            }
        }
    }

    /// The next row released by [`SessionGate::settled`]; send it (its session is busy for it).
    pub fn next_ready(&mut self) -> Option<R> {
        let row = self.ready.pop_front()?;
        self.held -= 1;
        Some(row)
    }

    /// How many more rows may be admitted without exceeding the bound, whatever they wait for.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.held)
    }

    /// Rows waiting for their session or ready to go.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held
    }

    /// Nothing in flight any more (reconnect, rewind): the rows held back will be peeked again.
    pub fn clear(&mut self) {
        self.busy.clear();
        self.waiting.clear();
        self.ready.clear();
        self.held = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows as (session, seq).
    type Gate = SessionGate<char, (char, u32)>;

    fn admit(gate: &mut Gate, row: (char, u32)) -> Option<(char, u32)> {
        gate.admit(row.0, row)
    }

    #[test]
    fn one_row_per_session_in_flight_others_pass() {
        let mut gate = Gate::new(8);
        assert_eq!(admit(&mut gate, ('a', 1)), Some(('a', 1)));
        assert_eq!(admit(&mut gate, ('a', 2)), None, "a has 1 in flight");
        assert_eq!(
            admit(&mut gate, ('b', 1)),
            Some(('b', 1)),
            "b is not held up"
        );
        assert_eq!(admit(&mut gate, ('a', 3)), None);
        assert_eq!(gate.held(), 2);
        assert_eq!(gate.next_ready(), None, "nothing acked yet");

        gate.settled('b');
        assert_eq!(gate.next_ready(), None, "b had nothing waiting");
        assert_eq!(
            admit(&mut gate, ('b', 2)),
            Some(('b', 2)),
            "b is free again"
        );

        gate.settled('a');
        assert_eq!(gate.next_ready(), Some(('a', 2)), "a's next row, in order");
        assert_eq!(gate.next_ready(), None, "only one per ack");
        assert_eq!(admit(&mut gate, ('a', 4)), None, "a is busy with 2");
        gate.settled('a');
        assert_eq!(gate.next_ready(), Some(('a', 3)));
        gate.settled('a');
        assert_eq!(gate.next_ready(), Some(('a', 4)));
        gate.settled('a');
        assert_eq!(gate.next_ready(), None);
        assert_eq!(gate.held(), 0);
        assert_eq!(admit(&mut gate, ('a', 5)), Some(('a', 5)));
    }

    #[test]
    fn a_refused_row_is_never_overtaken_by_its_session() {
        // The publisher does not settle a refused row: the session stays busy, its later
        // rows stay held until the rewind clears the gate and peeks them again, in order.
        let mut gate = Gate::new(8);
        assert!(admit(&mut gate, ('a', 1)).is_some());
        for seq in 2..=4 {
            assert!(admit(&mut gate, ('a', seq)).is_none());
        }
        assert!(admit(&mut gate, ('b', 1)).is_some());
        gate.settled('b');
        assert_eq!(
            gate.next_ready(),
            None,
            "a's rows stay behind the refused one"
        );
        gate.clear();
        assert_eq!(gate.held(), 0);
        assert_eq!(
            admit(&mut gate, ('a', 1)),
            Some(('a', 1)),
            "the retry goes first"
        );
        assert_eq!(admit(&mut gate, ('a', 2)), None);
    }

    #[test]
    fn the_rows_held_back_are_bounded() {
        let mut gate = Gate::new(3);
        assert!(admit(&mut gate, ('a', 1)).is_some());
        let mut seq = 2;
        while gate.room() > 0 {
            assert!(admit(&mut gate, ('a', seq)).is_none());
            seq += 1;
        }
        assert_eq!(gate.held(), 3, "the cap");
        gate.settled('a');
        assert_eq!(gate.room(), 0, "a ready row still counts until it is taken");
        assert_eq!(gate.next_ready(), Some(('a', 2)));
        assert_eq!(gate.room(), 1);
        assert_eq!(Gate::new(0).room(), 1, "a gate holds at least one row");
    }
}
