//! The sources that feed ordered workers: Kafka (consumer group) and MQTT (lanes).

pub mod kafka;
pub mod mqtt;
