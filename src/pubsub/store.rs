//! PostgreSQL side of `sub`: table names, migrations, and the batch transaction
//! that writes rows, rejected payloads and consumed offsets together.

use std::collections::BTreeMap;
use std::fmt;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::Client;

use super::message::{CheckResult, ErrorKind};

/// Longest table name accepted, leaving room for the suffixes of derived names.
const MAX_NAME: usize = 40;

/// A validated, optionally schema-qualified table name. Only `[a-z_][a-z0-9_]*` parts
/// are accepted (folded to lower case, as PostgreSQL does unquoted), and it is always
/// quoted in SQL, so it can never carry SQL of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    schema: Option<String>,
    name: String,
}

impl TableName {
    pub fn parse(text: &str) -> Result<TableName, String> {
        let lower = text.trim().to_ascii_lowercase();
        let (schema, name) = match lower.split_once('.') {
            Some((schema, name)) => (Some(schema.to_owned()), name.to_owned()),
            None => (None, lower),
        };
        for part in schema.iter().chain(std::iter::once(&name)) {
            let valid_start = part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
            let valid_rest = part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid_start || !valid_rest || part.len() > MAX_NAME {
                return Err(format!(
                    "'{text}' is not a table name: use letters, digits and _, at most {MAX_NAME} characters, optionally schema.table"
                ));
            }
        }
        Ok(TableName { schema, name })
    }

    /// A sibling table in the same schema, named `<table><suffix>`.
    pub fn with_suffix(&self, suffix: &str) -> TableName {
        TableName {
            schema: self.schema.clone(),
            name: format!("{}{suffix}", self.name),
        }
    }

    /// An unquoted index name derived from the table, for `CREATE INDEX <name>`.
    fn index_name(&self, what: &str) -> String {
        format!("\"{}_{what}_idx\"", self.name)
    }

    /// The unquoted qualified name, used as the advisory lock key.
    fn plain(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "\"{schema}\".\"{}\"", self.name),
            None => write!(f, "\"{}\"", self.name),
        }
    }
}

/// A message accepted into the results table.
pub struct AcceptedRow {
    pub check: CheckResult,
    pub partition: i32,
    pub offset: i64,
}

/// A payload that could not be accepted, kept for inspection.
pub struct RejectedRow {
    pub payload: Vec<u8>,
    pub reason: String,
    pub partition: i32,
    pub offset: i64,
}

/// Rows consumed since the last commit and, per partition, the next offset to consume.
#[derive(Default)]
pub struct Batch {
    pub accepted: Vec<AcceptedRow>,
    pub rejected: Vec<RejectedRow>,
    pub next_offsets: BTreeMap<i32, i64>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.accepted.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }
}

/// Why a batch did not commit; the caller recovers differently from each.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("partition {partition}'s stored offset moved: another consumer owns it now")]
    Fenced { partition: i32 },
    #[error(transparent)]
    Database(#[from] postgres::Error),
}

/// Ordered schema changes; each runs once per table, recorded in `<table>_migrations`.
fn migrations(table: &TableName) -> Vec<(i32, &'static str, String)> {
    let rejected = table.with_suffix("_rejected");
    let offsets = table.with_suffix("_offsets");
    vec![
        (
            1,
            "results, rejected payloads and consumed offsets",
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (
                 id uuid NOT NULL,
                 checked_at timestamptz NOT NULL,
                 target text NOT NULL,
                 ok boolean NOT NULL,
                 http_status integer,
                 latency_ms double precision,
                 error_kind text,
                 error_text text,
                 pattern text,
                 pattern_found boolean,
                 kafka_partition integer NOT NULL,
                 kafka_offset bigint NOT NULL,
                 received_at timestamptz NOT NULL DEFAULT now());
             CREATE INDEX IF NOT EXISTS {target_time} ON {table} (target, checked_at DESC);
             CREATE INDEX IF NOT EXISTS {time} ON {table} (checked_at);
             CREATE TABLE IF NOT EXISTS {rejected} (
                 payload bytea,
                 reason text NOT NULL,
                 kafka_partition integer NOT NULL,
                 kafka_offset bigint NOT NULL,
                 received_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS {offsets} (
                 topic text NOT NULL,
                 kafka_partition integer NOT NULL,
                 next_offset bigint NOT NULL,
                 updated_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (topic, kafka_partition));",
                target_time = table.index_name("target_time"),
                time = table.index_name("time"),
            ),
        ),
        (
            2,
            "phase timings, TLS expiry and response details",
            format!(
                "ALTER TABLE {table}
                 ADD COLUMN IF NOT EXISTS dns_ms double precision,
                 ADD COLUMN IF NOT EXISTS connect_ms double precision,
                 ADD COLUMN IF NOT EXISTS tls_ms double precision,
                 ADD COLUMN IF NOT EXISTS ttfb_ms double precision,
                 ADD COLUMN IF NOT EXISTS tls_expires_at timestamptz,
                 ADD COLUMN IF NOT EXISTS tls_days_left integer,
                 ADD COLUMN IF NOT EXISTS http_version text,
                 ADD COLUMN IF NOT EXISTS final_url text,
                 ADD COLUMN IF NOT EXISTS redirects integer,
                 ADD COLUMN IF NOT EXISTS body_bytes bigint,
                 ADD COLUMN IF NOT EXISTS schedule_lag_ms double precision"
            ),
        ),
    ]
}

/// Brings the schema up to date. The advisory lock makes concurrent starts safe: the
/// second process waits, then finds nothing left to do.
pub fn migrate(client: &mut Client, table: &TableName) -> Result<(), postgres::Error> {
    let ledger = table.with_suffix("_migrations");
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('metrics-flow migrate ' || $1))",
        &[&table.plain()],
    )?;
    if let Some(schema) = &table.schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {ledger} (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))?;
    let applied: i32 = tx
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {ledger}"),
            &[],
        )?
        .get(0);
    for (version, description, sql) in migrations(table) {
        if version <= applied {
            continue;
        }
        log::info!("migrating {table} to version {version}: {description}");
        tx.batch_execute(&sql)?;
        tx.execute(
            &format!("INSERT INTO {ledger} (version, description) VALUES ($1, $2)"),
            &[&version, &description],
        )?;
    }
    tx.commit()
}

/// The next offset stored for each of `partitions` that has one.
pub fn stored_offsets(
    client: &mut Client,
    table: &TableName,
    topic: &str,
    partitions: &[i32],
) -> Result<BTreeMap<i32, i64>, postgres::Error> {
    let offsets = table.with_suffix("_offsets");
    let rows = client.query(
        &format!(
            "SELECT kafka_partition, next_offset FROM {offsets}
             WHERE topic = $1 AND kafka_partition = ANY($2)"
        ),
        &[&topic, &partitions],
    )?;
    Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Writes the batch and advances the offsets in one transaction. `expected` holds the
/// offset each partition must still have in the database (None: no row yet); if any
/// moved, another consumer took the partition over and nothing is written.
pub fn commit_batch(
    client: &mut Client,
    table: &TableName,
    topic: &str,
    batch: &Batch,
    expected: &BTreeMap<i32, Option<i64>>,
) -> Result<(), CommitError> {
    let mut tx = client.transaction()?;
    copy_accepted(&mut tx, table, &batch.accepted)?;
    copy_rejected(&mut tx, table, &batch.rejected)?;
    for (&partition, &next) in &batch.next_offsets {
        let previous = expected.get(&partition).copied().flatten();
        if advance_offset(&mut tx, table, topic, partition, previous, next)? != 1 {
            return Err(CommitError::Fenced { partition });
        }
    }
    tx.commit()?;
    Ok(())
}

fn advance_offset(
    tx: &mut postgres::Transaction<'_>,
    table: &TableName,
    topic: &str,
    partition: i32,
    previous: Option<i64>,
    next: i64,
) -> Result<u64, postgres::Error> {
    let offsets = table.with_suffix("_offsets");
    match previous {
        Some(previous) => tx.execute(
            &format!(
                "UPDATE {offsets} SET next_offset = $3, updated_at = now()
                 WHERE topic = $1 AND kafka_partition = $2 AND next_offset = $4"
            ),
            &[&topic, &partition, &next, &previous],
        ),
        None => tx.execute(
            &format!(
                "INSERT INTO {offsets} (topic, kafka_partition, next_offset) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING"
            ),
            &[&topic, &partition, &next],
        ),
    }
}

fn copy_accepted(
    tx: &mut postgres::Transaction<'_>,
    table: &TableName,
    rows: &[AcceptedRow],
) -> Result<(), postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let sink = tx.copy_in(&format!(
        "COPY {table} (id, checked_at, target, ok, http_status, latency_ms, error_kind,
                       error_text, pattern, pattern_found, kafka_partition, kafka_offset,
                       dns_ms, connect_ms, tls_ms, ttfb_ms, tls_expires_at, tls_days_left,
                       http_version, final_url, redirects, body_bytes, schedule_lag_ms)
         FROM STDIN (FORMAT binary)"
    ))?;
    let types = [
        Type::UUID,
        Type::TIMESTAMPTZ,
        Type::TEXT,
        Type::BOOL,
        Type::INT4,
        Type::FLOAT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::BOOL,
        Type::INT4,
        Type::INT8,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::FLOAT8,
        Type::TIMESTAMPTZ,
        Type::INT4,
        Type::TEXT,
        Type::TEXT,
        Type::INT4,
        Type::INT8,
        Type::FLOAT8,
    ];
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    for row in rows {
        let check = &row.check;
        let status = check.http_status.map(i32::from);
        let kind = check.error_kind.map(ErrorKind::as_str);
        let details = &check.details;
        let days_left = details
            .tls_days_left
            .map(|d| d.clamp(i32::MIN.into(), i32::MAX.into()) as i32);
        let redirects = details.redirects.map(|r| r.min(i32::MAX as u32) as i32);
        let body_bytes = details.body_bytes.map(|b| b.min(i64::MAX as u64) as i64);
        let values: [&(dyn ToSql + Sync); 23] = [
            &check.id,
            &check.checked_at,
            &check.target,
            &check.ok,
            &status,
            &check.latency_ms,
            &kind,
            &check.error_text,
            &check.pattern,
            &check.pattern_found,
            &row.partition,
            &row.offset,
            &details.dns_ms,
            &details.connect_ms,
            &details.tls_ms,
            &details.ttfb_ms,
            &details.tls_expires_at,
            &days_left,
            &details.http_version,
            &details.final_url,
            &redirects,
            &body_bytes,
            &details.schedule_lag_ms,
        ];
        writer.write(&values)?;
    }
    writer.finish()?;
    Ok(())
}

fn copy_rejected(
    tx: &mut postgres::Transaction<'_>,
    table: &TableName,
    rows: &[RejectedRow],
) -> Result<(), postgres::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let rejected = table.with_suffix("_rejected");
    let sink = tx.copy_in(&format!(
        "COPY {rejected} (payload, reason, kafka_partition, kafka_offset) FROM STDIN (FORMAT binary)"
    ))?;
    let mut writer =
        BinaryCopyInWriter::new(sink, &[Type::BYTEA, Type::TEXT, Type::INT4, Type::INT8]);
    for row in rows {
        writer.write(&[&row.payload, &row.reason, &row.partition, &row.offset])?;
    }
    writer.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::message::{Details, SCHEMA_VERSION};

    /// The real test database started by scripts/test.sh.
    fn database() -> Client {
        let dsn = std::env::var("POSTGRESQL_DSN")
            .expect("POSTGRESQL_DSN is not set: run the tests through scripts/test.sh");
        Client::connect(&dsn, postgres::NoTls).expect("connecting to the test database")
    }

    fn batch(partition: i32, offsets: std::ops::Range<i64>) -> Batch {
        let accepted: Vec<AcceptedRow> = offsets
            .clone()
            .map(|offset| AcceptedRow {
                check: CheckResult {
                    v: SCHEMA_VERSION,
                    id: uuid::Uuid::new_v4(),
                    checked_at: chrono::Utc::now(),
                    target: "http://fence.test/".into(),
                    ok: true,
                    http_status: Some(200),
                    latency_ms: Some(1.0),
                    error_kind: None,
                    error_text: None,
                    pattern: None,
                    pattern_found: None,
                    details: Details::default(),
                },
                partition,
                offset,
            })
            .collect();
        Batch {
            accepted,
            rejected: Vec::new(),
            next_offsets: BTreeMap::from([(partition, offsets.end)]),
        }
    }

    #[test]
    fn a_consumer_that_lost_its_partition_is_fenced_off() {
        let mut client = database();
        let name = format!(
            "fence_{}_{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        let table = TableName::parse(&name[..40.min(name.len())]).unwrap();
        migrate(&mut client, &table).unwrap();
        let count = |client: &mut Client| -> i64 {
            client
                .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .unwrap()
                .get(0)
        };

        // The first owner stores offsets 0..10; the partition's stored offset is now 10.
        let first = BTreeMap::from([(0, None)]);
        commit_batch(&mut client, &table, "t", &batch(0, 0..10), &first).unwrap();
        // A second consumer that also started from "nothing stored" is refused.
        let stale = commit_batch(&mut client, &table, "t", &batch(0, 0..5), &first);
        assert!(matches!(stale, Err(CommitError::Fenced { partition: 0 })));
        // So is one that believes the offset is still 4.
        let behind = BTreeMap::from([(0, Some(4))]);
        let stale = commit_batch(&mut client, &table, "t", &batch(0, 4..12), &behind);
        assert!(matches!(stale, Err(CommitError::Fenced { partition: 0 })));
        assert_eq!(count(&mut client), 10, "fenced batches wrote nothing");
        // The rightful owner carries on from 10.
        let current = BTreeMap::from([(0, Some(10))]);
        commit_batch(&mut client, &table, "t", &batch(0, 10..15), &current).unwrap();
        assert_eq!(count(&mut client), 15);
        assert_eq!(
            stored_offsets(&mut client, &table, "t", &[0, 1]).unwrap(),
            BTreeMap::from([(0, 15)])
        );
    }

    #[test]
    fn table_names_are_validated_and_quoted() {
        assert_eq!(
            TableName::parse("checks").unwrap().to_string(),
            "\"checks\""
        );
        assert_eq!(
            TableName::parse("Monitoring.Checks_2").unwrap().to_string(),
            "\"monitoring\".\"checks_2\""
        );
        assert_eq!(
            TableName::parse("m.checks")
                .unwrap()
                .with_suffix("_rejected")
                .to_string(),
            "\"m\".\"checks_rejected\""
        );
        for bad in [
            "",
            "1checks",
            "checks\"; drop table x; --",
            "a.b.c",
            "che cks",
            "checks-1",
            &"x".repeat(41),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
