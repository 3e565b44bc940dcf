//! `ferrysync client` tried as a new user would: the built binary against a running
//! `ferrysync serve`, two devices, checking what they print.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrysync"))
        .current_dir(dir)
        .args(args)
        .env_remove("FERRYSYNC_TOKEN")
        .env_remove("FERRYSYNC_SERVER")
        .output()
        .unwrap()
}

/// Runs a command that must succeed; returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "{args:?} failed: {err}{out}");
    out
}

/// Runs a command that must fail; returns its stderr, which must be one line.
fn fails(dir: &Path, args: &[&str]) -> String {
    let o = run(dir, args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{args:?} succeeded");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );
    err
}

fn token(dir: &Path, scope: &str) -> String {
    ok(dir, &["device", "add", "--scope", scope])
        .lines()
        .find_map(|l| l.strip_prefix("token "))
        .unwrap()
        .to_owned()
}

/// `client --db DB --server URL --token TOKEN ARGS...` (`--flash IMAGE` for a `.img`: a
/// scanner on a flash image instead of a phone on SQLite).
fn dev(db: &str, url: &str, token: &str, args: &[&str]) -> Vec<String> {
    let store = if db.ends_with(".img") {
        "--flash"
    } else {
        "--db"
    };
    let mut v: Vec<String> = ["client", store, db, "--server", url, "--token", token]
        .map(str::to_owned)
        .to_vec();
    v.extend(args.iter().map(|a| (*a).to_owned()));
    v
}

fn s(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn two_devices_from_the_shell() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ta, tb) = (token(d, "lyon"), token(d, "lyon"));
    let (_serve, url) = serve(d);
    let a = |args: &[&'static str]| -> Vec<String> { dev("a.db", &url, &ta, args) };
    let b = |args: &[&'static str]| -> Vec<String> { dev("b.img", &url, &tb, args) };

    // Device A works offline: a company and a contact under it.
    let acme = ok(
        d,
        &s(&a(&["add", "company", "name=ACME", "city=Lyon", "phone=1"])),
    );
    let acme = acme.trim().to_owned();
    let company_id = format!("company_id={acme}");
    ok(
        d,
        &s(&dev(
            "a.db",
            &url,
            &ta,
            &[
                "add",
                "contact",
                &company_id,
                "name=Ann",
                "email=ann@acme",
                "phone=2",
            ],
        )),
    );
    let pending = ok(d, &s(&a(&["pending"])));
    assert!(
        pending.contains("new company") && pending.contains("new contact"),
        "{pending}"
    );

    let synced = ok(d, &s(&a(&["sync"])));
    assert!(synced.contains("sent 2 changes"), "{synced}");
    assert!(
        synced.contains(&format!("mapped company local {acme} -> server ")),
        "{synced}"
    );
    assert!(synced.contains("mapped contact local"), "{synced}");
    assert_eq!(ok(d, &s(&a(&["pending"]))).trim(), "nothing to send");

    // Device B, a scanner on a flash image, receives them, edits the contact, syncs; A sees
    // the edit.
    let got = ok(d, &s(&b(&["sync"])));
    assert!(
        got.contains("received 2 records") && got.contains("full refresh"),
        "{got}"
    );
    let listed = ok(d, &s(&b(&["list", "contact", "--json"])));
    let ann_on_b = listed
        .lines()
        .find(|l| l.contains("\"name\":\"Ann\""))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(ann_on_b.contains("\"is_from_server\":true"), "{ann_on_b}");
    let id_on_b = ann_on_b
        .split("\"id\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap()
        .to_owned();
    ok(
        d,
        &s(&dev(
            "b.img",
            &url,
            &tb,
            &["update", "contact", &id_on_b, "email=ann@new.example"],
        )),
    );
    ok(d, &s(&b(&["sync"])));
    ok(d, &s(&a(&["sync"])));
    let table = ok(d, &s(&a(&["list", "contact"])));
    assert!(
        table
            .lines()
            .next()
            .unwrap()
            .starts_with("id  server_id  state"),
        "{table}"
    );
    assert!(
        table.contains("ann@new.example") && table.contains("synced"),
        "{table}"
    );

    // A deletes the company; B loses it and its contact.
    ok(
        d,
        &s(&dev("a.db", &url, &ta, &["delete", "company", &acme])),
    );
    ok(d, &s(&a(&["sync"])));
    let removed = ok(d, &s(&b(&["sync"])));
    assert!(removed.contains("removals"), "{removed}");
    assert!(!ok(d, &s(&b(&["list", "contact"]))).contains("Ann"));

    // Errors a new user makes: one clear line each.
    let e = fails(d, &s(&a(&["add", "contact", "nme=x"])));
    assert!(e.contains("unknown field `nme`"), "{e}");
    let e = fails(d, &s(&a(&["add", "company", "name"])));
    assert!(e.contains("not field=value"), "{e}");
    let e = fails(d, &["client", "--db", "c.db", "sync"]);
    assert!(e.contains("--token"), "{e}");
    let e = fails(
        d,
        &[
            "client", "--db", "c.db", "--server", &url, "--token", "nope", "sync",
        ],
    );
    assert!(e.contains("refused the token"), "{e}");
    let e = fails(
        d,
        &[
            "client",
            "--db",
            "c.db",
            "--server",
            "http://127.0.0.1:9",
            "--token",
            "x",
            "sync",
        ],
    );
    assert!(e.contains("server unreachable"), "{e}");
    let e = fails(d, &s(&a(&["update", "company", "999", "city=x"])));
    assert!(e.contains("no active record"), "{e}");
}

/// `ferrysync serve` on a free port in `dir`; returns it (killed when dropped) and its URL.
fn serve(dir: &Path) -> (Serve, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrysync"))
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let serve = Serve(child);
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_owned();
    (serve, url)
}

/// The numbers in `sent N changes (B bytes, Z <unit>)`: (B, Z), Z absent when the request
/// went plain or in another unit (`gzipped`, `brotli`).
fn sent_bytes(out: &str, unit: &str) -> (u64, Option<u64>) {
    let inner = out
        .split_once("changes (")
        .and_then(|(_, r)| r.split_once(')'))
        .unwrap_or_else(|| panic!("{out}"))
        .0;
    let mut parts = inner.split(", ");
    let n =
        |p: Option<&str>, unit: &str| -> Option<u64> { p?.strip_suffix(unit)?.trim().parse().ok() };
    let bytes = n(parts.next(), "bytes").unwrap_or_else(|| panic!("{out}"));
    (bytes, n(parts.next(), unit))
}

#[test]
fn sync_compresses_both_ways_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ta, tb, tc) = (token(d, "lyon"), token(d, "lyon"), token(d, "lyon"));
    let (_serve, url) = serve(d);
    let acme = ok(
        d,
        &s(&dev(
            "a.db",
            &url,
            &ta,
            &["add", "company", "name=ACME", "city=Lyon", "phone=1"],
        )),
    );
    let parent = format!("company_id={}", acme.trim());
    for i in 0..20 {
        let name = format!("name=Contact {i}");
        ok(
            d,
            &s(&dev(
                "a.db",
                &url,
                &ta,
                &["add", "contact", &parent, &name, "email=x@acme", "phone=2"],
            )),
        );
    }
    // The default: the request goes in brotli, and says how small it was.
    let out = ok(d, &s(&dev("a.db", &url, &ta, &["sync"])));
    assert!(out.contains("sent 21 changes"), "{out}");
    let (bytes, zipped) = sent_bytes(&out, "brotli");
    let zipped = zipped.unwrap_or_else(|| panic!("no brotli count: {out}"));
    assert!(zipped < bytes, "{out}");
    // `--gzip`: gzip both ways, the same data arrives.
    let out = ok(d, &s(&dev("c.db", &url, &tc, &["sync", "--gzip"])));
    assert!(out.contains("received 21 records"), "{out}");
    assert!(
        out.contains(" gzipped), "),
        "the reply's gzipped size too: {out}"
    );
    // `--plain` (or its old name `--no-gzip`): plain both ways, the same data arrives.
    let out = ok(d, &s(&dev("b.db", &url, &tb, &["sync", "--no-gzip"])));
    assert!(out.contains("received 21 records"), "{out}");
    assert!(sent_bytes(&out, "gzipped").0 > 0, "{out}");
    assert!(!out.contains("brotli") && !out.contains("gzipped"), "{out}");
    let listed = ok(d, &s(&dev("b.db", &url, &tb, &["list", "contact"])));
    assert!(listed.contains("Contact 19"), "{listed}");
}
