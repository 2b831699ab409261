//! The process's logger: env_logger, less the one line rdkafka writes when it closes a
//! consumer that [`crate::pubsub::kafka::close_consumer`] has already closed.

use log::{Log, Metadata, Record};

/// Installs the logger: `RUST_LOG` or info, millisecond timestamps.
pub fn init() {
    let logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
            .format_timestamp_millis()
            .build();
    let level = logger.filter();
    if log::set_boxed_logger(Box::new(WithoutRedundantClose(logger))).is_ok() {
        log::set_max_level(level);
    }
}

/// Passes every record on but rdkafka's report that its drop found the consumer
/// already closed: the close it tries there is the one we did, and said nothing of.
struct WithoutRedundantClose<L>(L);

impl<L: Log> Log for WithoutRedundantClose<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !is_redundant_close(record) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// rdkafka 0.39's `BaseConsumer::drop` logs this when librdkafka answers its close
/// with "Broker handle destroyed" (`RD_KAFKA_RESP_ERR__DESTROY`): already closed.
fn is_redundant_close(record: &Record) -> bool {
    record.target() == "rdkafka::consumer::base_consumer"
        && record.level() == log::Level::Error
        && {
            let text = record.args().to_string();
            text.starts_with("Failed to close consumer queue on drop")
                && text.contains("BrokerDestroy")
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Keeps the text of every record it is given.
    #[derive(Default)]
    struct Kept(Mutex<Vec<String>>);

    impl Log for Kept {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, record: &Record) {
            self.0.lock().unwrap().push(record.args().to_string());
        }
        fn flush(&self) {}
    }

    fn passed(target: &str, level: log::Level, text: &str) -> bool {
        let logger = WithoutRedundantClose(Kept::default());
        logger.log(
            &Record::builder()
                .target(target)
                .level(level)
                .args(format_args!("{text}"))
                .build(),
        );
        let kept = logger.0 .0.lock().unwrap();
        assert!(kept.len() <= 1);
        kept.first().is_some_and(|line| line == text)
    }

    const CONSUMER: &str = "rdkafka::consumer::base_consumer";
    const ALREADY_CLOSED: &str = "Failed to close consumer queue on drop: Consumer queue close error: BrokerDestroy (Local: Broker handle destroyed for termination)";

    #[test]
    fn only_the_report_of_an_already_closed_consumer_is_left_out() {
        assert!(!passed(CONSUMER, log::Level::Error, ALREADY_CLOSED));
        // Any other failure to close is news.
        assert!(passed(
            CONSUMER,
            log::Level::Error,
            "Failed to close consumer queue on drop: Consumer queue close error: Fatal (Local: Fatal error)"
        ));
        assert!(passed(
            CONSUMER,
            log::Level::Warn,
            "Ignored event 'Stats' on consumer poll"
        ));
        assert!(passed(
            "metrics_flow::pubsub",
            log::Level::Error,
            ALREADY_CLOSED
        ));
        assert!(passed(
            "rdkafka::consumer::base_consumer::other",
            log::Level::Error,
            ALREADY_CLOSED
        ));
    }
}
