//! The MQTT owner: drains the outbox to the broker at QoS 1, keeps the retained status with its Last Will, publishes the inventory.
