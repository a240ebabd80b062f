//! The command line: every setting is a flag and an environment variable (`CLOUD_SINK_*`),
//! so a container is configured from its environment alone.
//!
//! [`Cli`] is what clap parses; [`KafkaArgs::source_config`] and [`DbArgs::options`] turn it
//! into the library's settings, rejecting what the library would only reject later.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::apply::{DbOptions, RetryPolicy};
use crate::bridge::BridgeConfig;
use crate::heal::policy::HealPolicy;
use crate::heal::HealConfig;
use crate::mqtt_connect::MqttTls;
use crate::source::kafka::KafkaSourceConfig;
use crate::source::mqtt::{MqttBrokerConfig, MqttSourceConfig};

/// Ingests RAE device events from Kafka (or straight from MQTT for a single lab) into
/// CockroachDB, keeping per-device order; `bridge` moves MQTT into Kafka.
#[derive(Debug, Parser)]
#[command(name = "cloud-sink", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub ops: OpsArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume a Kafka topic in a consumer group and write it to the database.
    Kafka(Box<KafkaArgs>),
    /// Subscribe to MQTT directly and write to the database (one lab, no Kafka).
    Mqtt(Box<MqttArgs>),
    /// Move MQTT device, status and inventory messages into Kafka (key = MQTT topic).
    Bridge(Box<BridgeArgs>),
    /// Apply the database migrations and exit.
    Migrate(MigrateArgs),
    /// Send one command to an RAE over MQTT and print its reply (exit status 0 done,
    /// 1 refused, 2 usage or broker error, 3 timeout).
    #[command(after_help = COMMAND_EXIT_CODES)]
    Command(Box<CommandArgs>),
}

const COMMAND_EXIT_CODES: &str = "Exit status:\n  0  the RAE carried out the command\n  1  the RAE refused it (an error reply: unknown device, bad request, rate limited, ...)\n  2  usage error, broker unreachable, or a reply that does not decode\n  3  no reply within --timeout-ms (nobody serves that serial, or the RAE is offline)";

/// `cloud-sink command`: one request to one RAE, its reply printed.
#[derive(Debug, Args)]
pub struct CommandArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The RAE to ask (its serial, the topic level after `rae/v1/`).
    #[arg(long, env = "CLOUD_SINK_SERIAL")]
    pub serial: String,
    /// How long to wait for the reply.
    #[arg(long, env = "CLOUD_SINK_COMMAND_TIMEOUT_MS", default_value_t = 5000)]
    pub timeout_ms: u64,
    /// Print the reply (or the timeout) as one JSON object, correlation data included.
    #[arg(long)]
    pub json: bool,
    /// The requester id: the last level of the reply topic `rae/v1/{serial}/reply/{requester}`
    /// (`[A-Za-z0-9_-]{1,64}`). Default: `cli-` and a random suffix, unique per run.
    #[arg(long, env = "CLOUD_SINK_REQUESTER")]
    pub requester: Option<String>,
    #[command(subcommand)]
    pub action: CommandAction,
}

/// What to ask. DEVICE is a MAC (`aa:bb:cc:dd:ee:ff`) or a session id (a lowercase UUID).
#[derive(Debug, Clone, Subcommand)]
pub enum CommandAction {
    /// Mark a device available, in test, or in maintenance.
    SetAvailability {
        device: String,
        #[arg(value_enum)]
        availability: AvailabilityArg,
    },
    /// Set a device's ESN, or clear it with --clear.
    SetEsn {
        device: String,
        #[arg(required_unless_present = "clear")]
        esn: Option<String>,
        #[arg(long, conflicts_with = "esn")]
        clear: bool,
    },
    /// Ask for a Snapshot of one device, or of every open session without DEVICE.
    Resync { device: Option<String> },
    /// Close a device's session and drop it from the RAE's registry.
    Forget { device: String },
    /// Have the RAE publish its inventory now; prints it.
    Inventory,
    /// Check that the RAE answers; prints its version, uptime and open sessions.
    Ping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AvailabilityArg {
    Available,
    #[value(alias = "in_test")]
    InTest,
    Maintenance,
}

impl From<AvailabilityArg> for rae_proto::Availability {
    fn from(a: AvailabilityArg) -> Self {
        match a {
            AvailabilityArg::Available => Self::Available,
            AvailabilityArg::InTest => Self::InTest,
            AvailabilityArg::Maintenance => Self::Maintenance,
        }
    }
}

/// The broker the gap healer sends its `resync` commands through in `kafka` mode (which has
/// no MQTT connection of its own). Without `--command-mqtt-host` gaps wait for the periodic
/// Snapshot.
#[derive(Debug, Args)]
pub struct CommandBrokerArgs {
    #[arg(long, env = "CLOUD_SINK_COMMAND_MQTT_HOST")]
    pub command_mqtt_host: Option<String>,
    #[arg(long, env = "CLOUD_SINK_COMMAND_MQTT_PORT", default_value_t = 1883)]
    pub command_mqtt_port: u16,
    #[arg(long, env = "CLOUD_SINK_COMMAND_MQTT_CLIENT_ID")]
    pub command_mqtt_client_id: Option<String>,
    #[arg(long, env = "CLOUD_SINK_COMMAND_MQTT_USERNAME")]
    pub command_mqtt_username: Option<String>,
    #[arg(long, env = "CLOUD_SINK_COMMAND_MQTT_PASSWORD", hide_env_values = true)]
    pub command_mqtt_password: Option<String>,
    /// TLS for the command connection: the CA file (as --mqtt-tls-ca).
    #[arg(long, env = "CLOUD_SINK_COMMAND_MQTT_TLS_CA", value_name = "PEM")]
    pub command_mqtt_tls_ca: Option<PathBuf>,
    /// The cloud's client certificate for the command connection (as --mqtt-tls-cert).
    #[arg(
        long,
        env = "CLOUD_SINK_COMMAND_MQTT_TLS_CERT",
        value_name = "PEM",
        requires_all = ["command_mqtt_tls_ca", "command_mqtt_tls_key"]
    )]
    pub command_mqtt_tls_cert: Option<PathBuf>,
    /// Its private key (as --mqtt-tls-key).
    #[arg(
        long,
        env = "CLOUD_SINK_COMMAND_MQTT_TLS_KEY",
        value_name = "PEM",
        requires = "command_mqtt_tls_cert"
    )]
    pub command_mqtt_tls_key: Option<PathBuf>,
    /// The name the broker's certificate must carry (default: --command-mqtt-host).
    #[arg(
        long,
        env = "CLOUD_SINK_COMMAND_MQTT_TLS_SERVER_NAME",
        value_name = "NAME",
        requires = "command_mqtt_tls_ca"
    )]
    pub command_mqtt_tls_server_name: Option<String>,
}

impl CommandBrokerArgs {
    /// The broker as [`BrokerArgs`] (what `mqtt_connect::options` takes), when configured.
    pub fn broker(&self) -> Option<BrokerArgs> {
        let host = self.command_mqtt_host.clone()?;
        Some(BrokerArgs {
            mqtt_host: host,
            mqtt_port: self.command_mqtt_port,
            mqtt_client_id: self.command_mqtt_client_id.clone(),
            mqtt_username: self.command_mqtt_username.clone(),
            mqtt_password: self.command_mqtt_password.clone(),
            mqtt_shared_group: None,
            mqtt_max_inflight: 16,
            mqtt_tls_ca: self.command_mqtt_tls_ca.clone(),
            mqtt_tls_cert: self.command_mqtt_tls_cert.clone(),
            mqtt_tls_key: self.command_mqtt_tls_key.clone(),
            mqtt_tls_server_name: self.command_mqtt_tls_server_name.clone(),
        })
    }
}

/// The gap healer: `resync` requests for sessions with a gap (DESIGN section 5, "Gap repair").
#[derive(Debug, Args)]
pub struct HealArgs {
    /// Do not ask RAEs to resync sessions with a gap (they then wait for the periodic Snapshot).
    #[arg(long, env = "CLOUD_SINK_HEAL_DISABLED")]
    pub heal_disabled: bool,
    /// The first wait before asking again while a session's gap stays open; doubles per attempt.
    #[arg(long, env = "CLOUD_SINK_HEAL_BACKOFF_MS", default_value_t = 5000)]
    pub heal_backoff_ms: u64,
    /// The longest wait between two requests for one session.
    #[arg(
        long,
        env = "CLOUD_SINK_HEAL_BACKOFF_MAX_MS",
        default_value_t = 300_000
    )]
    pub heal_backoff_max_ms: u64,
    /// Resync requests one RAE may get per second (token bucket, refilled continuously).
    #[arg(long, env = "CLOUD_SINK_HEAL_PER_RAE_PER_SEC", default_value_t = 2.0)]
    pub heal_per_rae_per_sec: f64,
    /// Requests one RAE may get at once after a quiet spell (the bucket's size).
    #[arg(long, env = "CLOUD_SINK_HEAL_PER_RAE_BURST", default_value_t = 10)]
    pub heal_per_rae_burst: u32,
    /// Sessions with a gap tracked at once; more are counted and left to the periodic Snapshot.
    #[arg(long, env = "CLOUD_SINK_HEAL_MAX_SESSIONS", default_value_t = 10_000)]
    pub heal_max_sessions: usize,
    /// How long one resync request waits for its reply.
    #[arg(
        long,
        env = "CLOUD_SINK_HEAL_REPLY_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub heal_reply_timeout_ms: u64,
}

/// The MQTT broker both MQTT modes subscribe to (persistent session, manual acks).
#[derive(Debug, Clone, Args)]
pub struct BrokerArgs {
    #[arg(long, env = "CLOUD_SINK_MQTT_HOST", default_value = "127.0.0.1")]
    pub mqtt_host: String,
    #[arg(long, env = "CLOUD_SINK_MQTT_PORT", default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Keep it stable across restarts: the broker keeps the session's queued messages by it.
    #[arg(long, env = "CLOUD_SINK_MQTT_CLIENT_ID")]
    pub mqtt_client_id: Option<String>,
    #[arg(long, env = "CLOUD_SINK_MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    #[arg(long, env = "CLOUD_SINK_MQTT_PASSWORD", hide_env_values = true)]
    pub mqtt_password: Option<String>,
    /// Subscribe as `$share/<group>/...` so several instances split the topics.
    #[arg(long, env = "CLOUD_SINK_MQTT_SHARED_GROUP")]
    pub mqtt_shared_group: Option<String>,
    /// Unacknowledged messages the broker may send ahead (our Receive Maximum).
    #[arg(long, env = "CLOUD_SINK_MQTT_MAX_INFLIGHT", default_value_t = 1000)]
    pub mqtt_max_inflight: u16,
    /// Connect with TLS, trusting only the CA(s) in this PEM file for the broker's
    /// certificate (whose name is always verified).
    #[arg(long, env = "CLOUD_SINK_MQTT_TLS_CA", value_name = "PEM")]
    pub mqtt_tls_ca: Option<PathBuf>,
    /// The client certificate (PEM), the cloud's identity at a broker that takes the
    /// certificate's CN as the user name (deploy/mosquitto/). Needs --mqtt-tls-key.
    #[arg(
        long,
        env = "CLOUD_SINK_MQTT_TLS_CERT",
        value_name = "PEM",
        requires_all = ["mqtt_tls_ca", "mqtt_tls_key"]
    )]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "CLOUD_SINK_MQTT_TLS_KEY",
        value_name = "PEM",
        requires = "mqtt_tls_cert"
    )]
    pub mqtt_tls_key: Option<PathBuf>,
    /// The name the broker's certificate must carry (default: --mqtt-host).
    #[arg(
        long,
        env = "CLOUD_SINK_MQTT_TLS_SERVER_NAME",
        value_name = "NAME",
        requires = "mqtt_tls_ca"
    )]
    pub mqtt_tls_server_name: Option<String>,
}

impl BrokerArgs {
    /// The broker settings these flags give, with `default_client_id` unless
    /// `--mqtt-client-id` names one.
    pub fn broker_config(&self, default_client_id: &str) -> MqttBrokerConfig {
        MqttBrokerConfig {
            host: self.mqtt_host.clone(),
            port: self.mqtt_port,
            client_id: self
                .mqtt_client_id
                .clone()
                .unwrap_or_else(|| default_client_id.to_owned()),
            username: self.mqtt_username.clone(),
            password: self.mqtt_password.clone(),
            shared_group: self.mqtt_shared_group.clone(),
            max_inflight: self.mqtt_max_inflight,
            tls: self.mqtt_tls_ca.as_ref().map(|ca| MqttTls {
                ca_file: ca.clone(),
                cert_file: self.mqtt_tls_cert.clone(),
                key_file: self.mqtt_tls_key.clone(),
                server_name: self.mqtt_tls_server_name.clone(),
            }),
            ..MqttBrokerConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct MqttArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Ordered lanes the topics are hashed onto (one worker each).
    #[arg(long, env = "CLOUD_SINK_LANES", default_value_t = 4)]
    pub lanes: u32,
    #[arg(long, env = "CLOUD_SINK_BATCH_MAX_RECORDS", default_value_t = 1000)]
    pub batch_max_records: usize,
    #[arg(long, env = "CLOUD_SINK_BATCH_MAX_WAIT_MS", default_value_t = 1000)]
    pub batch_max_wait_ms: u64,
    #[command(flatten)]
    pub db: DbArgs,
    /// Apply the database migrations before consuming (run `cloud-sink migrate` once instead
    /// when several instances start together: the migrations take no lock).
    #[arg(long, env = "CLOUD_SINK_MIGRATE")]
    pub migrate: bool,
    #[command(flatten)]
    pub heal: HealArgs,
}

impl MqttArgs {
    pub fn source_config(&self, shutdown: Duration) -> MqttSourceConfig {
        MqttSourceConfig {
            broker: self.broker.broker_config("cloud-sink"),
            lanes: self.lanes,
            batch_max_records: self.batch_max_records,
            batch_max_wait_ms: self.batch_max_wait_ms,
            shutdown_deadline_ms: u64::try_from(shutdown.as_millis()).unwrap_or(u64::MAX),
            ..MqttSourceConfig::default()
        }
    }
}

#[derive(Debug, Args)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Kafka `bootstrap.servers`, comma-separated.
    #[arg(long, env = "CLOUD_SINK_BROKERS")]
    pub brokers: String,
    /// The Kafka topic records go to.
    #[arg(long, env = "CLOUD_SINK_TOPIC", default_value = "rae-events")]
    pub topic: String,
}

impl BridgeArgs {
    pub fn bridge_config(&self, shutdown: Duration) -> BridgeConfig {
        BridgeConfig {
            broker: self.broker.broker_config("cloud-sink-bridge"),
            kafka_brokers: self.brokers.clone(),
            kafka_topic: self.topic.clone(),
            shutdown_deadline_ms: u64::try_from(shutdown.as_millis()).unwrap_or(u64::MAX),
            ..BridgeConfig::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings every mode shares: logs, the metrics/health endpoint, shutdown.
#[derive(Debug, Args)]
pub struct OpsArgs {
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(
        long,
        env = "CLOUD_SINK_METRICS_ADDR",
        default_value = "127.0.0.1:9464",
        global = true
    )]
    pub metrics_addr: SocketAddr,
    #[arg(
        long,
        env = "CLOUD_SINK_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// A tracing filter, e.g. `info,librdkafka=warn`; `RUST_LOG` is not read.
    #[arg(
        long,
        env = "CLOUD_SINK_LOG",
        default_value = "info,librdkafka=warn,sqlx=warn",
        global = true
    )]
    pub log_filter: String,
    /// From SIGTERM/SIGINT to exit: stop fetching, drain, commit.
    #[arg(
        long,
        env = "CLOUD_SINK_SHUTDOWN_DEADLINE_SECS",
        default_value_t = 20,
        global = true
    )]
    pub shutdown_deadline_secs: u64,
}

/// The database connection.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// A PostgreSQL-protocol URL (CockroachDB: `postgresql://user@host:26257/db?sslmode=verify-full`).
    #[arg(long, env = "CLOUD_SINK_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(long, env = "CLOUD_SINK_DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,
    #[arg(long, env = "CLOUD_SINK_DB_ACQUIRE_TIMEOUT_MS", default_value_t = 5000)]
    pub db_acquire_timeout_ms: u64,
    /// Transaction attempts per batch before the worker backs off and writes it again.
    #[arg(long, env = "CLOUD_SINK_DB_MAX_ATTEMPTS", default_value_t = 12)]
    pub db_max_attempts: u32,
    #[arg(long, env = "CLOUD_SINK_DB_FIRST_BACKOFF_MS", default_value_t = 50)]
    pub db_first_backoff_ms: u64,
    #[arg(long, env = "CLOUD_SINK_DB_MAX_BACKOFF_MS", default_value_t = 5000)]
    pub db_max_backoff_ms: u64,
    /// Runs of received seqs a session's gap record keeps; beyond, it forgets the highest
    /// and stays flagged for resync until a Snapshot.
    #[arg(long, env = "CLOUD_SINK_MAX_PENDING_RUNS", default_value_t = crate::apply::DEFAULT_MAX_PENDING_RUNS)]
    pub max_pending_runs: usize,
    /// Writes, with nothing else committing, in which a record may be the first refused with
    /// a permanent database error before it is dead-lettered.
    #[arg(long, env = "CLOUD_SINK_DB_PERMANENT_STRIKES", default_value_t = crate::apply::DEFAULT_PERMANENT_STRIKES)]
    pub db_permanent_strikes: u32,
    /// The transaction isolation. `serializable` (the default) is what CockroachDB runs; on
    /// PostgreSQL, `read-committed` is correct too (the write locks its rows) and avoids the
    /// false serialization conflicts of SERIALIZABLE's predicate locks (docs/cockroachdb.md).
    #[arg(
        long,
        env = "CLOUD_SINK_DB_ISOLATION",
        value_enum,
        default_value_t = IsolationArg::Serializable
    )]
    pub db_isolation: IsolationArg,
}

/// `--db-isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    Serializable,
    ReadCommitted,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct KafkaArgs {
    /// `bootstrap.servers`, comma-separated.
    #[arg(long, env = "CLOUD_SINK_BROKERS")]
    pub brokers: String,
    /// Topics to consume; repeat the flag or separate with commas.
    #[arg(
        long = "topic",
        env = "CLOUD_SINK_TOPICS",
        value_delimiter = ',',
        required = true
    )]
    pub topics: Vec<String>,
    #[arg(long, env = "CLOUD_SINK_GROUP", default_value = "cloud-sink")]
    pub group: String,
    /// Static group membership (`group.instance.id`): a member restarted under the same id
    /// (a crash, a rolling update) gets its partitions back at once instead of after the
    /// group's session timeout. Give each instance its own stable id, e.g. the StatefulSet
    /// pod name or the host name when one sink runs per host. Never share an id between
    /// live instances: the broker fences one (a fatal error) and they keep evicting each
    /// other. A static member does not leave the group on shutdown, so after a scale-down
    /// its partitions move after the session timeout. Unset: dynamic membership.
    #[arg(long, env = "CLOUD_SINK_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
    /// Apply the migrations before consuming (one migrating instance at a time: no locks).
    #[arg(long, env = "CLOUD_SINK_MIGRATE")]
    pub migrate: bool,
    #[command(flatten)]
    pub heal: HealArgs,
    /// The MQTT broker for gap-repair commands (kafka mode has no MQTT client otherwise).
    #[command(flatten)]
    pub command_broker: CommandBrokerArgs,
    #[arg(long, env = "CLOUD_SINK_AUTO_OFFSET_RESET", default_value = "earliest")]
    pub auto_offset_reset: String,
    #[arg(long, env = "CLOUD_SINK_CHANNEL_CAPACITY", default_value_t = 2000)]
    pub channel_capacity: usize,
    #[arg(long, env = "CLOUD_SINK_BATCH_MAX_RECORDS", default_value_t = 1000)]
    pub batch_max_records: usize,
    #[arg(long, env = "CLOUD_SINK_BATCH_MAX_WAIT_MS", default_value_t = 1000)]
    pub batch_max_wait_ms: u64,
    #[arg(long, env = "CLOUD_SINK_COMMIT_MAX_RECORDS", default_value_t = 1000)]
    pub commit_max_records: usize,
    #[arg(long, env = "CLOUD_SINK_COMMIT_INTERVAL_MS", default_value_t = 1000)]
    pub commit_interval_ms: u64,
    /// librdkafka's prefetch cap (`queued.max.messages.kbytes`): bounds memory.
    #[arg(long, env = "CLOUD_SINK_PREFETCH_KBYTES", default_value_t = 16 * 1024)]
    pub prefetch_kbytes: u32,
    #[arg(long, env = "CLOUD_SINK_PREFETCH_MESSAGES", default_value_t = 2000)]
    pub prefetch_messages: u32,
    #[arg(long, env = "CLOUD_SINK_REVOKE_DEADLINE_MS", default_value_t = 10_000)]
    pub revoke_deadline_ms: u64,
    #[arg(long, env = "CLOUD_SINK_STALL_AFTER_MS", default_value_t = 120_000)]
    pub stall_after_ms: u64,
    /// How often librdkafka reports statistics (the lag gauges come from them).
    #[arg(
        long,
        env = "CLOUD_SINK_STATISTICS_INTERVAL_MS",
        default_value_t = 5000
    )]
    pub statistics_interval_ms: u64,
    #[arg(long, env = "CLOUD_SINK_WRITE_RETRY_MIN_MS", default_value_t = 200)]
    pub write_retry_min_ms: u64,
    #[arg(long, env = "CLOUD_SINK_WRITE_RETRY_MAX_MS", default_value_t = 10_000)]
    pub write_retry_max_ms: u64,
    /// Further librdkafka settings as `key=value` (TLS, SASL, timeouts); repeatable, or
    /// comma-separated in the environment variable.
    #[arg(
        long = "librdkafka",
        env = "CLOUD_SINK_LIBRDKAFKA",
        value_delimiter = ',',
        value_name = "KEY=VALUE"
    )]
    pub librdkafka: Vec<String>,
}

impl HealArgs {
    /// The healer's settings.
    pub fn heal_config(&self) -> HealConfig {
        let first = Duration::from_millis(self.heal_backoff_ms.max(1));
        HealConfig {
            policy: HealPolicy {
                backoff_first: first,
                backoff_max: Duration::from_millis(self.heal_backoff_max_ms).max(first),
                per_rae_per_sec: if self.heal_per_rae_per_sec.is_finite() {
                    self.heal_per_rae_per_sec.max(0.001)
                } else {
                    1.0
                },
                per_rae_burst: self.heal_per_rae_burst.max(1),
                max_sessions: self.heal_max_sessions.max(1),
                ..HealPolicy::default()
            },
            reply_timeout: Duration::from_millis(self.heal_reply_timeout_ms.max(1)),
        }
    }
}

/// A setting that parsed but cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--librdkafka {0:?} is not KEY=VALUE")]
    LibrdkafkaSetting(String),
    #[error("--shutdown-deadline-secs must be at least 1")]
    ShutdownDeadline,
}

impl DbArgs {
    pub fn options(&self) -> DbOptions {
        DbOptions {
            max_connections: self.db_max_connections.max(1),
            acquire_timeout: Duration::from_millis(self.db_acquire_timeout_ms),
            retry: RetryPolicy {
                max_attempts: self.db_max_attempts.max(1),
                first_backoff: Duration::from_millis(self.db_first_backoff_ms.max(1)),
                max_backoff: Duration::from_millis(
                    self.db_max_backoff_ms.max(self.db_first_backoff_ms),
                ),
            },
            max_pending_runs: self.max_pending_runs.max(1),
            permanent_strikes: self.db_permanent_strikes.max(1),
            isolation: match self.db_isolation {
                IsolationArg::Serializable => crate::apply::sql::Isolation::Serializable,
                IsolationArg::ReadCommitted => crate::apply::sql::Isolation::ReadCommitted,
            },
        }
    }
}

impl OpsArgs {
    pub fn shutdown_deadline(&self) -> Result<Duration, ConfigError> {
        if self.shutdown_deadline_secs == 0 {
            return Err(ConfigError::ShutdownDeadline);
        }
        Ok(Duration::from_secs(self.shutdown_deadline_secs))
    }
}

impl KafkaArgs {
    /// The source's settings; `shutdown` is the whole budget from the signal to exit.
    pub fn source_config(&self, shutdown: Duration) -> Result<KafkaSourceConfig, ConfigError> {
        let mut librdkafka = BTreeMap::new();
        for setting in &self.librdkafka {
            let Some((key, value)) = setting.split_once('=') else {
                return Err(ConfigError::LibrdkafkaSetting(setting.clone()));
            };
            let key = key.trim();
            if key.is_empty() {
                return Err(ConfigError::LibrdkafkaSetting(setting.clone()));
            }
            librdkafka.insert(key.to_owned(), value.trim().to_owned());
        }
        let shutdown_ms = u64::try_from(shutdown.as_millis()).unwrap_or(u64::MAX);
        Ok(KafkaSourceConfig {
            brokers: self.brokers.clone(),
            group_id: self.group.clone(),
            group_instance_id: self
                .group_instance_id
                .as_ref()
                .map(|id| id.trim().to_owned())
                .filter(|id| !id.is_empty()),
            topics: self.topics.iter().map(|t| t.trim().to_owned()).collect(),
            auto_offset_reset: self.auto_offset_reset.clone(),
            channel_capacity: self.channel_capacity,
            batch_max_records: self.batch_max_records,
            batch_max_wait_ms: self.batch_max_wait_ms,
            commit_max_records: self.commit_max_records,
            commit_interval_ms: self.commit_interval_ms,
            prefetch_kbytes: self.prefetch_kbytes,
            prefetch_messages: self.prefetch_messages,
            revoke_deadline_ms: self.revoke_deadline_ms,
            // The rest of the budget goes to closing the database pool and the HTTP server.
            shutdown_deadline_ms: shutdown_ms.saturating_sub(shutdown_ms / 10).max(1),
            stall_after_ms: self.stall_after_ms,
            statistics_interval_ms: self.statistics_interval_ms,
            write_retry_min_ms: self.write_retry_min_ms,
            write_retry_max_ms: self.write_retry_max_ms,
            librdkafka,
            ..KafkaSourceConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("cloud-sink").chain(args.iter().copied()))
    }

    #[test]
    fn kafka_flags_become_the_source_config() {
        let cli = parse(&[
            "--log-format",
            "json",
            "kafka",
            "--brokers",
            "127.0.0.1:9092",
            "--topic",
            "a,b",
            "--topic",
            "c",
            "--group",
            "g",
            "--database-url",
            "postgresql://x@127.0.0.1/db",
            "--librdkafka",
            "security.protocol=ssl",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        assert_eq!(cli.ops.log_format, LogFormat::Json);
        assert_eq!(cli.ops.metrics_addr.port(), 0);
        let Command::Kafka(k) = cli.command else {
            panic!("not kafka: {:?}", cli.command)
        };
        let c = k.source_config(Duration::from_secs(10)).unwrap();
        assert_eq!(c.topics, ["a", "b", "c"]);
        assert_eq!(c.group_id, "g");
        assert_eq!(c.shutdown_deadline_ms, 9000);
        assert_eq!(c.librdkafka["security.protocol"], "ssl");
    }

    #[test]
    fn the_group_instance_id_is_static_membership_only_when_given() {
        let base = [
            "kafka",
            "--brokers",
            "b",
            "--topic",
            "t",
            "--database-url",
            "postgresql://x@127.0.0.1/db",
        ];
        let Command::Kafka(k) = parse(&base).unwrap().command else {
            panic!("not kafka")
        };
        let c = k.source_config(Duration::from_secs(10)).unwrap();
        assert_eq!(c.group_instance_id, None, "dynamic membership by default");
        for (given, expected) in [(" sink-0 ", Some("sink-0")), ("  ", None)] {
            let mut args = base.to_vec();
            args.extend(["--group-instance-id", given]);
            let Command::Kafka(k) = parse(&args).unwrap().command else {
                panic!("not kafka")
            };
            let c = k.source_config(Duration::from_secs(10)).unwrap();
            assert_eq!(c.group_instance_id.as_deref(), expected, "{given:?}");
        }
    }

    #[test]
    fn missing_and_bad_settings_are_rejected() {
        let err = parse(&["kafka", "--brokers", "b", "--database-url", "u"]).unwrap_err();
        assert!(err.to_string().contains("--topic"), "{err}");
        assert!(parse(&["--log-format", "xml", "migrate", "--database-url", "u"]).is_err());
        assert!(parse(&[
            "--metrics-addr",
            "nowhere",
            "migrate",
            "--database-url",
            "u"
        ])
        .is_err());
        let cli = parse(&[
            "kafka",
            "--brokers",
            "b",
            "--topic",
            "t",
            "--database-url",
            "u",
            "--librdkafka",
            "novalue",
        ])
        .unwrap();
        let Command::Kafka(k) = cli.command else {
            panic!("not kafka")
        };
        assert!(matches!(
            k.source_config(Duration::from_secs(1)),
            Err(ConfigError::LibrdkafkaSetting(_))
        ));
    }

    #[test]
    fn command_flags_and_bad_commands() {
        let cli = parse(&[
            "command",
            "--serial",
            "rae-1",
            "--timeout-ms",
            "250",
            "--json",
            "set-availability",
            "00:1a:11:02:03:04",
            "in-test",
        ])
        .unwrap();
        let Command::Command(c) = cli.command else {
            panic!("not command")
        };
        assert_eq!(
            (c.serial.as_str(), c.timeout_ms, c.json),
            ("rae-1", 250, true)
        );
        assert!(matches!(
            c.action,
            CommandAction::SetAvailability {
                availability: AvailabilityArg::InTest,
                ..
            }
        ));
        let cmd = |rest: &[&str]| {
            let mut args = vec!["command", "--serial", "rae-1"];
            args.extend_from_slice(rest);
            parse(&args)
        };
        assert!(cmd(&["set-esn", "d", "--clear"]).is_ok());
        assert!(
            cmd(&["set-esn", "d", "E1", "--clear"]).is_err(),
            "ESN and --clear"
        );
        assert!(cmd(&["set-esn", "d"]).is_err(), "neither ESN nor --clear");
        assert!(cmd(&["set-availability", "d", "busy"]).is_err());
        assert!(cmd(&["reboot"]).is_err());
        assert!(cmd(&["resync"]).is_ok());
        assert!(parse(&["command", "ping"]).is_err(), "--serial is required");
    }

    #[test]
    fn the_isolation_is_serializable_unless_read_committed_is_asked_for() {
        use crate::apply::sql::Isolation;
        let isolation = |extra: &[&str]| {
            let mut args = vec!["mqtt", "--database-url", "u"];
            args.extend_from_slice(extra);
            let Command::Mqtt(m) = parse(&args).unwrap().command else {
                panic!("not mqtt")
            };
            m.db.options().isolation
        };
        assert_eq!(isolation(&[]), Isolation::Serializable);
        assert_eq!(
            isolation(&["--db-isolation", "read-committed"]),
            Isolation::ReadCommitted
        );
        assert!(parse(&["mqtt", "--database-url", "u", "--db-isolation", "snapshot"]).is_err());
    }

    #[test]
    fn kafka_mode_has_no_command_broker_unless_given() {
        let base = [
            "kafka",
            "--brokers",
            "b",
            "--topic",
            "t",
            "--database-url",
            "u",
        ];
        let Command::Kafka(k) = parse(&base).unwrap().command else {
            panic!("not kafka")
        };
        assert!(k.command_broker.broker().is_none());
        let mut with = base.to_vec();
        with.extend_from_slice(&[
            "--command-mqtt-host",
            "198.18.0.1",
            "--heal-backoff-ms",
            "100",
        ]);
        let Command::Kafka(k) = parse(&with).unwrap().command else {
            panic!("not kafka")
        };
        let broker = k.command_broker.broker().unwrap();
        assert_eq!(
            (broker.mqtt_host.as_str(), broker.mqtt_port),
            ("198.18.0.1", 1883)
        );
        let heal = k.heal.heal_config();
        assert_eq!(heal.policy.backoff_first, Duration::from_millis(100));
    }

    #[test]
    fn tls_flags_go_together_and_reach_the_broker_config() {
        let base = ["mqtt", "--database-url", "u"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        let cli = with(&[
            "--mqtt-tls-ca",
            "/ca.pem",
            "--mqtt-tls-cert",
            "/c.pem",
            "--mqtt-tls-key",
            "/k.pem",
            "--mqtt-tls-server-name",
            "broker.lab",
        ])
        .unwrap();
        let Command::Mqtt(m) = cli.command else {
            panic!("not mqtt")
        };
        let tls = m.broker.broker_config("x").tls.expect("tls set");
        assert_eq!(tls.ca_file, PathBuf::from("/ca.pem"));
        assert_eq!(tls.server_name.as_deref(), Some("broker.lab"));
        assert!(with(&["--mqtt-tls-cert", "/c.pem", "--mqtt-tls-key", "/k.pem"]).is_err());
        assert!(with(&["--mqtt-tls-ca", "/ca.pem", "--mqtt-tls-cert", "/c.pem"]).is_err());
        assert!(with(&["--mqtt-tls-ca", "/ca.pem", "--mqtt-tls-key", "/k.pem"]).is_err());
        let Command::Mqtt(m) = with(&[]).unwrap().command else {
            panic!("not mqtt")
        };
        assert!(m.broker.broker_config("x").tls.is_none());
    }
}
