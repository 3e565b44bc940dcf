//! Phones on SQLite syncing with a real server over HTTP on 127.0.0.1.

use ferrysync_core::engine;
use ferrysync_core::wire::Mode;
use ferrysync_sqlite::{HttpTransport, Phone, MAX_FRAME};
use ferrysync_tests::{view, Fault, FaultyLink, FaultyStore, TestServer};
use std::time::Duration;

async fn sync(server: &TestServer, phone: &mut Phone, token: &str) -> engine::SyncReport {
    let mut link = HttpTransport::new(&server.url(), token);
    phone.sync(&mut link, Mode::Delta).await.expect("sync")
}

/// A fresh phone's full view of a scope: what the server holds for it.
async fn server_view(server: &TestServer, token: &str, name: &str) -> ferrysync_tests::View {
    let mut fresh = server.phone(name);
    // Fresh phones pull with gzipped replies, as phones on cellular links do.
    let mut link = HttpTransport::new(&server.url(), token).gzip(true);
    fresh
        .sync(&mut link, Mode::Delta)
        .await
        .expect("gzipped sync");
    view(&mut fresh)
}

fn add_company(p: &mut Phone, name: &str, city: &str) -> ferrysync_core::LocalId {
    p.insert(
        "company",
        &[("name", name), ("city", city), ("phone", "+33")],
    )
    .unwrap()
}

fn add_contact(
    p: &mut Phone,
    company: ferrysync_core::LocalId,
    name: &str,
) -> ferrysync_core::LocalId {
    let id = company.0.to_string();
    p.insert(
        "contact",
        &[
            ("company_id", &id),
            ("name", name),
            ("email", "x@y"),
            ("phone", "06"),
        ],
    )
    .unwrap()
}

#[tokio::test]
async fn details_of_new_masters_arrive_under_their_server_ids() {
    let server = TestServer::start().await;
    let token = server.enrol("north");
    let mut phone = server.phone("p");
    let mut ids = Vec::new();
    for (c, contacts) in [("ACME", 2), ("Globex", 1), ("Initech", 3)] {
        let co = add_company(&mut phone, c, "Lyon");
        for i in 0..contacts {
            add_contact(&mut phone, co, &format!("{c}-{i}"));
        }
        ids.push(co);
    }
    let report = sync(&server, &mut phone, &token).await;
    assert_eq!((report.sent, report.mapped, report.rejected), (9, 9, 0));
    assert!(phone.pending().unwrap().is_empty());
    // On the server, with plain SQL: each contact under its company's new server id.
    let rows: Vec<(String, String)> = server.query(
        "SELECT company.name, contact.name FROM contact JOIN company ON company.id = contact.company_id ORDER BY contact.name",
        |r| Ok((r.get(0)?, r.get(1)?)),
    );
    assert_eq!(rows.len(), 6);
    for (company, contact) in &rows {
        assert!(
            contact.starts_with(company.as_str()),
            "{contact} under {company}"
        );
    }
    // On the phone, local ids did not move and every record knows its server id.
    for co in ids {
        let row = phone.get("company", co).unwrap().unwrap();
        assert!(row.record.server.is_some() && row.record.meta.is_from_server);
    }
    assert_eq!(
        view(&mut phone),
        server_view(&server, &token, "check").await
    );
    server.stop().await;
}

/// Two phones change the same data offline; whichever syncs first, both end equal to the
/// server, the later edit wins, a contact created under a new company arrives under it, and
/// deletes reach the other phone.
async fn two_phones(a_first: bool) -> ferrysync_tests::View {
    let server = TestServer::start().await;
    let (ta, tb) = (server.enrol("north"), server.enrol("north"));
    let (mut a, mut b) = (server.phone("a"), server.phone("b"));
    let x = add_company(&mut a, "X", "Lyon");
    let kept = add_contact(&mut a, x, "kept");
    add_contact(&mut a, x, "doomed");
    sync(&server, &mut a, &ta).await;
    sync(&server, &mut b, &tb).await;
    assert_eq!(view(&mut a), view(&mut b));

    // Offline: A edits X first, B edits it later (so B's edit wins everywhere).
    a.update("company", x, &[("city", "A-city")]).unwrap();
    let y = add_company(&mut a, "Y", "Paris");
    add_contact(&mut a, y, "under-y");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let bx = b
        .list("company")
        .unwrap()
        .into_iter()
        .find(|r| r.values[0].to_string() == "X")
        .unwrap()
        .record
        .local;
    b.update("company", bx, &[("city", "B-city")]).unwrap();
    let doomed = b
        .list("contact")
        .unwrap()
        .into_iter()
        .find(|r| r.values[0].to_string() == "doomed")
        .unwrap()
        .record
        .local;
    b.delete("contact", doomed).unwrap();

    if a_first {
        sync(&server, &mut a, &ta).await;
        sync(&server, &mut b, &tb).await;
    } else {
        sync(&server, &mut b, &tb).await;
        sync(&server, &mut a, &ta).await;
    }
    sync(&server, &mut a, &ta).await;
    sync(&server, &mut b, &tb).await;

    let (va, vb) = (view(&mut a), view(&mut b));
    assert_eq!(va, vb, "phones converge");
    assert_eq!(va, server_view(&server, &token_of(&server), "fresh").await);
    assert!(a.pending().unwrap().is_empty() && b.pending().unwrap().is_empty());
    let city = |v: &ferrysync_tests::View, name: &str| {
        v.iter()
            .find(|((t, _), (_, vals))| t == "company" && vals[0] == name)
            .map(|(_, (_, vals))| vals[1].clone())
    };
    assert_eq!(city(&va, "X").as_deref(), Some("B-city"), "last write wins");
    let y_id = va
        .keys()
        .find(|(t, id)| t == "company" && va[&(t.clone(), *id)].1[0] == "Y")
        .unwrap()
        .1;
    let under_y = va
        .iter()
        .find(|((t, _), (_, vals))| t == "contact" && vals[0] == "under-y")
        .unwrap();
    assert_eq!(
        under_y.1 .0,
        Some(y_id),
        "detail of a new master under its server id"
    );
    assert!(
        !va.values().any(|(_, vals)| vals[0] == "doomed"),
        "delete propagated"
    );
    assert!(
        a.get("contact", kept)
            .unwrap()
            .unwrap()
            .record
            .meta
            .is_active
    );
    let normalized = va
        .into_iter()
        .map(|((t, _), (p, vals))| ((t, 0), (p.map(|_| 0), vals)))
        .collect();
    server.stop().await;
    normalized
}

fn token_of(server: &TestServer) -> String {
    server.enrol("north")
}

#[tokio::test]
async fn two_phones_converge_whichever_syncs_first() {
    let first = two_phones(true).await;
    let second = two_phones(false).await;
    assert_eq!(
        first, second,
        "the order of syncs does not change the outcome"
    );
}

/// Sets up a phone with a synced company and offline work on top: an add under it, an update,
/// a delete, a new company with a contact.
async fn offline_work(server: &TestServer, token: &str) -> Phone {
    let mut p = server.phone("crashy");
    let acme = add_company(&mut p, "ACME", "Lyon");
    add_contact(&mut p, acme, "Ann");
    let bob = add_contact(&mut p, acme, "Bob");
    sync(server, &mut p, token).await;
    add_contact(&mut p, acme, "Cid");
    p.update("company", acme, &[("city", "Paris")]).unwrap();
    p.delete("contact", bob).unwrap();
    let new = add_company(&mut p, "New", "Nice");
    add_contact(&mut p, new, "Dee");
    p
}

fn pending_summary(p: &mut Phone) -> Vec<(u32, bool, Vec<String>)> {
    p.pending()
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                r.record.local.0,
                r.record.meta.is_active,
                r.values.iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Kill {
    Link(Fault),
    Write(u32),
    Commit,
}

/// Runs one sync of `offline_work` killed by `kill`; checks that a failed sync lost nothing and
/// that the next sync converges without duplicates. Returns whether the kill hit.
async fn killed_sync(kill: Kill) -> bool {
    let server = TestServer::start().await;
    let token = server.enrol("north");
    let mut p = offline_work(&server, &token).await;
    let before = pending_summary(&mut p);
    assert_eq!(before.len(), 5);
    let schema = *p.schema();
    let link = HttpTransport::new(&server.url(), &token);
    let result = match kill {
        Kill::Link(f) => {
            let mut link = FaultyLink::new(link, Some(f));
            engine::sync::<_, _, MAX_FRAME>(&schema, p.store(), &mut link, Mode::Delta)
                .await
                .map_err(|e| e.to_string())
        }
        Kill::Write(_) | Kill::Commit => {
            let mut link = link;
            let mut store = FaultyStore {
                inner: p.store(),
                writes_left: match kill {
                    Kill::Write(n) => Some(n),
                    _ => None,
                },
                fail_commit: matches!(kill, Kill::Commit),
            };
            engine::sync::<_, _, MAX_FRAME>(&schema, &mut store, &mut link, Mode::Delta)
                .await
                .map_err(|e| e.to_string())
        }
    };
    if let Err(e) = &result {
        assert!(e.contains("injected"), "{kill:?}: {e}");
        assert_eq!(pending_summary(&mut p), before, "{kill:?}: {e}");
    }
    // The next sync (a retry of the same changes) converges with no duplicate.
    sync(&server, &mut p, &token).await;
    assert!(p.pending().unwrap().is_empty(), "{kill:?}");
    let v = view(&mut p);
    assert_eq!(v, server_view(&server, &token, "check").await, "{kill:?}");
    let companies: Vec<String> =
        server.query("SELECT name FROM company ORDER BY name", |r| r.get(0));
    assert_eq!(
        companies,
        ["ACME", "New"],
        "{kill:?}: no duplicate from the retry"
    );
    let contacts: Vec<String> =
        server.query("SELECT name FROM contact ORDER BY name", |r| r.get(0));
    assert_eq!(contacts, ["Ann", "Cid", "Dee"], "{kill:?}");
    server.stop().await;
    result.is_err()
}

#[tokio::test]
async fn a_sync_killed_at_any_step_loses_nothing_and_the_next_converges() {
    // Before send, after send (reply lost), and between apply and commit: always hit.
    for kill in [
        Kill::Link(Fault::BeforeSend),
        Kill::Link(Fault::AfterSend),
        Kill::Commit,
    ] {
        assert!(killed_sync(kill).await, "{kill:?} did not hit");
    }
    // Mid-reply: cut every 16 bytes until the cut falls after the whole reply.
    let mut cut = 0;
    while killed_sync(Kill::Link(Fault::MidReply(cut))).await {
        cut += 16;
        assert!(cut < 64 * 1024, "reply never ends");
    }
    // The reply is `Accepted`, the mappings (one batch), a reset and `Done`: the records the
    // sync wrote are not sent back.
    assert!(cut >= 48, "the reply was only {cut} bytes");
    // Mid-apply: fail each write of the apply in turn until the apply has fewer writes.
    let mut n = 0;
    while killed_sync(Kill::Write(n)).await {
        n += 1;
    }
    assert!(n >= 8, "the apply made only {n} writes");
}

#[tokio::test]
async fn a_record_edited_while_its_sync_is_in_flight_stays_pending() {
    let server = TestServer::start().await;
    let token = server.enrol("north");
    let mut p = server.phone("p");
    let acme = add_company(&mut p, "ACME", "Lyon");
    let ann = add_contact(&mut p, acme, "Ann");
    let schema = *p.schema();
    let mut link = HttpTransport::new(&server.url(), &token);
    let out = engine::send_request::<_, _, MAX_FRAME>(&schema, p.store(), &mut link, Mode::Delta)
        .await
        .unwrap();
    // The user edits Ann while the request is out.
    p.update("contact", ann, &[("name", "Ann (edited)")])
        .unwrap();
    engine::receive_reply::<_, _, MAX_FRAME>(&schema, p.store(), &mut link, &out)
        .await
        .unwrap();
    let row = p.get("contact", ann).unwrap().unwrap();
    assert!(row.record.server.is_some(), "mapped by the reply");
    assert!(
        row.record.meta.is_modified,
        "the newer edit is still pending"
    );
    assert_eq!(row.values[0].to_string(), "Ann (edited)");
    assert!(
        !p.get("company", acme)
            .unwrap()
            .unwrap()
            .record
            .meta
            .is_modified
    );
    sync(&server, &mut p, &token).await;
    let names: Vec<String> = server.query("SELECT name FROM contact", |r| r.get(0));
    assert_eq!(names, ["Ann (edited)"]);
    assert!(p.pending().unwrap().is_empty());
    server.stop().await;
}

/// The phone commits a sync's reply without waiting for its fsync
/// (`LocalStore::commit_reply`): a power cut just after may take that commit back, whole. Its
/// files as they were before the sync stand for that: the next sync sends the same changes
/// again, and phone and server end as if the reply had been kept, with no duplicate.
#[tokio::test]
async fn a_reply_commit_lost_to_a_power_cut_is_redone_by_the_next_sync() {
    let server = TestServer::start().await;
    let token = server.enrol("north");
    let mut p = offline_work(&server, &token).await;
    let before = pending_summary(&mut p);
    assert_eq!(before.len(), 5);
    let path = server.db_path().with_file_name("crashy.db");
    let wal = path.with_file_name("crashy.db-wal");
    let saved = (std::fs::read(&path).unwrap(), std::fs::read(&wal).ok());

    sync(&server, &mut p, &token).await;
    assert!(p.pending().unwrap().is_empty());
    let kept = view(&mut p);
    // Only the reply's commit skips its fsync: the app's commits still wait for theirs.
    let level: i64 = p
        .store()
        .connection()
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(level, 2, "synchronous is FULL again after the reply");

    // Power cut: the reply's commit did not reach the disk.
    drop(p);
    std::fs::write(&path, &saved.0).unwrap();
    match &saved.1 {
        Some(log) => std::fs::write(&wal, log).unwrap(),
        None => {
            let _ = std::fs::remove_file(&wal);
        }
    }
    let _ = std::fs::remove_file(path.with_file_name("crashy.db-shm"));
    let mut p = Phone::open(&path, ferrysync_core::schema::EXAMPLE).unwrap();
    assert_eq!(pending_summary(&mut p), before, "back to before the sync");

    sync(&server, &mut p, &token).await;
    assert!(p.pending().unwrap().is_empty());
    let v = view(&mut p);
    assert_eq!(v, kept, "the same records as the kept reply gave");
    assert_eq!(v, server_view(&server, &token, "check").await);
    let companies: Vec<String> =
        server.query("SELECT name FROM company ORDER BY name", |r| r.get(0));
    assert_eq!(companies, ["ACME", "New"], "no duplicate from the retry");
    let contacts: Vec<String> =
        server.query("SELECT name FROM contact ORDER BY name", |r| r.get(0));
    assert_eq!(contacts, ["Ann", "Cid", "Dee"]);
    server.stop().await;
}
