//! The `ferrysync` binary: device administration, `serve`, and one-line errors; on a SQLite
//! file (`--db`) and on PostgreSQL (`--database`, when `FERRYSYNC_TEST_POSTGRES` is set).

#[path = "http/common.rs"]
#[allow(unused_macros, unused_imports)]
mod common;

use ferrysync_core::frame::FrameEncoder;
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::wire::{End, Hello, Mode, Request, PROTOCOL_VERSION};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};

fn ferrysync(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrysync"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// One HTTP/1.1 exchange over a plain socket; returns the whole answer.
fn http(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// The `--db`/`--database` arguments of a fresh database of `kind` (kept alive by the
/// returned `TestDb`).
fn db_args(kind: common::StoreKind) -> (common::TestDb, [String; 2]) {
    let db = common::TestDb::of(kind);
    let args = match db.kind {
        common::StoreKind::Sqlite => ["--db".into(), db.path.to_str().unwrap().to_string()],
        common::StoreKind::Postgres(_) => ["--database".into(), db.url.clone()],
    };
    (db, args)
}

/// Runs `f` on PostgreSQL, or says it was skipped.
fn on_postgres(test: &str, f: impl FnOnce(common::StoreKind)) {
    match common::StoreKind::postgres() {
        Some(k) => f(k),
        None => common::skipped(test),
    }
}

#[test]
fn device_add_list_revoke() {
    device_add_list_revoke_on(common::StoreKind::Sqlite);
}

#[test]
fn device_add_list_revoke_postgres() {
    on_postgres(
        "cli::device_add_list_revoke_postgres",
        device_add_list_revoke_on,
    );
}

fn device_add_list_revoke_on(kind: common::StoreKind) {
    let (store, [flag, db]) = db_args(kind);
    let (flag, db) = (flag.as_str(), db.as_str());
    let o = ferrysync(&["device", "add", "--scope", "north", flag, db]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token "))
        .expect("token printed");
    assert_eq!(token.len(), 64);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(out.contains("device 1"));
    // The token itself is not stored, only its hash.
    match store.kind {
        common::StoreKind::Sqlite => {
            let raw = std::fs::read(db).unwrap();
            assert!(!raw.windows(64).any(|w| w == token.as_bytes()));
        }
        common::StoreKind::Postgres(_) => {
            let rows = store.rows("SELECT encode(token_hash, 'hex') FROM _device", &[]);
            assert_eq!(rows.len(), 1);
            assert_ne!(rows[0][0].text(), token);
            assert_eq!(rows[0][0].text().len(), 64, "a SHA-256");
        }
    }

    ferrysync(&["device", "add", "--scope", "south", flag, db]);
    let list = stdout(&ferrysync(&["device", "list", flag, db]));
    assert!(
        list.lines()
            .any(|l| l.contains(" 1 ") && l.contains("north") && l.ends_with("active")),
        "{list}"
    );
    assert!(list.lines().any(|l| l.contains("south")), "{list}");

    let o = ferrysync(&["device", "revoke", "1", flag, db]);
    assert!(o.status.success());
    let list = stdout(&ferrysync(&["device", "list", flag, db]));
    assert!(
        list.lines()
            .any(|l| l.contains("north") && l.ends_with("revoked")),
        "{list}"
    );

    let o = ferrysync(&["device", "revoke", "99", flag, db]);
    assert!(!o.status.success());
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
}

#[test]
fn serve_answers_health_and_syncs_then_stops_on_sigterm() {
    serve_on(common::StoreKind::Sqlite);
}

#[test]
fn serve_answers_health_and_syncs_then_stops_on_sigterm_postgres() {
    on_postgres(
        "cli::serve_answers_health_and_syncs_then_stops_on_sigterm_postgres",
        serve_on,
    );
}

fn serve_on(kind: common::StoreKind) {
    let (_store, [flag, db]) = db_args(kind);
    let (flag, db) = (flag.as_str(), db.as_str());
    let out = stdout(&ferrysync(&["device", "add", "--scope", "north", flag, db]));
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token "))
        .unwrap()
        .to_string();

    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrysync"))
        .args(["serve", flag, db, "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();

    let health = http(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok\n"), "{health}");

    // An empty sync with the printed token.
    let mut enc: FrameEncoder = FrameEncoder::new();
    let mut body = enc
        .encode(&Request::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            schema_hash: EXAMPLE.hash(),
            batch_id: 1,
            cursor: None,
            mode: Mode::Full,
        }))
        .unwrap()
        .to_vec();
    body.extend(enc.encode(&Request::<'_>::End(End { count: 0 })).unwrap());
    let mut req = format!(
        "POST /v1/sync HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/vnd.ferrysync.v1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend(&body);
    let answer = http(&addr, &req);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful stop exits 0, got {status}");
}

#[test]
fn errors_are_one_line() {
    let o = ferrysync(&["serve", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("error: ") && e.contains("--bogus"), "{e}");

    let o = ferrysync(&["device", "add", "--db", "x.db"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));

    let o = ferrysync(&[
        "serve",
        "--db",
        "/nonexistent/dir/s.db",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("cannot open database /nonexistent/dir/s.db"),
        "{e}"
    );

    // No PostgreSQL listens on port 1: one line naming the cause; --db and --database clash.
    let o = ferrysync(&[
        "device",
        "list",
        "--database",
        "postgres://u:secret@127.0.0.1:1/x",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("cannot open the PostgreSQL database") && e.contains("refused"),
        "{e}"
    );
    assert!(!e.contains("secret"), "{e}");
    let o = ferrysync(&["serve", "--db", "x.db", "--database", "postgres://h/x"]);
    assert_eq!(o.status.code(), Some(2));

    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("schema.toml");
    std::fs::write(
        &schema,
        "[[table]]\nname = \"_bad\"\nfields = [ { name = \"x\", type = \"text\" } ]\n",
    )
    .unwrap();
    let db = dir.path().join("s.db");
    let o = ferrysync(&[
        "serve",
        "--db",
        db.to_str().unwrap(),
        "--schema",
        schema.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("schema is not valid"), "{e}");

    let o = ferrysync(&["--help"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("serve") && stdout(&o).contains("device"));
}
