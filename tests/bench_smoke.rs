//! `vellum bench` end to end with tiny numbers: the binary starts its
//! three-replica cluster and reports the read and bulk-ingest rows and their
//! ratios in its JSON.

mod support;

use std::process::Command;

/// Goal: a tiny bench run reports reads (> 0 reads, each checked and trailed
/// by the bench itself) and bulk ingest (> 0 MB/s) with their ratio lines.
#[test]
fn bench_reports_reads_and_bulk_ingest() {
    let dir = support::TestDir::new("vellum-bench-smoke");
    let work = dir.path().join("bench");
    let out = Command::new(support::vellum_exe())
        .args(["bench", "--dir"])
        .arg(&work)
        .args([
            "--appends",
            "30",
            "--concurrency",
            "2",
            "--seconds",
            "5",
            "--batch",
            "5",
            "--json",
        ])
        .env_remove("VELLUM_BENCH_POSTGRES_URL")
        .env_remove("VELLUM_LOG")
        .output()
        .expect("run vellum bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vellum bench failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("bench prints json");
    let row = |system: &str| {
        report["measurements"]
            .as_array()
            .expect("measurements")
            .iter()
            .find(|m| m["system"] == system)
            .unwrap_or_else(|| panic!("no {system:?} row in {report:#}"))
            .clone()
    };
    let reads = row("vellum 3 replicas, reads");
    assert!(reads["appends"].as_u64() > Some(0), "{reads:#}");
    assert!(reads["events_per_s"].as_f64() > Some(0.0), "{reads:#}");
    assert!(row("sqlite reads")["events_per_s"].as_f64() > Some(0.0));
    // The API's own request rate, the ceiling of any one-event request.
    let floor = row("vellum 3 replicas, API floor (GET /v1/health)");
    assert!(floor["appends"].as_u64() > Some(0), "{floor:#}");
    assert!(floor["events_per_s"].as_f64() > Some(0.0), "{floor:#}");
    let bulk = row("vellum 3 replicas, batch 5");
    assert_eq!(bulk["events_per_op"].as_u64(), Some(5), "{bulk:#}");
    assert!(bulk["mb_per_s"].as_f64() > Some(0.0), "{bulk:#}");
    assert!(row("raw 1 MiB write+fdatasync")["mb_per_s"].as_f64() > Some(0.0));
    let ratio = |what: &str| {
        report["ratios"]
            .as_array()
            .expect("ratios")
            .iter()
            .find(|r| r["what"] == what)
            .unwrap_or_else(|| panic!("no {what:?} ratio in {report:#}"))
            .clone()
    };
    assert_eq!(
        ratio("vellum 3 replicas, reads / sqlite reads")["throughput_unit"],
        "reads/s"
    );
    assert_eq!(
        ratio("vellum 3 replicas, reads / vellum 3 replicas, API floor (GET /v1/health)")["throughput_unit"],
        "requests/s"
    );
    assert_eq!(
        ratio("vellum 3 replicas / vellum 3 replicas, API floor (GET /v1/health)")["throughput_unit"],
        "requests/s"
    );
    assert_eq!(
        ratio("vellum 3 replicas, batch 5 / raw 1 MiB write+fdatasync")["throughput_unit"],
        "MB/s"
    );
    let trail_checked = report["notes"].as_array().expect("notes").iter().any(|n| {
        n.as_str()
            .is_some_and(|n| n.contains("the global log grew by"))
    });
    assert!(trail_checked, "the trail check is reported: {report:#}");
    // The killed backup is started again and must catch up by repair.
    let caught_up = report["notes"].as_array().expect("notes").iter().any(|n| {
        n.as_str()
            .is_some_and(|n| n.starts_with("catch-up: ") && n.contains(" after its start: "))
    });
    assert!(caught_up, "the restarted backup caught up: {report:#}");
}

/// Goal: a batch larger than one append may carry is refused before
/// anything runs, naming the flag and its bounds.
#[test]
fn bench_refuses_a_batch_above_the_append_maximum() {
    let dir = support::TestDir::new("vellum-bench-batch");
    let work = dir.path().join("bench");
    let (code, _, stderr) = support::vellum_cli(&[
        "bench",
        "--dir",
        work.to_str().expect("utf-8 temp path"),
        "--batch",
        "4097",
    ]);
    assert_ne!(code, 0, "refused");
    assert!(
        stderr.contains("--batch") && stderr.contains("0..=4096"),
        "{stderr}"
    );
    assert!(!work.exists(), "nothing ran");
}

/// Goal: a tiny `bench --scale` run reports, for a batched log and a log of
/// one event per op, the open (time, memory, descriptors), bytes per event
/// above the payload, and verify and incremental `--since` runs of the last 1%.
#[test]
fn bench_scale_reports_each_log() {
    let dir = support::TestDir::new("vellum-bench-scale");
    let work = dir.path().join("bench");
    let out = Command::new(support::vellum_exe())
        .args(["bench", "--scale", "--dir"])
        .arg(&work)
        .args(["--scale-sizes", "5000", "--scale-per-op", "200"])
        .args(["--scale-appends", "300", "--json"])
        .env_remove("VELLUM_LOG")
        .output()
        .expect("run vellum bench --scale");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let rows = report["rows"].as_array().expect("rows");
    let shape: Vec<(u64, u64, u64)> = rows
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().expect(k);
            (n("events"), n("events_per_op"), n("since_new_events"))
        })
        .collect();
    assert_eq!(shape, vec![(5000, 4096, 50), (200, 1, 2)]);
    for row in rows {
        let f = |k: &str| row[k].as_f64().expect(k);
        let probe = |k: &str| row["probe"][k].as_f64().expect(k);
        assert!(f("segment_bytes_per_event") > 512.0, "{row}");
        assert!(
            f("verify_peak_mib") > 1.0 && f("since_peak_mib") > 1.0,
            "{row}"
        );
        assert!(f("verify_s") > 0.0 && f("since_s") > 0.0, "{row}");
        assert!(
            probe("rss_open_mib") > 1.0 && probe("fds_open") >= 3.0,
            "{row}"
        );
        assert_eq!(row["probe"]["appended"], 300, "{row}");
        assert_eq!(
            row["since_incremental"], true,
            "the --since run skipped the old part: {row}"
        );
    }
}
