//! The real `rae-agent` binary as a lab process: a config written for the lab (its bridge is
//! the RAE's LAN port, the broker on loopback, short timers), started, stopped with SIGTERM,
//! killed with SIGKILL, restarted on the same state directory; and `raectl` run against that
//! state directory.
//!
//! The binaries are the ones `cargo build` put next to the test executable's directory
//! (`target/<profile>/`); `scripts/test` builds the workspace before it runs the tests.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::mqtt_watch::MqttWatch;
use crate::netlab::{LabError, LabProcess, Result};

/// What the agent is configured with; timers in seconds.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub serial: String,
    pub interface: String,
    pub state_dir: PathBuf,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// More lines for the `[mqtt]` table (e.g. `tcp_send_buffer_bytes = 4096`).
    pub mqtt_extra: String,
    /// More lines for the `[agent]` table (e.g. `serial_from_certificate = true`).
    pub agent_extra: String,
    pub probe_interval_secs: u64,
    pub offline_after_misses: u32,
    pub gone_after_secs: u64,
    pub snapshot_interval_secs: u64,
    pub inventory_interval_secs: u64,
    pub ssdp: bool,
    pub ssdp_search_interval_secs: u64,
    pub mdns: bool,
    pub mdns_query_interval_secs: u64,
    pub status_interval_secs: u64,
    pub log_level: String,
    /// Extra environment for the agent process (fault-injection variables).
    pub env: Vec<(String, String)>,
    /// `registry.max_sessions`, `publish.outbox_max_bytes`, `probe.max_per_sec`: the agent's
    /// defaults when `None`.
    pub max_sessions: Option<u64>,
    pub outbox_max_bytes: Option<u64>,
    pub probes_per_sec: Option<u32>,
    /// `agent.control_socket`; `for_lab` puts it in the state dir.
    pub control_socket: PathBuf,
    /// `agent.control_group`; the agent's default (its own group) when `None`.
    pub control_group: Option<String>,
    /// More tables appended to the config (e.g. `[control]`).
    pub extra_toml: String,
}

impl AgentSpec {
    /// Test timers: probes every second, offline after 3 misses, gone after 20 s.
    pub fn for_lab(
        serial: &str,
        interface: &str,
        state_dir: &Path,
        mqtt_host: &str,
        mqtt_port: u16,
    ) -> AgentSpec {
        AgentSpec {
            serial: serial.to_owned(),
            interface: interface.to_owned(),
            state_dir: state_dir.to_path_buf(),
            mqtt_host: mqtt_host.to_owned(),
            mqtt_port,
            mqtt_extra: String::new(),
            agent_extra: String::new(),
            probe_interval_secs: 1,
            offline_after_misses: 3,
            gone_after_secs: 20,
            snapshot_interval_secs: 300,
            inventory_interval_secs: 5,
            ssdp: true,
            ssdp_search_interval_secs: 5,
            mdns: true,
            mdns_query_interval_secs: 5,
            status_interval_secs: 1,
            log_level: "info,rae_agent=debug".to_owned(),
            env: Vec::new(),
            max_sessions: None,
            outbox_max_bytes: None,
            probes_per_sec: None,
            control_socket: state_dir.join("control.sock"),
            control_group: None,
            extra_toml: String::new(),
        }
    }

    pub fn toml(&self) -> String {
        let optional = |key: &str, value: Option<String>| {
            value.map_or_else(String::new, |v| format!("{key} = {v}\n"))
        };
        let registry = optional("max_sessions", self.max_sessions.map(|v| v.to_string()));
        let publish = optional(
            "outbox_max_bytes",
            self.outbox_max_bytes.map(|v| v.to_string()),
        );
        let probe = optional("max_per_sec", self.probes_per_sec.map(|v| v.to_string()));
        let control_group = optional(
            "control_group",
            self.control_group.as_ref().map(|g| format!("{g:?}")),
        );
        format!(
            "[agent]\nserial = {:?}\nlan_interface = {:?}\nstate_dir = {:?}\n\
             control_socket = {:?}\n{}status_interval_secs = {}\n{}\n\
             [mqtt]\nhost = {:?}\nport = {}\nkeep_alive_secs = 5\n{}\n\
             [registry]\nprobe_interval_secs = {}\noffline_after_misses = {}\ngone_after_secs = {}\n{}\
             [publish]\nsnapshot_interval_secs = {}\ninventory_interval_secs = {}\n{}\
             [probe]\nssdp = {}\nssdp_search_interval_secs = {}\nmdns = {}\nmdns_query_interval_secs = {}\n{}\
             [log]\nlevel = {:?}\n{}",
            self.serial,
            self.interface,
            self.state_dir.display().to_string(),
            self.control_socket.display().to_string(),
            control_group,
            self.status_interval_secs,
            self.agent_extra,
            self.mqtt_host,
            self.mqtt_port,
            self.mqtt_extra,
            self.probe_interval_secs,
            self.offline_after_misses,
            self.gone_after_secs,
            registry,
            self.snapshot_interval_secs,
            self.inventory_interval_secs,
            publish,
            self.ssdp,
            self.ssdp_search_interval_secs,
            self.mdns,
            self.mdns_query_interval_secs,
            probe,
            self.log_level,
            self.extra_toml,
        )
    }

    pub fn database(&self) -> PathBuf {
        self.state_dir.join("registry.db")
    }
}

/// A running `rae-agent`; killed (with its group) when dropped.
#[derive(Debug)]
pub struct Agent {
    process: LabProcess,
    spec: AgentSpec,
}

/// `target/<profile>/<name>`, next to the directory of the running test executable.
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| LabError::io("locating the test executable", Path::new("."), e))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test executables live in target/<profile>/deps; binaries in target/<profile>.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        return Err(LabError::MissingBinary {
            binary: path.display().to_string(),
            hint: "build the workspace first (`cargo build --workspace`)".to_owned(),
        });
    }
    Ok(path)
}

impl Agent {
    /// Writes the config into the state directory and starts the agent.
    pub fn start(spec: &AgentSpec) -> Result<Agent> {
        std::fs::create_dir_all(&spec.state_dir)
            .map_err(|e| LabError::io("creating the agent's state dir", &spec.state_dir, e))?;
        let config = spec.state_dir.join("config.toml");
        std::fs::write(&config, spec.toml())
            .map_err(|e| LabError::io("writing the agent's config", &config, e))?;
        let mut cmd = Command::new(workspace_binary("rae-agent")?);
        cmd.arg("--config").arg(&config);
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        let log = spec.state_dir.join("agent.log");
        let process = LabProcess::spawn(cmd, log)?;
        Ok(Agent {
            process,
            spec: spec.clone(),
        })
    }

    /// Starts the agent and waits up to `timeout` for its retained `online` status, which it
    /// publishes once its capture runs and the broker took its connection: a DUT that joins
    /// after this is seen from its first frame. Also returns when the start was, so a test can
    /// tell this run's messages from an earlier one's.
    pub fn start_online(
        spec: &AgentSpec,
        watch: &MqttWatch,
        timeout: Duration,
    ) -> Result<(Agent, Instant)> {
        let started = Instant::now();
        let agent = Agent::start(spec)?;
        let topic = format!("rae/v1/{}/status", spec.serial);
        watch
            .wait_for("the agent's status `online`", timeout, |messages| {
                messages
                    .iter()
                    .filter(|m| m.topic == topic && m.at >= started)
                    .find(|m| {
                        rae_proto::Status::decode(&m.payload)
                            .is_ok_and(|s| s.state == rae_proto::AgentState::Online)
                    })
                    .map(|_| ())
            })
            .map_err(|e| match e {
                LabError::Timeout { what, waited, last } => LabError::Timeout {
                    what,
                    waited,
                    last: format!("{last}\nagent log:\n{}", agent.log_tail()),
                },
                other => other,
            })?;
        Ok((agent, started))
    }

    pub fn spec(&self) -> &AgentSpec {
        &self.spec
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// Fails with the agent's log if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }

    /// SIGTERM, then waits up to `grace` for it to exit by itself.
    pub fn terminate(mut self, grace: Duration) -> Result<ExitStatus> {
        self.process.signal(Signal::SIGTERM)?;
        self.process.wait_exit(grace)
    }

    /// SIGKILL: the crash or power-loss case (nothing gets to run on the way out).
    pub fn kill(mut self) -> Result<ExitStatus> {
        self.process.signal(Signal::SIGKILL)?;
        self.process.wait_exit(Duration::from_secs(10))
    }
}

/// Runs `raectl` with `args` against the spec's database; returns (status, stdout, stderr).
pub fn raectl(spec: &AgentSpec, args: &[&str]) -> Result<(ExitStatus, String, String)> {
    let bin = workspace_binary("raectl")?;
    let out = Command::new(&bin)
        .arg("--db")
        .arg(spec.database())
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: format!("{} {}", bin.display(), args.join(" ")),
            source,
        })?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
