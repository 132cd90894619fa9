//! Network shaping for benchmarks: a network namespace with a veth pair rate-limited by `tc tbf`,
//! and a TCP proxy that adds latency.

pub mod delay_proxy;
pub mod shaped_link;
