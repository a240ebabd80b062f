//! How the sink's MQTT clients reach the broker: one function turns the broker flags
//! ([`BrokerArgs`]) into rumqttc's [`MqttOptions`], so every client (the command requester
//! and the gap healer's command client) connects the same way.
//!
//! Limitation: plain TCP with an optional username and password; TLS is not offered yet.

use rumqttc::v5::MqttOptions;

use crate::config::BrokerArgs;

/// Why the broker flags cannot make a connection.
#[derive(Debug, thiserror::Error)]
pub enum MqttConnectError {
    #[error("--mqtt-host is empty")]
    EmptyHost,
    #[error("the MQTT client id is empty")]
    EmptyClientId,
    #[error("--mqtt-password is set without --mqtt-username")]
    PasswordWithoutUsername,
}

/// The options for a client named `client_id` on the broker `broker` names. Callers set
/// what is particular to their client (session, keep-alive, inflight) on the result.
pub fn options(broker: &BrokerArgs, client_id: &str) -> Result<MqttOptions, MqttConnectError> {
    if broker.mqtt_host.trim().is_empty() {
        return Err(MqttConnectError::EmptyHost);
    }
    if client_id.trim().is_empty() {
        return Err(MqttConnectError::EmptyClientId);
    }
    let mut options = MqttOptions::new(client_id, broker.mqtt_host.trim(), broker.mqtt_port);
    match (&broker.mqtt_username, &broker.mqtt_password) {
        (Some(user), password) => {
            options.set_credentials(user, password.clone().unwrap_or_default());
        }
        (None, Some(_)) => return Err(MqttConnectError::PasswordWithoutUsername),
        (None, None) => {}
    }
    Ok(options)
}
