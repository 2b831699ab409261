//! PostgreSQL side of `sub`: table names, migrations, and the batch transaction
//! that writes rows, rejected payloads and consumed offsets together.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use chrono::{DateTime, Utc};

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::Client;

use super::message::{CheckResult, ErrorKind};
use crate::error::UsageError;

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

/// Where a message came from, and what it held, so that a row PostgreSQL refuses can
/// still be kept as the message itself.
pub struct Origin {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// None for a tombstone.
    pub payload: Option<Vec<u8>>,
}

/// A message accepted into the results table.
pub struct AcceptedRow {
    pub check: CheckResult,
    pub origin: Origin,
}

/// A payload that could not be accepted, kept for inspection.
pub struct RejectedRow {
    pub origin: Origin,
    pub reason: String,
}

impl AcceptedRow {
    fn rejected(self, reason: String) -> RejectedRow {
        RejectedRow {
            origin: self.origin,
            reason,
        }
    }
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
    /// PostgreSQL refused some row's data; [`commit_sorting_out`] finds which.
    #[error("{}", describe(.0))]
    Refused(postgres::Error),
    #[error("{}", describe(.0))]
    Database(postgres::Error),
}

impl From<postgres::Error> for CommitError {
    fn from(error: postgres::Error) -> CommitError {
        if refuses_data(&error) {
            CommitError::Refused(error)
        } else {
            CommitError::Database(error)
        }
    }
}

/// Whether PostgreSQL refused the values themselves, so that retrying the same rows
/// can never succeed: data exceptions (22: a NUL in text, a value out of range),
/// integrity violations (23: a duplicate, a CHECK of the user's own) and program
/// limits (54: an index row too large for a very long target).
fn refuses_data(error: &postgres::Error) -> bool {
    error
        .code()
        .is_some_and(|code| ["22", "23", "54"].contains(&&code.code()[..2]))
}

/// PostgreSQL's message with its detail, hint and where it happened, on one line;
/// the postgres crate's own Display says only "db error".
pub fn describe(error: &postgres::Error) -> String {
    let Some(db) = error.as_db_error() else {
        return crate::pubsub::pgconn::error_chain(error);
    };
    let mut text = format!("{} ({})", db.message(), db.code().code());
    for (label, part) in [
        ("detail", db.detail()),
        ("hint", db.hint()),
        ("where", db.where_()),
        ("column", db.column()),
        ("constraint", db.constraint()),
    ] {
        if let Some(part) = part {
            text.push_str(&format!("; {label}: {part}"));
        }
    }
    crate::error::one_line(&text)
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
        (
            3,
            "one row per result id, and the Kafka key of rejected payloads",
            // Results stored twice before ids were unique move to the rejected table,
            // whole, so that the index can be built and no row is lost.
            format!(
                "ALTER TABLE {rejected} ADD COLUMN IF NOT EXISTS kafka_key bytea;
                 WITH repeated AS (
                     DELETE FROM {table} WHERE ctid IN (
                         SELECT ctid FROM (
                             SELECT ctid, row_number() OVER (
                                 PARTITION BY id, checked_at
                                 ORDER BY kafka_partition, kafka_offset) AS copy
                             FROM {table}) numbered
                         WHERE copy > 1)
                     RETURNING *)
                 INSERT INTO {rejected} (payload, reason, kafka_partition, kafka_offset)
                 SELECT convert_to(row_to_json(r)::text, 'UTF8'), '{DUPLICATE} (moved here by the upgrade to schema version 3)',
                        kafka_partition, kafka_offset
                 FROM repeated r;
                 CREATE UNIQUE INDEX IF NOT EXISTS {id_time} ON {table} (id, checked_at);",
                id_time = table.index_name("id_time"),
            ),
        ),
    ]
}

/// The reason given for a result whose id is already stored.
const DUPLICATE: &str = "duplicate: a result with this id and checked_at is already stored";

/// Brings the schema up to date. The advisory lock makes concurrent starts safe: the
/// second process waits, then finds nothing left to do. A schema already current
/// needs no DDL, so sub can then run with row privileges only. A table that exists
/// without a ledger is someone else's and is left alone (a usage error).
pub fn migrate(client: &mut Client, table: &TableName) -> anyhow::Result<()> {
    let ledger = table.with_suffix("_migrations");
    let steps = migrations(table);
    let latest = steps.last().map_or(0, |(version, _, _)| *version);
    let mut tx = client.transaction()?;
    // "relation ... already exists, skipping" and the like tell a user nothing.
    tx.batch_execute("SET LOCAL client_min_messages = warning")?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('metrics-flow migrate ' || $1))",
        &[&table.plain()],
    )?;
    let found = tx.query_one(
        "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
        &[&table.to_string(), &ledger.to_string()],
    )?;
    let (has_table, has_ledger): (bool, bool) = (found.get(0), found.get(1));
    if has_table && !has_ledger {
        return Err(UsageError::new(format!(
            "--table (POSTGRESQL_TABLE): {table} exists but has no {ledger}, so metrics-flow did not create it; sub leaves it alone: choose another --table"
        ))
        .into());
    }
    let applied: i32 = if has_ledger {
        let sql = format!("SELECT coalesce(max(version), 0) FROM {ledger}");
        tx.query_one(&sql, &[])?.get(0)
    } else {
        0
    };
    if applied > latest {
        anyhow::bail!(
            "{table} is at schema version {applied}, newer than this metrics-flow knows ({latest}): run a newer release"
        );
    }
    if applied == latest {
        return Ok(());
    }
    if let Some(schema) = &table.schema {
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {ledger} (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))?;
    for (version, description, sql) in steps {
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
    tx.commit()?;
    Ok(())
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
    advance_offsets(&mut tx, table, topic, batch, expected)?;
    tx.commit()?;
    Ok(())
}

/// Commits a batch that PostgreSQL refused as a whole (see [`CommitError::Refused`]):
/// results already stored, or repeated within the batch, are rejected as duplicates
/// in one lookup; then the rest is copied half by half, inside savepoints, until each
/// row PostgreSQL refuses stands alone and is rejected with PostgreSQL's reason. It
/// all commits in one transaction with the offsets, as a batch does. Returns the
/// batch as committed.
pub fn commit_sorting_out(
    client: &mut Client,
    table: &TableName,
    topic: &str,
    batch: Batch,
    expected: &BTreeMap<i32, Option<i64>>,
) -> Result<Batch, CommitError> {
    let Batch {
        accepted,
        mut rejected,
        next_offsets,
    } = batch;
    let mut tx = client.transaction()?;
    let fresh = reject_duplicates(&mut tx, table, accepted, &mut rejected)?;
    let accepted = copy_bisecting(&mut tx, table, fresh, &mut rejected)?;
    rejected.sort_by_key(|row| (row.origin.partition, row.origin.offset));
    copy_rejected(&mut tx, table, &rejected)?;
    let batch = Batch {
        accepted,
        rejected,
        next_offsets,
    };
    advance_offsets(&mut tx, table, topic, &batch, expected)?;
    tx.commit()?;
    Ok(batch)
}

/// The rows whose (id, checked_at) is neither stored already nor earlier in `rows`;
/// the others are moved to `rejected`.
fn reject_duplicates(
    tx: &mut postgres::Transaction<'_>,
    table: &TableName,
    rows: Vec<AcceptedRow>,
    rejected: &mut Vec<RejectedRow>,
) -> Result<Vec<AcceptedRow>, postgres::Error> {
    let ids: Vec<uuid::Uuid> = rows.iter().map(|row| row.check.id).collect();
    let stored = tx.query(
        &format!("SELECT id, checked_at FROM {table} WHERE id = ANY($1)"),
        &[&ids],
    )?;
    let mut seen: HashSet<(uuid::Uuid, DateTime<Utc>)> =
        stored.iter().map(|row| (row.get(0), row.get(1))).collect();
    let mut fresh = Vec::with_capacity(rows.len());
    for row in rows {
        if seen.insert((row.check.id, row.check.checked_at)) {
            fresh.push(row);
        } else {
            rejected.push(row.rejected(DUPLICATE.to_owned()));
        }
    }
    Ok(fresh)
}

/// Copies `rows`; if PostgreSQL refuses their data, copies each half on its own, down
/// to single rows, which are then rejected with PostgreSQL's reason. Each attempt runs
/// in a savepoint, so a refused one leaves the transaction usable. Returns the rows
/// stored.
fn copy_bisecting(
    tx: &mut postgres::Transaction<'_>,
    table: &TableName,
    mut rows: Vec<AcceptedRow>,
    rejected: &mut Vec<RejectedRow>,
) -> Result<Vec<AcceptedRow>, postgres::Error> {
    if rows.is_empty() {
        return Ok(rows);
    }
    let mut attempt = tx.savepoint("metrics_flow_bisect")?;
    let error = match copy_accepted(&mut attempt, table, &rows) {
        Ok(()) => {
            attempt.commit()?;
            return Ok(rows);
        }
        Err(error) if refuses_data(&error) => error,
        Err(error) => return Err(error),
    };
    attempt.rollback()?;
    if rows.len() == 1 {
        let row = rows.pop().expect("one row");
        log::warn!(
            "partition {} offset {} rejected by PostgreSQL: {}",
            row.origin.partition,
            row.origin.offset,
            describe(&error)
        );
        rejected.push(row.rejected(describe(&error)));
        return Ok(rows);
    }
    let second = rows.split_off(rows.len() / 2);
    let mut stored = copy_bisecting(tx, table, rows, rejected)?;
    stored.extend(copy_bisecting(tx, table, second, rejected)?);
    Ok(stored)
}

fn advance_offsets(
    tx: &mut postgres::Transaction<'_>,
    table: &TableName,
    topic: &str,
    batch: &Batch,
    expected: &BTreeMap<i32, Option<i64>>,
) -> Result<(), CommitError> {
    for (&partition, &next) in &batch.next_offsets {
        let previous = expected.get(&partition).copied().flatten();
        if advance_offset(tx, table, topic, partition, previous, next)? != 1 {
            return Err(CommitError::Fenced { partition });
        }
    }
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
            &row.origin.partition,
            &row.origin.offset,
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
        "COPY {rejected} (payload, reason, kafka_partition, kafka_offset, kafka_key) FROM STDIN (FORMAT binary)"
    ))?;
    let types = [Type::BYTEA, Type::TEXT, Type::INT4, Type::INT8, Type::BYTEA];
    let mut writer = BinaryCopyInWriter::new(sink, &types);
    for row in rows {
        let origin = &row.origin;
        writer.write(&[
            &origin.payload,
            &row.reason,
            &origin.partition,
            &origin.offset,
            &origin.key,
        ])?;
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
                origin: Origin {
                    partition,
                    offset,
                    key: None,
                    payload: None,
                },
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
