//! `report`: what is up, since when, and how it fared, from the tables sub derives;
//! as a table, JSON or CSV on stdout, and optionally a static HTML status page.
//!
//! [`query`] reads the status, rollups and incidents (never the raw results),
//! [`render`] prints the lines, [`html`] writes the page.

pub mod html;
pub mod query;
pub mod render;

use std::io::Write;

use anyhow::Context;
use chrono::Utc;
use postgres::Client;

use crate::cli::{ReportArgs, ReportFormat};
use crate::pubsub::pgconn::PgConnector;
use crate::pubsub::subscribe::store::describe;
use crate::pubsub::table::TableName;
use crate::retry::retry_until;
use crate::shutdown::Shutdown;

/// Incidents the page shows per target.
const PAGE_INCIDENTS: i64 = 5;

pub fn run(args: ReportArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let connector = PgConnector::parse(args.database.dsn.expose())?;
    let mut client = retry_until(
        &connector.describe(),
        args.connect_deadline,
        &shutdown,
        || connector.connect(),
    )?;
    let database = connector.describe();
    // The report's query is costly enough for PostgreSQL to compile it (JIT), which
    // took 229 ms of a 639 ms run in bench-report.sh; run, it takes far less.
    client.batch_execute("SET jit = off").map_err(to_anyhow)?;
    ensure_tables(&mut client, &args.database.table, &database)?;
    let filter = args.target.as_deref();
    if args.explain {
        return explain(&mut client, &args.database.table, filter);
    }
    let lines = query::lines(&mut client, &args.database.table, filter).map_err(to_anyhow)?;
    if lines.is_empty() {
        match filter {
            Some(filter) => log::warn!("no target of {} contains '{filter}'", args.database.table),
            None => log::warn!(
                "no targets yet: sub has stored no results in {}",
                args.database.table
            ),
        }
    }
    let now = Utc::now();
    let text = match args.format {
        ReportFormat::Table => render::table(&lines, now),
        ReportFormat::Json => render::json(&lines),
        ReportFormat::Csv => render::csv(&lines),
    };
    print(&text)?;
    if let Some(path) = &args.html {
        let daily = query::daily_uptime(&mut client, &args.database.table, filter, html::BAR_DAYS)
            .map_err(to_anyhow)?;
        let incidents = query::recent_incidents(
            &mut client,
            &args.database.table,
            filter,
            html::BAR_DAYS,
            PAGE_INCIDENTS,
        )
        .map_err(to_anyhow)?;
        let page = html::page(&html::Page {
            lines: &lines,
            daily: &daily,
            incidents: &incidents,
            now,
        });
        std::fs::write(path, page)
            .with_context(|| format!("--html (REPORT_HTML): writing {}", path.display()))?;
        log::info!("wrote the status page to {}", path.display());
    }
    Ok(())
}

/// A clear line, not a stack of SQL errors, when there is nothing to report from.
fn ensure_tables(client: &mut Client, table: &TableName, database: &str) -> anyhow::Result<()> {
    let found = client
        .query_one(
            "SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL",
            &[
                &table.to_string(),
                &table.with_suffix("_status").to_string(),
            ],
        )
        .map_err(to_anyhow)?;
    match (found.get::<_, bool>(0), found.get::<_, bool>(1)) {
        (_, true) => Ok(()),
        (true, false) => anyhow::bail!(
            "{table} on {database} was written by an earlier sub: run this release's sub once to upgrade it"
        ),
        (false, false) => anyhow::bail!(
            "no table {table} on {database}: sub has not stored anything there yet (or give --table)"
        ),
    }
}

fn explain(client: &mut Client, table: &TableName, filter: Option<&str>) -> anyhow::Result<()> {
    let mut out = String::new();
    for sql in [query::lines_sql(table)] {
        let plan = client
            .query(&format!("EXPLAIN (ANALYZE, BUFFERS) {sql}"), &[&filter])
            .map_err(to_anyhow)?;
        for row in plan {
            out.push_str(row.get(0));
            out.push('\n');
        }
        out.push('\n');
    }
    print(&out)
}

/// Writes to stdout; a reader that went away (`report | head`) is no error.
fn print(text: &str) -> anyhow::Result<()> {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the report"),
    }
}

fn to_anyhow(error: postgres::Error) -> anyhow::Error {
    anyhow::anyhow!(describe(&error))
}
