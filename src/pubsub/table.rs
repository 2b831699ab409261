//! The results table's name, validated once, and the names of its sibling tables and
//! indexes; shared by everything that reads or writes those tables.

use std::fmt;

/// Longest table name accepted, leaving room for the suffixes of derived names.
const MAX_NAME: usize = 40;

/// A validated, optionally schema-qualified table name. Only `[a-z_][a-z0-9_]*` parts
/// are accepted (folded to lower case, as PostgreSQL does unquoted), and it is always
/// quoted in SQL, so it can never carry SQL of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    pub schema: Option<String>,
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

    /// The quoted name of an index of the table, `"<table>_<what>_idx"`, for `CREATE
    /// INDEX <name>` (which takes no schema: an index lives in its table's).
    pub fn index_name(&self, what: &str) -> String {
        format!("\"{}_{what}_idx\"", self.name)
    }

    /// The index of [`TableName::index_name`] with the table's schema, for `ALTER` and
    /// `DROP INDEX`, which look it up (`CREATE INDEX` puts it in the table's schema).
    pub fn qualified_index_name(&self, what: &str) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".{}", self.index_name(what)),
            None => self.index_name(what),
        }
    }

    /// The name without its schema, unquoted.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name without its schema, quoted, for `ALTER TABLE ... RENAME TO <name>`.
    pub fn quoted_name(&self) -> String {
        format!("\"{}\"", self.name)
    }

    /// The unquoted qualified name, used as the advisory lock key.
    pub fn plain(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let qualified = TableName::parse("m.checks").unwrap();
        assert_eq!(qualified.index_name("time"), "\"checks_time_idx\"");
        assert_eq!(
            qualified.qualified_index_name("time"),
            "\"m\".\"checks_time_idx\""
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
