//! `vellum keys show`: public key material only. `vellum keys history`:
//! the signing-key history of a policy, or of a log against it (wiring
//! only; the listing is `verify::key_listing`). `vellum keys rotate-kek`:
//! a new key-encryption key for a stopped replica (wiring only; the
//! rotation is `crypto::rotate_kek`). `vellum keys new-kek`: a KEK file to
//! rotate a cluster's replicas to. `vellum keys rotate-signing`: a new
//! signing key for a stopped replica (wiring only; the rotation is
//! `crypto::rotate_signing_key`). `vellum keys move-signing-to-pkcs11`: a
//! stopped replica's signing key file into a PKCS#11 token (wiring only;
//! the move is `crypto::move_signing_key_to_token`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};

use super::print_json;
use crate::crypto::{CrashGate, KekConfig, NewKek, Recovery, SigningConfig, SigningRecovery};
use crate::datadir::{DataDir, NodeMeta};

/// `vellum keys`
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Show this replica's public keys (never secrets) and the `rotation`
    /// lines of every signing-key rotation it made.
    Show(ShowArgs),
    /// Print the signing-key history: each replica's keys, from which op
    /// each signs, the `rotation` lines that switch them and, with a data
    /// directory, the access-trail position of the `signing_key_rotated`
    /// event that announced each (the log is verified first). Public
    /// material only; works on a stopped replica's directory or a policy
    /// file alone. Exits nonzero when an announcement does not verify, a
    /// pinned rotation is not announced, or the log does not verify.
    History(HistoryArgs),
    /// Rotate a stopped replica's key-encryption key: every data key is
    /// rewrapped under a new KEK, then the old KEK is destroyed. Crash-safe:
    /// an interrupted rotation is finished or undone at the replica's next
    /// start (or by --recover-only). Recorded in the access trail at the
    /// replica's next start.
    RotateKek(RotateKekArgs),
    /// Write a new random file KEK to a new 0600 file (refuses to
    /// overwrite): the KEK every replica of a cluster rotates to with
    /// `rotate-kek --new-kek-file`.
    NewKek(NewKekArgs),
    /// Rotate a stopped replica's Ed25519 signing key: a new key signs every
    /// checkpoint after the replica's last op; the announcement, signed by
    /// the old and the new key, is pinned in this replica's policy.txt and
    /// printed as the `rotation` line every other replica's policy and every
    /// auditor's must pin. The old key is destroyed. Crash-safe like
    /// rotate-kek.
    RotateSigning(RotateSigningArgs),
    /// Move a stopped replica's signing key file into a PKCS#11 token: the
    /// key is imported as a sensitive, non-extractable Ed25519 pair (the
    /// same key, so no policy changes), vellum.json records the token, then
    /// the file is destroyed. Rerun it after a crash to finish.
    MoveSigningToPkcs11(MoveSigningArgs),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(true).args(["data_dir", "policy"])))]
struct HistoryArgs {
    /// A replica's data directory: its log is verified and its access
    /// trail read for the announcements (default policy: its policy.txt).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The trust policy whose pinned history to print (alone: no log read).
    #[arg(long, value_name = "P")]
    policy: Option<PathBuf>,
    /// Audit index URL (postgres://...); default: SQLite file in the data directory.
    #[arg(long, value_name = "URL", env = "VELLUM_INDEX_URL")]
    index_url: Option<String>,
    /// Only this replica's keys.
    #[arg(long, value_name = "N")]
    replica: Option<usize>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct MoveSigningArgs {
    /// The stopped replica's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    token: super::pkcs11_args::SigningPkcs11Args,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RotateSigningArgs {
    /// The stopped replica's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Only finish or undo a rotation a crash interrupted; rotate nothing.
    #[arg(long)]
    recover_only: bool,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct NewKekArgs {
    /// The file to create (mode 0600; its directory should be private).
    #[arg(long, value_name = "PATH")]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// The replica's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Print only the verifier keys, one per line, in signed-note vkey format.
    #[arg(long)]
    vkeys: bool,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RotateKekArgs {
    /// The stopped replica's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// File KEK: install the KEK in this 0600 file (`vellum-kek-v1 <base64>`)
    /// instead of generating one, so every replica of a cluster rotates to
    /// the same KEK. The file is copied; destroy it when all have rotated.
    #[arg(long, value_name = "PATH", conflicts_with = "new_key_label")]
    new_kek_file: Option<PathBuf>,
    /// PKCS#11 KEK: the label of the new AES key, generated on the same
    /// token (no key may carry it yet); the old key is destroyed.
    #[arg(long, value_name = "LABEL")]
    new_key_label: Option<String>,
    /// Only finish or undo a rotation a crash interrupted; rotate nothing.
    #[arg(long, conflicts_with_all = ["new_kek_file", "new_key_label"])]
    recover_only: bool,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        KeysCommand::Show(args) => show(args),
        KeysCommand::History(args) => history(args),
        KeysCommand::RotateKek(args) => rotate_kek(args),
        KeysCommand::RotateSigning(args) => rotate_signing(args),
        KeysCommand::MoveSigningToPkcs11(args) => move_signing(args),
        KeysCommand::NewKek(args) => {
            drop(crate::crypto::Kek::create_file(&args.out)?);
            println!("wrote a new key-encryption key to {}", args.out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    super::check_data_dir(&args.data_dir, true)?;
    let dir = DataDir::new(&args.data_dir);
    // Only public keys are printed, but world-readable secrets next to them
    // are refused here as by every other command, so the user hears of it.
    super::check_key_permissions(&dir)?;
    let meta = NodeMeta::load(&dir)?;
    let signer = crate::crypto::open_signer(meta.signing.as_ref(), &dir.signing_key(), &meta.name)?;
    let vkey = signer.verifier().to_vkey();
    // The rotations this replica made: the lines auditors must pin.
    let rotations: Vec<String> = crate::crypto::signing_rotations(&dir.keys())?
        .iter()
        .map(|r| r.to_line())
        .collect();
    if args.vkeys {
        println!("{vkey}");
    } else if args.json {
        print_json(&serde_json::json!({
            "name": signer.name(),
            "key_id": crate::cli::hex(&signer.key_id()),
            "vkey": vkey,
            "rotations": rotations,
        }))?;
    } else {
        println!("name    {}", signer.name());
        println!("key id  {}", crate::cli::hex(&signer.key_id()));
        println!("vkey    {vkey}");
        for line in &rotations {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    use crate::verify::key_listing;
    if let Some(dir) = &args.data_dir {
        super::check_data_dir(dir, true)?;
    }
    let policy_path = match (&args.policy, &args.data_dir) {
        (Some(path), _) => path.clone(),
        (None, Some(dir)) => DataDir::new(dir).policy(),
        (None, None) => anyhow::bail!("give --data-dir, --policy, or both"),
    };
    let text = std::fs::read_to_string(&policy_path)
        .with_context(|| format!("{}: cannot read the trust policy", policy_path.display()))?;
    let policy = vellum_audit::policy::Policy::parse(&text)
        .with_context(|| format!("{}: the trust policy is refused", policy_path.display()))?;
    if let Some(replica) = args.replica
        && replica >= policy.verifiers.len()
    {
        anyhow::bail!(
            "replica {replica} is not in {} ({} replicas)",
            policy_path.display(),
            policy.verifiers.len()
        );
    }
    let listing = match &args.data_dir {
        Some(dir) => key_listing::of_data_dir(dir, &policy, args.index_url.as_deref()),
        None => key_listing::of_policy(&policy),
    };
    let listing = match args.replica {
        Some(replica) => listing.only_replica(replica),
        None => listing,
    };
    if args.json {
        print_json(&listing)?;
    } else {
        print!("{}", key_listing::to_text(&listing));
    }
    Ok(match listing.clean() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

fn rotate_kek(args: RotateKekArgs) -> anyhow::Result<ExitCode> {
    super::check_data_dir(&args.data_dir, true)?;
    let dir = DataDir::new(&args.data_dir);
    super::check_key_permissions(&dir)?;
    // Offline only: a running replica holds the lock, and its key store
    // would keep using the old KEK's wrapped keys.
    let _lock = dir.lock(0).map_err(|e| match e {
        crate::datadir::LockError::Busy { .. } => anyhow::anyhow!(
            "{e}: stop the replica first (kek rotation works on a stopped replica only)"
        ),
        other => other.into(),
    })?;
    let meta = NodeMeta::load(&dir)?;
    if args.recover_only {
        let (_, recovery) = meta.recover_kek_rotation(&dir)?;
        let what = match recovery {
            Recovery::Nothing => "no kek rotation was in progress",
            Recovery::RolledBack => "rolled back a kek rotation cut short before its commit",
            Recovery::Finished(_) => "finished a committed kek rotation",
        };
        println!("{what}");
        return Ok(ExitCode::SUCCESS);
    }
    let new = match (&meta.kek, args.new_key_label, &args.new_kek_file) {
        (None, None, None) => NewKek::GenerateFile,
        (None, None, Some(source)) => NewKek::CopyFile(source),
        (Some(KekConfig::Pkcs11(current)), Some(label), None) => {
            let mut config = current.clone();
            config.key_label = label;
            NewKek::Pkcs11(config)
        }
        (None, Some(_), _) => {
            anyhow::bail!(
                "--new-key-label is for a kek in a pkcs11 token; this replica's kek is the file keys/kek.key"
            )
        }
        (Some(_), None, _) => {
            anyhow::bail!(
                "this replica's kek is in a pkcs11 token: give the new key's label with --new-key-label"
            )
        }
        (Some(_), Some(_), Some(_)) => {
            anyhow::bail!("give --new-key-label or --new-kek-file, not both")
        }
    };
    let report = meta.rotate_kek(&dir, new, &mut CrashGate::never())?;
    if args.json {
        print_json(&serde_json::json!({
            "keys_rewrapped": report.keys_rewrapped,
            "old_kek_fingerprint": report.old_fingerprint,
            "new_kek_fingerprint": report.new_fingerprint,
            "recorded": "at the replica's next start, in the access trail",
        }))?;
    } else {
        println!(
            "rotated the key-encryption key: {} data keys rewrapped",
            report.keys_rewrapped
        );
        println!("old kek  {} (destroyed)", report.old_fingerprint);
        println!("new kek  {}", report.new_fingerprint);
        println!("the rotation is recorded in the access trail at the replica's next start");
    }
    Ok(ExitCode::SUCCESS)
}

fn rotate_signing(args: RotateSigningArgs) -> anyhow::Result<ExitCode> {
    super::check_data_dir(&args.data_dir, true)?;
    let dir = DataDir::new(&args.data_dir);
    super::check_key_permissions(&dir)?;
    // Offline only: a running replica signs with the key it loaded.
    let _lock = dir.lock(0).map_err(|e| match e {
        crate::datadir::LockError::Busy { .. } => anyhow::anyhow!(
            "{e}: stop the replica first (signing-key rotation works on a stopped replica only)"
        ),
        other => other.into(),
    })?;
    let meta = NodeMeta::load(&dir)?;
    if let Some(SigningConfig::Pkcs11(token)) = &meta.signing {
        // The rotation journal stages and destroys key files; a token-held
        // key would need the same steps on the token, not built yet.
        anyhow::bail!(
            "the signing key of {} lives in pkcs11 token {:?} (key {:?}): rotating a token-held \
             signing key is not supported yet",
            args.data_dir.display(),
            token.token_label,
            token.key_label
        );
    }
    if args.recover_only {
        let what = match dir.recover_signing_rotation()? {
            SigningRecovery::Nothing => "no signing-key rotation was in progress".to_string(),
            SigningRecovery::RolledBack => {
                "rolled back a signing-key rotation cut short before its commit".to_string()
            }
            SigningRecovery::Finished(rotation) => format!(
                "finished a committed signing-key rotation; pin on every replica and auditor:\n{}",
                rotation.to_line()
            ),
        };
        println!("{what}");
        return Ok(ExitCode::SUCCESS);
    }
    let (last, certified) = last_op(&dir, &meta)?;
    let alone = crate::log::load_policy(&dir.policy())?.verifiers.len() == 1;
    if alone && !certified {
        // A replica alone signs its tail at its next open with the key it
        // holds then: the old key must have certified it already.
        anyhow::bail!(
            "op {last}, the last op of {}, has no certificate in the log: start the replica once \
             (it certifies its tail), stop it, then rotate",
            args.data_dir.display()
        );
    }
    let from_op = last + 1;
    let rotation = dir.rotate_signing_key(&meta, from_op, &mut CrashGate::never())?;
    if args.json {
        print_json(&serde_json::json!({
            "replica": rotation.replica,
            "from_op": rotation.from_op,
            "new_vkey": rotation.new.to_vkey(),
            "rotation": rotation.to_line(),
        }))?;
    } else {
        println!(
            "rotated the signing key of replica {}: the new key signs from op {}",
            rotation.replica, rotation.from_op
        );
        println!("new vkey  {}", rotation.new.to_vkey());
        println!(
            "pinned in {}; pin this line in every other replica's policy.txt",
            dir.policy().display()
        );
        println!("and in every auditor's policy (before the quorum line):");
        println!("{}", rotation.to_line());
    }
    Ok(ExitCode::SUCCESS)
}

fn move_signing(args: MoveSigningArgs) -> anyhow::Result<ExitCode> {
    super::check_data_dir(&args.data_dir, true)?;
    let dir = DataDir::new(&args.data_dir);
    super::check_key_permissions(&dir)?;
    let Some(SigningConfig::Pkcs11(token)) = args.token.config()? else {
        anyhow::bail!("name the token: --signing-pkcs11-module, -token, -key and a pin source");
    };
    // Offline only: a running replica signs with the key it loaded.
    let _lock = dir.lock(0).map_err(|e| match e {
        crate::datadir::LockError::Busy { .. } => {
            anyhow::anyhow!("{e}: stop the replica first (the key moves on a stopped replica only)")
        }
        other => other.into(),
    })?;
    let meta = NodeMeta::load(&dir)?;
    if !dir.signing_key().exists() {
        anyhow::bail!(
            "{} has no signing key file to move (its key lives at: {})",
            args.data_dir.display(),
            crate::crypto::describe_signer(meta.signing.as_ref(), &dir.signing_key())
        );
    }
    let persist = |signing: SigningConfig| {
        let moved = NodeMeta {
            signing: Some(signing),
            ..meta.clone()
        };
        moved
            .replace(&dir)
            .map_err(|e| crate::datadir::meta_io(&dir, e))
    };
    let signer = crate::crypto::move_signing_key_to_token(&dir.signing_key(), &token, persist)?;
    let vkey = signer.verifier().to_vkey();
    let place =
        crate::crypto::describe_signer(Some(&SigningConfig::Pkcs11(token)), &dir.signing_key());
    if args.json {
        print_json(&serde_json::json!({ "vkey": vkey, "signing": place }))?;
    } else {
        println!("moved the signing key into {place}; the key file is destroyed");
        println!("vkey  {vkey}  (unchanged: the policy stays as it is)");
    }
    Ok(ExitCode::SUCCESS)
}

/// The last op in the stopped replica's log (0 when empty): every op its
/// old key may have signed a checkpoint of (a replica signs only ops it
/// holds durably); and whether a certificate record in the log certifies
/// it (true for an empty log).
fn last_op(dir: &DataDir, meta: &NodeMeta) -> anyhow::Result<(u64, bool)> {
    let cluster = meta.cluster_id().map_err(|e| anyhow::anyhow!(e))?;
    let config = crate::storage::StorageConfig {
        read_only: true,
        ..Default::default()
    };
    let (storage, recovery) = crate::storage::Storage::open(dir.root(), cluster, config)?;
    storage.close()?;
    let last = recovery.chain.last_op;
    let certified = last == 0
        || recovery.records.iter().any(|(_, header)| {
            header.kind == vellum_audit::record::RecordKind::Certificate && header.op == last
        });
    Ok((last, certified))
}
