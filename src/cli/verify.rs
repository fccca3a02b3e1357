//! `vellum verify`: prints each check with its counts; non-zero exit on any failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::print_json;

/// `vellum verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The replica's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The trust policy to pin (keys and quorum). Default: the policy written
    /// at init inside the data directory — pass your own copy for an
    /// independent audit, since keys should never come from the data verified.
    #[arg(long, value_name = "P")]
    policy: Option<PathBuf>,
    /// Audit index URL (postgres://...); default: SQLite file in the data directory.
    #[arg(long, value_name = "URL", env = "VELLUM_INDEX_URL")]
    index_url: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    // An auditor's copy may hold no keys and no vellum.json: only the log
    // and the policy are needed, so only the directory must exist.
    super::check_data_dir(&args.data_dir, false)?;
    let dir = crate::datadir::DataDir::new(&args.data_dir);
    if dir.keys().exists()
        && let Err(e) = super::check_key_permissions(&dir)
    {
        // Verification needs no secret, so it goes on; but say it loudly.
        eprintln!("warning: {e}");
    }
    // Hold the writer's lock when this is a replica's directory, so an
    // append running now is not mistaken for a torn record.
    let _lock = if dir.meta().exists() {
        Some(super::lock_data_dir(&args.data_dir)?)
    } else {
        None
    };
    let policy_path = match &args.policy {
        Some(path) => path.clone(),
        None => {
            let path = crate::datadir::DataDir::new(&args.data_dir).policy();
            eprintln!(
                "note: using the policy inside the data directory ({}); pass --policy with your own copy for an independent audit",
                path.display()
            );
            path
        }
    };
    let text = std::fs::read_to_string(&policy_path)
        .with_context(|| format!("{}: cannot read the trust policy", policy_path.display()))?;
    let policy = vellum_audit::policy::Policy::parse(&text)
        .with_context(|| policy_path.display().to_string())?;
    let total = dir_bytes(&crate::datadir::DataDir::new(&args.data_dir).segments());
    let progress = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "verifying {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .expect("the progress template is valid"),
    );
    let report = crate::verify::verify_data_dir(
        &args.data_dir,
        &policy,
        args.index_url.as_deref(),
        &mut |n| {
            progress.inc(n);
        },
    );
    progress.finish_and_clear();
    if args.json {
        print_json(&report)?;
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}
