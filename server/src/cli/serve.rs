//! `ferrysync serve`.

use super::CliError;
use clap::Args;
use ferrysync_server::{Config, LoadedSchema, PostgresStore, Server, ServerStore, SqliteStore};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Database file (created on first start).
    #[arg(long, default_value = "ferrysync.db")]
    db: PathBuf,
    /// PostgreSQL database instead of the file (`postgres://user:pass@host:port/db`); its
    /// tables are created on first start. Several servers may share one.
    #[arg(long, env = "FERRYSYNC_DATABASE", conflicts_with = "db")]
    database: Option<String>,
    /// Schema file (schema.toml); the built-in company/contact example when absent.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = Config::default().max_body_bytes)]
    max_body_bytes: u64,
    /// Most frames in one request.
    #[arg(long, default_value_t = Config::default().max_frames)]
    max_frames: u32,
    /// Syncs allowed to run at once; more wait in a queue.
    #[arg(long, default_value_t = Config::default().max_concurrent_syncs)]
    max_concurrent_syncs: usize,
    /// How long a sync may wait for a free slot, in ms, before a 503.
    #[arg(long, default_value_t = Config::default().queue_wait.as_millis() as u64)]
    queue_wait_ms: u64,
    /// Allowed clock skew of devices, in ms (later clocks are clamped).
    #[arg(long, default_value_t = Config::default().max_skew_ms)]
    max_skew_ms: u64,
    /// How long to keep tombstones, in days.
    #[arg(long, default_value_t = 90)]
    tombstone_days: u64,
}

/// Runs the server until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), CliError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let schema = match &args.schema {
        Some(path) => LoadedSchema::load(path).map_err(|e| {
            CliError(format!(
                "{e} (in {}); fix the file or omit --schema for the built-in example",
                path.display()
            ))
        })?,
        None => LoadedSchema::example(),
    };
    let (store, where_): (Arc<dyn ServerStore>, String) = match &args.database {
        Some(url) => (
            Arc::new(PostgresStore::open(url, schema).map_err(|e| {
                CliError(format!(
                    "cannot open the PostgreSQL database: {e}; check --database \
                     (postgres://user:password@host:port/dbname) and that the server is up"
                ))
            })?),
            redact(url),
        ),
        None => (
            Arc::new(SqliteStore::open(&args.db, schema).map_err(|e| {
                CliError(format!(
                    "cannot open database {}: {e}; check the path and its permissions",
                    args.db.display()
                ))
            })?),
            args.db.display().to_string(),
        ),
    };
    let config = Config {
        max_body_bytes: args.max_body_bytes,
        max_frames: args.max_frames,
        max_concurrent_syncs: args.max_concurrent_syncs.max(1),
        queue_wait: Duration::from_millis(args.queue_wait_ms),
        max_skew_ms: args.max_skew_ms,
        tombstone_retention_ms: args.tombstone_days.saturating_mul(24 * 3600 * 1000),
        ..Config::default()
    };
    let server = Server::new(store, schema, config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| {
                CliError(format!(
                    "cannot listen on {}: {e}; is another server running there? choose another --listen",
                    args.listen
                ))
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| CliError(format!("cannot read the listening address: {e}")))?;
        println!("ferrysync listening on http://{addr} (database {where_}, schema {:#018x})", schema.hash());
        tracing::info!(%addr, db = %where_, schema = format!("{:#018x}", schema.hash()), "listening");
        ferrysync_server::run(listener, server, shutdown_signal())
            .await
            .map_err(|e| CliError(format!("server failed: {e}")))
    })?;
    // Blocking tasks still running (none after a graceful stop) are not waited for longer.
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// A database URL without its password, to print.
pub(super) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((auth, host)) => match auth.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => format!("{scheme}://{auth}@{host}"),
            },
            None => url.to_string(),
        },
        // key=value form: hide a password pair.
        None => url
            .split_whitespace()
            .map(|kv| {
                if kv.starts_with("password=") {
                    "password=***"
                } else {
                    kv
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_passwords() {
        use super::redact;
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            redact("host=h password=x dbname=d"),
            "host=h password=*** dbname=d"
        );
    }
}
