//! `ferrysync demo`: the pattern's story end to end in one process, on temporary files: a
//! server on 127.0.0.1, a phone on SQLite and a scanner on a NOR-flash image, that work
//! offline, conflict, delete, and sync.

use super::client::open_phone;
use super::CliError;
use clap::Args;
use ferrysync_core::id::LocalId;
use ferrysync_core::wire::Mode;
use ferrysync_core::LocalStore;
use ferrysync_flash::{store_cache, HostStore};
use ferrysync_server::{run as serve, Config, LoadedSchema, Server, SqliteStore};
use ferrysync_sqlite::{HttpTransport, Phone};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the files in this folder instead of a temporary one.
    #[arg(long)]
    keep: Option<PathBuf>,
}

fn e(err: impl std::fmt::Display) -> CliError {
    CliError(format!("demo failed: {err}"))
}

struct Device<S: LocalStore> {
    name: &'static str,
    phone: Box<Phone<S>>,
    token: String,
}

impl<S: LocalStore> Device<S>
where
    S::Error: std::fmt::Display,
{
    fn add(&mut self, table: &str, fields: &[(&str, &str)]) -> Result<LocalId, CliError> {
        let id = self.phone.insert(table, fields).map_err(e)?;
        let vals: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  {:<8} add {table} {} -> local id {}",
            self.name,
            vals.join(" "),
            id.0
        );
        Ok(id)
    }

    fn find(&mut self, table: &str, name: &str) -> Result<LocalId, CliError> {
        self.phone
            .list(table)
            .map_err(e)?
            .into_iter()
            .find(|r| r.record.meta.is_active && r.values[0].to_string() == name)
            .map(|r| r.record.local)
            .ok_or_else(|| e(format!("{} has no {table} {name}", self.name)))
    }

    async fn sync(&mut self, url: &str) -> Result<(), CliError> {
        let before: Vec<(String, u32)> = self
            .phone
            .pending()
            .map_err(e)?
            .into_iter()
            .filter(|r| r.record.server.is_none() && r.record.meta.is_active)
            .map(|r| {
                let t = self.phone.schema().tables[r.record.table.0 as usize].name;
                (t.to_owned(), r.record.local.0)
            })
            .collect();
        let mut link = HttpTransport::new(url, &self.token);
        let r = self.phone.sync(&mut link, Mode::Delta).await.map_err(e)?;
        println!(
            "  {:<8} sync: sent {}, mapped {}, rejected {}, received {} (+{} removals){}; {} bytes up, {} down",
            self.name,
            r.sent,
            r.mapped,
            r.rejected,
            r.upserts,
            r.removes,
            if r.full { ", full refresh" } else { "" },
            link.bytes_sent,
            link.bytes_received
        );
        for (table, local) in before {
            if let Some(row) = self.phone.get(&table, LocalId(local)).map_err(e)? {
                if let Some(s) = row.record.server {
                    println!("           id map: {table} local {local} -> server {}", s.0);
                }
            }
        }
        Ok(())
    }

    /// server id -> the shown columns of a table (a detail's parent by its server id first,
    /// then the first `n` fields), for the side-by-side print. `*` marks a pending change.
    fn by_server(&mut self, table: &str, n: usize) -> Result<BTreeMap<i64, String>, CliError> {
        let (_, def) = self.phone.table(table).map_err(e)?;
        let parents: BTreeMap<u32, u64> = match def.parent {
            Some(p) => {
                let pname = self.phone.schema().tables[p.0 as usize].name;
                self.phone
                    .list(pname)
                    .map_err(e)?
                    .into_iter()
                    .filter_map(|r| r.record.server.map(|s| (r.record.local.0, s.0)))
                    .collect()
            }
            None => BTreeMap::new(),
        };
        Ok(self
            .phone
            .list(table)
            .map_err(e)?
            .into_iter()
            .filter_map(|r| {
                let mut vals: Vec<String> = Vec::new();
                if def.parent.is_some() {
                    let p = r.record.parent.and_then(|p| parents.get(&p.0));
                    vals.push(p.map_or("?".into(), ToString::to_string));
                }
                vals.extend(r.values.iter().take(n).map(ToString::to_string));
                let state = if r.record.meta.is_modified { " *" } else { "" };
                r.record
                    .server
                    .map(|s| (s.0 as i64, format!("{}{state}", vals.join(", "))))
            })
            .collect())
    }
}

fn server_rows(db: &Path, table: &str, cols: &str) -> Result<BTreeMap<i64, String>, CliError> {
    let conn = ferrysync_sqlite::rusqlite::Connection::open(db).map_err(e)?;
    let mut stmt = conn
        .prepare(&format!("SELECT id, {cols} FROM {table} ORDER BY id"))
        .map_err(e)?;
    let n = cols.split(',').count();
    let rows = stmt
        .query_map([], |r| {
            let id: i64 = r.get(0)?;
            let mut vals = Vec::with_capacity(n);
            for i in 1..=n {
                let v: ferrysync_sqlite::rusqlite::types::Value = r.get(i)?;
                vals.push(match v {
                    ferrysync_sqlite::rusqlite::types::Value::Text(t) => t,
                    ferrysync_sqlite::rusqlite::types::Value::Integer(i) => i.to_string(),
                    other => format!("{other:?}"),
                });
            }
            Ok((id, vals.join(", ")))
        })
        .map_err(e)?
        .collect::<Result<BTreeMap<_, _>, _>>()
        .map_err(e)?;
    Ok(rows)
}

fn side_by_side(title: &str, columns: &[(&str, BTreeMap<i64, String>)]) {
    println!("\n{title}");
    let ids: std::collections::BTreeSet<i64> = columns
        .iter()
        .flat_map(|(_, m)| m.keys().copied())
        .collect();
    let width = columns
        .iter()
        .flat_map(|(n, m)| m.values().map(|v| v.len()).chain([n.len()]))
        .max()
        .unwrap_or(10);
    let head: Vec<String> = columns
        .iter()
        .map(|(n, _)| format!("{n:<width$}"))
        .collect();
    println!("  {:>9}  {}", "server id", head.join(" | "));
    for id in ids {
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, m)| format!("{:<width$}", m.get(&id).map_or("-", String::as_str)))
            .collect();
        println!("  {id:>9}  {}", cells.join(" | "));
    }
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<(), CliError> {
    let temp;
    let dir: PathBuf = match args.keep {
        Some(d) => {
            std::fs::create_dir_all(&d)
                .map_err(|err| e(format!("cannot create {}: {err}", d.display())))?;
            d
        }
        None => {
            temp = tempfile::tempdir().map_err(e)?;
            temp.path().to_owned()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(e)?;
    rt.block_on(story(&dir))
}

async fn story(dir: &Path) -> Result<(), CliError> {
    let schema = LoadedSchema::example();
    let db = dir.join("server.db");
    let store = SqliteStore::open(&db, schema).map_err(e)?;
    let server = Server::new(Arc::new(store), schema, Config::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(e)?;
    let url = format!("http://{}", listener.local_addr().map_err(e)?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, server.clone(), async move {
        let _ = stopped.await;
    }));
    println!("server  {url}  (database {})", db.display());

    let enrol = |name: &str| -> Result<String, CliError> {
        let (d, token) =
            ferrysync_server::auth::add_device(server.store().as_ref(), "lyon").map_err(e)?;
        println!("{name:<7} enrolled as device {} in scope \"lyon\"", d.id);
        Ok(token)
    };
    let mut phone = Device {
        name: "phone",
        phone: Box::new(open_phone(&dir.join("phone.db"), None)?),
        token: enrol("phone")?,
    };
    println!(
        "        a phone app on SQLite: {}",
        dir.join("phone.db").display()
    );
    let image = dir.join("scanner.img");
    let flash = HostStore::open_file(&image, 1 << 20, store_cache()).map_err(e)?;
    let mut scanner = Device {
        name: "scanner",
        phone: Box::new(Phone::on_store(flash, schema.schema())),
        token: enrol("scanner")?,
    };
    println!(
        "        a handheld scanner on 1 MiB of NOR flash (4 KiB sectors): {}",
        image.display()
    );
    let phone = &mut phone;

    println!("\n1. The phone works offline: three companies and their contacts.");
    for (company, contacts) in [
        ("ACME", &["Ann", "Arno"][..]),
        ("Globex", &["Gil"][..]),
        ("Initech", &["Ike", "Ida"][..]),
    ] {
        let c = phone.add(
            "company",
            &[("name", company), ("city", "Lyon"), ("phone", "+33 4")],
        )?;
        let cid = c.0.to_string();
        for n in contacts {
            let email = format!("{}@{}.example", n.to_lowercase(), company.to_lowercase());
            phone.add(
                "contact",
                &[
                    ("company_id", &cid),
                    ("name", n),
                    ("email", &email),
                    ("phone", "+33 6"),
                ],
            )?;
        }
    }

    println!("\n2. The phone syncs: masters first, local ids mapped, contacts re-parented.");
    phone.sync(&url).await?;
    println!("\n3. The scanner syncs and receives the data.");
    scanner.sync(&url).await?;

    println!("\n4. Both work offline again.");
    let acme = phone.find("company", "ACME")?;
    phone
        .phone
        .update("company", acme, &[("city", "Lyon 2e")])
        .map_err(e)?;
    println!("  phone    update company ACME city=Lyon 2e");
    let initech = phone.find("company", "Initech")?;
    phone.phone.delete("company", initech).map_err(e)?;
    println!("  phone    delete company Initech (and its contacts)");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let acme_t = scanner.find("company", "ACME")?;
    scanner
        .phone
        .update("company", acme_t, &[("city", "Villeurbanne")])
        .map_err(e)?;
    println!("  scanner  update company ACME city=Villeurbanne (later: wins the conflict)");
    let globex = scanner.find("company", "Globex")?.0.to_string();
    scanner.add(
        "contact",
        &[
            ("company_id", &globex),
            ("name", "Gwen"),
            ("email", "gwen@globex.example"),
            ("phone", "+33 7"),
        ],
    )?;

    println!("\n5. They sync: phone, scanner, phone.");
    phone.sync(&url).await?;
    scanner.sync(&url).await?;
    phone.sync(&url).await?;

    let columns =
        |rows: BTreeMap<i64, String>, p: BTreeMap<i64, String>, t: BTreeMap<i64, String>| {
            [("server", rows), ("phone", p), ("scanner", t)]
        };
    let co = columns(
        server_rows(&db, "company", "name, city")?,
        phone.by_server("company", 2)?,
        scanner.by_server("company", 2)?,
    );
    side_by_side("company (name, city) by server id", &co);
    let ct = columns(
        server_rows(&db, "contact", "company_id, name")?,
        phone.by_server("contact", 1)?,
        scanner.by_server("contact", 1)?,
    );
    side_by_side("contact (company_id, name) by server id", &ct);
    let same = [&co, &ct]
        .iter()
        .all(|c| c[0].1 == c[1].1 && c[1].1 == c[2].1);
    println!(
        "\n{}",
        if same {
            "the phone and the scanner hold the same data as the server"
        } else {
            "the devices differ (unexpected)"
        }
    );
    let _ = stop.send(());
    task.await.map_err(e)?.map_err(e)?;
    if !same {
        return Err(e("devices did not converge"));
    }
    Ok(())
}
