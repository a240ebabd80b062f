//! The bench bed: the lab LAN, mosquitto, a subscriber, and the agent under test started from
//! a chosen binary; plus `raectl` readings and a guard for processes the bench starts itself.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cloud_sink::mqtt_connect::{connect_options, MqttTls};
use cloud_sink::source::mqtt::MqttBrokerConfig;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rae_proto::{AgentState, Mac, Status};
use rae_tests::agent::{raectl, AgentSpec};
use rae_tests::certs::{FleetPki, CLOUD_IDENTITY};
use rae_tests::mqtt_watch::MqttWatch;
use rae_tests::netlab::{wait_until, Lab, LabConfig};
use rae_tests::services::mosquitto::FleetTls;
use rae_tests::services::{BrokerSetup, Mosquitto, MosquittoOptions};
use serde_json::Value;

pub const SERIAL: &str = "BENCH-RAE-1";
pub const WAIT: Duration = Duration::from_secs(60);

/// Which broker the bed runs.
pub enum BrokerKind {
    /// mosquitto on plain TCP, anonymous, with these extra `mosquitto.conf` lines.
    Plain { extra_config: String },
    /// The fleet broker of `deploy/mosquitto/` as shipped (TLS, client certificates, the
    /// per-RAE ACL), with certificates made for this run; the agent connects as its serial,
    /// the subscriber (and [`Bed::cloud_tls`]) as the cloud identity.
    Fleet,
}

/// `target/release/rae-agent`, found from this executable's place in `target/<profile>/`.
pub fn default_agent_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating agent-bench's own executable")?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("agent-bench is not inside a cargo target directory")?;
    Ok(target.join("release").join("rae-agent"))
}

/// A process the bench started in its own process group; the group is ended on drop.
pub struct Guarded {
    child: Child,
    label: String,
    log: PathBuf,
}

impl Guarded {
    pub fn spawn(mut cmd: Command, label: &str, log: PathBuf) -> Result<Guarded> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating a log file handle")?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {label}"))?;
        Ok(Guarded {
            child,
            label: label.to_owned(),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the end of its log if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait().context("checking a process")? {
            let log = self.log();
            let tail = &log[log.len().saturating_sub(3000)..];
            bail!("{} exited ({status}); its log ends:\n{tail}", self.label);
        }
        Ok(())
    }

    /// SIGTERM to the process, then waits up to `grace` for it to exit.
    pub fn terminate(&mut self, grace: Duration) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            let pid = Pid::from_raw(self.child.id() as i32);
            nix::sys::signal::kill(pid, Signal::SIGTERM)
                .with_context(|| format!("SIGTERM to {}", self.label))?;
        }
        wait_until(format!("{} exiting", self.label), grace, || {
            Ok(match self.child.try_wait() {
                Ok(Some(_)) => Ok(()),
                _ => Err("still running".to_owned()),
            })
        })?;
        Ok(())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        let group = Pid::from_raw(self.child.id() as i32);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The lab, the broker, the subscriber and the agent. Fields drop in order: the agent first,
/// the lab (and with it the agent's state directory) last.
pub struct Bed {
    pub agent: Guarded,
    /// Whether `agent` is running (see [`Bed::stop_agent`]).
    pub agent_running: bool,
    agent_bin: PathBuf,
    pub watch: MqttWatch,
    pub spec: AgentSpec,
    /// The agent and the subscriber talk to it; `outage` stops and starts it.
    pub broker: Mosquitto,
    /// The certificates of a [`BrokerKind::Fleet`] bed (removed on drop, after the broker).
    pub pki: Option<FleetPki>,
    pub lab: Lab,
}

impl Bed {
    /// Starts everything. The agent gets the shipped timer defaults (probes every 10 s,
    /// status every 5 s, SSDP/mDNS searches every 5 min) and `gone_after_secs`.
    pub fn start(agent_bin: &Path, gone_after_secs: u64, lab_config: LabConfig) -> Result<Bed> {
        Bed::start_with(
            agent_bin,
            gone_after_secs,
            lab_config,
            "",
            BrokerKind::Plain {
                extra_config: String::new(),
            },
        )
    }

    /// [`Bed::start`] with more config tables for the agent (e.g. `[control]`) and a choice
    /// of broker.
    pub fn start_with(
        agent_bin: &Path,
        gone_after_secs: u64,
        lab_config: LabConfig,
        extra_toml: &str,
        broker_kind: BrokerKind,
    ) -> Result<Bed> {
        let lab = Lab::start(lab_config).context("starting the lab")?;
        let (broker, pki, watch) = match broker_kind {
            BrokerKind::Plain { extra_config } => {
                let broker = Mosquitto::start_setup(
                    MosquittoOptions::default(),
                    BrokerSetup {
                        extra_config,
                        ..BrokerSetup::default()
                    },
                )
                .context("starting mosquitto")?;
                let watch =
                    MqttWatch::start(broker.host(), broker.port(), "bench-watch", &["rae/v1/#"])
                        .context("subscribing to rae/v1/#")?;
                (broker, None, watch)
            }
            BrokerKind::Fleet => {
                let pki = FleetPki::generate(&[]).context("making the fleet certificates")?;
                let identity = pki.broker();
                let broker = Mosquitto::start_fleet(&FleetTls {
                    ca_file: pki.ca_file(),
                    cert_file: identity.cert,
                    key_file: identity.key,
                })
                .context("starting the fleet broker (deploy/mosquitto)")?;
                let options = connect_options(&MqttBrokerConfig {
                    host: broker.host().to_owned(),
                    port: broker.port(),
                    client_id: "bench-watch".to_owned(),
                    keep_alive_secs: 5,
                    tls: Some(cloud_tls(&pki)?),
                    ..MqttBrokerConfig::default()
                })
                .context("the subscriber's TLS options")?;
                // What the fleet ACL lets the cloud read.
                let watch = MqttWatch::start_with_options(
                    options,
                    &[
                        "rae/v1/+/devices/#",
                        "rae/v1/+/status",
                        "rae/v1/+/inventory",
                    ],
                )
                .context("subscribing as the cloud")?;
                (broker, Some(pki), watch)
            }
        };
        let mut spec = AgentSpec::for_lab(
            SERIAL,
            lab.bridge_name(),
            &lab.dir().join("agent"),
            broker.host(),
            broker.port(),
        );
        spec.gone_after_secs = gone_after_secs;
        spec.log_level = "info".to_owned();
        spec.probe_interval_secs = 10;
        spec.snapshot_interval_secs = 300;
        spec.inventory_interval_secs = 60;
        spec.ssdp_search_interval_secs = 300;
        spec.mdns_query_interval_secs = 300;
        spec.status_interval_secs = 5;
        spec.extra_toml = extra_toml.to_owned();
        if let Some(pki) = &pki {
            let identity = pki.client(SERIAL).context("the agent's certificate")?;
            spec.mqtt_extra = format!(
                "[mqtt.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
                pki.ca_file(),
                identity.cert,
                identity.key
            );
        }
        let agent = start_agent(agent_bin, &spec, &watch)?;
        println!(
            "lab slot {} on bridge {}, mosquitto on {}, agent pid {}",
            lab.slot(),
            lab.bridge_name(),
            broker.port(),
            agent.pid()
        );
        Ok(Bed {
            agent,
            agent_running: true,
            agent_bin: agent_bin.to_path_buf(),
            watch,
            spec,
            broker,
            pki,
            lab,
        })
    }

    /// The cloud identity's TLS files on a [`BrokerKind::Fleet`] bed.
    pub fn cloud_tls(&self) -> Result<Option<MqttTls>> {
        self.pki.as_ref().map(cloud_tls).transpose()
    }

    pub fn devices(&self) -> Result<BTreeSet<Mac>> {
        devices(&self.spec)
    }

    /// Stops the agent (SIGTERM, as systemd would): the LAN without it, for a baseline.
    pub fn stop_agent(&mut self) -> Result<()> {
        if self.agent_running {
            self.agent.terminate(Duration::from_secs(20))?;
            self.agent_running = false;
        }
        Ok(())
    }

    /// Starts the agent again on its state directory; returns once it is `online`.
    pub fn start_agent(&mut self) -> Result<()> {
        if !self.agent_running {
            self.agent = start_agent(&self.agent_bin, &self.spec, &self.watch)?;
            self.agent_running = true;
        }
        Ok(())
    }
}

fn cloud_tls(pki: &FleetPki) -> Result<MqttTls> {
    let cloud = pki
        .client(CLOUD_IDENTITY)
        .context("the cloud's certificate")?;
    Ok(MqttTls {
        ca_file: pki.ca_file(),
        cert_file: Some(cloud.cert),
        key_file: Some(cloud.key),
        server_name: None,
    })
}

/// Open sessions as `raectl devices --json` lists them.
pub fn devices(spec: &AgentSpec) -> Result<BTreeSet<Mac>> {
    let json = raectl_json(spec, &["devices", "--json"])?;
    json["devices"]
        .as_array()
        .context("`raectl devices --json` has no devices array")?
        .iter()
        .map(|d| {
            let text = d["mac"].as_str().context("a device without a mac")?;
            text.parse::<Mac>()
                .map_err(|e| anyhow::anyhow!("raectl mac {text:?}: {e:?}"))
        })
        .collect()
}

fn raectl_json(spec: &AgentSpec, args: &[&str]) -> Result<Value> {
    let (status, stdout, stderr) = raectl(spec, args).context("running raectl")?;
    if !status.success() {
        bail!("raectl {} failed ({status}): {stderr}", args.join(" "));
    }
    serde_json::from_str(&stdout).with_context(|| format!("raectl {} output", args.join(" ")))
}

/// A counter of `raectl status --json`, e.g. `("capture", "frames")`.
pub fn status_counter(status: &Value, section: &str, key: &str) -> Result<u64> {
    let value = &status["status"][section][key];
    value
        .as_str()
        .and_then(|v| v.parse().ok())
        .or_else(|| value.as_u64())
        .with_context(|| format!("status has no number at {section}.{key}: {value}"))
}

/// Writes the config and starts the agent; returns once its retained status says `online`.
fn start_agent(bin: &Path, spec: &AgentSpec, watch: &MqttWatch) -> Result<Guarded> {
    std::fs::create_dir_all(&spec.state_dir)
        .with_context(|| format!("creating {}", spec.state_dir.display()))?;
    let config = spec.state_dir.join("config.toml");
    std::fs::write(&config, spec.toml())
        .with_context(|| format!("writing {}", config.display()))?;
    let started = Instant::now();
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&config);
    let mut agent = Guarded::spawn(cmd, "rae-agent", spec.state_dir.join("agent.log"))?;
    let topic = format!("rae/v1/{}/status", spec.serial);
    let online = watch.wait_for("the agent's status `online`", WAIT, |messages| {
        messages
            .iter()
            .filter(|m| m.topic == topic && m.at >= started)
            .find(|m| Status::decode(&m.payload).is_ok_and(|s| s.state == AgentState::Online))
            .map(|_| ())
    });
    if let Err(e) = online {
        agent.ensure_running()?;
        bail!("{e}\nagent log:\n{}", agent.log());
    }
    Ok(agent)
}

/// The `p`th percentile (nearest rank) of sorted `values`.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `n=.. p50=.. p99=.. max=.. min=..` of `values` in milliseconds.
pub fn summary(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    format!(
        "n={} min={:.1} p50={:.1} p99={:.1} max={:.1} ms",
        sorted.len(),
        sorted.first().copied().unwrap_or(f64::NAN),
        percentile(&sorted, 50.0),
        percentile(&sorted, 99.0),
        sorted.last().copied().unwrap_or(f64::NAN),
    )
}
