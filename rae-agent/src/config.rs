//! The agent's configuration: `/etc/rae-agent/config.toml`, overridden by command-line flags.
//!
//! Every table rejects unknown keys, so a typo is an error at start-up rather than a
//! default silently taking its place. Durations are whole seconds in keys ending `_secs`,
//! milliseconds in keys ending `_ms`.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where the daemon looks for its configuration when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/rae-agent/config.toml";

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub agent: AgentConfig,
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub registry: RegistryConfig,
    #[serde(default)]
    pub publish: PublishConfig,
    #[serde(default)]
    pub probe: ProbeConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub disk: DiskConfig,
    #[serde(default)]
    pub control: ControlConfig,
}

/// Who this RAE is and which port it watches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The RAE's serial: `[A-Za-z0-9_-]{1,64}`, also its MQTT user name (the certificate CN).
    pub serial: String,
    /// The LAN-side interface the DUTs are plugged into.
    pub lan_interface: String,
    /// Holds `registry.db`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The Unix socket `raectl` sends actions to.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// How often the counters `raectl status` shows are written to the registry database.
    #[serde(default = "default_status_interval_secs")]
    pub status_interval_secs: u64,
}

/// The broker connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Defaults to the serial.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// The socket's send buffer (SO_SNDBUF; the kernel doubles it), bytes; unset: the
    /// kernel's default and autotuning. A small one bounds what waits in the kernel on a slow
    /// uplink. The broker going silent is detected either way (two keep-alive periods).
    #[serde(default)]
    pub tcp_send_buffer_bytes: Option<u32>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Client-certificate TLS; the certificate's CN is the serial, which the broker's ACL uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// Timers of the registry core.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// How often each known device is probed.
    #[serde(default = "default_probe_interval_secs")]
    pub probe_interval_secs: u64,
    /// Consecutive missed probes before a device is offline (hysteresis).
    #[serde(default = "default_offline_after_misses")]
    pub offline_after_misses: u32,
    /// Offline this long and the session is closed; seen again later, it gets a new session.
    #[serde(default = "default_gone_after_secs")]
    pub gone_after_secs: u64,
    /// An IPv6 address the device has not vouched for (DAD probe, NS/NA, probe answer) this
    /// long, while it kept talking, leaves its record.
    #[serde(default = "default_ipv6_expire_after_secs")]
    pub ipv6_expire_after_secs: u64,
    /// At most this many open sessions; a new MAC at the cap evicts the least recently heard
    /// offline session, or is refused when none is offline (counted either way).
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            probe_interval_secs: default_probe_interval_secs(),
            offline_after_misses: default_offline_after_misses(),
            gone_after_secs: default_gone_after_secs(),
            ipv6_expire_after_secs: default_ipv6_expire_after_secs(),
            max_sessions: default_max_sessions(),
        }
    }
}

/// What goes to the broker and how much may wait for it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Periodic Snapshot of every open session (jittered).
    #[serde(default = "default_snapshot_interval_secs")]
    pub snapshot_interval_secs: u64,
    #[serde(default = "default_inventory_interval_secs")]
    pub inventory_interval_secs: u64,
    /// Over this many bytes of unsent events, a session's pending Deltas collapse into a Snapshot.
    #[serde(default = "default_outbox_max_bytes")]
    pub outbox_max_bytes: u64,
    /// Quiet events are committed (and published) at once, events under load share a commit
    /// (one fsync) for up to `commit_max_delay_ms`; `false`: every event waits that long (a
    /// fixed batch: fewer flash writes, slower detection).
    #[serde(default = "default_true")]
    pub commit_adaptive: bool,
    /// Longest wait of an event for its commit.
    #[serde(default = "default_commit_max_delay_ms")]
    pub commit_max_delay_ms: u64,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            snapshot_interval_secs: default_snapshot_interval_secs(),
            inventory_interval_secs: default_inventory_interval_secs(),
            outbox_max_bytes: default_outbox_max_bytes(),
            commit_adaptive: true,
            commit_max_delay_ms: default_commit_max_delay_ms(),
        }
    }
}

/// Active probes: liveness (ARP / NS) limits and the identification probes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Liveness probes (ARP requests and Neighbor Solicitations) per second, all devices
    /// together; probes over the limit wait for the next round and are counted.
    #[serde(default = "default_probes_per_sec")]
    pub max_per_sec: u32,
    /// SSDP M-SEARCH, then UPnP description and DIAL application fetches.
    #[serde(default = "default_true")]
    pub ssdp: bool,
    #[serde(default = "default_search_interval_secs")]
    pub ssdp_search_interval_secs: u64,
    /// DNS-SD queries on the LAN port (answers are read from the capture).
    #[serde(default = "default_true")]
    pub mdns: bool,
    #[serde(default = "default_search_interval_secs")]
    pub mdns_query_interval_secs: u64,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            max_per_sec: default_probes_per_sec(),
            ssdp: true,
            ssdp_search_interval_secs: default_search_interval_secs(),
            mdns: true,
            mdns_query_interval_secs: default_search_interval_secs(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter directive such as `info` or `rae_agent=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
    /// Recurring warnings (refused MACs, coalescing, drops) of one kind: at most this many
    /// lines a minute, then one summary line with the number suppressed.
    #[serde(default = "default_log_max_per_minute")]
    pub max_per_minute: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::default(),
            max_per_minute: default_log_max_per_minute(),
        }
    }
}

/// The free-disk floor of the filesystem that holds `state_dir`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Below this many free bytes the agent is short of disk ...
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// ... or below this percentage of the filesystem free (the higher floor applies).
    #[serde(default = "default_min_free_percent")]
    pub min_free_percent: u8,
    /// Short of disk, the outbox quota drops to this (capped at `publish.outbox_max_bytes`),
    /// so a broker outage coalesces harder instead of filling the flash.
    #[serde(default = "default_low_outbox_max_bytes")]
    pub low_outbox_max_bytes: u64,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            min_free_bytes: default_min_free_bytes(),
            min_free_percent: default_min_free_percent(),
            low_outbox_max_bytes: default_low_outbox_max_bytes(),
        }
    }
}

/// Commands, from the cloud (`cmd/` topics) and from `raectl`: how many the agent carries
/// out, and how long it remembers a cloud command's reply to answer a redelivery.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Commands carried out per second, cloud and `raectl` together (each costs a commit);
    /// over it a command gets a `rate_limited` reply and no effect, counted.
    #[serde(default = "default_max_commands_per_sec")]
    pub max_commands_per_sec: u32,
    /// Commands that may come at once before the rate applies (the token bucket's size).
    #[serde(default = "default_command_burst")]
    pub burst: u32,
    /// A cloud command seen again with the same requester and correlation data within this
    /// window gets the earlier reply and has no second effect.
    #[serde(default = "default_duplicate_window_secs")]
    pub duplicate_window_secs: u64,
    /// Replies remembered for that, at most (the oldest go first, counted).
    #[serde(default = "default_duplicate_max_entries")]
    pub duplicate_max_entries: u32,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            max_commands_per_sec: default_max_commands_per_sec(),
            burst: default_command_burst(),
            duplicate_window_secs: default_duplicate_window_secs(),
            duplicate_max_entries: default_duplicate_max_entries(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/rae-agent")
}
fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/rae-agent/control.sock")
}
fn default_status_interval_secs() -> u64 {
    5
}
fn default_mqtt_port() -> u16 {
    1883
}
fn default_keep_alive_secs() -> u64 {
    30
}
fn default_probe_interval_secs() -> u64 {
    10
}
fn default_offline_after_misses() -> u32 {
    3
}
fn default_gone_after_secs() -> u64 {
    600
}
fn default_ipv6_expire_after_secs() -> u64 {
    1800
}

fn default_max_sessions() -> u64 {
    4096
}

fn default_snapshot_interval_secs() -> u64 {
    300
}
fn default_inventory_interval_secs() -> u64 {
    60
}
fn default_outbox_max_bytes() -> u64 {
    16 * 1024 * 1024
}
fn default_commit_max_delay_ms() -> u64 {
    100
}
/// Enough for the default cap (4096 devices, one ARP or NS every 10 s: 410/s) with room for
/// devices with IPv6 addresses too; 1000 frames of ~60 bytes a second is nothing on a LAN.
fn default_probes_per_sec() -> u32 {
    1000
}
fn default_true() -> bool {
    true
}
fn default_search_interval_secs() -> u64 {
    300
}
fn default_log_max_per_minute() -> u32 {
    10
}
fn default_min_free_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_min_free_percent() -> u8 {
    5
}
fn default_low_outbox_max_bytes() -> u64 {
    1024 * 1024
}
/// An operator resyncing or relabelling a rack of devices by script stays well under it; a
/// runaway requester costs at most this many commits a second.
fn default_max_commands_per_sec() -> u32 {
    20
}
fn default_command_burst() -> u32 {
    100
}
/// Longer than a requester's retries through a broker reconnect take.
fn default_duplicate_window_secs() -> u64 {
    600
}
fn default_duplicate_max_entries() -> u32 {
    1024
}
fn default_log_level() -> String {
    "info".to_string()
}

/// Values given on the command line; each one that is set replaces the file's value.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub serial: Option<String>,
    pub lan_interface: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub mqtt_host: Option<String>,
    pub mqtt_port: Option<u16>,
    pub log_level: Option<String>,
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config is not valid: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Bounds of `mqtt.tcp_send_buffer_bytes`: below a few packets the link crawls.
    pub const MIN_SEND_BUFFER: u32 = 2048;
    pub const MAX_SEND_BUFFER: u32 = 16 << 20;

    /// Reads, parses, applies the overrides and validates.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })?;
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; does not validate (see [`Config::validate`]).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: PathBuf::new(),
            message: err.to_string(),
        })
    }

    pub fn apply(&mut self, overrides: &Overrides) {
        if let Some(serial) = &overrides.serial {
            self.agent.serial = serial.clone();
        }
        if let Some(interface) = &overrides.lan_interface {
            self.agent.lan_interface = interface.clone();
        }
        if let Some(dir) = &overrides.state_dir {
            self.agent.state_dir = dir.clone();
        }
        if let Some(host) = &overrides.mqtt_host {
            self.mqtt.host = host.clone();
        }
        if let Some(port) = overrides.mqtt_port {
            self.mqtt.port = port;
        }
        if let Some(level) = &overrides.log_level {
            self.log.level = level.clone();
        }
    }

    /// When `probe.max_per_sec` cannot probe `registry.max_sessions` devices once a round: a
    /// silent device whose probe the limit held back misses the round, and enough misses take
    /// it offline although it is there. Not an error (a lab may never get near the cap), but
    /// said at start and by `--check-config`.
    pub fn probe_budget_warning(&self) -> Option<String> {
        let r = &self.registry;
        let needed = r.max_sessions.div_ceil(r.probe_interval_secs.max(1));
        (u64::from(self.probe.max_per_sec) < needed).then(|| {
            format!(
                "probe.max_per_sec = {} probes fewer than registry.max_sessions = {} devices need                  at one probe every {} s ({needed}/s): beyond {} devices, silent ones may be                  reported offline",
                self.probe.max_per_sec,
                r.max_sessions,
                r.probe_interval_secs,
                u64::from(self.probe.max_per_sec) * r.probe_interval_secs
            )
        })
    }

    /// Checks what the types cannot: names, ranges and how the timers relate.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if !is_valid_serial(&self.agent.serial) {
            return invalid(
                "agent.serial",
                format!(
                    "{:?} must be 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'",
                    self.agent.serial
                ),
            );
        }
        let iface = &self.agent.lan_interface;
        // Linux interface names: at most 15 bytes, no '/', no whitespace.
        if iface.is_empty()
            || iface.len() > 15
            || iface.contains('/')
            || iface.chars().any(char::is_whitespace)
        {
            return invalid(
                "agent.lan_interface",
                format!("{iface:?} is not a Linux interface name"),
            );
        }
        if self.agent.status_interval_secs == 0 {
            return invalid("agent.status_interval_secs", "must be at least 1".into());
        }
        if self.mqtt.host.trim().is_empty() {
            return invalid("mqtt.host", "must not be empty".into());
        }
        if self.mqtt.port == 0 {
            return invalid("mqtt.port", "must be 1 to 65535".into());
        }
        if self.mqtt.keep_alive_secs < 5 {
            return invalid(
                "mqtt.keep_alive_secs",
                format!("{} is below the minimum of 5", self.mqtt.keep_alive_secs),
            );
        }
        if let Some(bytes) = self.mqtt.tcp_send_buffer_bytes {
            if !(Self::MIN_SEND_BUFFER..=Self::MAX_SEND_BUFFER).contains(&bytes) {
                return invalid(
                    "mqtt.tcp_send_buffer_bytes",
                    format!(
                        "{bytes} is outside {}..={}",
                        Self::MIN_SEND_BUFFER,
                        Self::MAX_SEND_BUFFER
                    ),
                );
            }
        }
        let r = &self.registry;
        if r.probe_interval_secs == 0 {
            return invalid("registry.probe_interval_secs", "must be at least 1".into());
        }
        if r.offline_after_misses == 0 {
            return invalid("registry.offline_after_misses", "must be at least 1".into());
        }
        let offline_after = r
            .probe_interval_secs
            .saturating_mul(u64::from(r.offline_after_misses));
        if r.gone_after_secs <= offline_after {
            return invalid(
                "registry.gone_after_secs",
                format!(
                    "{} must be longer than probe_interval_secs x offline_after_misses ({offline_after})",
                    r.gone_after_secs
                ),
            );
        }
        // A probed address is vouched for once per probe round; a shorter expiry would drop
        // addresses the device still answers for.
        if r.ipv6_expire_after_secs <= r.probe_interval_secs {
            return invalid(
                "registry.ipv6_expire_after_secs",
                format!(
                    "{} must be longer than probe_interval_secs ({})",
                    r.ipv6_expire_after_secs, r.probe_interval_secs
                ),
            );
        }
        if !(1..=1_000_000).contains(&r.max_sessions) {
            return invalid(
                "registry.max_sessions",
                format!("{} is not in 1..=1000000", r.max_sessions),
            );
        }
        let p = &self.publish;
        if p.snapshot_interval_secs == 0 || p.inventory_interval_secs == 0 {
            return invalid(
                "publish",
                "snapshot_interval_secs and inventory_interval_secs must be at least 1".into(),
            );
        }
        if p.outbox_max_bytes < 64 * 1024 {
            return invalid(
                "publish.outbox_max_bytes",
                format!("{} is below the minimum of 65536", p.outbox_max_bytes),
            );
        }
        if !(1..=10_000).contains(&p.commit_max_delay_ms) {
            return invalid(
                "publish.commit_max_delay_ms",
                format!("{} is not in 1..=10000", p.commit_max_delay_ms),
            );
        }
        let pr = &self.probe;
        if pr.max_per_sec == 0 {
            return invalid("probe.max_per_sec", "must be at least 1".into());
        }
        if pr.ssdp_search_interval_secs == 0 || pr.mdns_query_interval_secs == 0 {
            return invalid(
                "probe",
                "ssdp_search_interval_secs and mdns_query_interval_secs must be at least 1".into(),
            );
        }
        if self.mqtt.tls.is_some() {
            return invalid(
                "mqtt.tls",
                "this build has no TLS support; remove [mqtt.tls] or use a TLS-terminating proxy"
                    .into(),
            );
        }
        if self.log.max_per_minute == 0 {
            return invalid("log.max_per_minute", "must be at least 1".into());
        }
        let d = &self.disk;
        if d.min_free_percent > 50 {
            return invalid(
                "disk.min_free_percent",
                format!("{} is not in 0..=50", d.min_free_percent),
            );
        }
        if d.low_outbox_max_bytes < 64 * 1024 {
            return invalid(
                "disk.low_outbox_max_bytes",
                format!("{} is below the minimum of 65536", d.low_outbox_max_bytes),
            );
        }
        let c = &self.control;
        if !(1..=10_000).contains(&c.max_commands_per_sec) {
            return invalid(
                "control.max_commands_per_sec",
                format!("{} is not in 1..=10000", c.max_commands_per_sec),
            );
        }
        if !(1..=100_000).contains(&c.burst) {
            return invalid("control.burst", format!("{} is not in 1..=100000", c.burst));
        }
        if !(1..=86_400).contains(&c.duplicate_window_secs) {
            return invalid(
                "control.duplicate_window_secs",
                format!("{} is not in 1..=86400", c.duplicate_window_secs),
            );
        }
        if !(1..=1_000_000).contains(&c.duplicate_max_entries) {
            return invalid(
                "control.duplicate_max_entries",
                format!("{} is not in 1..=1000000", c.duplicate_max_entries),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return invalid(
                "log.level",
                format!("{:?} is not a tracing filter", self.log.level),
            );
        }
        Ok(())
    }

    /// The defaults, for `--pcap` replays without a config file (no interface, no broker).
    pub fn for_replay() -> Config {
        Config {
            agent: AgentConfig {
                serial: "REPLAY".to_owned(),
                lan_interface: "replay".to_owned(),
                state_dir: default_state_dir(),
                control_socket: default_control_socket(),
                status_interval_secs: default_status_interval_secs(),
            },
            mqtt: MqttConfig {
                host: "localhost".to_owned(),
                port: default_mqtt_port(),
                client_id: None,
                keep_alive_secs: default_keep_alive_secs(),
                tcp_send_buffer_bytes: None,
                tls: None,
            },
            registry: RegistryConfig::default(),
            publish: PublishConfig::default(),
            probe: ProbeConfig::default(),
            log: LogConfig::default(),
            disk: DiskConfig::default(),
            control: ControlConfig::default(),
        }
    }

    /// The MQTT client id: the configured one, else the serial.
    pub fn client_id(&self) -> &str {
        self.mqtt.client_id.as_deref().unwrap_or(&self.agent.serial)
    }
}

/// `[A-Za-z0-9_-]{1,64}`, the serial as DESIGN section 3 defines it.
fn is_valid_serial(serial: &str) -> bool {
    (1..=64).contains(&serial.len())
        && serial
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl fmt::Display for Config {
    /// The effective configuration, as `--check-config` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.registry;
        let p = &self.publish;
        writeln!(f, "serial              {}", self.agent.serial)?;
        writeln!(f, "lan interface       {}", self.agent.lan_interface)?;
        writeln!(f, "state dir           {}", self.agent.state_dir.display())?;
        writeln!(
            f,
            "control socket      {}",
            self.agent.control_socket.display()
        )?;
        writeln!(
            f,
            "status              written every {} s",
            self.agent.status_interval_secs
        )?;
        writeln!(
            f,
            "mqtt                {}:{} client id {} keep-alive {} s, tls {}",
            self.mqtt.host,
            self.mqtt.port,
            self.client_id(),
            self.mqtt.keep_alive_secs,
            if self.mqtt.tls.is_some() { "on" } else { "off" }
        )?;
        writeln!(
            f,
            "probes              every {} s, offline after {} misses, gone after {} s, \
             unseen IPv6 addresses dropped after {} s",
            r.probe_interval_secs,
            r.offline_after_misses,
            r.gone_after_secs,
            r.ipv6_expire_after_secs
        )?;
        writeln!(
            f,
            "publish             snapshots every {} s, inventory every {} s, outbox quota {} bytes",
            p.snapshot_interval_secs, p.inventory_interval_secs, p.outbox_max_bytes
        )?;
        writeln!(
            f,
            "bounds              at most {} sessions; disk floor {} bytes or {}% free, \
             below it outbox quota {} bytes; at most {} log lines a minute per kind",
            r.max_sessions,
            self.disk.min_free_bytes,
            self.disk.min_free_percent,
            self.disk.low_outbox_max_bytes,
            self.log.max_per_minute
        )?;
        writeln!(
            f,
            "store commits       {}, events wait at most {} ms",
            if p.commit_adaptive {
                "adaptive (quiet: at once)"
            } else {
                "fixed batch"
            },
            p.commit_max_delay_ms
        )?;
        let pr = &self.probe;
        let onoff = |on: bool, secs: u64| {
            if on {
                format!("every {secs} s")
            } else {
                "off".to_string()
            }
        };
        writeln!(
            f,
            "active probes       at most {}/s; ssdp {}; mdns {}",
            pr.max_per_sec,
            onoff(pr.ssdp, pr.ssdp_search_interval_secs),
            onoff(pr.mdns, pr.mdns_query_interval_secs)
        )?;
        let c = &self.control;
        writeln!(
            f,
            "commands            at most {}/s (burst {}); duplicates answered for {} s, \
             at most {} replies remembered",
            c.max_commands_per_sec, c.burst, c.duplicate_window_secs, c.duplicate_max_entries
        )?;
        write!(
            f,
            "log                 {} ({:?})",
            self.log.level, self.log.format
        )?;
        if let Some(warning) = self.probe_budget_warning() {
            write!(f, "\nwarning             {warning}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
