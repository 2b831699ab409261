//! The pipeline, in the order a result travels: [`publish`] checks targets and sends
//! each result, a [`message`], to Kafka; [`subscribe`] consumes them and stores them in
//! PostgreSQL; [`report`] answers from what it stored. [`kafka`], [`pgconn`] and
//! [`table`] are the settings they share.

pub mod kafka;
pub mod message;
pub mod metrics;
pub mod pgconn;
pub mod publish;
pub mod report;
pub mod subscribe;
pub mod table;
