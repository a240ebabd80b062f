//! `cloud-sink`: ingests RAE device events into the Cloud Registry. `main` parses the
//! command line, sets up logging and runs one mode; the modes live in the library.

use std::error::Error as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use cloud_sink::apply::{Db, DbError};
use cloud_sink::bridge::{self, BridgeMetrics};
use cloud_sink::command::cli::{self, Exit};
use cloud_sink::command::Requester;
use cloud_sink::config::{
    BridgeArgs, BrokerArgs, Cli, Command, CommandArgs, ConfigError, DbArgs, HealArgs, KafkaArgs,
    LogFormat, MigrateArgs, MqttArgs, OpsArgs,
};
use cloud_sink::heal::{self, GapReporter, HealMetrics};
use cloud_sink::mqtt_connect;
use cloud_sink::ops::health::{self, Health};
use cloud_sink::ops::http::{self, BindError};
use cloud_sink::ops::metrics::{MeteredWriter, WriterStats};
use cloud_sink::ops::shutdown::{Signal, Signals};
use cloud_sink::ops::Endpoints;
use cloud_sink::source::kafka::{self, KafkaMetrics, SourceError};
use cloud_sink::source::mqtt::{self, MqttMetrics};
use rae_proto::RequesterId;
use tokio::sync::oneshot;

/// How often the database is probed for `/readyz` (and the heartbeat stamped).
const PROBE_EVERY: Duration = Duration::from_secs(2);
/// Gap notices the writer may have queued for the healer before new ones are dropped.
const HEAL_CHANNEL: usize = 4096;

#[derive(Debug, thiserror::Error)]
enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid --log-filter {filter:?}")]
    LogFilter {
        filter: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the SIGTERM/SIGINT handlers")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("shutdown did not finish within {0:?}; exiting with offsets possibly uncommitted")]
    ShutdownOverrun(Duration),
    #[error("a second {0} during shutdown; exiting without waiting for the drain")]
    Forced(Signal),
    #[error(transparent)]
    Mqtt(#[from] cloud_sink::source::mqtt::MqttSourceError),
    #[error(transparent)]
    Bridge(#[from] cloud_sink::bridge::BridgeError),
    #[error("bad requester id for gap repair: {0}")]
    Requester(String),
    #[error(transparent)]
    MqttConnect(#[from] cloud_sink::mqtt_connect::MqttConnectError),
    #[error("the {0} task failed")]
    Task(&'static str, #[source] tokio::task::JoinError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Command(args) = &cli.command {
        return run_command(&cli.ops, args);
    }
    let result = init_tracing(&cli.ops).and_then(|()| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(AppError::Runtime)
    });
    let result = result.and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cloud-sink failed");
            let mut message = format!("cloud-sink: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                message.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(ops: &OpsArgs) -> Result<(), AppError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&ops.log_filter).map_err(|source| {
        AppError::LogFilter {
            filter: ops.log_filter.clone(),
            source,
        }
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second subscriber can only come from a test harness; keep the first.
    let _ = match ops.log_format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    Ok(())
}

async fn run(cli: Cli) -> Result<(), AppError> {
    match cli.command {
        Command::Kafka(args) => run_kafka(&cli.ops, *args).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Mqtt(args) => run_mqtt(&cli.ops, *args).await,
        Command::Bridge(args) => run_bridge(&cli.ops, *args).await,
        // Handled before the runtime starts: it has its own exit statuses.
        Command::Command(_) => Ok(()),
    }
}

/// `cloud-sink command`: exits 0, 1, 2 or 3 (see `cloud_sink::command::cli::Exit`).
fn run_command(ops: &OpsArgs, args: &CommandArgs) -> ExitCode {
    if let Err(e) = init_tracing(ops) {
        eprintln!("cloud-sink command: {e}");
        return ExitCode::from(Exit::Failed as u8);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cloud-sink command: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Failed as u8);
        }
    };
    ExitCode::from(runtime.block_on(cli::run(args)) as u8)
}

/// Starts gap repair when `broker` is set and repair is not disabled: its own MQTT client
/// (`<client id>-cmd`) sends the `resync` requests. Returns the reporter the writer gets.
fn start_healer(
    heal: &HealArgs,
    broker: Option<BrokerArgs>,
    client_id: &str,
    metrics: &Arc<HealMetrics>,
) -> Result<Option<(GapReporter, tokio::task::JoinHandle<()>)>, AppError> {
    if heal.heal_disabled {
        tracing::info!("gap repair off (--heal-disabled): gaps wait for the periodic Snapshot");
        return Ok(None);
    }
    let Some(broker) = broker else {
        tracing::info!(
            "gap repair off: no --command-mqtt-host, so gaps wait for the periodic Snapshot"
        );
        return Ok(None);
    };
    let name = command_client_id(client_id);
    let requester =
        RequesterId::new(name.clone()).map_err(|e| AppError::Requester(e.to_string()))?;
    let options = mqtt_connect::options(&broker, &name)?;
    let client = Arc::new(Requester::start(options, requester, Arc::default()));
    let (reporter, notices) = heal::channel(HEAL_CHANNEL, metrics.clone());
    tracing::info!(host = %broker.mqtt_host, port = broker.mqtt_port, client_id = %name, "gap repair on: sessions with a gap get a resync command");
    let task = tokio::spawn(heal::run(
        heal.heal_config(),
        notices,
        client,
        metrics.clone(),
        std::future::pending(),
    ));
    Ok(Some((reporter, task)))
}

/// `<client id>-cmd`, kept to what a requester id allows (`[A-Za-z0-9_-]{1,64}`).
fn command_client_id(client_id: &str) -> String {
    let mut name: String = client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    name.push_str("-cmd");
    name
}

async fn migrate(args: MigrateArgs) -> Result<(), AppError> {
    let db = Db::connect(&args.db.database_url, args.db.options()).await?;
    db.migrate().await?;
    tracing::info!("migrations applied");
    db.close().await;
    Ok(())
}

async fn run_kafka(ops: &OpsArgs, args: KafkaArgs) -> Result<(), AppError> {
    let mut signals = Signals::install().map_err(AppError::Signals)?;
    let deadline = ops.shutdown_deadline()?;
    let config = args.source_config(deadline)?;
    let heal_metrics = Arc::new(HealMetrics::default());
    let client_id = args
        .command_broker
        .command_mqtt_client_id
        .clone()
        .unwrap_or_else(|| args.group.clone());
    let healer = start_healer(
        &args.heal,
        args.command_broker.broker(),
        &client_id,
        &heal_metrics,
    )?;
    let (gaps, heal_task) = healer.unzip();
    let (writer, stats) = open_writer(&args.db, args.migrate, gaps).await?;
    let metrics = Arc::new(KafkaMetrics::default());
    let health = Health::new();
    let endpoints =
        Endpoints::kafka(metrics.clone(), stats, health.clone()).with_heal(heal_metrics);
    let served = Served::start(ops, endpoints, health, Some(writer.inner().pool().clone())).await?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let source = tokio::spawn(kafka::run(config, writer.clone(), metrics, async move {
        let _ = stop_rx.await;
    }));
    tracing::info!(
        brokers = %args.brokers,
        topics = ?args.topics,
        group = %args.group,
        "consuming"
    );
    let result = until_stopped("Kafka source", source, stop_tx, &mut signals, deadline).await;
    if let Some(task) = heal_task {
        task.abort();
    }
    close_writer(&writer, deadline, &result).await;
    served.stop();
    result.map(|_| ())
}

/// The database writer every writing mode uses, metered for `/metrics`. Lazy: a database that
/// is down at start-up is retried by the writes, not fatal (unless `migrate` needs it now).
async fn open_writer(
    db: &DbArgs,
    migrate: bool,
    gaps: Option<GapReporter>,
) -> Result<(Arc<MeteredWriter<Db>>, Arc<WriterStats>), AppError> {
    let mut connected = Db::connect_lazy(&db.database_url, db.options())?;
    if let Some(gaps) = gaps {
        connected = connected.with_gap_reports(gaps);
    }
    if migrate {
        connected.migrate().await?;
        tracing::info!("migrations applied");
    }
    let stats = Arc::new(WriterStats::default());
    Ok((
        Arc::new(MeteredWriter::new(connected, stats.clone())),
        stats,
    ))
}

/// Closes the pool after a clean shutdown, within what is left of the deadline (connections
/// are returned first; never waits past it).
async fn close_writer(
    writer: &MeteredWriter<Db>,
    deadline: Duration,
    result: &Result<Option<Instant>, AppError>,
) {
    if let Ok(Some(started)) = result {
        let left = deadline.saturating_sub(started.elapsed());
        let _ = tokio::time::timeout(left, writer.inner().close()).await;
    }
}

/// The `/metrics`, `/healthz`, `/readyz` server and the task that keeps health current.
struct Served {
    server: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
    health: Arc<Health>,
}

impl Served {
    /// Serves `endpoints`; with a `pool`, readiness follows a database probe, else a heartbeat.
    async fn start(
        ops: &OpsArgs,
        endpoints: Endpoints,
        health: Arc<Health>,
        pool: Option<sqlx::PgPool>,
    ) -> Result<Served, AppError> {
        let (addr, serving) = http::bind(ops.metrics_addr, Arc::new(endpoints)).await?;
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
        let server = tokio::spawn(serving);
        health.set_running(true);
        health.beat(Instant::now());
        let watcher = match pool {
            Some(pool) => tokio::spawn(health::watch(health.clone(), pool, PROBE_EVERY)),
            None => {
                let beat = health.clone();
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(PROBE_EVERY);
                    loop {
                        every.tick().await;
                        beat.beat(Instant::now());
                    }
                })
            }
        };
        Ok(Served {
            server,
            watcher,
            health,
        })
    }

    fn stop(self) {
        self.health.set_running(false);
        self.watcher.abort();
        self.server.abort();
    }
}

/// Waits for `task` to end by itself, or for a signal: then asks it to stop and waits for it
/// within `deadline` (a second signal forces the exit). `Some(when the shutdown started)` after
/// a clean shutdown, `None` when the task ended by itself.
async fn until_stopped<E>(
    what: &'static str,
    mut task: tokio::task::JoinHandle<Result<(), E>>,
    stop: oneshot::Sender<()>,
    signals: &mut Signals,
    deadline: Duration,
) -> Result<Option<Instant>, AppError>
where
    AppError: From<E>,
{
    let finished = |joined: Result<Result<(), E>, tokio::task::JoinError>| {
        joined
            .map_err(|e| AppError::Task(what, e))
            .and_then(|r| r.map_err(AppError::from))
    };
    tokio::select! {
        // Only a configuration the task cannot start from ends it early.
        ended = &mut task => finished(ended).map(|()| None),
        signal = signals.next() => {
            let started = Instant::now();
            tracing::info!(%signal, deadline_secs = deadline.as_secs(), "shutting down: draining and acknowledging");
            let _ = stop.send(());
            let ended = tokio::select! {
                ended = &mut task => finished(ended),
                () = tokio::time::sleep(deadline) => Err(AppError::ShutdownOverrun(deadline)),
                again = signals.next() => Err(AppError::Forced(again)),
            };
            if ended.is_ok() {
                tracing::info!(took_ms = started.elapsed().as_millis() as u64, "shut down cleanly");
            }
            ended.map(|()| Some(started))
        }
    }
}

async fn run_mqtt(ops: &OpsArgs, args: MqttArgs) -> Result<(), AppError> {
    let mut signals = Signals::install().map_err(AppError::Signals)?;
    let deadline = ops.shutdown_deadline()?;
    let config = args.source_config(deadline);
    let heal_metrics = Arc::new(HealMetrics::default());
    let healer = start_healer(
        &args.heal,
        Some(args.broker.clone()),
        &config.broker.client_id,
        &heal_metrics,
    )?;
    let (gaps, heal_task) = healer.unzip();
    let (writer, stats) = open_writer(&args.db, args.migrate, gaps).await?;
    let metrics = Arc::new(MqttMetrics::default());
    let health = Health::new();
    let endpoints = Endpoints::mqtt(metrics.clone(), stats, health.clone()).with_heal(heal_metrics);
    let served = Served::start(ops, endpoints, health, Some(writer.inner().pool().clone())).await?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tracing::info!(host = %args.broker.mqtt_host, port = args.broker.mqtt_port, lanes = args.lanes, "subscribing");
    let source = tokio::spawn(mqtt::run(config, writer.clone(), metrics, async move {
        let _ = stop_rx.await;
    }));
    let result = until_stopped("MQTT source", source, stop_tx, &mut signals, deadline).await;
    if let Some(task) = heal_task {
        task.abort();
    }
    close_writer(&writer, deadline, &result).await;
    served.stop();
    result.map(|_| ())
}

async fn run_bridge(ops: &OpsArgs, args: BridgeArgs) -> Result<(), AppError> {
    let mut signals = Signals::install().map_err(AppError::Signals)?;
    let deadline = ops.shutdown_deadline()?;
    let config = args.bridge_config(deadline);
    let metrics = Arc::new(BridgeMetrics::default());
    let health = Health::new();
    let endpoints = Endpoints::bridge(metrics.clone(), health.clone());
    let served = Served::start(ops, endpoints, health, None).await?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tracing::info!(kafka = %args.brokers, topic = %args.topic, "bridging MQTT to Kafka");
    let task = tokio::spawn(bridge::run(config, metrics, async move {
        let _ = stop_rx.await;
    }));
    let result = until_stopped("bridge", task, stop_tx, &mut signals, deadline).await;
    served.stop();
    result.map(|_| ())
}
