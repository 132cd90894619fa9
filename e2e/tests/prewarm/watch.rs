//! The rollout watcher (filled in below).
