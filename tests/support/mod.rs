//! Helpers shared by the integration tests (`mod support;` in each test file).
//!
//! - [`browser`]: headless Chromium driven through `tests/web/browser.mjs`.
//! - [`mesh`]: real `nano-connect` processes (grapes, workers) with OS-chosen ports.
//! - [`natlab`]: a NAT lab of network namespaces and nftables routers (needs root).
//! - [`matrix`]: the NAT matrix of issue 3 (grapes, workers, calls) on a [`natlab`] lab.
//! - [`scratch`]: a key file and worker cache of its own for every process.
//! - [`nano_stub`]: an in-process stand-in for a Nano node's HTTP RPC that answers from
//!   recorded fixtures and records what reached it.
//! - [`nano_ws_stub`]: an in-process stand-in for a Nano node's websocket that sends
//!   recorded and generated confirmations and records what it was asked.
//!
//! Each test file uses only some of these helpers, hence the `dead_code` allowances.

#[allow(dead_code)]
pub mod browser;
#[allow(dead_code)]
pub mod matrix;
#[allow(dead_code)]
pub mod mesh;
#[allow(dead_code)]
pub mod nano_stub;
#[allow(dead_code)]
pub mod nano_ws_stub;
#[allow(dead_code)]
pub mod natlab;
#[allow(dead_code)]
pub mod npm;
#[allow(dead_code)]
pub mod scratch;
