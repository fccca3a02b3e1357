//! Helpers shared by the verification test binaries (each includes this
//! module with `mod support;`; not every binary uses every helper).
#![allow(dead_code)]

use std::path::Path;

/// Copies a directory tree, keeping directory modes (keys/ stays 0700).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
            let permissions = entry.metadata().expect("metadata").permissions();
            std::fs::set_permissions(&target, permissions).expect("keep the mode");
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Runs SQL statements against a data directory's SQLite audit index; each
/// must change exactly one row.
pub fn tamper_index<S: AsRef<str>>(data: &Path, statements: &[S]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let url = format!("sqlite://{}", data.join("index.sqlite3").display());
        let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
        for statement in statements {
            let statement = statement.as_ref();
            let done = sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
            assert_eq!(done.rows_affected(), 1, "{statement} changes one row");
        }
        pool.close().await;
    });
}
