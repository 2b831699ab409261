//! metrics-flow: website checks published to Kafka (`pub`) and stored in PostgreSQL
//! exactly once (`sub`). The binary's `main` parses the command line and runs one of
//! [`pubsub::publish::run`] and [`pubsub::subscribe::run`]; the tests and the benchmark
//! tools use the same modules, the message schema above all.

pub mod cli;
pub mod error;
pub mod logging;
pub mod pubsub;
pub mod retry;
pub mod seconds;
pub mod secret;
pub mod shutdown;
pub mod sync;
pub mod throttle;
