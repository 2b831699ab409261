//! sub's PostgreSQL session: connecting at start-up within the connect deadline,
//! waiting out a later outage for as long as it lasts, and deciding after a failed
//! batch whether to wait, pause or give up.

use std::sync::Arc;
use std::time::Duration;

use postgres::Client;

use super::prepared::Prepared;
use super::store::describe;
use crate::pubsub::metrics::Link;
use crate::pubsub::pgconn::PgConnector;
use crate::retry::{retry_until, retry_while_running};
use crate::shutdown::Shutdown;

/// How long a batch that failed for no reason of its data waits to be retried.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long a check that the connection still answers may take.
const LIVENESS_LIMIT: Duration = Duration::from_secs(5);

pub struct Session {
    client: Client,
    prepared: Prepared,
    connector: PgConnector,
    shutdown: Shutdown,
    /// What `/healthz` says of PostgreSQL.
    pub link: Arc<Link>,
}

impl Session {
    /// Connects, retrying an unreachable server until `deadline`: at start-up, a
    /// server that never answers is more likely a wrong address than an outage.
    pub fn open(
        connector: PgConnector,
        deadline: Duration,
        shutdown: &Shutdown,
    ) -> anyhow::Result<Session> {
        let client = retry_until(&connector.describe(), deadline, shutdown, || {
            connector.connect()
        })?;
        let link = Link::new("PostgreSQL");
        link.up();
        Ok(Session {
            client,
            prepared: Prepared::default(),
            connector,
            shutdown: shutdown.clone(),
            link,
        })
    }

    pub fn describe(&self) -> String {
        self.connector.describe()
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.client
    }

    /// The connection with the statements prepared on it, for a batch.
    pub fn client_and_statements(&mut self) -> (&mut Client, &mut Prepared) {
        (&mut self.client, &mut self.prepared)
    }

    /// Marks PostgreSQL down if the server closed the connection (a shutdown or a
    /// restart does), without a round trip; the next batch reconnects.
    pub fn notice_a_lost_connection(&self) {
        if self.client.is_closed() {
            self.link.down("the connection was closed");
        }
    }

    fn connected(&mut self) -> bool {
        !self.client.is_closed() && self.client.is_valid(LIVENESS_LIMIT).is_ok()
    }

    /// Connects again if the connection is gone, waiting for PostgreSQL however long
    /// it is away: the connect deadline is for start-up only.
    pub fn reconnect(&mut self) -> anyhow::Result<()> {
        if self.connected() {
            return Ok(());
        }
        self.link.down("the connection was lost; reconnecting");
        let connector = &self.connector;
        let (client, outage) = retry_while_running(&connector.describe(), &self.shutdown, || {
            connector.connect()
        })?;
        self.client = client;
        self.prepared = Prepared::default();
        self.link.up();
        log::info!(
            "reconnected to {} after {:.0} s",
            self.describe(),
            outage.as_secs_f64()
        );
        Ok(())
    }

    /// Runs `query`, and once more after reconnecting if it failed on a lost connection.
    pub fn retrying<T>(
        &mut self,
        mut query: impl FnMut(&mut Client) -> Result<T, postgres::Error>,
    ) -> anyhow::Result<T> {
        match query(&mut self.client) {
            Ok(value) => Ok(value),
            Err(error) if self.connected() => Err(anyhow::anyhow!(describe(&error))),
            Err(error) => {
                log::warn!("PostgreSQL: {}; reconnecting", describe(&error));
                self.reconnect()?;
                query(&mut self.client).map_err(|e| anyhow::anyhow!(describe(&e)))
            }
        }
    }

    /// After a failed batch: waits for PostgreSQL if the connection is gone, gives up
    /// on errors no retry can cure (class 42: a dropped table, a revoked privilege),
    /// and otherwise pauses. Ok means the batch may be read and tried again.
    pub fn recover(&mut self, error: &postgres::Error) -> anyhow::Result<()> {
        let reason = describe(error);
        log::error!("writing a batch failed: {reason}; rolling back");
        // Prepared again at the next batch, whatever failed: cheap next to a failure,
        // and a connection pooler may have lost them with the server connection.
        self.prepared = Prepared::default();
        if !self.connected() {
            return self.reconnect();
        }
        if error
            .code()
            .is_some_and(|code| code.code().starts_with("42"))
        {
            anyhow::bail!(reason);
        }
        self.shutdown.sleep(RETRY_PAUSE);
        Ok(())
    }
}
