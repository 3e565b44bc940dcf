//! `FileFlash`: real-part geometry, NOR write rules, an image kept between runs.

mod common;

use common::*;
use embedded_storage_async::nor_flash::{NorFlash, ReadNorFlash};
use ferrysync_core::schema::EXAMPLE;
use ferrysync_core::store::LocalStore;
use ferrysync_core::track;
use ferrysync_flash::{store_cache, FileFlash, FileFlashError, FlashStore, StoreCache};
use pollster::block_on;

type FileStore = FlashStore<FileFlash, StoreCache<16, 128>, 1024, 4>;

fn temp(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("ferrysync-flash-{}-{name}.img", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn geometry_and_nor_rules() {
    let path = temp("rules");
    let mut f = FileFlash::open_or_create(&path, 8 * 4096).unwrap();
    assert_eq!(f.capacity(), 8 * 4096);
    let mut buf = [0u8; 8];
    block_on(f.read(0, &mut buf)).unwrap();
    assert_eq!(buf, [0xFF; 8], "a new image is erased");
    block_on(f.write(4, &[0x0F, 0xF0, 0x00, 0xFF])).unwrap();
    // Clearing more bits is fine; setting one is not.
    block_on(f.write(4, &[0x0E, 0xF0, 0x00, 0xFF])).unwrap();
    assert_eq!(
        block_on(f.write(4, &[0x1E, 0xF0, 0x00, 0xFF])),
        Err(FileFlashError::BitSet { offset: 4 })
    );
    assert_eq!(
        block_on(f.write(2, &[0; 4])),
        Err(FileFlashError::NotAligned)
    );
    assert_eq!(
        block_on(f.write(4, &[0; 3])),
        Err(FileFlashError::NotAligned)
    );
    assert_eq!(block_on(f.erase(0, 100)), Err(FileFlashError::NotAligned));
    assert_eq!(
        block_on(f.write(8 * 4096, &[0; 4])),
        Err(FileFlashError::OutOfBounds)
    );
    // A write across a 256-byte page is two program operations.
    let before = f.stats().writes;
    block_on(f.write(252, &[0; 8])).unwrap();
    assert_eq!(f.stats().writes - before, 2);
    block_on(f.erase(0, 4096)).unwrap();
    block_on(f.read(0, &mut buf)).unwrap();
    assert_eq!(buf, [0xFF; 8]);
    drop(f);
    // Reopened with the wrong size: refused; with the right one: the same bytes.
    assert!(FileFlash::open_or_create(&path, 4 * 4096).is_err());
    assert!(FileFlash::open_or_create(&path, 1000).is_err());
    let f = FileFlash::open_or_create(&path, 8 * 4096).unwrap();
    assert_eq!(f.as_bytes().len(), 8 * 4096);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_scanner_keeps_its_data_between_runs() {
    let path = temp("scanner");
    let mut server = FakeServer::new();
    let want = {
        let mut s = FileStore::open_file(&path, 64 * 4096, store_cache()).unwrap();
        let c = block_on(track::insert(
            &EXAMPLE,
            &mut s,
            CO,
            None,
            &company("ACME"),
            1,
        ))
        .unwrap();
        block_on(track::insert(
            &EXAMPLE,
            &mut s,
            CT,
            Some(c),
            &contact("Ann"),
            2,
        ))
        .unwrap();
        sync_with(&mut s, &mut server).unwrap();
        block_on(track::insert(
            &EXAMPLE,
            &mut s,
            CT,
            Some(c),
            &contact("Bob"),
            3,
        ))
        .unwrap();
        block_on(snapshot(&mut s)).unwrap()
    };
    // "Power off": the process drops the store; the next run opens the same image.
    let mut s = FileStore::open_file(&path, 64 * 4096, store_cache()).unwrap();
    assert_eq!(block_on(snapshot(&mut s)).unwrap(), want);
    assert_eq!(block_on(pending(&mut s)).unwrap().len(), 1);
    sync_with(&mut s, &mut server).unwrap();
    assert!(block_on(pending(&mut s)).unwrap().is_empty());
    assert_eq!(block_on(s.load_state()).unwrap().syncs, 2);
    std::fs::remove_file(&path).unwrap();
}
