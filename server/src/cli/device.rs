//! `ferrysync device add|list|revoke`.

use super::CliError;
use clap::{Args, Subcommand};
use ferrysync_server::{PostgresStore, ServerStore, SqliteStore};
use std::path::PathBuf;

/// Where the server's data is.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// Server database file.
    #[arg(long, default_value = "ferrysync.db")]
    db: PathBuf,
    /// PostgreSQL database of the server instead of the file (`postgres://...`).
    #[arg(long, env = "FERRYSYNC_DATABASE", conflicts_with = "db")]
    database: Option<String>,
}

impl DbArgs {
    /// The database, as printed.
    fn name(&self) -> String {
        match &self.database {
            Some(url) => super::serve::redact(url),
            None => self.db.display().to_string(),
        }
    }
}

/// Device administration.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Create a device and print its bearer token (shown only this once).
    Add {
        /// Scope of the device: it reads and writes only records of this scope.
        #[arg(long)]
        scope: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List devices.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a device's token.
    Revoke {
        /// Device id (see `device list`).
        id: u32,
        #[command(flatten)]
        db: DbArgs,
    },
}

fn open(db: &DbArgs) -> Result<Box<dyn ServerStore>, CliError> {
    match &db.database {
        Some(url) => Ok(Box::new(PostgresStore::open_admin(url).map_err(|e| {
            CliError(format!(
                "cannot open the PostgreSQL database: {e}; check --database \
                 (postgres://user:password@host:port/dbname) and that the server is up"
            ))
        })?)),
        None => Ok(Box::new(SqliteStore::open_admin(&db.db).map_err(|e| {
            CliError(format!(
                "cannot open database {}: {e}; check the path and its permissions",
                db.db.display()
            ))
        })?)),
    }
}

/// Runs a device command.
pub fn run(cmd: DeviceCommand) -> Result<(), CliError> {
    match cmd {
        DeviceCommand::Add { scope, db } => {
            let store = open(&db)?;
            let (device, token) = ferrysync_server::auth::add_device(store.as_ref(), &scope)
                .map_err(|e| CliError(format!("cannot add device: {e}")))?;
            println!("device {} (scope {:?})", device.id, device.scope);
            println!("token {token}");
            eprintln!("keep the token now: it is not stored and cannot be shown again");
            Ok(())
        }
        DeviceCommand::List { db } => {
            let store = open(&db)?;
            let devices = store
                .list_devices()
                .map_err(|e| CliError(format!("cannot list devices: {e}")))?;
            println!(
                "{:>6}  {:<20}  {:<20}  status",
                "id", "scope", "created (UTC)"
            );
            for d in devices {
                println!(
                    "{:>6}  {:<20}  {:<20}  {}",
                    d.id,
                    d.scope,
                    utc(d.created_at_ms),
                    if d.revoked { "revoked" } else { "active" }
                );
            }
            Ok(())
        }
        DeviceCommand::Revoke { id, db } => {
            let store = open(&db)?;
            match store.revoke_device(id) {
                Ok(true) => {
                    println!("device {id} revoked");
                    Ok(())
                }
                Ok(false) => Err(CliError(format!(
                    "no device {id} in {}; see `ferrysync device list`",
                    db.name()
                ))),
                Err(e) => Err(CliError(format!("cannot revoke device {id}: {e}"))),
            }
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time in ms (civil-from-days, proleptic Gregorian).
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_709_251_199_000), "2024-02-29 23:59:59");
    }
}
