//! The statements of sub's batch transaction, prepared once per connection: an
//! unprepared statement costs a round trip to parse and plan it before it runs, and a
//! batch runs about ten of them.

use std::collections::HashMap;

use postgres::{GenericClient, Statement};

/// Prepared statements by their text. They belong to the connection that prepared
/// them: [`super::session::Session`] drops them with it.
#[derive(Default)]
pub struct Prepared {
    statements: HashMap<String, Statement>,
}

impl Prepared {
    /// `sql` prepared on `client`'s connection, the first time it is asked for.
    /// Statements prepared inside a transaction outlive its rollback, so one that
    /// fails leaves the others usable.
    pub fn statement(
        &mut self,
        client: &mut impl GenericClient,
        sql: &str,
    ) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}
