//! The pipeline, in the order a result travels: [`publish`] checks targets and sends
//! each result, a [`message`], to Kafka; [`subscribe`] consumes them and stores them in
//! PostgreSQL. [`kafka`], [`pgconn`] and [`table`] are the settings both sides share.

pub mod kafka;
pub mod message;
pub mod pgconn;
pub mod publish;
pub mod subscribe;
pub mod table;
