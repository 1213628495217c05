//! The `meterhouse` command: parse the CLI, set up logs, run the chosen subcommand.

use clap::{Parser, Subcommand};
use meterhouse::app::{self, Application};
use meterhouse::config::Config;

#[derive(Parser)]
#[command(
    name = "meterhouse",
    version,
    about = "Usage metering and rating on ClickHouse"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve(Box<Config>),
    /// Apply pending migrations and exit.
    Migrate(Box<Config>),
    /// Write the samples (and rollups) of a meter for events that arrived before it existed.
    Backfill(BackfillArgs),
}

/// The service allocates per event; mimalloc measured faster than the system allocator
/// on the ingest path (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let json_logs =
        matches!(&cli.command, Command::Serve(c) | Command::Migrate(c) if c.log_format == "json");
    init_tracing(json_logs);
    match cli.command {
        Command::Serve(config) => {
            let listener = tokio::net::TcpListener::bind(config.listen).await?;
            let application = Application::build(&config).await?;
            application.serve(listener, app::shutdown_signal()).await
        }
        Command::Migrate(config) => {
            let (_store, owned) = app::open_store(&config).await?;
            if let Some(mut clickhouse) = owned {
                clickhouse.stop().await;
            }
            Ok(())
        }
        Command::Backfill(args) => {
            let (store, owned) = app::open_store(&args.config).await?;
            let catalog = meterhouse::catalog::Catalog::open(store.clone()).await?;
            let parse = |name: &str, text: &str| {
                meterhouse::ingest::parse::parse_instant(text)
                    .ok()
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--{name}: an RFC 3339 timestamp or Unix seconds/milliseconds"
                        )
                    })
            };
            let (from, to) = (parse("from", &args.from)?, parse("to", &args.to)?);
            let outcome =
                meterhouse::backfill::run(&store, &catalog, &args.tenant, &args.meter, from, to)
                    .await;
            if let Some(mut clickhouse) = owned {
                clickhouse.stop().await;
            }
            println!("{}", serde_json::to_string_pretty(&outcome?)?);
            Ok(())
        }
    }
}

#[derive(clap::Args)]
struct BackfillArgs {
    #[arg(long)]
    tenant: String,
    /// The meter's slug.
    #[arg(long)]
    meter: String,
    /// Window start (RFC 3339 or Unix seconds/milliseconds), inclusive.
    #[arg(long)]
    from: String,
    /// Window end, exclusive.
    #[arg(long)]
    to: String,
    #[command(flatten)]
    config: Box<Config>,
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("METERHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
