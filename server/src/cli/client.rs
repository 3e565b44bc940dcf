//! `ferrysync client`: a phone-like device on a local SQLite file, for trying ferrysync from a
//! shell and for scripts.

use super::CliError;
use clap::{Args, Subcommand};
use ferrysync_core::engine::SyncError;
use ferrysync_core::id::LocalId;
use ferrysync_core::wire::Mode;
use ferrysync_core::LocalStore;
use ferrysync_flash::{store_cache, HostStore};
use ferrysync_server::LoadedSchema;
use ferrysync_sqlite::{HttpError, HttpTransport, Phone, Row};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::PathBuf;

/// Options of `client`.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The device's database file (created on first use).
    #[arg(long, default_value = "phone.db")]
    db: PathBuf,
    /// Be a scanner instead: keep the data on this NOR-flash image (created on first use,
    /// 1 MiB, 4 KiB sectors) rather than in a SQLite file.
    #[arg(long, conflicts_with = "db")]
    flash: Option<PathBuf>,
    /// Server URL, for `sync`.
    #[arg(
        long,
        env = "FERRYSYNC_SERVER",
        default_value = "http://127.0.0.1:7878"
    )]
    server: String,
    /// Bearer token from `ferrysync device add`, for `sync`.
    #[arg(long, env = "FERRYSYNC_TOKEN")]
    token: Option<String>,
    /// Schema file; the built-in company/contact example when absent.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    command: ClientCommand,
}

/// Device commands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create a record offline: `add company name=ACME city=Lyon phone=1`; a detail names its
    /// parent's local id in its parent field (`company_id=5`). Prints the new local id.
    Add {
        /// Table name.
        table: String,
        /// `field=value` pairs.
        fields: Vec<String>,
    },
    /// Change fields of a record: `update company 5 city=Paris`.
    Update {
        /// Table name.
        table: String,
        /// Local id.
        id: u32,
        /// `field=value` pairs.
        fields: Vec<String>,
    },
    /// Delete a record (and its details); soft until the server confirms.
    Delete {
        /// Table name.
        table: String,
        /// Local id.
        id: u32,
    },
    /// List a table's records with their sync state.
    List {
        /// Table name.
        table: String,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the changes the next sync will send.
    Pending,
    /// Show the changes the server refused.
    Rejected {
        /// Empty the log after showing it.
        #[arg(long)]
        clear: bool,
    },
    /// Sync with the server: send pending changes, apply the reply. Both travel in brotli
    /// (the reply in gzip from a server without it): about 6× fewer bytes, what a phone on a
    /// cellular link wants; `--gzip` sends gzip instead, `--plain` sends and receives plain
    /// bodies.
    Sync {
        /// Ask for a full refresh instead of the changes since the last sync.
        #[arg(long)]
        full: bool,
        /// Send and receive plain bodies (no gzip, no brotli): on a LAN or localhost, where
        /// compression's CPU costs more time than the bytes it saves.
        #[arg(long, alias = "no-gzip", conflicts_with = "gzip")]
        plain: bool,
        /// Send the request gzipped and ask for gzip: for a server that answers a brotli
        /// request with 415 `unsupported_encoding` (one older than brotli requests).
        #[arg(long)]
        gzip: bool,
    },
}

fn pairs(fields: &[String]) -> Result<Vec<(&str, &str)>, CliError> {
    fields
        .iter()
        .map(|f| {
            f.split_once('=')
                .ok_or_else(|| CliError(format!("`{f}` is not field=value (example: name=ACME)")))
        })
        .collect()
}

fn status(row: &Row) -> &'static str {
    let m = &row.record.meta;
    match (m.is_active, m.is_from_server, m.is_modified) {
        (false, _, _) => "deleted",
        (true, false, _) => "new",
        (true, true, true) => "modified",
        (true, true, false) => "synced",
    }
}

/// Prints rows as an aligned table: id, server id, state, parent, fields.
fn print_rows<S: LocalStore>(phone: &Phone<S>, table: &str, rows: &[Row]) -> Result<(), CliError>
where
    S::Error: Display,
{
    let (_, def) = phone.table(table).map_err(|e| CliError(e.to_string()))?;
    let mut header = vec!["id".to_owned(), "server_id".into(), "state".into()];
    if let Some(p) = def.parent_field {
        header.push(format!("{p} (local)"));
    }
    header.extend(def.fields.iter().map(|f| f.name.to_owned()));
    let mut lines = vec![header];
    for r in rows {
        let mut line = vec![
            r.record.local.0.to_string(),
            r.record.server.map_or("-".into(), |s| s.0.to_string()),
            status(r).into(),
        ];
        if def.parent_field.is_some() {
            line.push(r.record.parent.map_or("-".into(), |p| p.0.to_string()));
        }
        line.extend(r.values.iter().map(ToString::to_string));
        lines.push(line);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(())
}

fn json_row<S: LocalStore>(phone: &Phone<S>, table: &str, r: &Row) -> Result<String, CliError>
where
    S::Error: Display,
{
    let (_, def) = phone.table(table).map_err(|e| CliError(e.to_string()))?;
    let mut obj = serde_json::Map::new();
    obj.insert("id".into(), r.record.local.0.into());
    obj.insert(
        "server_id".into(),
        r.record
            .server
            .map_or(serde_json::Value::Null, |s| s.0.into()),
    );
    if let Some(p) = def.parent_field {
        obj.insert(
            p.into(),
            r.record
                .parent
                .map_or(serde_json::Value::Null, |p| p.0.into()),
        );
    }
    for (f, v) in def.fields.iter().zip(&r.values) {
        obj.insert(f.name.into(), v.to_json());
    }
    let m = &r.record.meta;
    obj.insert("is_from_server".into(), m.is_from_server.into());
    obj.insert("is_modified".into(), m.is_modified.into());
    obj.insert("is_active".into(), m.is_active.into());
    Ok(serde_json::Value::Object(obj).to_string())
}

fn load_schema(schema: Option<&PathBuf>) -> Result<LoadedSchema, CliError> {
    match schema {
        Some(path) => {
            LoadedSchema::load(path).map_err(|e| CliError(format!("{e} (in {})", path.display())))
        }
        None => Ok(LoadedSchema::example()),
    }
}

/// Opens a scanner's flash image (1 MiB, created erased on first use).
pub fn open_scanner(
    image: &PathBuf,
    schema: Option<&PathBuf>,
) -> Result<Box<Phone<HostStore>>, CliError> {
    let schema = load_schema(schema)?;
    let store = HostStore::open_file(image, 1 << 20, store_cache()).map_err(|e| {
        CliError(format!(
            "cannot open flash image {}: {e}; check the path (a new image is created)",
            image.display()
        ))
    })?;
    Ok(Box::new(Phone::on_store(store, schema.schema())))
}

/// Opens the phone database for the schema given (or the built-in one).
pub fn open_phone(db: &PathBuf, schema: Option<&PathBuf>) -> Result<Phone, CliError> {
    let schema = load_schema(schema)?;
    Phone::open(db, schema.schema())
        .map_err(|e| CliError(format!("cannot open device database {}: {e}", db.display())))
}

/// Runs a client command.
pub fn run(args: ClientArgs) -> Result<(), CliError> {
    match &args.flash {
        Some(image) => {
            let mut scanner = open_scanner(image, args.schema.as_ref())?;
            exec(&mut scanner, args)
        }
        None => {
            let mut phone = open_phone(&args.db, args.schema.as_ref())?;
            exec(&mut phone, args)
        }
    }
}

fn exec<S: LocalStore>(phone: &mut Phone<S>, args: ClientArgs) -> Result<(), CliError>
where
    S::Error: Display,
{
    let err = |e: ferrysync_sqlite::Error<S::Error>| CliError(e.to_string());
    match args.command {
        ClientCommand::Add { table, fields } => {
            let id = phone.insert(&table, &pairs(&fields)?).map_err(err)?;
            println!("{}", id.0);
        }
        ClientCommand::Update { table, id, fields } => {
            phone
                .update(&table, LocalId(id), &pairs(&fields)?)
                .map_err(err)?;
            println!("updated {table} {id}");
        }
        ClientCommand::Delete { table, id } => {
            phone.delete(&table, LocalId(id)).map_err(err)?;
            println!("deleted {table} {id} (and its details); the next sync tells the server");
        }
        ClientCommand::List { table, json } => {
            let rows = phone.list(&table).map_err(err)?;
            if json {
                for r in &rows {
                    println!("{}", json_row(phone, &table, r)?);
                }
            } else {
                print_rows(phone, &table, &rows)?;
            }
        }
        ClientCommand::Pending => {
            let rows = phone.pending().map_err(err)?;
            if rows.is_empty() {
                println!("nothing to send");
            }
            let schema = *phone.schema();
            for r in rows {
                let name = schema.tables[r.record.table.0 as usize].name;
                let vals: Vec<String> = r.values.iter().map(ToString::to_string).collect();
                println!(
                    "{} {name} {} [{}]",
                    status(&r),
                    r.record.local.0,
                    vals.join(", ")
                );
            }
        }
        ClientCommand::Rejected { clear } => {
            let rows = phone.rejected().map_err(err)?;
            if rows.is_empty() {
                println!("no rejected changes");
            }
            for r in &rows {
                println!("{r}");
            }
            if clear {
                phone.clear_rejected().map_err(err)?;
                println!("rejected log cleared");
            }
        }
        ClientCommand::Sync { full, plain, gzip } => {
            let token = args.token.ok_or_else(|| {
                CliError(
                    "sync needs a token: pass --token TOKEN (or set FERRYSYNC_TOKEN); \
                     get one with `ferrysync device add --scope SCOPE`"
                        .into(),
                )
            })?;
            let coding = match (plain, gzip) {
                (true, _) => Coding::Plain,
                (false, true) => Coding::Gzip,
                (false, false) => Coding::Brotli,
            };
            sync(phone, &args.server, &token, full, coding)?;
        }
    }
    Ok(())
}

/// How `client sync` compresses its bodies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    /// Plain both ways.
    Plain,
    /// The request gzipped, the reply asked for in gzip.
    Gzip,
    /// The request in brotli, the reply asked for in brotli or gzip.
    Brotli,
}

/// What to add to a failed sync's message: how to sync with a server older than brotli
/// requests, which refuses them with 415 `unsupported_encoding`.
fn sync_hint<E>(e: &SyncError<E, HttpError>, coding: Coding) -> &'static str {
    match e {
        SyncError::Transport(HttpError::Status {
            status: 415, code, ..
        }) if code == "unsupported_encoding" && coding == Coding::Brotli => {
            " (this server does not take brotli requests: run `ferrysync client sync --gzip`)"
        }
        _ => "",
    }
}

/// Syncs, the bodies compressed as `coding` says, and prints what was sent, mapped, rejected
/// and received.
pub fn sync<S: LocalStore>(
    phone: &mut Phone<S>,
    server: &str,
    token: &str,
    full: bool,
    coding: Coding,
) -> Result<(), CliError>
where
    S::Error: Display,
{
    // Remember the records the server does not know yet, to print their new ids after.
    let schema = *phone.schema();
    let mut unmapped = BTreeMap::new();
    for r in phone.pending().map_err(|e| CliError(e.to_string()))? {
        if r.record.server.is_none() && r.record.meta.is_active {
            unmapped.insert((r.record.table, r.record.local), ());
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))?;
    let mut link = HttpTransport::new(server, token)
        .gzip(coding != Coding::Plain)
        .brotli(coding == Coding::Brotli)
        .brotli_requests(coding == Coding::Brotli);
    let mode = if full { Mode::Full } else { Mode::Delta };
    let report = rt.block_on(phone.sync(&mut link, mode)).map_err(|e| {
        CliError(format!(
            "sync failed, nothing changed on this device: {e}{}",
            sync_hint(&e, coding)
        ))
    })?;
    let sent_wire = match coding {
        Coding::Plain => String::new(),
        Coding::Gzip => format!(", {} gzipped", link.wire_bytes_sent),
        Coding::Brotli => format!(", {} brotli", link.wire_bytes_sent),
    };
    let received_wire = match link.reply_coding {
        Some("br") => format!(", {} brotli", link.wire_bytes_received),
        Some(_) => format!(", {} gzipped", link.wire_bytes_received),
        None => String::new(),
    };
    println!(
        "sent {} changes ({} bytes{}), received {} records and {} removals ({} bytes{}){}",
        report.sent,
        link.bytes_sent,
        sent_wire,
        report.upserts,
        report.removes,
        link.bytes_received,
        received_wire,
        if report.full { ", full refresh" } else { "" }
    );
    for (table, local) in unmapped.keys() {
        let name = schema.tables[table.0 as usize].name;
        let now = phone
            .get(name, *local)
            .map_err(|e| CliError(e.to_string()))?;
        match now.and_then(|r| r.record.server) {
            Some(s) => println!("mapped {name} local {} -> server {}", local.0, s.0),
            None => println!("not mapped {name} local {} (see `rejected`)", local.0),
        }
    }
    if report.rejected > 0 {
        println!(
            "{} changes rejected: see `ferrysync client rejected`",
            report.rejected
        );
    }
    println!("cursor {}", report.cursor);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_refusing_brotli_requests_gets_the_gzip_hint() {
        let refused = |code: &str| -> SyncError<(), HttpError> {
            SyncError::Transport(HttpError::Status {
                status: 415,
                code: code.into(),
                message: "request content encoding \"br\" is not supported".into(),
            })
        };
        let hint = sync_hint(&refused("unsupported_encoding"), Coding::Brotli);
        assert!(hint.contains("client sync --gzip"), "{hint}");
        // Not for gzip requests, another status or code, or another failure.
        assert_eq!(
            sync_hint(&refused("unsupported_encoding"), Coding::Gzip),
            ""
        );
        assert_eq!(
            sync_hint(&refused("unsupported_media_type"), Coding::Brotli),
            ""
        );
        let unreachable: SyncError<(), HttpError> = SyncError::Transport(HttpError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            detail: "refused".into(),
        });
        assert_eq!(sync_hint(&unreachable, Coding::Brotli), "");
    }
}
