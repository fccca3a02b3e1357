//! Where the audit index lives: a SQLite file (the embedded default) or a
//! PostgreSQL database selected by URL.

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::IndexError;

/// File name of the default SQLite index inside the data directory.
pub const SQLITE_FILE_NAME: &str = "index.sqlite3";

/// Environment variable naming the PostgreSQL server used by tests and CI.
pub const TEST_POSTGRES_URL_VAR: &str = "VELLUM_TEST_POSTGRES_URL";

/// The backend and location of an audit index.
#[derive(Clone, PartialEq, Eq)]
pub enum IndexTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

impl IndexTarget {
    /// Chooses the index from an optional URL: none means the SQLite file in
    /// `data_dir`; `postgres://` and `postgresql://` URLs select PostgreSQL;
    /// `sqlite://<path>` selects a SQLite file at `<path>`.
    pub fn parse(url_or_none: Option<&str>, data_dir: &Path) -> Result<IndexTarget, IndexError> {
        let Some(url) = url_or_none else {
            return Ok(IndexTarget::Sqlite(data_dir.join(SQLITE_FILE_NAME)));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(IndexTarget::Postgres(url.to_owned()));
        }
        match url.strip_prefix("sqlite://") {
            Some(path) if !path.is_empty() => Ok(IndexTarget::Sqlite(PathBuf::from(path))),
            _ => Err(IndexError::BadUrl(redact_url(url))),
        }
    }
}

/// Shows the target with any password in a URL replaced by `***`, so that it
/// can go into errors and logs.
impl fmt::Display for IndexTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexTarget::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            IndexTarget::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for IndexTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IndexTarget({self})")
    }
}

/// Returns the URL of the PostgreSQL server for tests, from
/// `VELLUM_TEST_POSTGRES_URL`, or `None` when it is unset or empty.
pub fn postgres_url_from_env() -> Option<String> {
    std::env::var(TEST_POSTGRES_URL_VAR)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// Replaces the password of `scheme://user:password@host/...` by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    match authority[..at].split_once(':') {
        Some((user, _password)) => {
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: each accepted URL form maps to its backend and anything else is refused.
    #[test]
    fn parse_selects_backend() {
        let dir = Path::new("/data");
        let cases: &[(Option<&str>, Option<IndexTarget>)] = &[
            (None, Some(IndexTarget::Sqlite(dir.join("index.sqlite3")))),
            (
                Some("postgres://u@h/db"),
                Some(IndexTarget::Postgres("postgres://u@h/db".into())),
            ),
            (
                Some("postgresql://h/db"),
                Some(IndexTarget::Postgres("postgresql://h/db".into())),
            ),
            (
                Some("sqlite:///tmp/i.db"),
                Some(IndexTarget::Sqlite("/tmp/i.db".into())),
            ),
            (Some("sqlite://"), None),
            (Some("mysql://h/db"), None),
            (Some(""), None),
        ];
        for (input, expected) in cases {
            let got = IndexTarget::parse(*input, dir).ok();
            assert_eq!(&got, expected, "input {input:?}");
        }
    }

    /// Goal: passwords never appear in a displayed target or a BadUrl error.
    #[test]
    fn display_redacts_password() {
        let target = IndexTarget::Postgres("postgres://alice:s3cret@db:5432/x".into());
        assert_eq!(target.to_string(), "postgres://alice:***@db:5432/x");
        let err = IndexTarget::parse(Some("mysql://bob:hunter2@h/db"), Path::new("/"));
        let message = format!("{:?}", err.err());
        assert!(!message.contains("hunter2"), "{message}");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
