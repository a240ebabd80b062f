//! Services for one test, each on free loopback ports with its own state directory:
//!
//! - [`Mosquitto`]: an MQTT broker, anonymous or with users and an ACL ([`Acl::rae_fleet`]
//!   is the per-RAE isolation of DESIGN section 3);
//! - [`Postgres`]: a fresh PostgreSQL 15 cluster whose default isolation is SERIALIZABLE;
//! - [`Kafka`]: Apache Kafka in KRaft mode, one node, from the jars in `tests/kafka/lib`;
//! - [`Prometheus`]: a Prometheus server scraping loopback targets ([`promtool`] checks rules).
//!
//! Starting blocks until the service answers at the protocol level (a CONNACK, pg_isready,
//! a metadata response) or fails with what was missing and the tail of its log. Every
//! process runs in its own process group, which is ended when its guard drops, on panic
//! too; then its [`OwnedDir`](crate::labdir::OwnedDir) is removed. Each service can be
//! stopped and started again on the same ports and data, for outage tests.
//!
//! Limitations: needs root, to run mosquitto and PostgreSQL as their own system users;
//! a process killed with SIGKILL leaves its services to `labdir`'s sweep. Lifecycle calls
//! block (call them from `#[tokio::test]` bodies or `spawn_blocking`); calls that talk to a
//! running service (`create_database`, `create_topic`) are async.

mod error;
pub mod kafka;
pub mod mosquitto;
mod ports;
pub mod postgres;
mod process;
pub mod prometheus;

use std::path::Path;

pub use error::ServiceError;
pub use kafka::{Kafka, KafkaOptions};
pub use mosquitto::{Acl, BrokerSetup, Mosquitto, MosquittoAuth, MosquittoOptions, MqttUser};
pub use ports::PortLease;
pub use postgres::Postgres;
pub use prometheus::{promtool, Prometheus, ScrapeJob};

fn lab_root() -> &'static Path {
    Path::new(crate::labdir::LAB_ROOT)
}
