//! The loop that polls rumqttc's event loop, the only code that touches the connection.
//!
//! It runs beside the publisher in the same task and is never cancelled mid-poll: a cancelled
//! `EventLoop::poll` can leave a publish recorded as sent that never reached the socket. Events
//! go to the publisher over a bounded channel. After a connection error the driver waits for
//! the publisher's go-ahead (which carries the backoff delay), then drops every request still
//! queued in the client: the publisher re-sends unacknowledged rows from the outbox itself, so
//! rumqttc must not replay stale ones that the publisher's bookkeeping no longer knows.
//!
//! The session state goes with them, whole: rumqttc's own `MqttState::clean` keeps the publish
//! parked on a packet id collision and the last packet id (bytebeamio/rumqtt #1014, #1056). A
//! parked publish is never re-sent on a clean start, yet it blocks every new request, so the
//! client would reconnect on `CollisionTimeout` forever; a `last_pkid` at or above a smaller
//! Receive Maximum of the next broker breaks it the same way.
//!
//! The one exception to "never cancelled": the publisher's watchdog ([`Stall`]) found the
//! broker silent for too long. A write into a full send buffer blocks inside `poll` (and with
//! it rumqttc's own keep-alive timer), so the poll is dropped, and the connection and session
//! with it; that is safe because the whole session is forgotten, as after any lost connection.

use std::io;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::{ConnectionError, Event, EventLoop, MqttState};
use tokio::sync::{mpsc, oneshot};

/// What the driver reports.
#[derive(Debug)]
pub enum DriverEvent {
    Mqtt(Box<Event>),
    /// The connection failed or could not be made. Send the delay before the next attempt on
    /// `resume`; dropping it stops the driver.
    Lost {
        error: ConnectionError,
        resume: oneshot::Sender<Duration>,
    },
}

/// The publisher's word that the broker has been silent too long: the driver drops the
/// connection (see the module documentation). Holds at most one request.
pub type Stall = mpsc::Receiver<Duration>;

/// Polls until the publisher goes away. `will` makes a fresh Last Will before each reconnect
/// (its timestamp is that of the connect that registers it).
pub async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::Sender<DriverEvent>,
    mut stall: Stall,
    will: impl Fn() -> Option<LastWill>,
) {
    loop {
        let polled = tokio::select! {
            biased;
            silent = stall.recv() => match silent {
                Some(silent) => Err(ConnectionError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the broker sent nothing for {silent:?} (half-open connection?)"),
                ))),
                // The publisher is gone.
                None => return,
            },
            polled = eventloop.poll() => polled,
        };
        match polled {
            Ok(event) => {
                if events
                    .send(DriverEvent::Mqtt(Box::new(event)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(error) => {
                let (resume, delay) = oneshot::channel();
                if events
                    .send(DriverEvent::Lost { error, resume })
                    .await
                    .is_err()
                {
                    return;
                }
                let Ok(delay) = delay.await else {
                    return;
                };
                forget_session(&mut eventloop);
                // A request about the connection just dropped is stale.
                while stall.try_recv().is_ok() {}
                if let Some(will) = will() {
                    eventloop.options.set_last_will(will);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// After a lost connection: drops the network (also after a refused CONNACK, which `poll`
/// leaves set), every request queued or in flight and the whole session state, so the next
/// connection starts as a fresh client would. The outbox, not rumqttc, holds what must be sent
/// again.
fn forget_session(eventloop: &mut EventLoop) {
    eventloop.clean();
    eventloop.pending.clear();
    let limit = eventloop
        .options
        .get_outgoing_inflight_upper_limit()
        .unwrap_or(u16::MAX);
    eventloop.state = MqttState::new(limit, eventloop.options.manual_acks());
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, Publish};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{MqttOptions, Request};
    use rumqttc::Outgoing;

    fn publish() -> Request {
        Request::Publish(Publish::new("rae/t", QoS::AtLeastOnce, vec![1u8], None))
    }

    /// Packet id of what the state writes for `request`, or `None` when it parks it.
    fn write(state: &mut MqttState, request: Request) -> Option<u16> {
        match state.handle_outgoing_packet(request).unwrap() {
            Some(Packet::Publish(p)) => Some(p.pkid),
            Some(other) => panic!("unexpected packet {other:?}"),
            None => None,
        }
    }

    #[test]
    fn a_lost_session_leaves_no_parked_publish_and_starts_packet_ids_over() {
        let mut options = MqttOptions::new("rae-test", "localhost", 1883);
        options.set_outgoing_inflight_upper_limit(3);
        let mut eventloop = EventLoop::new(options, 8);
        let state = &mut eventloop.state;
        // Ids 1 and 2 out; the broker acks 2 first, so 1 comes round again while unacked.
        assert_eq!(write(state, publish()), Some(1));
        assert_eq!(write(state, publish()), Some(2));
        state
            .handle_incoming_packet(Packet::PubAck(PubAck::new(2, None)))
            .unwrap();
        assert_eq!(write(state, publish()), Some(3));
        assert_eq!(write(state, publish()), None, "parked on packet id 1");
        assert!(state.collision.is_some());
        assert!(state
            .events
            .iter()
            .any(|e| *e == Event::Outgoing(Outgoing::AwaitAck(1))));

        // What rumqttc's clean() alone leaves: the parked publish, which gates every request.
        let mut cleaned = eventloop.state.clone();
        cleaned.clean();
        assert!(cleaned.collision.is_some(), "upstream clean() keeps it");

        forget_session(&mut eventloop);
        let state = &mut eventloop.state;
        assert!(state.collision.is_none());
        assert_eq!(state.inflight(), 0);
        assert!(state.events.is_empty(), "no event of the old session left");
        assert!(eventloop.pending.is_empty(), "nothing replayed by rumqttc");
        let state = &mut eventloop.state;
        assert_eq!(write(state, publish()), Some(1), "packet ids start over");
        assert_eq!(write(state, publish()), Some(2));
    }
}
