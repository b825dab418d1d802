//! Which database a master uses (`[slapproxy] database_uri`) and the store
//! that opens either backend.

use std::path::{Path, PathBuf};

use super::{PgStore, Retention, SqliteStore, Store, StoreError, Tx};

/// Where the master keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file (a plain path, or `sqlite:<path>`).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URI (`postgresql://…` or `postgres://…`).
    Postgres(String),
}

impl Default for Database {
    fn default() -> Database {
        Database::Sqlite(PathBuf::from("proxy.db"))
    }
}

impl Database {
    /// Reads a `database_uri`: `postgresql://…`/`postgres://…`, `sqlite:<path>`
    /// (`sqlite:///abs/path` too), or a plain path of a SQLite file.
    pub fn parse(uri: &str) -> Database {
        if uri.starts_with("postgresql://") || uri.starts_with("postgres://") {
            return Database::Postgres(uri.to_string());
        }
        match uri.strip_prefix("sqlite:") {
            Some(rest) => Database::Sqlite(PathBuf::from(rest.strip_prefix("//").unwrap_or(rest))),
            None => Database::Sqlite(PathBuf::from(uri)),
        }
    }

    /// A SQLite file at `path`.
    pub fn sqlite(path: impl AsRef<Path>) -> Database {
        Database::Sqlite(path.as_ref().to_path_buf())
    }

    /// How to name it to people: the path, or the URI without its password.
    pub fn shown(&self) -> String {
        match self {
            Database::Sqlite(p) => p.display().to_string(),
            Database::Postgres(uri) => hide_password(uri),
        }
    }
}

/// `uri` with its password (if any) replaced by `***`.
pub fn hide_password(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => uri.to_string(),
        Err(_) => "(an invalid PostgreSQL URI)".to_string(),
    }
}

/// The store of either backend.
pub enum AnyStore {
    /// A SQLite file.
    Sqlite(SqliteStore),
    /// A PostgreSQL database.
    Postgres(PgStore),
}

impl AnyStore {
    /// Opens (creating and migrating it if needed) `database`.
    pub fn open(database: &Database, retention: Retention) -> Result<AnyStore, StoreError> {
        Ok(match database {
            Database::Sqlite(path) => AnyStore::Sqlite(SqliteStore::open(path)?.with_retention(retention)),
            Database::Postgres(uri) => AnyStore::Postgres(PgStore::open(uri)?.with_retention(retention)),
        })
    }

    /// Opens an existing database for reading only (`proxy show`).
    pub fn open_read_only(database: &Database) -> Result<AnyStore, StoreError> {
        Ok(match database {
            Database::Sqlite(path) => AnyStore::Sqlite(SqliteStore::open_read_only(path)?),
            Database::Postgres(uri) => AnyStore::Postgres(PgStore::open_read_only(uri)?),
        })
    }
}

impl Store for AnyStore {
    fn transaction<R, E: From<StoreError>>(&self, f: impl FnMut(&mut dyn Tx) -> Result<R, E>) -> Result<R, E> {
        match self {
            AnyStore::Sqlite(s) => s.transaction(f),
            AnyStore::Postgres(s) => s.transaction(f),
        }
    }
    fn read<R, E: From<StoreError>>(&self, f: impl FnMut(&mut dyn Tx) -> Result<R, E>) -> Result<R, E> {
        match self {
            AnyStore::Sqlite(s) => s.read(f),
            AnyStore::Postgres(s) => s.read(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_uris_name_their_backend() {
        assert_eq!(Database::parse("/srv/proxy.db"), Database::sqlite("/srv/proxy.db"));
        assert_eq!(Database::parse("sqlite:proxy.db"), Database::sqlite("proxy.db"));
        assert_eq!(Database::parse("sqlite:///srv/proxy.db"), Database::sqlite("/srv/proxy.db"));
        let pg = "postgresql://slap:secret@db.example/slapos";
        assert_eq!(Database::parse(pg), Database::Postgres(pg.into()));
        assert_eq!(Database::parse(pg).shown(), "postgresql://slap:***@db.example/slapos");
        assert!(matches!(Database::parse("postgres://h/d"), Database::Postgres(_)));
    }
}
