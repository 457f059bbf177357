//! In-process benchmarks on the fakes (feature `fakes`): AWS's throttling and latency simulated on
//! tokio's clock, so that a paused runtime measures simulated minutes in seconds of CPU.
//! - [`throttle`]: the fakes behind per-account-and-region token buckets, latency, pages and SDK retries.
//! - [`org`]: the organization scale benchmark of issue 10 (`scripts/bench-org`).

pub mod org;
pub mod throttle;
