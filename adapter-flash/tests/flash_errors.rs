//! A flash write that fails (and the flash goes on working): the operation fails, the store
//! rolls back in the same session, the state is the one before, and doing it again works.

mod common;

use common::*;
use embedded_storage_async::nor_flash::{ErrorType, NorFlash, ReadNorFlash};
use ferrysync_core::mem::MemStore;
use ferrysync_flash::{store_cache, FlashStore, StoreCache};
use pollster::block_on;
use sequential_storage::mock_flash::MockFlashError;

/// A flash whose `fail_at`-th write call fails without writing anything.
struct Flaky {
    inner: Small,
    writes: u32,
    fail_at: Option<u32>,
}

impl ErrorType for Flaky {
    type Error = MockFlashError;
}

impl ReadNorFlash for Flaky {
    const READ_SIZE: usize = Small::READ_SIZE;
    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        self.inner.read(offset, bytes).await
    }
    fn capacity(&self) -> usize {
        self.inner.capacity()
    }
}

impl NorFlash for Flaky {
    const WRITE_SIZE: usize = Small::WRITE_SIZE;
    const ERASE_SIZE: usize = Small::ERASE_SIZE;
    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        self.inner.erase(from, to).await
    }
    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        self.writes += 1;
        if self.fail_at == Some(self.writes) {
            return Err(MockFlashError::NotWritable(offset));
        }
        self.inner.write(offset, bytes).await
    }
}

type FlakyStore = FlashStore<Flaky, StoreCache<16, 512>, 1024, 1>;

fn flaky(inner: Small, fail_at: Option<u32>) -> FlakyStore {
    let f = Flaky {
        inner,
        writes: 0,
        fail_at,
    };
    FlashStore::try_new(f, Small::FULL_FLASH_RANGE, store_cache()).unwrap()
}

fn sweep(setup: &[Step], op: &[Step]) {
    let mut model = MemStore::new();
    let mut mserver = FakeServer::new();
    let mut s = small_store(small_flash());
    let mut server = FakeServer::new();
    for (i, st) in setup.iter().enumerate() {
        st.apply(&mut model, &mut mserver, 1_000 + i as u64)
            .unwrap();
        st.apply(&mut s, &mut server, 1_000 + i as u64).unwrap();
    }
    let pre = block_on(snapshot(&mut s)).unwrap();
    let base = s.into_flash();
    for (i, st) in op.iter().enumerate() {
        st.apply(&mut model, &mut mserver, 50_000 + i as u64)
            .unwrap();
    }
    let post = block_on(snapshot(&mut model)).unwrap();
    let mut k = 1;
    loop {
        let mut s = flaky(base.clone(), Some(k));
        let mut srv = server.clone();
        let failed = op
            .iter()
            .enumerate()
            .any(|(i, st)| st.apply(&mut s, &mut srv, 50_000 + i as u64).is_err());
        if !failed {
            assert_eq!(block_on(snapshot(&mut s)).unwrap(), post);
            break;
        }
        // Same session: rolled back to the state before.
        assert_eq!(block_on(snapshot(&mut s)).unwrap(), pre, "write {k} failed");
        // And the operation, done again in the same session, works.
        let mut srv = server.clone();
        for (i, st) in op.iter().enumerate() {
            st.apply(&mut s, &mut srv, 50_000 + i as u64)
                .unwrap_or_else(|e| panic!("retry after failed write {k}: {e}"));
        }
        assert_eq!(block_on(snapshot(&mut s)).unwrap(), post, "retry after {k}");
        let mut again = small_store(s.into_flash().inner);
        assert_eq!(
            block_on(snapshot(&mut again)).unwrap(),
            post,
            "remount after {k}"
        );
        k += 1;
    }
    println!("{} write calls, each failed once", k - 1);
    assert!(k > 3);
}

#[test]
fn failed_write_during_local_edits_and_sync() {
    let mut setup = vec![
        Step::ServerAdd { kids: 2 },
        Step::Insert {
            parent: None,
            name: "ACME".into(),
        },
        Step::Insert {
            parent: Some(0),
            name: "Ann".into(),
        },
    ];
    sweep(
        &setup,
        &[Step::Insert {
            parent: Some(0),
            name: "Bob".into(),
        }],
    );
    sweep(&setup, &[Step::Sync]);
    setup.push(Step::Sync);
    setup.push(Step::Update {
        idx: 1,
        name: "Ann 2".into(),
    });
    setup.push(Step::ServerDelete { idx: 0 });
    sweep(&setup, &[Step::Sync]);
    sweep(&setup, &[Step::Delete { idx: 0 }]);
}
