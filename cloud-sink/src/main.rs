//! `cloud-sink`: ingests RAE device events into the Cloud Registry. `main` parses the
//! command line, sets up logging and runs one mode; the modes live in the library.

use std::error::Error as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use cloud_sink::apply::{Db, DbError};
use cloud_sink::bridge::{self, BridgeMetrics};
use cloud_sink::config::{
    BridgeArgs, Cli, Command, ConfigError, DbArgs, KafkaArgs, LogFormat, MigrateArgs, MqttArgs,
    OpsArgs,
};
use cloud_sink::ops::health::{self, Health};
use cloud_sink::ops::http::{self, BindError};
use cloud_sink::ops::metrics::{MeteredWriter, WriterStats};
use cloud_sink::ops::shutdown::{Signal, Signals};
use cloud_sink::ops::Endpoints;
use cloud_sink::source::kafka::{self, KafkaMetrics, SourceError};
use cloud_sink::source::mqtt::{self, MqttMetrics};
use tokio::sync::oneshot;

/// How often the database is probed for `/readyz` (and the heartbeat stamped).
const PROBE_EVERY: Duration = Duration::from_secs(2);

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
    #[error("the {0} task failed")]
    Task(&'static str, #[source] tokio::task::JoinError),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    }
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
    let (writer, stats) = open_writer(&args.db, args.migrate).await?;
    let metrics = Arc::new(KafkaMetrics::default());
    let health = Health::new();
    let endpoints = Endpoints::kafka(metrics.clone(), stats, health.clone());
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
    close_writer(&writer, deadline, &result).await;
    served.stop();
    result.map(|_| ())
}

/// The database writer every writing mode uses, metered for `/metrics`. Lazy: a database that
/// is down at start-up is retried by the writes, not fatal (unless `migrate` needs it now).
async fn open_writer(
    db: &DbArgs,
    migrate: bool,
) -> Result<(Arc<MeteredWriter<Db>>, Arc<WriterStats>), AppError> {
    let connected = Db::connect_lazy(&db.database_url, db.options())?;
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
    let (writer, stats) = open_writer(&args.db, args.migrate).await?;
    let metrics = Arc::new(MqttMetrics::default());
    let health = Health::new();
    let endpoints = Endpoints::mqtt(metrics.clone(), stats, health.clone());
    let served = Served::start(ops, endpoints, health, Some(writer.inner().pool().clone())).await?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tracing::info!(host = %args.broker.mqtt_host, port = args.broker.mqtt_port, lanes = args.lanes, "subscribing");
    let source = tokio::spawn(mqtt::run(config, writer.clone(), metrics, async move {
        let _ = stop_rx.await;
    }));
    let result = until_stopped("MQTT source", source, stop_tx, &mut signals, deadline).await;
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
