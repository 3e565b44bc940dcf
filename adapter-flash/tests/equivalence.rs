//! Random sequences of local edits, server-side changes and syncs give the same data on the
//! flash store as on the in-memory model; so does a fresh mount of the flash afterwards.

mod common;

use common::*;
use ferrysync_core::mem::MemStore;
use pollster::block_on;
use proptest::prelude::*;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (proptest::option::of(0usize..8), "[a-z]{1,12}")
            .prop_map(|(parent, name)| Step::Insert { parent, name }),
        3 => (0usize..64, "[a-z]{1,40}").prop_map(|(idx, name)| Step::Update { idx, name }),
        1 => (0usize..64).prop_map(|idx| Step::Delete { idx }),
        3 => Just(Step::Sync),
        1 => (0usize..4).prop_map(|kids| Step::ServerAdd { kids }),
        1 => (0usize..8).prop_map(|idx| Step::ServerDelete { idx }),
        1 => (0usize..8).prop_map(|idx| Step::Refuse { idx }),
        1 => Just(Step::ClearRejected),
        1 => Just(Step::Abort),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn flash_store_matches_the_model(steps in proptest::collection::vec(step(), 1..30)) {
        let mut model = MemStore::new();
        let mut mserver = FakeServer::new();
        let mut flash = small_store(small_flash());
        let mut fserver = FakeServer::new();
        for (i, st) in steps.iter().enumerate() {
            let now = 1_000 + i as u64;
            let want = st.apply(&mut model, &mut mserver, now);
            let got = st.apply(&mut flash, &mut fserver, now);
            prop_assert_eq!(got.is_ok(), want.is_ok(), "step {} {:?}: {:?} vs {:?}", i, st, got, want);
            let w = block_on(snapshot(&mut model)).unwrap();
            let g = block_on(snapshot(&mut flash)).unwrap();
            prop_assert_eq!(&g, &w, "after step {} {:?}", i, st);
        }
        let want = block_on(snapshot(&mut model)).unwrap();
        let mut again = small_store(flash.into_flash());
        prop_assert_eq!(block_on(snapshot(&mut again)).unwrap(), want);
    }
}
