//! `rae-agent`: parses flags and configuration, sets up logging, then runs the agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rae_agent::config::{Config, LogFormat, Overrides, DEFAULT_CONFIG_PATH};
use rae_agent::error_chain;

/// The RAE device registry daemon: watches the LAN port for devices under test, keeps the
/// Local Registry in SQLite and publishes device events over MQTT.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Configuration file (TOML; unknown keys are errors).
    #[arg(long, short = 'c', value_name = "FILE", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Validate the configuration, print the effective settings and exit.
    #[arg(long)]
    check_config: bool,
    /// Override agent.serial.
    #[arg(long, value_name = "SERIAL")]
    serial: Option<String>,
    /// Override agent.lan_interface.
    #[arg(long, value_name = "IFACE")]
    interface: Option<String>,
    /// Override agent.state_dir.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Override mqtt.host.
    #[arg(long, value_name = "HOST")]
    mqtt_host: Option<String>,
    /// Override mqtt.port.
    #[arg(long, value_name = "PORT")]
    mqtt_port: Option<u16>,
    /// Override log.level (a tracing filter such as `debug` or `rae_agent=trace`).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Replay a capture (pcap or pcapng, Ethernet) through the parsers and the registry core
    /// instead of running the daemon: prints every Change, then a summary. Needs no root, no
    /// network and no broker; the registry timers come from the config file when there is
    /// one, else the defaults.
    #[arg(long, value_name = "FILE")]
    pcap: Option<PathBuf>,
    /// With --pcap: JSON lines instead of text.
    #[arg(long, requires = "pcap")]
    json: bool,
    /// With --pcap: only the summary.
    #[arg(long, requires = "pcap")]
    quiet: bool,
    /// With --pcap: verify UDP checksums (off by default: a capture cannot say which frames
    /// had checksum offload pending).
    #[arg(long, requires = "pcap")]
    verify_checksums: bool,
    /// With --pcap: a MAC of the RAE itself, whose frames are not a device (repeatable).
    #[arg(long, value_name = "MAC", requires = "pcap")]
    own_mac: Vec<rae_proto::Mac>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let overrides = Overrides {
        serial: args.serial.clone(),
        lan_interface: args.interface.clone(),
        state_dir: args.state_dir.clone(),
        mqtt_host: args.mqtt_host.clone(),
        mqtt_port: args.mqtt_port,
        log_level: args.log_level.clone(),
    };
    if let Some(path) = &args.pcap {
        return replay(path, &args, &overrides);
    }
    let config = match Config::load_with_identity(&args.config, &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("rae-agent: {}", error_chain(&err));
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        // The group is looked up on this machine, as the start would.
        if let Some(group) = &config.agent.control_group {
            if let Err(err) = rae_agent::control::socket::resolve_group(group) {
                eprintln!("rae-agent: {}", error_chain(&err));
                return ExitCode::from(2);
            }
        }
        println!(
            "{}: configuration is valid\n{config}",
            args.config.display()
        );
        return ExitCode::SUCCESS;
    }
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rae-agent: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

/// The daemon until SIGTERM or SIGINT.
async fn run(config: Config) -> Result<(), rae_agent::daemon::DaemonError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| rae_agent::probe::ProbeError::Socket {
            what: "installing the SIGTERM handler",
            source,
        })?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        let _ = stop_tx.send(true);
    });
    rae_agent::daemon::run(config, stop_rx).await
}

/// `--pcap`: the config file's timers if it exists, else the defaults.
fn replay(path: &std::path::Path, args: &Args, overrides: &Overrides) -> ExitCode {
    let config = if args.config.exists() {
        Config::load(&args.config, overrides)
    } else {
        Ok(Config::for_replay())
    };
    let config = match config {
        Ok(config) => config,
        Err(err) => {
            eprintln!("rae-agent: {}", error_chain(&err));
            return ExitCode::from(2);
        }
    };
    let options = rae_agent::replay::ReplayOptions {
        json: args.json,
        quiet: args.quiet,
        verify_checksums: args.verify_checksums,
        own_macs: args.own_mac.clone(),
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    match rae_agent::replay::replay(path, &config, &options, &mut out) {
        Ok(_) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rae-agent: {}", error_chain(&err));
            ExitCode::from(1)
        }
    }
}

fn init_tracing(config: &Config) {
    rae_agent::log_limit::configure(config.log.max_per_minute);
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: the journal and log files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
