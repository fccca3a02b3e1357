//! `vellum demo`: the end-to-end story on a local three-replica cluster
//! (three `vellum start` processes on loopback): append sample EHR events to
//! a few patients' streams through `EventPersister::persist_blocking`, show a
//! receipt with its quorum certificate, read back, prove an event and check
//! the proof offline with the policy alone, have the outside witness
//! cosign (the primary feeds it), show the event's proof with the replica
//! signatures and the cosignature and check it with `vellum proof
//! check` under a policy requiring the witness, kill the primary and keep
//! appending, restart it and watch it catch up, prove the log only grew,
//! export a bundle and verify it under both policies, leave the verifier
//! page beside it for an auditor with nothing installed,
//! show a rewritten history signed by every replica key refused by the
//! witness and by the witnessed policy, open break-glass with a clinician's
//! token scoped to another patient and read patient-a's stream under it,
//! crypto-shred a stream written for it and watch its reads answer 410,
//! stop the cluster and verify every replica.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use vellum_audit::checkpoint::Certificate;
use vellum_audit::policy::Policy;
use vellum_audit::proof::InclusionProof;

use crate::client::{Client, ClientPersister};
use crate::crypto::KekConfig;
use crate::local_cluster::LocalCluster;
use crate::local_witness::{DEV_WITNESS_NAME, LocalWitness};
use crate::types::{EventPersister, StreamId};

/// The demo's patients: (stream id, display name used only in sample payloads).
const PATIENTS: [(u64, &str); 3] = [
    (1001, "patient-a"),
    (1002, "patient-b"),
    (1003, "patient-c"),
];
/// The stream written only to be crypto-shredded (no later step reads it).
const SHRED_PATIENT: (u64, &str) = (1004, "patient-d");
/// Events appended to [`SHRED_PATIENT`]'s stream before the shred.
const SHRED_EVENTS: u64 = 2;
/// The clinician of the break-glass step: a reader whose token is scoped to
/// patient-c's stream only, who opens emergency access to patient-a's.
const BREAK_GLASS_PRINCIPAL: &str = "demo-clinician";
/// How long the demo's break-glass grant lasts.
const BREAK_GLASS_DEMO_SECONDS: u64 = 600;
/// Sample events appended per patient before and after the primary is killed.
pub const EVENTS_PER_PATIENT: u64 = 4;
/// Replicas in the demo cluster.
pub const DEMO_REPLICAS: u8 = 3;
/// How long the demo waits for the cluster at each step.
const STEP_WAIT: Duration = Duration::from_secs(60);
/// The verifier page (`verifier/vellum-verify.html`), written into the
/// demo's directory so that an auditor can check the demo's bundle in a
/// browser with nothing installed.
const VERIFIER_PAGE: &str = include_str!("../verifier/vellum-verify.html");
/// Its file name in the demo's directory.
pub const VERIFIER_PAGE_FILE: &str = "vellum-verify.html";

/// What the demo showed, for `--json` and for tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoSummary {
    /// The cluster directory used.
    pub data_dir: String,
    /// Replicas in the cluster.
    pub replicas: u8,
    /// Events appended (all acknowledged).
    pub events_appended: u64,
    /// Events read back identical to what was appended.
    pub events_read_back: u64,
    /// Signatures on the receipt's certificate (at least the quorum).
    pub certificate_signatures: usize,
    /// The inclusion proof checked offline with the policy alone.
    pub proof_verified: bool,
    /// The replica killed (the primary at the time) and the primary after.
    pub killed_primary: u8,
    /// The primary elected after the kill.
    pub new_primary: u8,
    /// The killed replica caught up after its restart.
    pub restarted_caught_up: bool,
    /// The consistency proof between the first and last certificate checked.
    pub consistency_verified: bool,
    /// `vellum verify` passed on every replica.
    pub verify_passed: bool,
    /// Every replica ended with the same certified root.
    pub replicas_agree: bool,
    /// Tree size reached.
    pub tree_size: u64,
    /// The export bundle verified offline with the policy alone.
    pub bundle_verified: bool,
    /// The export bundle also verified under the policy requiring the
    /// witness (its `cosignatures.txt` or `cosigned.txt`).
    pub bundle_verified_witnessed: bool,
    /// Witness cosignatures counted by that verification.
    pub bundle_witness_cosignatures: u64,
    /// The verifier page written beside the bundle for an auditor with
    /// nothing installed (a copy of `verifier/vellum-verify.html`).
    pub verifier_page: String,
    /// Access-trail events recorded during the demo.
    pub trail_events: u64,
    /// `vellum proof check` passed on a served proof under a policy that
    /// requires the witness (replica quorum and witness cosignature).
    pub witness_proof_checked: bool,
    /// Valid signatures of pinned replica keys on that proof's checkpoint
    /// (at least the quorum).
    pub witness_proof_replica_signatures: usize,
    /// Valid cosignatures of pinned witnesses on that proof's checkpoint.
    pub witness_proof_cosignatures: usize,
    /// A rewritten history signed by every replica key: refused by the
    /// witness.
    pub fork_refused_by_witness: bool,
    /// The same: accepted by the replica-only policy, refused by the policy
    /// requiring the witness.
    pub fork_refused_by_policy: bool,
    /// A reader token scoped to another stream was refused (403
    /// `scope_denied`) on patient-a's stream, opened break-glass with a
    /// reason, then read every event of it byte for byte.
    pub break_glass_read: bool,
    /// The exported access trail holds the break-glass opening and the read
    /// made under it (both with the grant), and the refusal before it.
    pub break_glass_in_trail: bool,
    /// After the privacy officer's shred of [`SHRED_PATIENT`]'s stream, a
    /// read of it answered 410 `shredded` naming the shred's position.
    pub shred_refuses_reads: bool,
    /// The shred event's global log position (0 when the shred failed).
    pub shred_position: u64,
    /// The exported access trail holds the shred, with its stream.
    pub shred_in_trail: bool,
}

/// Runs the story in `data_dir` (a new cluster directory), narrating to `out`.
pub fn run_demo(data_dir: &Path, out: &mut dyn Write) -> anyhow::Result<DemoSummary> {
    run_demo_with_kek(data_dir, None, out)
}

/// [`run_demo`] with every replica's KEK in the PKCS#11 token `kek` names
/// (`None`: a dev KEK file shared by the replicas).
pub fn run_demo_with_kek(
    data_dir: &Path,
    kek: Option<&KekConfig>,
    out: &mut dyn Write,
) -> anyhow::Result<DemoSummary> {
    let runtime = tokio::runtime::Runtime::new()?;
    let exe = std::env::current_exe()?;
    let keys = match kek {
        Some(KekConfig::Pkcs11(config)) => format!(
            "KEK in PKCS#11 token {:?}, key {:?}",
            config.token_label, config.key_label
        ),
        None => "dev keys".to_string(),
    };
    writeln!(
        out,
        "== 1. start a {DEMO_REPLICAS}-replica cluster on loopback in {} ({keys}, TLS, tokens)",
        data_dir.display()
    )?;
    if let Some(kek) = kek {
        // Created here, so the start below reopens it with the token's KEK.
        crate::cluster::create_dev_cluster_with_kek(data_dir, DEMO_REPLICAS, None, Some(kek))?;
    }
    let mut witness = None;
    let reader_token = crate::cluster::generate_token()?;
    let mut cluster = LocalCluster::start_prepared(data_dir, DEMO_REPLICAS, &exe, |dev| {
        add_scoped_reader(dev, &reader_token)?;
        let mut prepared = LocalWitness::prepare(dev, &exe)?;
        prepared.start()?;
        witness = Some(prepared);
        Ok(())
    })?;
    let mut witness = witness.expect("prepare ran before the replicas started");
    let outcome = story(
        &runtime,
        &mut cluster,
        &mut witness,
        &reader_token,
        data_dir,
        out,
    );
    if outcome.is_err() {
        let _ = cluster.stop();
        for i in 0..cluster.replica_count() {
            let _ = writeln!(out, "   replica {i} log: {}", cluster.log_path(i).display());
        }
        let _ = writeln!(out, "   witness log: {}", witness.log_path().display());
    }
    witness.stop();
    outcome
}

fn story(
    runtime: &tokio::runtime::Runtime,
    cluster: &mut LocalCluster,
    witness: &mut LocalWitness,
    reader_token: &str,
    data_dir: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<DemoSummary> {
    let primary = runtime.block_on(cluster.wait_primary(STEP_WAIT))?;
    for (i, url) in cluster.dev.api_urls.iter().enumerate() {
        let role = if i == usize::from(primary) {
            "primary"
        } else {
            "backup"
        };
        writeln!(out, "   replica {i}: {url} ({role})")?;
    }
    writeln!(
        out,
        "   witness: {} ({}), fed by the primary; appends never wait for it",
        witness.url, DEV_WITNESS_NAME
    )?;
    let client = cluster.client(None)?;
    let persister = ClientPersister::new(client.clone())?;
    let policy = Policy::parse(&std::fs::read_to_string(&cluster.dev.policy_path)?)?;

    writeln!(
        out,
        "== 2. append sample EHR events through EventPersister::persist_blocking"
    )?;
    let mut appended = append_rounds(&persister, 0)?;
    let first = runtime.block_on(client.certificate())?;
    writeln!(
        out,
        "   {} events on {} streams",
        appended.len(),
        PATIENTS.len()
    )?;

    writeln!(
        out,
        "== 3. a receipt: offsets, positions, commit certificate (quorum), inclusion proof"
    )?;
    let event = sample_event(PATIENTS[0].1, 99);
    let receipt =
        runtime.block_on(client.append(PATIENTS[0].0, vec![Bytes::from(event.clone())], None))?;
    appended.push((PATIENTS[0].0, receipt.first_offset, event));
    writeln!(
        out,
        "   stream {} offset {} position {} op {}",
        receipt.stream, receipt.first_offset, receipt.first_position, receipt.op
    )?;
    for line in receipt.certificate.lines() {
        writeln!(out, "   | {line}")?;
    }
    let certificate_signatures = Certificate::parse(&receipt.certificate)?
        .note
        .signatures
        .len();

    writeln!(
        out,
        "== 4. prove one event; check the proof with the public policy alone"
    )?;
    let proof = runtime.block_on(client.proof(PATIENTS[1].0, 0))?;
    let parsed = InclusionProof::parse(&proof.proof)?;
    let proof_verified = parsed.verify_event(&policy).is_ok();
    writeln!(
        out,
        "   leaf {} in tree of size {}, {} signatures: {}",
        parsed.index,
        parsed.checkpoint.checkpoint.size,
        parsed.checkpoint.note.signatures.len(),
        ok(proof_verified)
    )?;

    writeln!(
        out,
        "== 4b. the witness cosigns; `vellum proof check` under a policy requiring it"
    )?;
    let witnessed = witnessed_proof(
        runtime,
        &client,
        &receipt,
        &appended.last().expect("just appended").2,
        &witness.witnessed_policy_path,
        data_dir,
        out,
    )?;

    writeln!(
        out,
        "== 5. kill -9 the primary (replica {primary}) and keep appending"
    )?;
    cluster.kill(usize::from(primary))?;
    appended.extend(append_rounds(&persister, EVENTS_PER_PATIENT)?);
    let new_primary = runtime.block_on(cluster.wait_primary(STEP_WAIT))?;
    writeln!(
        out,
        "   {} more events acknowledged; replica {new_primary} is the new primary",
        EVENTS_PER_PATIENT * PATIENTS.len() as u64
    )?;

    writeln!(out, "== 6. restart replica {primary} and watch it catch up")?;
    cluster.start_replica(usize::from(primary))?;
    let commit = runtime
        .block_on(cluster.health())
        .get(usize::from(new_primary))
        .and_then(|h| h.as_ref().map(|h| h.commit))
        .unwrap_or(0);
    let caught_up = runtime
        .block_on(cluster.wait_commit(&[usize::from(primary)], commit, STEP_WAIT))
        .is_ok();
    writeln!(
        out,
        "   replica {primary} reached commit {commit}: {}",
        ok(caught_up)
    )?;

    writeln!(out, "== 7. read back every stream, byte for byte")?;
    let read_back = read_back(runtime, &client, &appended)?;
    writeln!(out, "   {read_back} of {} events identical", appended.len())?;

    writeln!(
        out,
        "== 8. prove the log only grew since the first checkpoint (consistency)"
    )?;
    let consistency = runtime.block_on(client.consistency(first.size, None))?;
    let consistency_verified = check_consistency(&first, &consistency, &policy);
    writeln!(
        out,
        "   size {} -> {}: {}",
        consistency.from,
        consistency.to,
        ok(consistency_verified)
    )?;

    writeln!(
        out,
        "== 9. export patient-a's events as a signed bundle; verify it offline with the policy"
    )?;
    let bundle_dir = data_dir.join("export-patient-a");
    let bundle_verified = export_and_verify(runtime, &client, &bundle_dir, &policy)?;
    writeln!(out, "   {}: {}", bundle_dir.display(), ok(bundle_verified))?;
    let witnessed_policy =
        Policy::parse(&std::fs::read_to_string(&witness.witnessed_policy_path)?)?;
    let report = vellum_compliance::bundle::verify_bundle(&bundle_dir, &witnessed_policy);
    let bundle_verified_witnessed = report.passed;
    let bundle_witness_cosignatures = report
        .checks
        .iter()
        .find(|c| c.name == "bundle certificate")
        .and_then(|c| c.counts.get("witness cosignatures"))
        .copied()
        .unwrap_or(0);
    writeln!(
        out,
        "   under {} (requires the witness): {bundle_witness_cosignatures} witness cosignature(s): {}",
        witness.witnessed_policy_path.display(),
        ok(bundle_verified_witnessed)
    )?;
    let page = data_dir.join(VERIFIER_PAGE_FILE);
    crate::fsutil::replace_durable(&page, VERIFIER_PAGE.as_bytes(), 0o644)?;
    writeln!(
        out,
        "   the auditor's page, nothing to install: open {} in a browser, choose every file of {} and {}, click Verify",
        page.display(),
        bundle_dir.display(),
        witness.witnessed_policy_path.display()
    )?;

    writeln!(
        out,
        "== 9b. rewrite history and sign it with every replica key: the witness refuses"
    )?;
    let (fork_refused_by_witness, fork_refused_by_policy) =
        rewritten_history(runtime, cluster, witness, &client, &policy, out)?;

    let http = reqwest::Client::builder()
        .use_preconfigured_tls(crate::client::tls_config(cluster.ca_pem(), None)?)
        .timeout(Duration::from_secs(10))
        .build()?;
    let api =
        &cluster.dev.api_urls[usize::from(runtime.block_on(cluster.wait_primary(STEP_WAIT))?)];
    writeln!(
        out,
        "== 9c. break-glass: a clinician's token scoped to patient-c opens emergency access to patient-a"
    )?;
    let break_glass_read = break_glass(runtime, &http, api, reader_token, &appended, out)?;

    writeln!(
        out,
        "== 9d. crypto-shred patient-d's stream as the privacy officer; its reads answer 410"
    )?;
    let privacy_token = cluster
        .dev
        .privacy_officer_token
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the demo cluster has no privacy-officer token"))?;
    let privacy = cluster.client(Some(&privacy_token))?;
    let shred_position = shred(runtime, &client, &privacy, &http, api, out)?;
    let shred_refuses_reads = shred_position.is_some();
    let shred_position = shred_position.unwrap_or(0);

    writeln!(
        out,
        "== 10. the access trail: every access above, recorded and replicated"
    )?;
    let trail = runtime.block_on(client.export_audit(None, None, None))?;
    let count = |action: vellum_compliance::trail::AccessAction| {
        trail
            .records
            .iter()
            .filter(|r| r.event.action == action)
            .count()
    };
    use vellum_compliance::trail::AccessAction;
    writeln!(
        out,
        "   {} access events ({} appends, {} stream reads, {} exports) on system stream {}",
        trail.records.len(),
        count(AccessAction::Append),
        count(AccessAction::ReadStream),
        count(AccessAction::Export),
        vellum_compliance::trail::ACCESS_TRAIL_STREAM
    )?;
    let trail_events = trail.records.len() as u64;
    let events = || trail.records.iter().map(|r| &r.event);
    let clinician = |action: AccessAction| {
        events()
            .filter(|e| {
                e.action == action
                    && e.principal == BREAK_GLASS_PRINCIPAL
                    && e.stream == Some(PATIENTS[0].0)
            })
            .collect::<Vec<_>>()
    };
    let (openings, reads) = (
        clinician(AccessAction::BreakGlass),
        clinician(AccessAction::ReadStream),
    );
    let denied = reads
        .iter()
        .filter(|e| e.break_glass.is_none() && e.outcome.starts_with("denied: 403"))
        .count();
    let granted = |list: &[&vellum_compliance::trail::AccessEvent]| {
        list.iter()
            .filter(|e| e.break_glass.is_some() && e.outcome == "success")
            .count()
    };
    let (opened, read_under) = (granted(&openings), granted(&reads));
    let break_glass_in_trail = denied >= 1 && opened >= 1 && read_under >= 1;
    writeln!(
        out,
        "   break-glass by {BREAK_GLASS_PRINCIPAL} on stream {}: {denied} refused read, {opened} opening, {read_under} read under the grant: {}",
        PATIENTS[0].0,
        ok(break_glass_in_trail)
    )?;
    let shreds = events()
        .filter(|e| {
            e.action == AccessAction::Shred
                && e.stream == Some(SHRED_PATIENT.0)
                && e.outcome == "success"
        })
        .count();
    let shred_in_trail = shreds == 1;
    writeln!(
        out,
        "   shred of stream {}: {shreds} recorded: {}",
        SHRED_PATIENT.0,
        ok(shred_in_trail)
    )?;

    writeln!(
        out,
        "== 11. stop the cluster; vellum verify on every replica"
    )?;
    drop(persister);
    cluster.stop()?;
    let (verify_passed, replicas_agree, tree_size) = verify_replicas(cluster, &policy, out)?;
    let summary = DemoSummary {
        data_dir: data_dir.display().to_string(),
        replicas: DEMO_REPLICAS,
        events_appended: appended.len() as u64,
        events_read_back: read_back,
        certificate_signatures,
        proof_verified,
        killed_primary: primary,
        new_primary,
        restarted_caught_up: caught_up,
        consistency_verified,
        verify_passed,
        replicas_agree,
        tree_size,
        bundle_verified,
        bundle_verified_witnessed,
        bundle_witness_cosignatures,
        verifier_page: page.display().to_string(),
        trail_events,
        witness_proof_checked: witnessed.checked,
        witness_proof_replica_signatures: witnessed.replica_signatures,
        witness_proof_cosignatures: witnessed.cosignatures,
        fork_refused_by_witness,
        fork_refused_by_policy,
        break_glass_read,
        break_glass_in_trail,
        shred_refuses_reads,
        shred_position,
        shred_in_trail,
    };
    writeln!(
        out,
        "== summary: {} appended, {} read back, proof {}, witnessed proof {}, fork refused {}, break-glass read {}, shred refuses reads {}, failover {} -> {}, catch-up {}, consistency {}, bundle {}, {} trail events, verify {}, replicas agree {}",
        summary.events_appended,
        summary.events_read_back,
        ok(proof_verified),
        ok(witnessed.checked && witnessed.cosignatures >= 1),
        ok(fork_refused_by_witness && fork_refused_by_policy),
        ok(break_glass_read && break_glass_in_trail),
        ok(shred_refuses_reads && shred_in_trail),
        primary,
        new_primary,
        ok(caught_up),
        ok(consistency_verified),
        ok(bundle_verified && bundle_verified_witnessed),
        trail_events,
        ok(verify_passed),
        ok(replicas_agree)
    )?;
    writeln!(
        out,
        "   try: vellum verify --cluster {0} --policy {0}/policy.txt --format html --output report.html\n        vellum verify --bundle {0}/export-patient-a --policy {0}/policy-witnessed.txt\n        open {0}/vellum-verify.html in a browser; choose the files of {0}/export-patient-a and {0}/policy-witnessed.txt\n        vellum dev --data-dir {0}   (then: vellum export audit --cluster {0} --format fhir --out audit.ndjson)",
        data_dir.display()
    )?;
    Ok(summary)
}

/// What step 4b showed: an appended event's proof with the replicas'
/// signatures and the witness's cosignature on one checkpoint.
struct WitnessedStep {
    /// `vellum proof check` passed under the policy requiring the witness.
    checked: bool,
    /// Valid signatures of pinned replica keys on the proof's checkpoint.
    replica_signatures: usize,
    /// Valid cosignatures of pinned witnesses on it.
    cosignatures: usize,
}

/// Asks for the receipt's event's proof until it carries the witness's
/// cosignature ([`Client::witnessed_proof`]: the primary feeds the witness
/// off the append path, so the receipt itself cannot), shows its signature
/// lines, and runs `vellum proof check` on it under the policy requiring
/// the witness.
fn witnessed_proof(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    receipt: &crate::api::AppendReceipt,
    event: &str,
    witnessed_policy: &Path,
    data_dir: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<WitnessedStep> {
    let policy = Policy::parse(&std::fs::read_to_string(witnessed_policy)?)?;
    let wait_ms = u64::try_from(STEP_WAIT.as_millis()).unwrap_or(u64::MAX);
    let proof = match runtime.block_on(client.witnessed_proof(
        receipt.stream,
        receipt.first_offset,
        &policy,
        wait_ms,
    )) {
        Ok(proof) => proof,
        Err(error) => {
            writeln!(out, "   {error}: FAILED")?;
            return Ok(WitnessedStep {
                checked: false,
                replica_signatures: 0,
                cosignatures: 0,
            });
        }
    };
    let certificate = &proof.certificate;
    writeln!(
        out,
        "   proof of stream {} offset {} (position {}) in tree of size {}, signed by:",
        receipt.stream,
        receipt.first_offset,
        proof.leaf.global_position,
        certificate.checkpoint.size
    )?;
    for signature in &proof.proof.checkpoint.note.signatures {
        let who = if let Some(cosigner) = certificate
            .cosigners
            .iter()
            .find(|c| c.key.matches(signature))
        {
            format!("witness cosignature, time {}", cosigner.timestamp)
        } else if certificate
            .signers
            .iter()
            .any(|v| v.name() == signature.name && v.key_id() == signature.key_id)
        {
            "replica signature".to_string()
        } else {
            "not pinned".to_string()
        };
        writeln!(out, "   | {} ({who})", signature.line().trim_end())?;
    }
    let files = data_dir.join("witnessed-proof");
    std::fs::create_dir_all(&files)?;
    let (proof_file, event_file) = (files.join("proof.txt"), files.join("event.json"));
    std::fs::write(&proof_file, &proof.text)?;
    std::fs::write(&event_file, event)?;
    let salt = receipt.salts.first().cloned().unwrap_or_default();
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(["proof", "check", "--proof"])
        .arg(&proof_file)
        .arg("--event")
        .arg(&event_file)
        .args(["--salt", &salt, "--policy"])
        .arg(witnessed_policy)
        .stdout(std::process::Stdio::null())
        .status()?;
    let checked = status.success();
    writeln!(
        out,
        "   {} replica signatures (quorum {}), {} witness cosignature(s); vellum proof check --proof {} --event {} --salt {} --policy {}: {}",
        certificate.signers.len(),
        policy.quorum,
        certificate.cosigners.len(),
        proof_file.display(),
        event_file.display(),
        salt,
        witnessed_policy.display(),
        ok(checked)
    )?;
    Ok(WitnessedStep {
        checked,
        replica_signatures: certificate.signers.len(),
        cosignatures: certificate.cosigners.len(),
    })
}

/// Forges a rewritten history: a checkpoint of the size the witness holds
/// with another root, signed by every replica's own key (an operator who
/// holds them all). The replica-only policy accepts it; the witness refuses
/// it, and the policy requiring the witness refuses it.
fn rewritten_history(
    runtime: &tokio::runtime::Runtime,
    cluster: &LocalCluster,
    witness: &LocalWitness,
    client: &Client,
    policy: &Policy,
    out: &mut dyn Write,
) -> anyhow::Result<(bool, bool)> {
    use crate::witness::submit::{Answer, ExchangeError, add_checkpoint};
    let signers = (0..cluster.replica_count())
        .map(|i| {
            let dir = crate::datadir::DataDir::new(cluster.data_dir(i));
            crate::crypto::load_signing_key_file(&dir.signing_key())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let signer_refs: Vec<&vellum_audit::note::Signer> = signers.iter().collect();
    let latest = Certificate::parse(&runtime.block_on(client.certificate())?.certificate)?;
    let witnessed = Policy::parse(&std::fs::read_to_string(&witness.witnessed_policy_path)?)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut old = 0u64;
    for _ in 0..crate::witness::submit::SUBMIT_ATTEMPTS_MAX {
        let mut checkpoint = latest.checkpoint.clone();
        checkpoint.size = old.max(1);
        checkpoint.root = vellum_audit::hash::sha256(&[b"a rewritten history"]);
        let forged = Certificate::sign(checkpoint, &signer_refs)?;
        let answer = runtime.block_on(add_checkpoint(
            &http,
            &witness.url,
            old,
            &[],
            &forged.encode(),
        ));
        match answer {
            Ok(Answer::Size(held)) => old = held,
            Ok(Answer::Cosigned(_)) => {
                writeln!(out, "   the witness cosigned a forged checkpoint: FAILED")?;
                return Ok((false, false));
            }
            Err(ExchangeError::Refused { status, text }) => {
                let by_replicas = forged.verify(policy).is_ok();
                let by_witnessed = forged.verify(&witnessed).is_err();
                writeln!(
                    out,
                    "   forged size {} signed by all {} replica keys: replica-only policy {}; witness answers {status} ({text}); policy requiring the witness refuses it: {}",
                    forged.checkpoint.size,
                    signers.len(),
                    if by_replicas {
                        "accepts it (the danger)"
                    } else {
                        "refuses it"
                    },
                    ok(by_witnessed)
                )?;
                return Ok((true, by_replicas && by_witnessed));
            }
            Err(error) => return Err(error.into()),
        }
    }
    writeln!(out, "   the witness kept moving: not shown")?;
    Ok((false, false))
}

/// Adds the break-glass clinician's token to the cluster's tokens file
/// before any replica starts: role reader, scope patient-c's stream only
/// (written like the dev tokens, `crate::cluster::token_line`, 0600).
fn add_scoped_reader(dev: &crate::cluster::DevCluster, token: &str) -> anyhow::Result<()> {
    use crate::server::auth::{Scope, token_line};
    let scope = Scope::parse(&PATIENTS[2].0.to_string()).map_err(|e| anyhow::anyhow!(e))?;
    // Every replica's config names this one file (`setup.rs`, tokens_path).
    let path = dev.dir.join("tokens.txt");
    let mut tokens = std::fs::read_to_string(&path)?;
    if !tokens.is_empty() && !tokens.ends_with('\n') {
        tokens.push('\n');
    }
    tokens.push_str(&token_line(
        token,
        BREAK_GLASS_PRINCIPAL,
        crate::server::Role::Reader,
        &scope,
    ));
    tokens.push('\n');
    crate::fsutil::replace_durable(&path, tokens.as_bytes(), 0o600)?;
    Ok(())
}

/// Sends one request and returns its status and body: the demo shows the
/// answer's status and code as the API sends them, which the client turns
/// into errors.
fn send(
    runtime: &tokio::runtime::Runtime,
    request: reqwest::RequestBuilder,
) -> anyhow::Result<(u16, Bytes)> {
    runtime.block_on(async {
        let answer = request.send().await?;
        let status = answer.status().as_u16();
        Ok((status, answer.bytes().await?))
    })
}

/// The `code` and `shred_position` of an error answer.
fn refusal(body: &[u8]) -> (String, Option<u64>) {
    match serde_json::from_slice::<crate::api::ErrorBody>(body) {
        Ok(error) => (error.error.code, error.error.shred_position),
        Err(_) => (String::from_utf8_lossy(body).into_owned(), None),
    }
}

/// The break-glass step: the clinician (scope patient-c) is refused
/// patient-a's stream, opens break-glass with a reason and reads the stream
/// byte for byte under the grant. True when all three happened.
fn break_glass(
    runtime: &tokio::runtime::Runtime,
    http: &reqwest::Client,
    api: &str,
    token: &str,
    appended: &[(u64, u64, String)],
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let stream = PATIENTS[0].0;
    let read = || {
        http.get(format!("{api}/v1/streams/{stream}/events?from=0&max=1000"))
            .bearer_auth(token)
    };
    let (status, body) = send(runtime, read())?;
    let (code, _) = refusal(&body);
    let refused = status == 403 && code == crate::api::code::SCOPE_DENIED;
    writeln!(
        out,
        "   {BREAK_GLASS_PRINCIPAL} (reader, streams={}) reads stream {stream}: {status} {code}: {}",
        PATIENTS[2].0,
        ok(refused)
    )?;
    let request = crate::api::BreakGlassRequest {
        reason: "emergency department: patient unconscious (demo)".to_string(),
        duration_s: Some(BREAK_GLASS_DEMO_SECONDS),
    };
    let (status, body) = send(
        runtime,
        http.post(format!("{api}/v1/streams/{stream}/break-glass"))
            .bearer_auth(token)
            .json(&request),
    )?;
    if status != 200 {
        let (code, _) = refusal(&body);
        writeln!(out, "   break-glass answered {status} {code}: FAILED")?;
        return Ok(false);
    }
    let grant: crate::api::BreakGlassAnswer = serde_json::from_slice(&body)?;
    writeln!(
        out,
        "   POST /v1/streams/{stream}/break-glass reason {:?}: opened for {} until {} ns ({BREAK_GLASS_DEMO_SECONDS} s)",
        request.reason, grant.principal, grant.expires_ns
    )?;
    let (status, body) = send(runtime, read())?;
    if status != 200 {
        let (code, _) = refusal(&body);
        writeln!(
            out,
            "   read under the grant answered {status} {code}: FAILED"
        )?;
        return Ok(false);
    }
    let page: crate::api::StreamEvents = serde_json::from_slice(&body)?;
    let expected: Vec<&(u64, u64, String)> =
        appended.iter().filter(|(s, _, _)| *s == stream).collect();
    let mut identical = 0usize;
    for event in &page.events {
        let payload = base64::engine::general_purpose::STANDARD.decode(&event.base64)?;
        let original = expected.iter().find(|(_, o, _)| *o == event.offset);
        if original.is_some_and(|(_, _, e)| e.as_bytes() == payload.as_slice()) {
            identical += 1;
        }
    }
    let read_all = identical == expected.len() && page.events.len() == expected.len();
    writeln!(
        out,
        "   read under the grant: 200, {identical} of {} events identical: {}",
        expected.len(),
        ok(read_all)
    )?;
    Ok(refused && read_all)
}

/// The shred step: writes [`SHRED_PATIENT`]'s stream, shreds it as the
/// privacy officer, and reads it back. The shred's position when the read
/// answered 410 `shredded` naming it; None otherwise.
fn shred(
    runtime: &tokio::runtime::Runtime,
    writer: &Client,
    privacy: &Client,
    http: &reqwest::Client,
    api: &str,
    out: &mut dyn Write,
) -> anyhow::Result<Option<u64>> {
    use vellum_compliance::custody::CustodyAction;
    let (stream, name) = SHRED_PATIENT;
    let events = (0..SHRED_EVENTS)
        .map(|round| Bytes::from(sample_event(name, round)))
        .collect();
    let receipt = runtime.block_on(writer.append(stream, events, None))?;
    writeln!(
        out,
        "   {SHRED_EVENTS} events on stream {stream} at log positions {} to {}",
        receipt.first_position,
        receipt.first_position + SHRED_EVENTS - 1
    )?;
    let request = crate::api::CustodyRequest {
        reason: "patient's erasure request, retention floor passed (demo)".to_string(),
        retain_until_ms: None,
    };
    let answer = runtime.block_on(privacy.custody(stream, CustodyAction::Shred, &request))?;
    writeln!(
        out,
        "   vellum shred --stream {stream} --reason {:?}: committed at log position {} (op {}); data keys destroyed here: {}",
        request.reason, answer.position, answer.op, answer.keys_destroyed
    )?;
    let (status, body) = send(
        runtime,
        http.get(format!("{api}/v1/streams/{stream}/events?from=0&max=1000"))
            .bearer_auth(&writer.config().token),
    )?;
    let (code, position) = refusal(&body);
    let refused =
        status == 410 && code == crate::api::code::SHREDDED && position == Some(answer.position);
    writeln!(
        out,
        "   read of stream {stream}: {status} {code}, shred_position {}: {}",
        position.map_or("none".to_string(), |p| p.to_string()),
        ok(refused)
    )?;
    Ok(refused.then_some(answer.position))
}

/// Exports patient-a's stream as a bundle into `dir` and verifies it offline.
fn export_and_verify(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    dir: &Path,
    policy: &Policy,
) -> anyhow::Result<bool> {
    let request = crate::api::ExportEventsRequest {
        stream: PATIENTS[0].0,
        from: 0,
        to: 2 * EVENTS_PER_PATIENT + 1,
        purpose: Some("patient access request (demo)".to_string()),
    };
    let bundle = runtime.block_on(client.export_events(&request))?;
    std::fs::create_dir_all(dir)?;
    for file in &bundle.files {
        anyhow::ensure!(
            !file.name.contains('/') && !file.name.contains(".."),
            "unexpected bundle file name {:?}",
            file.name
        );
        let bytes = base64::engine::general_purpose::STANDARD.decode(&file.base64)?;
        crate::fsutil::write_durable(&dir.join(&file.name), &bytes, 0o600)?;
    }
    Ok(vellum_compliance::bundle::verify_bundle(dir, policy).passed)
}

/// Appends one event per patient per round through `persist_blocking`.
fn append_rounds(
    persister: &ClientPersister,
    first_round: u64,
) -> anyhow::Result<Vec<(u64, u64, String)>> {
    let mut appended = Vec::new();
    for round in first_round..first_round + EVENTS_PER_PATIENT {
        for (stream, name) in PATIENTS {
            let event = sample_event(name, round);
            let offset =
                persister.persist_blocking(StreamId(stream), vec![Bytes::from(event.clone())])?;
            appended.push((stream, offset.0 - 1, event));
        }
    }
    Ok(appended)
}

fn read_back(
    runtime: &tokio::runtime::Runtime,
    client: &Client,
    appended: &[(u64, u64, String)],
) -> anyhow::Result<u64> {
    let mut identical = 0u64;
    for (stream, _) in PATIENTS {
        let page = runtime.block_on(client.read_stream(stream, 0, 1000))?;
        for event in page.events {
            let payload = base64::engine::general_purpose::STANDARD.decode(&event.base64)?;
            let original = appended
                .iter()
                .find(|(s, o, _)| *s == stream && *o == event.offset);
            anyhow::ensure!(
                original.is_some_and(|(_, _, e)| e.as_bytes() == payload.as_slice()),
                "stream {stream} offset {} did not read back identical",
                event.offset
            );
            identical += 1;
        }
    }
    Ok(identical)
}

fn check_consistency(
    first: &crate::api::CertificateAnswer,
    answer: &crate::api::ConsistencyAnswer,
    policy: &Policy,
) -> bool {
    let (Ok(old), Ok(new)) = (
        Certificate::parse(&first.certificate),
        Certificate::parse(&answer.certificate),
    ) else {
        return false;
    };
    let hashes: Option<Vec<vellum_audit::hash::Hash>> = answer
        .hashes
        .iter()
        .map(|h| vellum_audit::hash::from_hex(h))
        .collect();
    let Some(hashes) = hashes else {
        return false;
    };
    let proof = vellum_audit::proof::ConsistencyProof {
        old_size: answer.from,
        new_size: answer.to,
        hashes,
        checkpoint: new,
    };
    old.verify(policy).is_ok() && proof.verify(&old.checkpoint.root, policy).is_ok()
}

/// Verifies every replica's data directory; returns (all passed, all on
/// one root, tree size).
fn verify_replicas(
    cluster: &LocalCluster,
    policy: &Policy,
    out: &mut dyn Write,
) -> anyhow::Result<(bool, bool, u64)> {
    let mut passed = true;
    let mut roots = std::collections::BTreeSet::new();
    let mut size = 0;
    for i in 0..cluster.replica_count() {
        let dir = cluster.data_dir(i);
        let report = crate::verify::verify_data_dir(&dir, policy, None, &mut |_| {});
        writeln!(
            out,
            "   replica {i}: {}",
            if report.passed {
                "verify passed"
            } else {
                "verify FAILED"
            }
        )?;
        if !report.passed {
            for line in report.to_text().lines() {
                writeln!(out, "     {line}")?;
            }
        }
        passed &= report.passed;
        let mut options = crate::log::LogOptions {
            without_index: true,
            lock_wait_ms: 10_000,
            ..Default::default()
        };
        options.storage.read_only = true;
        let (log, _) = crate::log::LocalLog::open(&dir, options)?;
        if let Some(certificate) = log.latest_certificate() {
            size = size.max(certificate.checkpoint.size);
            roots.insert((certificate.checkpoint.size, certificate.checkpoint.root));
        }
    }
    Ok((passed, roots.len() == 1, size))
}

fn ok(passed: bool) -> &'static str {
    if passed { "ok" } else { "FAILED" }
}

/// A small FHIR-like observation; synthetic, no real person.
fn sample_event(patient: &str, round: u64) -> String {
    let codes = [
        ("8867-4", "Heart rate", "/min", 72),
        ("8310-5", "Body temperature", "Cel", 37),
        ("29463-7", "Body weight", "kg", 70),
        ("8480-6", "Systolic blood pressure", "mm[Hg]", 120),
    ];
    let (code, display, unit, base) = codes[usize::try_from(round % 4).unwrap_or(0)];
    serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "subject": {"reference": format!("Patient/{patient}")},
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "valueQuantity": {"value": base + round, "unit": unit},
    })
    .to_string()
}
