//! An ordered parallel map over a slice on scoped threads: the converter's CPU-bound stages
//! (hashing, sketching and compressing chunks; computing deltas) share it.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `f` over every item on up to `threads` threads (work-stealing by index); results in item
/// order. A worker that panics (a bug) leaves its items to `panicked()`.
pub fn map<T: Sync, R: Send, E: Send>(
    items: &[T],
    threads: usize,
    f: &(dyn Fn(&T) -> Result<R, E> + Sync),
    panicked: impl Fn() -> E,
) -> Result<Vec<R>, E> {
    let workers = threads.min(items.len()).max(1);
    if workers == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<R, E>>> = (0..items.len()).map(|_| None).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, f(item)));
                    }
                    done
                })
            })
            .collect();
        for h in handles {
            if let Ok(done) = h.join() {
                for (i, r) in done {
                    slots[i] = Some(r);
                }
            }
        }
    });
    slots
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(panicked())))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_keep_item_order() {
        let items: Vec<u32> = (0..1000).collect();
        let out = super::map(&items, 3, &|x| Ok::<_, ()>(x * 2), || ()).unwrap();
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        let err = super::map(
            &items,
            2,
            &|x| if *x == 500 { Err(*x) } else { Ok(*x) },
            || 0,
        );
        assert_eq!(err, Err(500));
    }
}
