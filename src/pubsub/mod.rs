//! The pipeline: checks published to Kafka, consumed into PostgreSQL.

pub mod kafka;
pub mod message;
pub mod pgconn;
pub mod probe;
pub mod publish;
pub mod schedule;
pub mod store;
pub mod subscribe;
pub mod targets;
pub mod transport;
