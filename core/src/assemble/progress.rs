//! Which files of a layer are complete while it is being assembled, so that verification can
//! read them back and hash the layer stream alongside the assembly instead of after it.
//!
//! The assembler reports each regular file when it is final (written, or linked from a seed)
//! and, for the file the walk streams itself, how far it is final while it is written. The
//! reader waits for what it needs; the assembler never waits for the reader.

use std::sync::{Condvar, Mutex, MutexGuard};

/// Completion of a layer's files, shared by the assembler and a reader on another thread.
#[derive(Debug)]
pub struct Progress {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Per index entry: its file is final.
    done: Vec<bool>,
    /// The file the walk is streaming, and the bytes of it that are final (written, or holes
    /// the writer will not come back to).
    streaming: Option<(usize, u64)>,
    /// The assembly returned: `Some(true)` when it succeeded.
    ended: Option<bool>,
    /// A reader is waiting (only then is a change signalled).
    waiting: bool,
}

/// How much of a file can be read now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Available {
    /// All of it: the file is final (or the assembly ended without reporting it; then reading
    /// it finds out what is there).
    All,
    /// The first this-many bytes: the rest is still being written.
    Upto(u64),
}

/// The assembly failed or was cancelled: what the reader waits for will not come.
#[derive(Debug, thiserror::Error)]
#[error("the assembly did not finish")]
pub struct Unfinished;

impl Progress {
    /// Progress of a layer whose index has `entries` entries.
    pub fn new(entries: usize) -> Self {
        Self {
            state: Mutex::new(State {
                done: vec![false; entries],
                ..State::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signal(&self, mut st: MutexGuard<'_, State>) {
        if st.waiting {
            st.waiting = false;
            drop(st);
            self.changed.notify_all();
        }
    }

    /// Entry `entry`'s file is final.
    pub(crate) fn done(&self, entry: usize) {
        let mut st = self.lock();
        if let Some(d) = st.done.get_mut(entry) {
            *d = true;
        }
        if st.streaming.is_some_and(|(e, _)| e == entry) {
            st.streaming = None;
        }
        self.signal(st);
    }

    /// The first `final_bytes` of entry `entry`'s file, which the walk is writing, are final.
    pub(crate) fn streamed(&self, entry: usize, final_bytes: u64) {
        let mut st = self.lock();
        st.streaming = Some((entry, final_bytes));
        self.signal(st);
    }

    /// The assembly returned (`ok`: successfully). Wakes a waiting reader for good.
    pub fn finish(&self, ok: bool) {
        let mut st = self.lock();
        st.ended = Some(ok);
        st.waiting = true;
        self.signal(st);
    }

    /// Waits until more than `have` bytes of entry `entry`'s file can be read, or all of it.
    pub fn wait_beyond(&self, entry: usize, have: u64) -> Result<Available, Unfinished> {
        let mut st = self.lock();
        loop {
            if st.done.get(entry).copied().unwrap_or(true) || st.ended == Some(true) {
                return Ok(Available::All);
            }
            if st.ended == Some(false) {
                return Err(Unfinished);
            }
            if let Some((e, n)) = st.streaming
                && e == entry
                && n > have
            {
                return Ok(Available::Upto(n));
            }
            st.waiting = true;
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_waits_for_what_it_needs() {
        let p = Progress::new(3);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let first = p.wait_beyond(1, 0).unwrap();
                let second = p.wait_beyond(1, 10).unwrap();
                let other = p.wait_beyond(2, 0).unwrap();
                (first, second, other)
            });
            p.done(0);
            p.streamed(1, 10);
            p.streamed(1, 20);
            p.done(1);
            p.done(2);
            let (first, second, other) = reader.join().unwrap();
            assert!(matches!(first, Available::Upto(10 | 20) | Available::All));
            assert!(matches!(second, Available::Upto(20) | Available::All));
            assert_eq!(other, Available::All);
        });
    }

    #[test]
    fn a_failed_assembly_wakes_the_reader_with_an_error() {
        let p = Progress::new(2);
        std::thread::scope(|s| {
            let reader = s.spawn(|| p.wait_beyond(1, 0));
            p.finish(false);
            assert!(reader.join().unwrap().is_err());
        });
        let ok = Progress::new(2);
        ok.finish(true);
        assert_eq!(ok.wait_beyond(1, 0).unwrap(), Available::All);
    }
}
