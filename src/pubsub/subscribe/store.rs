//! The batch transaction of sub: results, rejected payloads and consumed offsets
//! written together, binary COPY for the rows, and the sorting out of a batch that
//! PostgreSQL refuses.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use postgres::types::{ToSql, Type};
use postgres::Client;

use super::answers;
use super::copy_rows::{CopyError, CopyRows};
use super::derived::{Grouping, Thresholds};
use super::prepared::Prepared;
use crate::pubsub::message::{CheckResult, ErrorKind};
use crate::pubsub::table::TableName;

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

/// What was consumed since the last commit.
#[derive(Default)]
pub struct Batch {
    pub accepted: Vec<AcceptedRow>,
    pub rejected: Vec<RejectedRow>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.accepted.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The accepted results grouped for the derived tables.
    pub fn grouping(&self) -> Grouping {
        Grouping::of(self.accepted.iter().map(|row| &row.check))
    }
}

/// Where a batch goes: the results table (and the tables named after it), the topic
/// its offsets are of, and the thresholds of the incidents derived from it.
pub struct Destination<'a> {
    pub table: &'a TableName,
    pub topic: &'a str,
    pub thresholds: Thresholds,
}

/// How a batch moves its partitions' stored offsets: from `expected`, what PostgreSQL
/// must still hold (None: no row yet), to `next`. If any partition's offset is not
/// what was expected, another consumer took the partition over, and nothing is
/// written: that is the fence.
pub struct Advance<'a> {
    pub expected: &'a BTreeMap<i32, Option<i64>>,
    pub next: &'a BTreeMap<i32, i64>,
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
    /// A row that could not be sent at all: nothing of the batch is stored.
    #[error("{0}")]
    Unsendable(CopyError),
}

impl From<CopyError> for CommitError {
    fn from(error: CopyError) -> CommitError {
        match error {
            CopyError::Postgres(error) => error.into(),
            other => CommitError::Unsendable(other),
        }
    }
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

/// The reason given for a result whose id is already stored.
pub const DUPLICATE: &str = "duplicate: a result with this id and checked_at is already stored";

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

/// The newest `checked_at` the table holds, from `<table>_status`, one row a target.
pub fn newest_checked_at(
    client: &mut Client,
    table: &TableName,
) -> Result<Option<DateTime<Utc>>, postgres::Error> {
    let status = table.with_suffix("_status");
    let row = client.query_one(&format!("SELECT max(last_checked_at) FROM {status}"), &[])?;
    Ok(row.get(0))
}

/// Writes the batch and advances the offsets in one transaction, behind the fence of
/// [`Advance`]. `grouping` is the batch's own ([`Batch::grouping`]).
pub fn commit_batch(
    (client, prepared): (&mut Client, &mut Prepared),
    to: &Destination<'_>,
    batch: &Batch,
    grouping: &Grouping,
    advance: &Advance<'_>,
) -> Result<(), CommitError> {
    let mut tx = client.transaction()?;
    copy_accepted(&mut tx, prepared, to.table, &batch.accepted)?;
    copy_rejected(&mut tx, prepared, to.table, &batch.rejected)?;
    answers::apply(
        &mut tx,
        prepared,
        to.table,
        &batch.accepted,
        grouping,
        to.thresholds,
    )?;
    advance_offsets(&mut tx, prepared, to.table, to.topic, advance)?;
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
    (client, prepared): (&mut Client, &mut Prepared),
    to: &Destination<'_>,
    batch: Batch,
    advance: &Advance<'_>,
) -> Result<Batch, CommitError> {
    let table = to.table;
    let Batch {
        accepted,
        mut rejected,
    } = batch;
    let mut tx = client.transaction()?;
    let fresh = reject_duplicates(&mut tx, table, accepted, &mut rejected)?;
    let accepted = copy_bisecting(&mut tx, prepared, table, fresh, &mut rejected)?;
    rejected.sort_by_key(|row| (row.origin.partition, row.origin.offset));
    copy_rejected(&mut tx, prepared, table, &rejected)?;
    let batch = Batch { accepted, rejected };
    let grouping = batch.grouping();
    answers::apply(
        &mut tx,
        prepared,
        table,
        &batch.accepted,
        &grouping,
        to.thresholds,
    )?;
    advance_offsets(&mut tx, prepared, table, to.topic, advance)?;
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
    let times: Vec<DateTime<Utc>> = rows.iter().map(|row| row.check.checked_at).collect();
    let ids: Vec<uuid::Uuid> = rows.iter().map(|row| row.check.id).collect();
    let stored = tx.query(
        &format!(
            "SELECT id, checked_at FROM {table}
             WHERE (checked_at, id) IN (SELECT * FROM unnest($1::timestamptz[], $2::uuid[]))"
        ),
        &[&times, &ids],
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
    prepared: &mut Prepared,
    table: &TableName,
    mut rows: Vec<AcceptedRow>,
    rejected: &mut Vec<RejectedRow>,
) -> Result<Vec<AcceptedRow>, CopyError> {
    if rows.is_empty() {
        return Ok(rows);
    }
    let mut attempt = tx.savepoint("metrics_flow_bisect")?;
    let reason = match copy_accepted(&mut attempt, prepared, table, &rows) {
        Ok(()) => {
            attempt.commit()?;
            return Ok(rows);
        }
        Err(CopyError::Postgres(error)) if refuses_data(&error) => describe(&error),
        Err(CopyError::Encode(error)) => error.to_string(),
        Err(error) => return Err(error),
    };
    attempt.rollback()?;
    if rows.len() == 1 {
        let row = rows.pop().expect("one row");
        log::warn!(
            "partition {} offset {} rejected by PostgreSQL: {}",
            row.origin.partition,
            row.origin.offset,
            reason
        );
        rejected.push(row.rejected(reason));
        return Ok(rows);
    }
    let second = rows.split_off(rows.len() / 2);
    let mut stored = copy_bisecting(tx, prepared, table, rows, rejected)?;
    stored.extend(copy_bisecting(tx, prepared, table, second, rejected)?);
    Ok(stored)
}

/// Moves every partition's stored offset in one statement (and a second for
/// partitions with none stored yet), fenced as [`Advance`] says: a partition whose
/// row is not where the batch expects it is not returned, and fails the batch.
fn advance_offsets(
    tx: &mut postgres::Transaction<'_>,
    prepared: &mut Prepared,
    table: &TableName,
    topic: &str,
    advance: &Advance<'_>,
) -> Result<(), CommitError> {
    let offsets = table.with_suffix("_offsets");
    let (mut moved, mut new) = (Moves::default(), Moves::default());
    for (&partition, &next) in advance.next {
        match advance.expected.get(&partition).copied().flatten() {
            Some(previous) => moved.push(partition, next, Some(previous)),
            None => new.push(partition, next, None),
        }
    }
    let mut done = Vec::with_capacity(advance.next.len());
    if !moved.partitions.is_empty() {
        let update = prepared.statement(
            tx,
            &format!(
                "UPDATE {offsets} o SET next_offset = m.next, updated_at = now()
                 FROM unnest($2::int[], $3::bigint[], $4::bigint[]) AS m(p, next, previous)
                 WHERE o.topic = $1 AND o.kafka_partition = m.p AND o.next_offset = m.previous
                 RETURNING o.kafka_partition"
            ),
        )?;
        let rows = tx.query(
            &update,
            &[&topic, &moved.partitions, &moved.next, &moved.previous],
        )?;
        done.extend(rows.iter().map(|row| row.get::<_, i32>(0)));
    }
    if !new.partitions.is_empty() {
        let insert = prepared.statement(
            tx,
            &format!(
                "INSERT INTO {offsets} (topic, kafka_partition, next_offset)
                 SELECT $1, p, next FROM unnest($2::int[], $3::bigint[]) AS m(p, next)
                 ON CONFLICT DO NOTHING
                 RETURNING kafka_partition"
            ),
        )?;
        let rows = tx.query(&insert, &[&topic, &new.partitions, &new.next])?;
        done.extend(rows.iter().map(|row| row.get::<_, i32>(0)));
    }
    match advance
        .next
        .keys()
        .find(|partition| !done.contains(partition))
    {
        Some(&partition) => Err(CommitError::Fenced { partition }),
        None => Ok(()),
    }
}

/// Offsets to move, as the arrays of one statement.
#[derive(Default)]
struct Moves {
    partitions: Vec<i32>,
    next: Vec<i64>,
    previous: Vec<i64>,
}

impl Moves {
    fn push(&mut self, partition: i32, next: i64, previous: Option<i64>) {
        self.partitions.push(partition);
        self.next.push(next);
        self.previous.extend(previous);
    }
}

/// A table's columns as COPY fills them from rows of one type: each column's name,
/// its type and the value it takes from a row. The [`columns!`] list is their one
/// source; the COPY column list, the types and every row's values come from it.
trait Columns {
    type Row;
    const NAMES: &'static [&'static str];
    const TYPES: &'static [Type];
    fn write(writer: &mut CopyRows<'_>, row: &Self::Row) -> Result<(), CopyError>;
}

macro_rules! columns {
    ($columns:ident for $row_type:ty { $($name:ident: $ty:ident = |$row:ident| $value:expr;)* }) => {
        struct $columns;

        impl Columns for $columns {
            type Row = $row_type;
            const NAMES: &'static [&'static str] = &[$(stringify!($name)),*];
            const TYPES: &'static [Type] = &[$(Type::$ty),*];

            fn write(
                writer: &mut CopyRows<'_>,
                row: &$row_type,
            ) -> Result<(), CopyError> {
                writer.write(&[$({ let $row = row; &$value as &(dyn ToSql + Sync) }),*])
            }
        }
    };
}

columns!(ResultColumns for AcceptedRow {
    id: UUID = |r| r.check.id;
    checked_at: TIMESTAMPTZ = |r| r.check.checked_at;
    target: TEXT = |r| r.check.target;
    ok: BOOL = |r| r.check.ok;
    http_status: INT4 = |r| r.check.http_status.map(i32::from);
    latency_ms: FLOAT8 = |r| r.check.latency_ms;
    error_kind: TEXT = |r| r.check.error_kind.map(ErrorKind::as_str);
    error_text: TEXT = |r| r.check.error_text;
    pattern: TEXT = |r| r.check.pattern;
    pattern_found: BOOL = |r| r.check.pattern_found;
    kafka_partition: INT4 = |r| r.origin.partition;
    kafka_offset: INT8 = |r| r.origin.offset;
    dns_ms: FLOAT8 = |r| r.check.details.dns_ms;
    connect_ms: FLOAT8 = |r| r.check.details.connect_ms;
    tls_ms: FLOAT8 = |r| r.check.details.tls_ms;
    ttfb_ms: FLOAT8 = |r| r.check.details.ttfb_ms;
    tls_expires_at: TIMESTAMPTZ = |r| r.check.details.tls_expires_at;
    tls_days_left: INT4 = |r| r.check.details.tls_days_left.map(saturating_i32);
    http_version: TEXT = |r| r.check.details.http_version;
    final_url: TEXT = |r| r.check.details.final_url;
    redirects: INT4 = |r| r.check.details.redirects.map(|n| n.min(i32::MAX as u32) as i32);
    body_bytes: INT8 = |r| r.check.details.body_bytes.map(|n| n.min(i64::MAX as u64) as i64);
    schedule_lag_ms: FLOAT8 = |r| r.check.details.schedule_lag_ms;
    location: TEXT = |r| r.check.details.location;
    probe: TEXT = |r| r.check.details.probe;
});

columns!(RejectedColumns for RejectedRow {
    payload: BYTEA = |r| r.origin.payload;
    reason: TEXT = |r| r.reason;
    kafka_partition: INT4 = |r| r.origin.partition;
    kafka_offset: INT8 = |r| r.origin.offset;
    kafka_key: BYTEA = |r| r.origin.key;
});

fn saturating_i32(value: i64) -> i32 {
    value.clamp(i32::MIN.into(), i32::MAX.into()) as i32
}

fn copy_accepted(
    tx: &mut postgres::Transaction<'_>,
    prepared: &mut Prepared,
    table: &TableName,
    rows: &[AcceptedRow],
) -> Result<(), CopyError> {
    copy::<ResultColumns>(tx, prepared, table, rows)
}

fn copy_rejected(
    tx: &mut postgres::Transaction<'_>,
    prepared: &mut Prepared,
    table: &TableName,
    rows: &[RejectedRow],
) -> Result<(), CopyError> {
    copy::<RejectedColumns>(tx, prepared, &table.with_suffix("_rejected"), rows)
}

/// Binary COPY of `rows` into `table`.
fn copy<C: Columns>(
    tx: &mut postgres::Transaction<'_>,
    prepared: &mut Prepared,
    table: &TableName,
    rows: &[C::Row],
) -> Result<(), CopyError> {
    if rows.is_empty() {
        return Ok(());
    }
    let columns = C::NAMES.join(", ");
    let statement = prepared.statement(
        tx,
        &format!("COPY {table} ({columns}) FROM STDIN (FORMAT binary)"),
    )?;
    let sink = tx.copy_in(&statement)?;
    let mut writer = CopyRows::new(sink, C::TYPES);
    for row in rows {
        C::write(&mut writer, row)?;
    }
    writer.finish()?;
    Ok(())
}
