//! Crash recovery: temp files of writers that died are removed when the store opens.

use super::*;

#[test]
fn temps_of_dead_writers_go_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let shard = dir.path().join("chunks/ab");
    fs::create_dir_all(&shard).unwrap();
    let hex = "ab".repeat(32);
    // pid 0x7fff_fff0 is above any pid_max: its writer is gone.
    let dead = shard.join(format!("{TEMP_PREFIX}{hex}-2147483632-0"));
    let ours = shard.join(format!("{TEMP_PREFIX}{hex}-{}-0", std::process::id()));
    let odd = shard.join(format!("{TEMP_PREFIX}unparsable"));
    for f in [&dead, &ours, &odd] {
        fs::write(f, b"x").unwrap();
    }
    ChunkStore::open(dir.path(), None).unwrap();
    assert!(!dead.exists());
    assert!(ours.exists(), "a live writer's temp file stays");
    assert!(odd.exists(), "unknown names wait for the age rule");
}
