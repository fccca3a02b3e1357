//! The worked projection (`examples/projection`, binary
//! `vellum-projection`) against a real three-replica cluster and
//! PostgreSQL: killed with SIGKILL twice mid-run and restarted, it converges
//! to the same patient summary as a clean run (no event applied twice,
//! none lost). Needs `VELLUM_TEST_POSTGRES_URL`; says so and skips without it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use vellum::local_cluster::LocalCluster;

mod support;
use support::TestDir;

const WAIT: Duration = Duration::from_secs(120);
/// Patients (streams) and events per patient.
const PATIENTS: u64 = 6;
const EVENTS_PER_PATIENT: u64 = 60;

fn projection(cluster: &LocalCluster, postgres: &str, group: &str, api: usize) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vellum-projection"))
        .args([
            "--api",
            &cluster.dev.api_urls[api],
            "--ca",
            &cluster.dev.ca_pem_path.to_string_lossy(),
            "--token",
            &cluster.dev.writer_token,
            "--postgres",
            postgres,
            "--group",
            group,
            "--create-with-streams",
            "7001-7999",
            "--lease-ms",
            "1000",
            "--exit-when-idle-ms",
            "3000",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start vellum-projection")
}

fn wait_exit(child: &mut Child, what: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{what} exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (stream, events, last_offset, last_type, digest) of `group`, by stream.
type Summary = Vec<(i64, i64, i64, Option<String>, String)>;

async fn summary(pool: &sqlx::PgPool, group: &str) -> Summary {
    sqlx::query_as(
        "SELECT stream, events, last_offset, last_type, digest FROM patient_summary
         WHERE group_name = $1 ORDER BY stream",
    )
    .bind(group)
    .fetch_all(pool)
    .await
    .unwrap_or_default()
}

async fn applied(pool: &sqlx::PgPool, group: &str) -> i64 {
    summary(pool, group).await.iter().map(|row| row.1).sum()
}

// Goal: a projection killed (SIGKILL) twice while applying events and
// restarted ends with the same summary as a clean run, and every event
// counted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_projection_converges_to_the_clean_summary() {
    let Ok(postgres) = std::env::var("VELLUM_TEST_POSTGRES_URL") else {
        eprintln!(
            "skipped: set VELLUM_TEST_POSTGRES_URL (e.g. postgres://postgres@127.0.0.1:5432/test) to run the projection example's crash test"
        );
        return;
    };
    let pool = sqlx::PgPool::connect(&postgres).await.expect("PostgreSQL");
    let dir = TestDir::new("vellum-projection");
    let mut cluster = LocalCluster::start(&dir.path().join("cluster"), 3, support::vellum_exe())
        .expect("cluster");
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let client = cluster.client(None).expect("client");
    let types = ["Observation", "MedicationRequest", "Encounter"];
    for n in 0..EVENTS_PER_PATIENT {
        for patient in 0..PATIENTS {
            let payload = format!(
                "{{\"type\":\"{}\",\"patient\":{patient},\"n\":{n}}}",
                types[usize::try_from((n + patient) % 3).expect("small")]
            );
            client
                .append(7001 + patient, vec![Bytes::from(payload)], None)
                .await
                .expect("append");
        }
    }
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).expect("random");
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let (clean, crashy) = (format!("clean-{suffix}"), format!("crashy-{suffix}"));
    let total = i64::try_from(PATIENTS * EVENTS_PER_PATIENT).expect("small");

    let started = Instant::now();
    let mut run = projection(&cluster, &postgres, &clean, primary);
    tokio::task::spawn_blocking(move || wait_exit(&mut run, "the clean run"))
        .await
        .expect("task");
    // Includes the projection's start, its 3 s idle exit and PostgreSQL.
    eprintln!(
        "clean run: {total} events through a consumer group into PostgreSQL in {} ms",
        started.elapsed().as_millis()
    );
    let expected = summary(&pool, &clean).await;
    assert_eq!(expected.len() as u64, PATIENTS);
    assert_eq!(applied(&pool, &clean).await, total, "{expected:?}");

    // Killed twice mid-run (through a backup, so acks and pulls are forwarded).
    let backup = (primary + 1) % 3;
    for threshold in [total / 5, total / 2] {
        let mut run = projection(&cluster, &postgres, &crashy, backup);
        let deadline = Instant::now() + WAIT;
        while applied(&pool, &crashy).await < threshold {
            assert!(Instant::now() < deadline, "the projection made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        run.kill().expect("SIGKILL");
        run.wait().expect("reaped");
    }
    let before_restart = applied(&pool, &crashy).await;
    assert!(
        before_restart < total,
        "killed before it finished ({before_restart})"
    );
    let mut run = projection(&cluster, &postgres, &crashy, backup);
    tokio::task::spawn_blocking(move || wait_exit(&mut run, "the restarted run"))
        .await
        .expect("task");
    let got = summary(&pool, &crashy).await;
    assert_eq!(
        applied(&pool, &crashy).await,
        total,
        "each event applied once: {got:?}"
    );
    assert_eq!(
        got, expected,
        "the killed run's summary equals the clean run's"
    );
    cluster.stop().expect("stop");
    for group in [&clean, &crashy] {
        let _ = sqlx::query("DELETE FROM patient_summary WHERE group_name = $1")
            .bind(group)
            .execute(&pool)
            .await;
    }
}
