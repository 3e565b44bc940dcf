//! A schema file with a third level (note under contact) and a scope field.

use crate::common::*;
use ferrysync_core::body::Value;
use ferrysync_core::wire::{Mode, RejectReason};
use ferrysync_core::TableId;
use ferrysync_server::{Config, LoadedSchema};

const SCHEMA: &str = r#"
[[table]]
name = "company"
scope_field = "region"
fields = [
  { name = "name", type = "text" },
  { name = "region", type = "text" },
  { name = "employees", type = "u64", optional = true },
]

[[table]]
name = "contact"
parent = "company"
parent_field = "company_id"
fields = [
  { name = "name", type = "text" },
  { name = "vip", type = "bool" },
  { name = "score", type = "f64" },
]

[[table]]
name = "note"
parent = "contact"
parent_field = "contact_id"
fields = [
  { name = "text", type = "text" },
  { name = "stars", type = "i64" },
  { name = "blob", type = "bytes", optional = true },
]
"#;

const NOTE: TableId = TableId(2);

store_test! {
    #[tokio::test]
    async fn two_levels_of_local_ids_are_remapped_in_one_batch() {
        let schema = LoadedSchema::parse(SCHEMA).unwrap();
        let s = TestServer::with(schema, Config::default()).await;
        let dev = s.device("west");
        let t = at(dev.id, 0);
        let company = |n: &str, region: &str| {
            body_of(
                &schema,
                COMPANY,
                &[Value::Text(n), Value::Text(region), Value::U64(12)],
            )
        };
        let contact = |n: &str| {
            body_of(
                &schema,
                CONTACT,
                &[Value::Text(n), Value::Bool(true), Value::F64(1.5)],
            )
        };
        let note = |n: &str| {
            body_of(
                &schema,
                NOTE,
                &[Value::Text(n), Value::I64(-3), Value::Null],
            )
        };
        let batch = vec![
            add(COMPANY, 1, None, t, company("A", "west")),
            add(COMPANY, 2, None, t, company("B", "west")),
            add(COMPANY, 3, None, t, company("Elsewhere", "east")),
            add(CONTACT, 1, Some(local(1)), t, contact("a1")),
            add(CONTACT, 2, Some(local(2)), t, contact("b1")),
            add(NOTE, 1, Some(local(1)), t, note("about a1")),
            add(NOTE, 2, Some(local(2)), t, note("about b1")),
            add(
                NOTE,
                3,
                Some(local(2)),
                t,
                body_of(
                    &schema,
                    NOTE,
                    &[Value::Text("bin"), Value::I64(5), Value::Bytes(&[0, 1, 2])],
                ),
            ),
        ];
        let hash = schema.hash();
        let r = s
            .sync(&dev, hello_with(hash, 1, None, Mode::Full), &batch)
            .await;
        // The scope field must match the device's scope.
        assert_eq!(r.rejected.len(), 1);
        assert_eq!(r.rejected[0].reason, RejectReason::OutOfScope);
        assert_eq!(r.rejected[0].body, batch[2].body);
        assert_eq!(r.mappings.len(), 7);
        let fk = |q: &str, id: u64| -> i64 { s.one_i64(q, &[id as i64]) };
        let contact_of_note = "SELECT contact_id FROM note WHERE id = ?1";
        let company_of_contact = "SELECT company_id FROM contact WHERE id = ?1";
        assert_eq!(
            fk(contact_of_note, r.mapped(NOTE, 1)),
            r.mapped(CONTACT, 1) as i64
        );
        assert_eq!(
            fk(contact_of_note, r.mapped(NOTE, 2)),
            r.mapped(CONTACT, 2) as i64
        );
        assert_eq!(
            fk(contact_of_note, r.mapped(NOTE, 3)),
            r.mapped(CONTACT, 2) as i64
        );
        assert_eq!(
            fk(company_of_contact, r.mapped(CONTACT, 1)),
            r.mapped(COMPANY, 1) as i64
        );
        assert_eq!(
            fk(company_of_contact, r.mapped(CONTACT, 2)),
            r.mapped(COMPANY, 2) as i64
        );
        // Typed columns, readable with plain SQL.
        let row = &s.rows("SELECT vip, score FROM contact WHERE name = 'a1'", &[])[0];
        assert_eq!(row[0], Cell::Int(1));
        assert_eq!(row[1], Cell::Real(1.5));
        let blob = &s.rows("SELECT blob FROM note WHERE text = 'bin'", &[])[0][0];
        let Cell::Bytes(blob) = blob else {
            panic!("not bytes: {blob:?}")
        };
        assert_eq!(blob, &[0, 1, 2]);
        // The reply does not send back what the sync wrote; a later full refresh does, with
        // bodies exactly as sent (re-encoded from the typed columns).
        assert!(r.upserts.is_empty(), "{:?}", r.upserts);
        let full = s
            .sync(&dev, hello_with(hash, 9, None, Mode::Full), &[])
            .await;
        let n3 = full.upsert(NOTE, r.mapped(NOTE, 3)).unwrap();
        assert_eq!(n3.body, batch[7].body);
        assert_eq!(n3.parent, Some(r.mapped(CONTACT, 2)));
        assert_eq!(
            full.upsert(COMPANY, r.mapped(COMPANY, 1)).unwrap().body,
            batch[0].body
        );

        // Deleting a company cascades two levels down.
        let r2 = s
            .sync(
                &dev,
                hello_with(hash, 2, Some(r.done.cursor), Mode::Delta),
                &[delete(
                    COMPANY,
                    server_id(r.mapped(COMPANY, 2)),
                    at(dev.id, 1),
                )],
            )
            .await;
        assert_eq!(r2.removes.len(), 4);
        assert_eq!(s.count("note"), 1);
        assert_eq!(s.count("contact"), 1);
        // Re-parenting a note onto a deleted contact is refused; onto a live one, applied.
        let n1 = r.mapped(NOTE, 1);
        let r3 = s
            .sync(
                &dev,
                hello_with(hash, 3, Some(r2.done.cursor), Mode::Delta),
                &[update(
                    NOTE,
                    server_id(n1),
                    Some(server_id(r.mapped(CONTACT, 2))),
                    at(dev.id, 2),
                    note("moved"),
                )],
            )
            .await;
        assert_eq!(
            r3.rejection(RejectReason::ParentMissing).body,
            note("moved")
        );
        s.stop().await;
    }
}

store_test! {
    #[tokio::test]
    async fn server_refuses_a_database_made_for_another_schema() {
        let db = TestDb::new();
        db.open(LoadedSchema::example()).unwrap();
        let other = LoadedSchema::parse(SCHEMA).unwrap();
        let err = match db.open(other) {
            Ok(_) => panic!("opened a database made for another schema"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("was created for schema"), "{err}");
    }
}
