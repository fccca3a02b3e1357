//! The witness's own state: the latest checkpoint it cosigned per log
//! origin, in one SQLite file (`witness.sqlite` in its data directory,
//! `synchronous=FULL`, so a committed row survives a power cut). The server
//! reads, decides and writes under one lock, so check and persist are atomic
//! as c2sp.org/tlog-witness requires.

use std::path::Path;

use sqlx::Row as _;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use super::protocol::Witnessed;

/// The file name of the store in the witness data directory.
pub const STORE_FILE_NAME: &str = "witness.sqlite";

/// The witness's durable state.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if missing) the store in `dir`.
    pub async fn open(dir: &Path) -> Result<Store, sqlx::Error> {
        let options = SqliteConnectOptions::new()
            .filename(dir.join(STORE_FILE_NAME))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS witnessed (
                origin TEXT PRIMARY KEY NOT NULL,
                size INTEGER NOT NULL,
                root BLOB NOT NULL CHECK (length(root) = 32),
                note TEXT NOT NULL
            ) STRICT",
        )
        .execute(&pool)
        .await?;
        Ok(Store { pool })
    }

    /// The latest checkpoint cosigned for `origin`, if any.
    pub async fn get(&self, origin: &str) -> Result<Option<Witnessed>, sqlx::Error> {
        let row = sqlx::query("SELECT size, root FROM witnessed WHERE origin = ?")
            .bind(origin)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        // Sizes are stored bit-cast into SQLite's i64 so any u64 fits.
        let size = row.try_get::<i64, _>("size")? as u64;
        let root: Vec<u8> = row.try_get("root")?;
        let root = <[u8; 32]>::try_from(root)
            .map_err(|_| sqlx::Error::Protocol("stored root is not 32 bytes".into()))?;
        Ok(Some(Witnessed { size, root }))
    }

    /// Records `witnessed` (and the note it came from) for `origin`; durable
    /// when this returns.
    pub async fn put(
        &self,
        origin: &str,
        witnessed: &Witnessed,
        note: &str,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO witnessed (origin, size, root, note) VALUES (?, ?, ?, ?)
             ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root,
             note = excluded.note",
        )
        .bind(origin)
        .bind(witnessed.size as i64)
        .bind(witnessed.root.as_slice())
        .bind(note)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
