//! The MQTT owner: drains the outbox to the broker at QoS 1, keeps the retained status with its
//! Last Will, publishes the inventory.
//!
//! Parts:
//! - [`run`] (`publisher.rs`): the publisher task. Rows leave in outbox order, at most
//!   [`PublisherSettings::max_in_flight`] unacknowledged and at most one per session (`gate.rs`:
//!   the rows behind it wait, bounded, so no row overtakes an earlier one of its session when
//!   that one is refused or lost); a row is deleted only after a PUBACK
//!   with a success reason code. A row whose PUBLISH exceeds the broker's Maximum Packet
//!   Size (CONNACK) is not sent but dropped from the outbox and counted (`publish.oversize`),
//!   so that it cannot drop the connection and block the rows behind it. A refused row
//!   (e.g. 0x87, not authorized) stays and is retried after a backoff; after a reconnect
//!   every unacknowledged row is sent again. Retained `online` after every CONNACK, retained
//!   `offline` as the Last Will and on shutdown, the inventory after every connect and every [`PublisherSettings::inventory_interval`].
//! - `commands.rs`: cloud commands: the `cmd/+` subscription after every CONNACK, each
//!   request's checks (Response Topic inside this RAE's `reply/`, command level, payload),
//!   the hand-over to the core task's handler (`crate::control`) without ever blocking this
//!   loop, and the reply at QoS 1 with the request's Correlation Data.
//! - [`supervise`] (`supervise.rs`): restarts [`run`] with backoff after an error or a panic
//!   (counted in `publish.restarts`); errors a restart cannot cure end it, and the daemon.
//! - `driver.rs`: the loop that polls rumqttc's event loop (and drops the connection when
//!   the publisher's watchdog finds the broker silent for two keep-alives, counted in
//!   `broker.unresponsive`: a half-open link whose writes block rumqttc's own ping timer);
//!   `flight.rs`: maps PUBACKs back to outbox rows; `gate.rs`: one unacknowledged row per
//!   session; `packet.rs`: packet sizes, reason codes, rows sent before; `backoff.rs`:
//!   exponential backoff with jitter.
//! - `transport.rs`: TLS (rustls, ring) with the CA, the client certificate and the server
//!   name of `[mqtt.tls]`, the user name and password, and the one-line reason of a failed
//!   handshake.
//!
//! Limitations: the TLS files are read at start and by each publisher run, not on every
//! reconnect (a rotated certificate takes a restart). Every connection is
//! a clean start: the outbox, not the broker session, holds what is unacknowledged.

mod backoff;
mod commands;
mod driver;
mod flight;
mod gate;
mod packet;
mod publisher;
mod supervise;
pub mod transport;

use std::time::Duration;

use rae_proto::{NameError, Serial};

use crate::config::{Config, TlsConfig};
use crate::store::StoreError;

pub use commands::CommandLink;
pub use publisher::run;
pub use supervise::supervise;

/// The publisher's settings; [`PublisherSettings::from_config`] fills them from the config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherSettings {
    pub serial: Serial,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    /// At least 5 s (rumqttc's minimum). A broker silent for twice this is a dead link.
    pub keep_alive: Duration,
    /// SO_SNDBUF of the connection; `None`: the kernel's default.
    pub tcp_send_buffer: Option<u32>,
    pub inventory_interval: Duration,
    /// Outbox rows published and not yet acknowledged, at most (the broker may allow fewer).
    pub max_in_flight: u16,
    /// Reconnects and retries of refused rows back off between these, with jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Goes into the retained status.
    pub agent_version: String,
    /// TLS to the broker (`transport.rs`); its files are read again by every [`run`].
    pub tls: Option<TlsConfig>,
    /// User name and password, for brokers that authenticate that way (`mqtt.username`,
    /// `mqtt.password_file`); on a fleet broker the client certificate is the identity.
    pub credentials: Option<Credentials>,
    /// A failure to inject, for fault tests; `None` unless [`Fault::from_env`] found one.
    pub fault: Option<Fault>,
}

/// A failure the publisher injects into itself once it has had `after_acks` rows acknowledged
/// and has rows in flight, so that fault tests can check that a failing publisher is restarted, never silent.
///
/// Set only by the environment variable [`Fault::ENV`], not by the config file, so no
/// production configuration can turn it on; the daemon warns at start when it is on. An
/// environment variable rather than `#[cfg(test)]`: the lab tests run the real agent binary,
/// which `cfg(test)` code never reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub after_acks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `run` returns [`PublishError::InjectedFault`].
    Error,
    /// The publisher task panics.
    Panic,
}

impl Fault {
    /// `error:<acks>` or `panic:<acks>`.
    pub const ENV: &'static str = "RAE_AGENT_TEST_PUBLISHER_FAULT";

    /// The fault [`Fault::ENV`] asks for; an unreadable value is an error, not ignored.
    pub fn from_env() -> Result<Option<Fault>, PublishError> {
        match std::env::var(Self::ENV) {
            Ok(text) => Fault::parse(&text).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Fault::parse("").map(Some),
        }
    }

    fn parse(text: &str) -> Result<Fault, PublishError> {
        let invalid = || PublishError::Settings {
            setting: Fault::ENV,
            reason: format!("{text:?} is not error:<acks> or panic:<acks>"),
        };
        let (kind, acks) = text.split_once(':').ok_or_else(invalid)?;
        let kind = match kind {
            "error" => FaultKind::Error,
            "panic" => FaultKind::Panic,
            _ => return Err(invalid()),
        };
        let after_acks = acks.parse().map_err(|_| invalid())?;
        Ok(Fault { kind, after_acks })
    }
}

/// An MQTT user name and password; `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl PublisherSettings {
    pub const DEFAULT_MAX_IN_FLIGHT: u16 = 32;
    pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_secs(1);
    pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);

    /// The settings a configuration asks for, with the defaults for what it does not name.
    /// Fails only on a serial that [`Config::validate`] would also reject.
    pub fn from_config(config: &Config) -> Result<Self, PublishError> {
        let serial =
            Serial::new(config.agent.serial.as_str()).map_err(|source| PublishError::Serial {
                serial: config.agent.serial.clone(),
                source,
            })?;
        Ok(PublisherSettings {
            serial,
            host: config.mqtt.host.clone(),
            port: config.mqtt.port,
            client_id: config.client_id().to_owned(),
            keep_alive: Duration::from_secs(config.mqtt.keep_alive_secs),
            tcp_send_buffer: config.mqtt.tcp_send_buffer_bytes,
            inventory_interval: Duration::from_secs(config.publish.inventory_interval_secs),
            max_in_flight: Self::DEFAULT_MAX_IN_FLIGHT,
            backoff_min: Self::DEFAULT_BACKOFF_MIN,
            backoff_max: Self::DEFAULT_BACKOFF_MAX,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            tls: config.mqtt.tls.clone(),
            credentials: config.mqtt.credentials.clone(),
            fault: None,
        })
    }

    /// What [`run`] refuses before it connects.
    fn check(&self) -> Result<(), PublishError> {
        let invalid = |setting, reason: String| Err(PublishError::Settings { setting, reason });
        if self.keep_alive < Duration::from_secs(5) {
            return invalid(
                "keep_alive",
                format!("{:?} is below the minimum of 5 s", self.keep_alive),
            );
        }
        if self.inventory_interval < Duration::from_millis(100) {
            return invalid(
                "inventory_interval",
                format!(
                    "{:?} is below the minimum of 100 ms",
                    self.inventory_interval
                ),
            );
        }
        if self.max_in_flight == 0 {
            return invalid("max_in_flight", "must be at least 1".into());
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return invalid(
                "backoff_min",
                format!(
                    "{:?} must be above zero and not above backoff_max {:?}",
                    self.backoff_min, self.backoff_max
                ),
            );
        }
        Ok(())
    }
}

/// What the publisher reports, for `raectl status` and the daemon's health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublisherStatus {
    pub connected: bool,
    /// When `connected` last changed (RAE wall clock, unix ms).
    pub since_ms: Option<i64>,
    /// The latest connection error, kept after a reconnect.
    pub last_error: Option<String>,
    /// Outbox rows handed to the broker, re-sends included.
    pub published: u64,
    /// Outbox rows acknowledged with a success reason code (and deleted).
    pub acked: u64,
    /// Of `acked`, the rows the broker acknowledged with 0x10 (no matching subscribers): a
    /// success in MQTT 5, so they are deleted, but nobody was subscribed to receive them.
    pub no_subscribers: u64,
    /// PUBACKs with a failure reason code, whatever the topic.
    pub refused: u64,
    /// Rows published again: after a reconnect or a refusal.
    pub resent: u64,
    /// Rows that waited for the acknowledgement of their session's previous row before
    /// going out (at most one row per session is in flight, so that none overtakes another).
    pub waited_for_session: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Connections dropped because the broker sent nothing for two keep-alive periods
    /// (a half-open link: no RST, no FIN, the writes may block in a full send buffer).
    pub unresponsive: u64,
    /// Outbox rows dropped because their PUBLISH exceeds the broker's Maximum Packet Size
    /// (the subscriber sees a gap at their seq).
    pub oversize: u64,
    /// Inventories not sent because they exceed the broker's Maximum Packet Size.
    pub oversize_inventories: u64,
    /// Times the publisher was restarted after an error or a panic.
    pub restarts: u64,
    /// Inventories the broker acknowledged.
    pub inventories: u64,
}

impl PublisherStatus {
    /// The status as `raectl status` entries.
    pub fn entries(&self) -> Vec<(String, String)> {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        let entries = [
            ("broker.connected", yes_no(self.connected).to_owned()),
            (
                "broker.since_ms",
                self.since_ms.map(|ms| ms.to_string()).unwrap_or_default(),
            ),
            (
                "broker.last_error",
                self.last_error.clone().unwrap_or_default(),
            ),
            ("publish.published", self.published.to_string()),
            ("publish.acked", self.acked.to_string()),
            ("publish.no_subscribers", self.no_subscribers.to_string()),
            ("publish.refused", self.refused.to_string()),
            ("publish.resent", self.resent.to_string()),
            (
                "publish.waited_for_session",
                self.waited_for_session.to_string(),
            ),
            ("publish.oversize", self.oversize.to_string()),
            (
                "publish.oversize_inventories",
                self.oversize_inventories.to_string(),
            ),
            ("broker.reconnects", self.reconnects.to_string()),
            ("broker.unresponsive", self.unresponsive.to_string()),
            ("publish.restarts", self.restarts.to_string()),
            ("publish.inventories", self.inventories.to_string()),
        ];
        entries
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect()
    }
}

/// Why the publisher cannot run or stopped.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the MQTT transport cannot be set up")]
    Transport(#[from] transport::TransportError),
    #[error("agent serial {serial:?} is not valid: {source}")]
    Serial {
        serial: String,
        #[source]
        source: NameError,
    },
    #[error("publisher setting {setting}: {reason}")]
    Settings {
        setting: &'static str,
        reason: String,
    },
    #[error("cannot encode the {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: rae_proto::EncodeError,
    },
    #[error("the outbox is not available")]
    Store(#[from] StoreError),
    #[error("the MQTT client refused a request ({what})")]
    Client {
        what: &'static str,
        #[source]
        source: Box<rumqttc::v5::ClientError>,
    },
    #[error("the MQTT event loop stopped")]
    DriverStopped,
    #[error("injected fault ({})", Fault::ENV)]
    InjectedFault,
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
        [agent]
        serial = "RAE-0001"
        lan_interface = "lan0"
        [mqtt]
        host = "broker.lab"
        keep_alive_secs = 20
        [publish]
        inventory_interval_secs = 30
    "#;

    #[test]
    fn settings_follow_the_config() {
        let config = Config::parse(CONFIG).unwrap();
        let settings = PublisherSettings::from_config(&config).unwrap();
        assert_eq!(settings.serial.as_str(), "RAE-0001");
        assert_eq!(settings.client_id, "RAE-0001");
        assert_eq!(
            (settings.host.as_str(), settings.port),
            ("broker.lab", 1883)
        );
        assert_eq!(settings.keep_alive, Duration::from_secs(20));
        assert_eq!(settings.inventory_interval, Duration::from_secs(30));
        assert_eq!(settings.max_in_flight, 32);
        assert_eq!(settings.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(settings.check().is_ok());
    }

    #[test]
    fn bad_settings_are_refused_with_their_reason() {
        let mut config = Config::parse(CONFIG).unwrap();
        config.agent.serial = "bad/serial".into();
        assert!(matches!(
            PublisherSettings::from_config(&config),
            Err(PublishError::Serial { .. })
        ));

        let config = Config::parse(CONFIG).unwrap();
        let good = PublisherSettings::from_config(&config).unwrap();
        let cases = [
            PublisherSettings {
                keep_alive: Duration::from_secs(1),
                ..good.clone()
            },
            PublisherSettings {
                max_in_flight: 0,
                ..good.clone()
            },
            PublisherSettings {
                backoff_min: Duration::from_secs(9),
                backoff_max: Duration::from_secs(2),
                ..good.clone()
            },
        ];
        for settings in cases {
            assert!(matches!(
                settings.check(),
                Err(PublishError::Settings { .. })
            ));
        }
    }

    #[test]
    fn faults_parse_or_are_refused() {
        assert_eq!(
            Fault::parse("error:5").unwrap(),
            Fault {
                kind: FaultKind::Error,
                after_acks: 5
            }
        );
        assert_eq!(Fault::parse("panic:0").unwrap().kind, FaultKind::Panic);
        for bad in ["", "error", "crash:1", "error:-1", "panic:x"] {
            assert!(
                matches!(Fault::parse(bad), Err(PublishError::Settings { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn status_entries_use_the_documented_keys() {
        let status = PublisherStatus {
            connected: true,
            since_ms: Some(42),
            published: 3,
            ..PublisherStatus::default()
        };
        let entries = status.entries();
        let keys: Vec<_> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "broker.connected",
                "broker.since_ms",
                "broker.last_error",
                "publish.published",
                "publish.acked",
                "publish.no_subscribers",
                "publish.refused",
                "publish.resent",
                "publish.waited_for_session",
                "publish.oversize",
                "publish.oversize_inventories",
                "broker.reconnects",
                "broker.unresponsive",
                "publish.restarts",
                "publish.inventories",
            ]
        );
        assert_eq!(entries[0].1, "yes");
        assert_eq!(entries[1].1, "42");
        assert_eq!(entries[2].1, "");
        assert_eq!(entries[3].1, "3");
    }
}
