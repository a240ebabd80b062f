//! The virtual lab: a real LAN on one machine, for tests, benchmarks and the demo.
//!
//! Parts:
//! - [`labdir`]: where every lab resource records its owner, and the sweep of leftovers
//!   from crashed runs (everything a lab creates carries the `rae-lab` / `rlab` prefix).
//! - `netlab`: a bridge with dnsmasq (DHCPv4 from 198.18.0.0/15, router advertisements
//!   for a prefix from 2001:db8::/32) and DUTs as network namespaces on veth pairs
//!   running real clients (udhcpc, dhclient, static IPv4, IPv6 SLAAC or static, with or
//!   without Duplicate Address Detection), and tcpdump records of a DUT's bridge port.
//! - `services`: mosquitto, PostgreSQL (SERIALIZABLE by default) and Apache Kafka in KRaft
//!   mode, each on free loopback ports with its own state directory.
//! - [`agent`], [`sink`]: the real `rae-agent` / `raectl` and `cloud-sink` binaries as lab
//!   processes; [`cloud_command`]: one `cloud-sink command` run; [`mqtt_watch`]: a
//!   subscriber standing in for the cloud; [`requester`]: a cloud requester of commands
//!   (Response Topic, Correlation Data, raw requests too).
//! - [`inject`]: raw frames sent from inside a DUT namespace, as if from many devices behind
//!   its port (floods, address churn).
//! - [`stream_check`]: what a QoS 1 subscriber may rely on (no gap, no reorder, duplicates
//!   byte-identical), checked, and the folded state compared with the registry.
//! - [`certs`]: test certificates made at run time (a fleet CA, the broker, RAEs, the cloud,
//!   a foreign CA); the fleet broker of `deploy/mosquitto/` is `Mosquitto::start_fleet`.
//! - [`procstat`]: a process's CPU time, memory and writes, and the machine's softirq time, from
//!   `/proc`, for the benchmarks.
//!
//! Everything is removed when its guard drops (on panic too), and `labdir::sweep_stale`
//! removes what a crashed run left behind.
//!
//! Limitations: needs root (network namespaces, AF_PACKET); Kafka needs the jars that
//! `scripts/setup` fetches into `tests/kafka/lib`.

pub mod agent;
pub mod certs;
pub mod cloud_command;
pub mod inject;
pub mod labdir;
pub mod mqtt_watch;
pub mod netlab;
pub mod procstat;
pub mod requester;
pub mod services;
pub mod sink;
pub mod stream_check;
pub mod sweep;
