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
    /// May be left out with `serial_from_certificate`.
    #[serde(default)]
    pub serial: String,
    /// Take the serial from the client certificate's subject CN (`mqtt.tls.cert_file`), the
    /// identity the broker's ACL knows the RAE by; a `serial` given too must be the same.
    #[serde(default)]
    pub serial_from_certificate: bool,
    /// The LAN-side interface the DUTs are plugged into.
    pub lan_interface: String,
    /// Holds `registry.db`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The Unix socket `raectl` sends actions to.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// The group the control socket belongs to (mode 0660): its members may run `raectl`
    /// actions. Resolved by name at start-up (an unknown group stops the start); unset: the
    /// agent's own group.
    #[serde(default)]
    pub control_group: Option<String>,
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
    /// MQTT user name, for brokers that authenticate by password (with or without TLS); a
    /// fleet broker with `use_identity_as_username` takes the certificate's CN instead.
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (its first line), so that the config file can be readable
    /// by more than the agent. Needs `username`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// `username` with the password read from `password_file` by [`Config::load`].
    #[serde(skip)]
    pub credentials: Option<crate::publish::Credentials>,
}

/// TLS to the broker: its certificate verified against `ca_file` and its name (always), and
/// optionally a client certificate, whose CN is the serial the broker's ACL uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the CA (or CAs) that signed the broker's certificate; the only ones trusted.
    pub ca_file: PathBuf,
    /// PEM: the client certificate (and its chain), with `key_file`; both or neither.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM: the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry; defaults to `mqtt.host`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The client certificate's subject CN, read by [`Config::load`].
    #[serde(skip)]
    pub common_name: Option<String>,
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
    #[error("config is not valid: mqtt.tls")]
    Tls {
        #[source]
        source: crate::publish::transport::TransportError,
    },
}

impl Config {
    /// Bounds of `mqtt.tcp_send_buffer_bytes`: below a few packets the link crawls.
    pub const MIN_SEND_BUFFER: u32 = 2048;
    pub const MAX_SEND_BUFFER: u32 = 16 << 20;

    /// [`Config::load`], then [`Config::read_identity`] (the TLS and password files, the serial
    /// from the certificate) and the validation again: what the daemon and `--check-config`
    /// use. `raectl`, which only needs the state directory, need not be able to read the key.
    pub fn load_with_identity(path: &Path, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = Config::load(path, overrides)?;
        config.read_identity()?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses, applies the overrides and validates; reads no file the config names.
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

    /// Reads and checks the TLS files and the password file, and takes the serial from the
    /// certificate when asked to: a file that cannot be used fails the start, not the first
    /// connection.
    pub fn read_identity(&mut self) -> Result<(), ConfigError> {
        self.check_identity_keys()?;
        if let Some(tls) = &mut self.mqtt.tls {
            crate::publish::transport::load(tls, &self.mqtt.host)
                .map_err(|source| ConfigError::Tls { source })?;
            if let Some(cert) = &tls.cert_file {
                let cn = crate::publish::transport::certificate_common_name(cert)
                    .map_err(|source| ConfigError::Tls { source })?;
                tls.common_name = Some(cn);
            }
        }
        if self.agent.serial_from_certificate {
            let tls = self.mqtt.tls.as_ref();
            let (Some(cn), Some(cert)) = (
                tls.and_then(|t| t.common_name.clone()),
                tls.and_then(|t| t.cert_file.clone()),
            ) else {
                return Err(ConfigError::Invalid {
                    key: "agent.serial_from_certificate",
                    reason: "needs a client certificate (mqtt.tls.cert_file)".into(),
                });
            };
            if self.agent.serial.is_empty() {
                self.agent.serial = cn;
            } else if self.agent.serial != cn {
                return Err(ConfigError::Invalid {
                    key: "agent.serial",
                    reason: format!(
                        "{:?} disagrees with the CN {cn:?} of the client certificate {} \
                         (agent.serial_from_certificate = true); remove agent.serial or make \
                         them agree",
                        self.agent.serial,
                        cert.display()
                    ),
                });
            }
        }
        if let Some(path) = &self.mqtt.password_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let password = text.lines().next().unwrap_or_default().to_owned();
            self.mqtt.credentials = Some(crate::publish::Credentials {
                user: self.mqtt.username.clone().unwrap_or_default(),
                password,
            });
        } else if let Some(user) = &self.mqtt.username {
            self.mqtt.credentials = Some(crate::publish::Credentials {
                user: user.clone(),
                password: String::new(),
            });
        }
        Ok(())
    }

    /// The key combinations [`Config::read_identity`] and [`Config::validate`] both refuse.
    fn check_identity_keys(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if let Some(tls) = &self.mqtt.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return invalid(
                    "mqtt.tls",
                    "cert_file and key_file go together (a client certificate needs its key)",
                );
            }
        }
        if self.agent.serial_from_certificate
            && !self
                .mqtt
                .tls
                .as_ref()
                .is_some_and(|t| t.cert_file.is_some())
        {
            return invalid(
                "agent.serial_from_certificate",
                "needs a client certificate (mqtt.tls.cert_file and key_file)",
            );
        }
        if self.mqtt.password_file.is_some() && self.mqtt.username.is_none() {
            return invalid("mqtt.password_file", "needs mqtt.username");
        }
        if self.mqtt.username.as_deref().is_some_and(str::is_empty) {
            return invalid("mqtt.username", "must not be empty");
        }
        Ok(())
    }

    /// When the serial is not the client certificate's CN: a broker whose ACL takes the CN as
    /// the user name refuses every publish on this serial's topics.
    pub fn identity_warning(&self) -> Option<String> {
        let cn = self.mqtt.tls.as_ref()?.common_name.as_deref()?;
        (cn != self.agent.serial).then(|| {
            format!(
                "agent.serial {:?} is not the client certificate's CN {cn:?}: a broker that \
                 uses the certificate as the identity will refuse this agent's publishes",
                self.agent.serial
            )
        })
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
        self.check_identity_keys()?;
        // Filled from the certificate by `read_identity`; until then it may be empty.
        let from_certificate = self.agent.serial_from_certificate && self.agent.serial.is_empty();
        if self.agent.serial.is_empty() && !from_certificate {
            return invalid(
                "agent.serial",
                "is required (or agent.serial_from_certificate = true with a client certificate)"
                    .into(),
            );
        }
        if !from_certificate && !is_valid_serial(&self.agent.serial) {
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
        if let Some(group) = &self.agent.control_group {
            // The name itself is looked up at start-up (the groups of the RAE, not of the
            // machine that checks the file).
            if group.is_empty() || group.contains(':') || group.chars().any(char::is_whitespace) {
                return invalid(
                    "agent.control_group",
                    format!("{group:?} is not a group name"),
                );
            }
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
                serial_from_certificate: false,
                lan_interface: "replay".to_owned(),
                state_dir: default_state_dir(),
                control_socket: default_control_socket(),
                control_group: None,
                status_interval_secs: default_status_interval_secs(),
            },
            mqtt: MqttConfig {
                host: "localhost".to_owned(),
                port: default_mqtt_port(),
                client_id: None,
                keep_alive_secs: default_keep_alive_secs(),
                tcp_send_buffer_bytes: None,
                tls: None,
                username: None,
                password_file: None,
                credentials: None,
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
            "control socket      {} (mode 0660, group {})",
            self.agent.control_socket.display(),
            self.agent
                .control_group
                .as_deref()
                .unwrap_or("of the agent's user")
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
            match &self.mqtt.tls {
                None => "off".to_owned(),
                Some(tls) => format!(
                    "on (CA {}, client certificate {}, server name {})",
                    tls.ca_file.display(),
                    tls.cert_file
                        .as_ref()
                        .map_or("none".to_owned(), |p| p.display().to_string()),
                    tls.server_name.as_deref().unwrap_or(&self.mqtt.host)
                ),
            }
        )?;
        if let Some(user) = &self.mqtt.username {
            writeln!(
                f,
                "mqtt user           {user} (password from file: {})",
                self.mqtt.password_file.is_some()
            )?;
        }
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
        if let Some(warning) = self.identity_warning() {
            write!(f, "\nwarning             {warning}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
