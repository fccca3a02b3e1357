//! Rebuild when a migration changes: `sqlx::migrate!` embeds them at compile
//! time. Also records the git commit the binary is built from (when built
//! from a git checkout) as `VELLUM_GIT_COMMIT`, so verification reports can
//! name exactly which code produced them.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=VELLUM_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a branch switch) and the file
    // of the branch it names (a commit), where they exist.
    if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
        rerun_if_exists(PathBuf::from(head));
    }
    if let (Some(branch), Some(common)) = (
        git(&["symbolic-ref", "-q", "HEAD"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) {
        rerun_if_exists(PathBuf::from(common).join(branch));
    }
}

/// The trimmed stdout of a successful git command.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn rerun_if_exists(path: PathBuf) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
