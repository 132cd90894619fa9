//! Seed planning against hostile indexes: many identical files (same digest and attributes, so
//! every one is a candidate for every other) must plan in linear time, and an abandoned plan
//! must stop when its cancel flag is set.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use chunksnap_core::assemble::{PlanCancelled, Seed, Seeding};
use chunksnap_format::digest::Digest;
use chunksnap_format::pb::{EntryType, LayerIndex};

use crate::entry;

/// An index of `n` one-byte files with identical content and attributes under `prefix/`.
fn identical_files(prefix: &str, n: usize) -> LayerIndex {
    let digest = Digest::of(b"x");
    let entries = (0..n)
        .map(|i| {
            let mut e = entry(format!("{prefix}/{i}").as_bytes(), EntryType::File);
            e.size = 1;
            e.offset = i as u64;
            e.content_digest = digest.as_bytes().to_vec();
            e
        })
        .collect();
    LayerIndex {
        entries,
        ..LayerIndex::default()
    }
}

/// The fastest of three plans of `n` identical files against a seed of `n` others.
fn plan_time(n: usize) -> Duration {
    let layer = identical_files("new", n);
    let seed = Arc::new(identical_files("old", n));
    (0..3)
        .map(|_| {
            let seeds = vec![Seed {
                index: seed.clone(),
                dir: "/nonexistent".into(),
            }];
            let started = Instant::now();
            let plan = Seeding::plan(&layer, seeds);
            let took = started.elapsed();
            assert_eq!(plan.files(), n);
            took
        })
        .min()
        .unwrap_or_default()
}

#[test]
fn identical_files_plan_in_linear_time() {
    // Quadratic planning took 3.5 s / 56 s for 10k / 40k such files (release); a ratio near
    // 4 is linear, 16 quadratic. The bound leaves room for a busy machine.
    let small = plan_time(10_000);
    let large = plan_time(40_000);
    let ratio = large.as_secs_f64() / small.as_secs_f64().max(1e-6);
    println!("seed plan: 10k files {small:?}, 40k files {large:?}, ratio {ratio:.1}");
    assert!(ratio < 9.0, "10k: {small:?}, 40k: {large:?}");
}

#[test]
fn a_cancelled_plan_stops() {
    let layer = identical_files("new", 40_000);
    let seeds = vec![Seed {
        index: Arc::new(identical_files("old", 40_000)),
        dir: "/nonexistent".into(),
    }];
    let cancel = AtomicBool::new(true);
    let started = Instant::now();
    let r = Seeding::plan_cancellable(&layer, seeds.clone(), &cancel);
    assert!(matches!(r, Err(PlanCancelled)));
    assert!(started.elapsed() < Duration::from_secs(5));
    let plan = Seeding::plan_cancellable(&layer, seeds, &AtomicBool::new(false)).unwrap();
    assert_eq!(plan.files(), 40_000);
}
