//! Memory stays bounded while converting a layer far larger than the bound.
//!
//! A binary of its own because it installs a counting global allocator, and only one test runs
//! in it so the peak it measures is the conversion's.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};

use chunkconv::layer::{
    EmptyCatalog, LayerInput, LayerOptions, PackSink, SinkError, convert_layer,
};
use chunksnap_format::digest::{Digest, Hasher};
use chunksnap_testkit::Rng;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call to `System`, only counting sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// An uncompressed tar holding one file of `size` pseudo-random bytes, generated on the fly.
struct SyntheticTar {
    header: Vec<u8>,
    size: u64,
    pos: u64,
    rng: Rng,
    /// The current 8 bytes of content.
    word: u64,
}

impl SyntheticTar {
    fn new(size: u64) -> Self {
        let mut h = tar::Header::new_gnu();
        h.set_path("big.bin").unwrap();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        Self {
            header: h.as_bytes().to_vec(),
            size,
            pos: 0,
            rng: Rng::new(1),
            word: 0,
        }
    }

    fn total(&self) -> u64 {
        512 + self.size.div_ceil(512) * 512 + 1024
    }
}

impl Read for SyntheticTar {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let total = self.total();
        if self.pos >= total || out.is_empty() {
            return Ok(0);
        }
        let n = out.len().min(8192).min((total - self.pos) as usize) & !7;
        let n = if n == 0 { 1 } else { n };
        for (i, b) in out[..n].iter_mut().enumerate() {
            let p = self.pos + i as u64;
            *b = if p < 512 {
                self.header[p as usize]
            } else if p < 512 + self.size {
                if (p - 512).is_multiple_of(8) {
                    self.word = self.rng.next_u64();
                }
                (self.word >> (8 * ((p - 512) % 8))) as u8
            } else {
                0
            };
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Uploads nowhere: keeps only the count, like a sink that streams packs to a registry.
struct Discard(usize);

impl PackSink for Discard {
    fn put_pack(&mut self, _: &Digest, _: Vec<u8>) -> Result<(), SinkError> {
        self.0 += 1;
        Ok(())
    }
}

#[test]
fn converting_a_large_layer_uses_bounded_memory() {
    // CHUNKSNAP_LAYER_MEMORY_MIB=1024 measures a 1 GiB layer (the README's figure); the default
    // keeps `make test` quick.
    let size_mib: u64 = std::env::var("CHUNKSNAP_LAYER_MEMORY_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(192);
    let size: u64 = size_mib << 20;
    const BOUND: usize = 64 << 20;
    let mut hasher = Hasher::new();
    io::copy(&mut SyntheticTar::new(size), &mut hasher).unwrap();
    let input = LayerInput {
        digest: hasher.finish(),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        size: Some(SyntheticTar::new(size).total()),
    };
    let mut sink = Discard(0);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = convert_layer(
        SyntheticTar::new(size),
        &input,
        &LayerOptions::default(),
        &EmptyCatalog,
        &mut sink,
    )
    .unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    assert_eq!(out.index.source.as_ref().unwrap().content_size, size);
    assert_eq!(sink.0, out.stats.packs.len());
    assert!(sink.0 >= 12, "{:?}", out.stats.packs);
    assert!(
        peak < BOUND,
        "peak {} MiB for a {} MiB layer",
        peak >> 20,
        size >> 20
    );
    eprintln!(
        "peak heap {} MiB for a {} MiB layer",
        peak >> 20,
        size >> 20
    );
}
