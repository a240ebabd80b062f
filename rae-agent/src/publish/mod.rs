//! The MQTT owner: drains the outbox to the broker at QoS 1, keeps the retained status with its Last Will, publishes the inventory.
//! TEMPORARY interface placeholder in the lead's tree; replaced by the publisher helper's module.
use std::time::Duration;

use rae_proto::{Serial, SessionSeq};
use tokio::sync::watch;

use crate::store::StoreHandle;

#[derive(Debug, thiserror::Error)]
#[error("publisher placeholder")]
pub struct PublishError;

#[derive(Clone, Debug)]
pub struct PublisherSettings {
    pub serial: Serial,
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub keep_alive: Duration,
    pub inventory_interval: Duration,
    pub max_in_flight: u16,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub agent_version: String,
}

impl PublisherSettings {
    pub fn from_config(config: &crate::config::Config) -> Self {
        PublisherSettings {
            serial: Serial::new(&config.agent.serial).expect("validated"),
            host: config.mqtt.host.clone(),
            port: config.mqtt.port,
            client_id: config.client_id().to_owned(),
            keep_alive: Duration::from_secs(config.mqtt.keep_alive_secs),
            inventory_interval: Duration::from_secs(config.publish.inventory_interval_secs),
            max_in_flight: 32,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            agent_version: String::new(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublisherStatus {
    pub connected: bool,
}

impl PublisherStatus {
    pub fn entries(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

pub async fn run(
    _settings: PublisherSettings,
    _store: StoreHandle,
    _inventory: watch::Receiver<Vec<SessionSeq>>,
    _status: watch::Sender<PublisherStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PublishError> {
    let _ = shutdown.wait_for(|s| *s).await;
    Ok(())
}
