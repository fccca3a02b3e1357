//! `vellum init` and `vellum index rebuild`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{DataDirArgs, print_json};

/// `vellum init`
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The data directory to create.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Audit index URL (postgres://...); default: SQLite file in the data directory.
    #[arg(long, value_name = "URL", env = "VELLUM_INDEX_URL")]
    index_url: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pkcs11: super::pkcs11_args::Pkcs11Args,
    #[command(flatten)]
    signing_pkcs11: super::pkcs11_args::SigningPkcs11Args,
}

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    // A bad URL is refused before anything is created, so the user can
    // simply run init again with the right one.
    if let Some(url) = args.index_url.as_deref() {
        crate::index::IndexTarget::parse(Some(url), &args.data_dir)?;
    }
    let kek = args.pkcs11.config()?;
    let signing = args.signing_pkcs11.config()?;
    let report = crate::init::init_data_dir_with_keys(
        &args.data_dir,
        args.index_url.as_deref(),
        kek.as_ref(),
        signing.as_ref(),
    )?;
    if args.json {
        print_json(&report)?;
    } else {
        println!("initialized {}", report.data_dir);
        println!("cluster  {}", report.cluster);
        println!("origin   {}", report.origin);
        println!("vkey     {}", report.vkey);
        println!("kek      {}", report.kek);
        println!("signing  {}", report.signing);
        println!(
            "policy   {}  (copy it somewhere safe: auditors pin it)",
            report.policy
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `vellum index rebuild`
pub fn rebuild_index(args: DataDirArgs) -> anyhow::Result<ExitCode> {
    // The library opens the log before it clears the index, so a directory
    // that cannot be opened is refused with the index left as it was.
    super::check_data_dir(&args.data_dir, true)?;
    crate::index::IndexTarget::parse(args.index_url.as_deref(), &args.data_dir)?;
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_message("rebuilding the audit index from the log");
    progress.enable_steady_tick(std::time::Duration::from_millis(200));
    let counts = crate::log::rebuild_index(&args.data_dir, args.index_url.as_deref())?;
    progress.finish_and_clear();
    println!(
        "rebuilt the audit index: {} events, {} commits, {} keys",
        counts.events, counts.commits, counts.keys
    );
    Ok(ExitCode::SUCCESS)
}
