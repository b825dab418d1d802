//! The schema's migrations, written once for both backends.
//!
//! A migration is [`Migration::Portable`] SQL when it fits the portable
//! subset: `CREATE TABLE` / `CREATE INDEX` / `ALTER TABLE … ADD COLUMN`
//! (a nullable column, or one with a literal default) with the types `TEXT`, `INTEGER`,
//! `REAL` and `BLOB`, `PRIMARY KEY`, `NOT NULL`, `DEFAULT` with literals.
//! It runs as written on SQLite; for PostgreSQL `REAL` becomes `DOUBLE
//! PRECISION`, `INTEGER` `BIGINT`, `BLOB` `BYTEA` (SQLite's widths), and each
//! new table gets the `rowid` identity column SQLite has implicitly, so
//! `ORDER BY rowid` (insertion order) means the same on both. What the subset
//! cannot say (triggers, functions) is [`Migration::Generated`]: a function
//! that writes the SQL of each backend side by side.

/// A database backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// One step of the schema.
#[derive(Debug, Clone, Copy)]
pub enum Migration {
    /// SQL of the portable subset (module documentation).
    Portable(&'static str),
    /// The SQL of each backend, written side by side by one function.
    Generated(fn(Backend) -> String),
}

impl Migration {
    /// The SQL that applies this migration on `backend`.
    pub fn sql(&self, backend: Backend) -> String {
        match (self, backend) {
            (Migration::Portable(sql), Backend::Sqlite) => sql.to_string(),
            (Migration::Portable(sql), Backend::Postgres) => to_postgres(sql),
            (Migration::Generated(f), b) => f(b),
        }
    }
}

/// The portable subset in PostgreSQL's words (module documentation).
fn to_postgres(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut word = String::new();
    let mut in_quote = false;
    let mut last_words: Vec<String> = Vec::new();
    let flush = |word: &mut String, out: &mut String, last: &mut Vec<String>| {
        if word.is_empty() {
            return;
        }
        let upper = word.to_ascii_uppercase();
        out.push_str(match upper.as_str() {
            "REAL" => "DOUBLE PRECISION",
            "INTEGER" => "BIGINT",
            "BLOB" => "BYTEA",
            _ => word,
        });
        last.push(upper);
        word.clear();
    };
    for c in sql.chars() {
        if in_quote {
            out.push(c);
            in_quote = c != '\'';
        } else if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out, &mut last_words);
            out.push(c);
            in_quote = c == '\'';
            let n = last_words.len();
            // `CREATE TABLE <name> (`: SQLite's implicit insertion order, explicit
            if c == '(' && n >= 3 && last_words[n - 3] == "CREATE" && last_words[n - 2] == "TABLE" {
                out.push_str("rowid BIGINT GENERATED ALWAYS AS IDENTITY, ");
            }
            if !c.is_whitespace() {
                last_words.push(c.to_string());
            }
        }
    }
    flush(&mut word, &mut out, &mut last_words);
    out
}

/// The tables a node's full computer information is read from, the column
/// naming their computer, and the columns an update may change.
type Versioned = (&'static str, &'static str, &'static [&'static str]);

const VERSIONED: &[Versioned] = &[
    ("computer", "reference", &["address", "netmask"]),
    ("software", "computer_reference", &["url", "requested_state"]),
    (
        "partition",
        "computer_reference",
        &[
            "slap_state",
            "software_release",
            "xml",
            "connection_xml",
            "slave_instance_list",
            "software_type",
            "partition_reference",
            "requested_by",
            "requester_id",
            "requested_state",
            "timestamp",
        ],
    ),
    ("partition_network", "computer_reference", &["partition_reference", "reference", "address", "netmask"]),
];

/// Migration 3: `computer_version`, bumped by triggers on every change of
/// what [`VERSIONED`] holds (whichever process writes), and `meta` (the
/// site's identity).
pub fn computer_versions(backend: Backend) -> String {
    let mut sql = String::from(
        "CREATE TABLE computer_version (computer_reference TEXT PRIMARY KEY, version BIGINT NOT NULL);
         CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO computer_version (computer_reference, version)
           SELECT reference, 1 FROM computer UNION SELECT computer_reference, 1 FROM partition
           UNION SELECT computer_reference, 1 FROM software;\n",
    );
    match backend {
        Backend::Sqlite => {
            let bump = |row: &str, col: &str| {
                format!(
                    "INSERT INTO computer_version (computer_reference, version) VALUES ({row}.{col}, 1)
                     ON CONFLICT (computer_reference) DO UPDATE SET version = version + 1;"
                )
            };
            for (table, col, columns) in VERSIONED {
                let changed: Vec<String> = columns.iter().map(|c| format!("OLD.{c} IS NOT NEW.{c}")).collect();
                sql += &format!(
                    "CREATE TRIGGER {table}_inserted AFTER INSERT ON {table} BEGIN {} END;
                     CREATE TRIGGER {table}_deleted AFTER DELETE ON {table} BEGIN {} END;
                     CREATE TRIGGER {table}_updated AFTER UPDATE ON {table} WHEN {} BEGIN {} END;\n",
                    bump("NEW", col),
                    bump("OLD", col),
                    changed.join(" OR "),
                    bump("NEW", col),
                );
            }
        }
        Backend::Postgres => {
            sql += "CREATE FUNCTION bump_computer_version() RETURNS trigger LANGUAGE plpgsql AS $$
                DECLARE c TEXT;
                BEGIN
                  IF TG_OP = 'DELETE' THEN c := to_jsonb(OLD) ->> TG_ARGV[0];
                  ELSE c := to_jsonb(NEW) ->> TG_ARGV[0];
                  END IF;
                  INSERT INTO computer_version AS v (computer_reference, version) VALUES (c, 1)
                    ON CONFLICT (computer_reference) DO UPDATE SET version = v.version + 1;
                  RETURN NULL;
                END $$;\n";
            for (table, col, _) in VERSIONED {
                sql += &format!(
                    "CREATE TRIGGER {table}_changed AFTER INSERT OR DELETE ON {table}
                       FOR EACH ROW EXECUTE FUNCTION bump_computer_version('{col}');
                     CREATE TRIGGER {table}_updated AFTER UPDATE ON {table}
                       FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION bump_computer_version('{col}');\n"
                );
            }
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_sql_gets_postgres_types_and_an_insertion_order() {
        let pg = to_postgres("CREATE TABLE usage (\n  body TEXT NOT NULL DEFAULT 'real',\n  time REAL, n integer, b BLOB\n);");
        assert_eq!(
            pg,
            "CREATE TABLE usage (rowid BIGINT GENERATED ALWAYS AS IDENTITY, \n  body TEXT NOT NULL DEFAULT 'real',\n  time DOUBLE PRECISION, n BIGINT, b BYTEA\n);"
        );
        // indexes get no column
        assert_eq!(to_postgres("CREATE INDEX i ON t (a, b);"), "CREATE INDEX i ON t (a, b);");
        // nor do added columns, whose types are translated
        assert_eq!(to_postgres("ALTER TABLE t ADD COLUMN x REAL;"), "ALTER TABLE t ADD COLUMN x DOUBLE PRECISION;");
    }
}
