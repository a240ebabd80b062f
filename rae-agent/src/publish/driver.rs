//! The loop that polls rumqttc's event loop, the only code that touches the connection.
//!
//! It runs beside the publisher in the same task and is never cancelled mid-poll: a cancelled
//! `EventLoop::poll` can leave a publish recorded as sent that never reached the socket. Events
//! go to the publisher over a bounded channel. After a connection error the driver waits for
//! the publisher's go-ahead (which carries the backoff delay), then drops every request still
//! queued in the client: the publisher re-sends unacknowledged rows from the outbox itself, so
//! rumqttc must not replay stale ones that the publisher's bookkeeping no longer knows.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::{ConnectionError, Event, EventLoop};
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

/// Polls until the publisher goes away. `will` makes a fresh Last Will before each reconnect
/// (its timestamp is that of the connect that registers it).
pub async fn drive(
    mut eventloop: EventLoop,
    events: mpsc::Sender<DriverEvent>,
    will: impl Fn() -> Option<LastWill>,
) {
    loop {
        match eventloop.poll().await {
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
                // Also drops the network after a refused CONNACK, which poll() leaves set.
                eventloop.clean();
                eventloop.pending.clear();
                if let Some(will) = will() {
                    eventloop.options.set_last_will(will);
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}
