//! A single-node Apache Kafka in KRaft mode (broker and controller in one JVM) on two
//! loopback ports, from the jars `scripts/setup` puts in `tests/kafka/lib`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::ports::{retry_on_port_clash, PortLease};
use super::process::{ensure_stopped, run_to_end, stop_slot, Launch, ServiceProcess};
use super::ServiceError;
use crate::labdir::OwnedDir;

const SERVICE: &str = "kafka";
const READY_WITHIN: Duration = Duration::from_secs(60);
const TOPIC_READY_WITHIN: Duration = Duration::from_secs(30);
const METADATA_TIMEOUT: Duration = Duration::from_secs(1);
const SETUP_HINT: &str = "run scripts/setup, which fetches the Kafka jars with Maven \
     (see tests/kafka/README.md)";
/// The machine is small and shared: a small heap, the serial collector, no perf-data file
/// in /tmp that a killed JVM would leave behind.
const JVM_FLAGS: &[&str] = &[
    "-Xms256m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:-UsePerfData",
    "-Djava.awt.headless=true",
];

#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// Partitions of a topic created without a count (auto-created topics).
    pub num_partitions: i32,
    /// Off by default: a test creates its topics, so a typo in a topic name fails loudly.
    pub auto_create_topics: bool,
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            num_partitions: 3,
            auto_create_topics: false,
        }
    }
}

/// A running Kafka node; stopped and its data removed on drop.
#[derive(Debug)]
pub struct Kafka {
    // Fields drop in order: the JVM goes before its ports and its directory.
    process: Option<ServiceProcess>,
    broker: PortLease,
    controller: PortLease,
    dir: OwnedDir,
    java: PathBuf,
}

impl Kafka {
    pub fn start() -> Result<Kafka, ServiceError> {
        Kafka::start_with(KafkaOptions::default())
    }

    pub fn start_with(options: KafkaOptions) -> Result<Kafka, ServiceError> {
        let lib = jar_dir()?;
        let java = find_java()?;
        let dir = OwnedDir::create(SERVICE)
            .map_err(|e| ServiceError::io("creating the Kafka dir", super::lab_root(), e))?;
        write_log_config(dir.path())?;
        let (broker, controller, process) = retry_on_port_clash(SERVICE, || {
            let broker = PortLease::acquire()?;
            let controller = PortLease::acquire()?;
            write_server_properties(dir.path(), broker.port(), controller.port(), &options)?;
            format_storage(&java, &lib, dir.path())?;
            let process = launch(&java, &lib, dir.path(), broker.port())?;
            Ok((broker, controller, process))
        })?;
        Ok(Kafka {
            process: Some(process),
            broker,
            controller,
            dir,
            java,
        })
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        format!("127.0.0.1:{}", self.broker.port())
    }

    pub fn port(&self) -> u16 {
        self.broker.port()
    }

    pub fn controller_port(&self) -> u16 {
        self.controller.port()
    }

    /// A client config with `bootstrap.servers` set, for producers, consumers and admins.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.bootstrap_servers());
        config
    }

    /// Creates a topic (replication factor 1) and waits until every partition has a leader.
    pub async fn create_topic(&self, name: &str, partitions: i32) -> Result<(), ServiceError> {
        let admin: AdminClient<DefaultClientContext> =
            self.client_config()
                .create()
                .map_err(|source| ServiceError::Kafka {
                    what: "creating an admin client".into(),
                    source,
                })?;
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let options = AdminOptions::new().operation_timeout(Some(TOPIC_READY_WITHIN));
        let results = admin
            .create_topics([&topic], &options)
            .await
            .map_err(|source| ServiceError::Kafka {
                what: format!("creating topic {name}"),
                source,
            })?;
        for result in results {
            if let Err((topic, code)) = result {
                return Err(ServiceError::KafkaState {
                    what: format!("creating topic {topic}: {code}"),
                });
            }
        }
        let config = self.client_config();
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || wait_for_leaders(&config, &name, partitions))
            .await
            .map_err(|e| ServiceError::KafkaState {
                what: format!("waiting for partition leaders: {e}"),
            })?
    }

    /// The node's directory (config, data, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("kafka.log")
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Stops the node (controlled shutdown); data and ports stay for [`Kafka::start_again`].
    pub fn stop(&mut self) -> Result<(), ServiceError> {
        stop_slot(SERVICE, &mut self.process)
    }

    /// Starts the stopped node again with its data, on the same ports.
    pub fn start_again(&mut self) -> Result<(), ServiceError> {
        ensure_stopped(SERVICE, &self.process)?;
        let lib = jar_dir()?;
        self.process = Some(launch(&self.java, &lib, self.dir.path(), self.port())?);
        Ok(())
    }
}

/// `tests/kafka/lib`, checked to hold the broker's jar.
fn jar_dir() -> Result<PathBuf, ServiceError> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("kafka")
        .join("lib");
    let has_broker = std::fs::read_dir(&lib).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("kafka_2.13-") && name.ends_with(".jar")
        })
    });
    if has_broker {
        Ok(lib)
    } else {
        Err(ServiceError::Missing {
            service: SERVICE,
            missing: format!(
                "the Kafka broker jar (kafka_2.13-*.jar) in {}",
                lib.display()
            ),
            hint: SETUP_HINT,
        })
    }
}

/// `$JAVA_HOME/bin/java`, else `java` on PATH.
fn find_java() -> Result<PathBuf, ServiceError> {
    let from_home = std::env::var_os("JAVA_HOME").map(|home| Path::new(&home).join("bin/java"));
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("java"))
            .find(|p| p.is_file())
    });
    from_home
        .filter(|p| p.is_file())
        .or(from_path)
        .ok_or_else(|| ServiceError::Missing {
            service: SERVICE,
            missing: "java (Java 17 or newer)".into(),
            hint: "install the Debian package openjdk-17-jre-headless (scripts/setup does)",
        })
}

fn write_file(path: &Path, text: &str) -> Result<(), ServiceError> {
    std::fs::write(path, text).map_err(|e| ServiceError::io("writing Kafka config", path, e))
}

fn write_server_properties(
    dir: &Path,
    broker: u16,
    controller: u16,
    options: &KafkaOptions,
) -> Result<(), ServiceError> {
    // A static voter set: one node that is its own quorum, formatted without --standalone.
    let properties = format!(
        "process.roles=broker,controller\n\
         node.id=1\n\
         controller.quorum.voters=1@127.0.0.1:{controller}\n\
         listeners=PLAINTEXT://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}\n\
         advertised.listeners=PLAINTEXT://127.0.0.1:{broker}\n\
         controller.listener.names=CONTROLLER\n\
         inter.broker.listener.name=PLAINTEXT\n\
         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         log.dirs={data}\n\
         num.partitions={partitions}\n\
         auto.create.topics.enable={auto_create}\n\
         offsets.topic.replication.factor=1\n\
         offsets.topic.num.partitions=3\n\
         transaction.state.log.replication.factor=1\n\
         transaction.state.log.min.isr=1\n\
         transaction.state.log.num.partitions=3\n\
         share.coordinator.state.topic.replication.factor=1\n\
         share.coordinator.state.topic.min.isr=1\n\
         group.initial.rebalance.delay.ms=0\n\
         num.network.threads=2\n\
         num.io.threads=2\n\
         num.recovery.threads.per.data.dir=1\n",
        data = dir.join("data").display(),
        partitions = options.num_partitions,
        auto_create = options.auto_create_topics,
    );
    write_file(&dir.join("server.properties"), &properties)
}

/// Log4j2 config: everything to stdout, which goes to kafka.log.
fn write_log_config(dir: &Path) -> Result<(), ServiceError> {
    write_file(
        &dir.join("log4j2.properties"),
        "status = warn\n\
         appender.out.type = Console\n\
         appender.out.name = out\n\
         appender.out.target = SYSTEM_OUT\n\
         appender.out.layout.type = PatternLayout\n\
         appender.out.layout.pattern = [%d] %p %m (%c)%n\n\
         rootLogger.level = INFO\n\
         rootLogger.appenderRef.out.ref = out\n\
         logger.request.name = kafka.request.logger\n\
         logger.request.level = WARN\n",
    )
}

fn java_command(java: &Path, lib: &Path, dir: &Path) -> Command {
    let mut command = Command::new(java);
    command
        .args(JVM_FLAGS)
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            dir.join("log4j2.properties").display()
        ))
        .arg("-cp")
        // The JVM expands the wildcard itself.
        .arg(format!("{}/*", lib.display()))
        .current_dir(dir);
    command
}

/// Formats a fresh metadata log (a retry on other ports starts from an empty data dir).
fn format_storage(java: &Path, lib: &Path, dir: &Path) -> Result<(), ServiceError> {
    let data = dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data)
            .map_err(|e| ServiceError::io("clearing the Kafka data dir", &data, e))?;
    }
    let mut command = java_command(java, lib, dir);
    command
        .args(["kafka.tools.StorageTool", "format", "--cluster-id"])
        .arg(cluster_id())
        .arg("--config")
        .arg(dir.join("server.properties"));
    run_to_end(SERVICE, &mut command)
}

/// A Kafka cluster id: 16 random bytes in URL-safe base64 without padding, never starting with
/// `-` (the storage tool's argument parser would take it for an option: 1 start in 64 failed).
fn cluster_id() -> String {
    loop {
        let id = base64_url(uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        // A chunk of k bytes carries k + 1 six-bit digits.
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize]));
        }
    }
    out
}

fn launch(
    java: &Path,
    lib: &Path,
    dir: &Path,
    broker: u16,
) -> Result<ServiceProcess, ServiceError> {
    let mut command = java_command(java, lib, dir);
    command
        .arg("kafka.Kafka")
        .arg(dir.join("server.properties"));
    let mut process = ServiceProcess::spawn(Launch {
        service: SERVICE,
        command,
        log: dir.join("kafka.log"),
        stop_signal: Signal::SIGTERM,
        stop_grace: Duration::from_secs(30),
    })?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", format!("127.0.0.1:{broker}"))
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "200");
    let client: BaseConsumer = config.create().map_err(|source| ServiceError::Kafka {
        what: "creating the readiness client".into(),
        source,
    })?;
    process.wait_ready(
        "a broker answering a metadata request",
        READY_WITHIN,
        || {
            let metadata = client
                .fetch_metadata(None, METADATA_TIMEOUT)
                .map_err(|e| format!("metadata request: {e}"))?;
            if metadata
                .brokers()
                .iter()
                .any(|b| b.port() == i32::from(broker))
            {
                Ok(())
            } else {
                Err(format!(
                    "metadata lists no broker on port {broker}: {:?}",
                    metadata
                        .brokers()
                        .iter()
                        .map(|b| b.port())
                        .collect::<Vec<_>>()
                ))
            }
        },
    )?;
    Ok(process)
}

/// Polls metadata until `topic` has `partitions` partitions, each with a leader.
fn wait_for_leaders(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), ServiceError> {
    let client: BaseConsumer = config.create().map_err(|source| ServiceError::Kafka {
        what: "creating a metadata client".into(),
        source,
    })?;
    let started = Instant::now();
    loop {
        let seen = match client.fetch_metadata(Some(topic), METADATA_TIMEOUT) {
            Ok(metadata) => metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map(|t| {
                    t.partitions()
                        .iter()
                        .filter(|p| p.error().is_none() && p.leader() >= 0)
                        .count()
                })
                .unwrap_or(0),
            Err(_) => 0,
        };
        if seen == usize::try_from(partitions).unwrap_or(0) {
            return Ok(());
        }
        if started.elapsed() >= TOPIC_READY_WITHIN {
            return Err(ServiceError::KafkaState {
                what: format!(
                    "topic {topic}: {seen} of {partitions} partitions have a leader after {:?}",
                    started.elapsed()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_look_like_kafkas() {
        assert_eq!(base64_url(&[0u8; 16]), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(base64_url(b"\xfb\xff\xbf"), "-_-_");
        let id = cluster_id();
        assert_eq!(id.len(), 22);
        assert!((0..2000).all(|_| !cluster_id().starts_with('-')));
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }
}
