//! The integration tests' harness, by concern: the real stack and its isolation
//! ([`stack`]), the binary under test as a process ([`process`]), loopback servers
//! that behave or misbehave ([`http`]), Kafka helpers ([`kafka`]), the three-node
//! cluster's nodes, leaders and replicas ([`cluster`]), the metrics endpoint read from
//! outside ([`scrape`]), and checks of the tables sub derives ([`tables`]).
#![allow(dead_code)]

pub mod cluster;
pub mod http;
pub mod kafka;
pub mod process;
pub mod scrape;
pub mod stack;
pub mod tables;

// Each test binary uses some of these, none uses all.
#[allow(unused_imports)]
pub use {cluster::*, http::*, kafka::*, process::*, scrape::*, stack::*, tables::*};

use std::time::{SystemTime, UNIX_EPOCH};

/// A name no other test or earlier run has used, for topics, tables and groups.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// A fresh directory, removed when dropped, named after the test's purpose.
pub fn temp_dir(purpose: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("metrics-flow-{purpose}-"))
        .tempdir()
        .expect("creating a temporary directory")
}
