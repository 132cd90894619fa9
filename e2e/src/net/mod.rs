//! Network plumbing of the e2e harness: the relay every proxy is built on ([`relay`]), and for
//! benchmarks a network namespace with a veth pair rate-limited by `tc tbf` and a TCP proxy that
//! adds latency.

pub mod delay_proxy;
pub mod relay;
pub mod shaped_link;
