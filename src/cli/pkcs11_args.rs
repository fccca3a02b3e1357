//! The `--kek-pkcs11-*` flags of `vellum init` and `vellum demo` (where a
//! PKCS#11 KEK lives) and the `--signing-pkcs11-*` flags of `vellum init`
//! (where the replica's signing key lives). Wiring only; the keys
//! themselves are `crypto::Pkcs11Kek` and `crypto::Pkcs11Signer`.

use std::path::PathBuf;

use clap::Args;

use crate::crypto::{KekConfig, Pkcs11Config, SigningConfig};

/// Where a PKCS#11 KEK lives (all recorded in vellum.json, except the PIN).
#[derive(Debug, Args)]
pub struct Pkcs11Args {
    /// Keep the key-encryption key in a PKCS#11 token: the vendor's module
    /// (e.g. /usr/lib/softhsm/libsofthsm2.so). Without it, a KEK file is made.
    #[arg(
        long,
        value_name = "PATH",
        requires_all = ["kek_pkcs11_token", "kek_pkcs11_key"]
    )]
    kek_pkcs11_module: Option<PathBuf>,
    /// The token's label.
    #[arg(long, value_name = "LABEL", requires = "kek_pkcs11_module")]
    kek_pkcs11_token: Option<String>,
    /// The AES key's label on the token (generated there, never extractable,
    /// if no key carries it yet).
    #[arg(long, value_name = "LABEL", requires = "kek_pkcs11_module")]
    kek_pkcs11_key: Option<String>,
    /// A 0600 file holding the token's user PIN (one line).
    #[arg(
        long,
        value_name = "PATH",
        requires = "kek_pkcs11_module",
        conflicts_with = "kek_pkcs11_pin_env"
    )]
    kek_pkcs11_pin_file: Option<PathBuf>,
    /// The name of an environment variable holding the user PIN.
    #[arg(long, value_name = "NAME", requires = "kek_pkcs11_module")]
    kek_pkcs11_pin_env: Option<String>,
}

impl Pkcs11Args {
    /// The KEK config these flags name, or `None` without `--kek-pkcs11-module`.
    pub fn config(self) -> anyhow::Result<Option<KekConfig>> {
        let config = token_config(
            "kek",
            self.kek_pkcs11_module,
            self.kek_pkcs11_token,
            self.kek_pkcs11_key,
            self.kek_pkcs11_pin_file,
            self.kek_pkcs11_pin_env,
        )?;
        Ok(config.map(KekConfig::Pkcs11))
    }
}

/// Where a PKCS#11 signing key lives (all recorded in vellum.json, except
/// the PIN).
#[derive(Debug, Args)]
pub struct SigningPkcs11Args {
    /// Keep the replica's Ed25519 signing key in a PKCS#11 token: the
    /// vendor's module. Without it, a signing key file is made.
    #[arg(
        long,
        value_name = "PATH",
        requires_all = ["signing_pkcs11_token", "signing_pkcs11_key"]
    )]
    signing_pkcs11_module: Option<PathBuf>,
    /// The token's label.
    #[arg(long, value_name = "LABEL", requires = "signing_pkcs11_module")]
    signing_pkcs11_token: Option<String>,
    /// The Ed25519 key pair's label on the token (generated there, never
    /// extractable, if no key carries it yet).
    #[arg(long, value_name = "LABEL", requires = "signing_pkcs11_module")]
    signing_pkcs11_key: Option<String>,
    /// A 0600 file holding the token's user PIN (one line).
    #[arg(
        long,
        value_name = "PATH",
        requires = "signing_pkcs11_module",
        conflicts_with = "signing_pkcs11_pin_env"
    )]
    signing_pkcs11_pin_file: Option<PathBuf>,
    /// The name of an environment variable holding the user PIN.
    #[arg(long, value_name = "NAME", requires = "signing_pkcs11_module")]
    signing_pkcs11_pin_env: Option<String>,
}

impl SigningPkcs11Args {
    /// The signing-key config these flags name, or `None` without
    /// `--signing-pkcs11-module`.
    pub fn config(self) -> anyhow::Result<Option<SigningConfig>> {
        let config = token_config(
            "signing",
            self.signing_pkcs11_module,
            self.signing_pkcs11_token,
            self.signing_pkcs11_key,
            self.signing_pkcs11_pin_file,
            self.signing_pkcs11_pin_env,
        )?;
        Ok(config.map(SigningConfig::Pkcs11))
    }
}

/// The token config of one `--<prefix>-pkcs11-*` flag group, or `None`
/// without its module flag.
fn token_config(
    prefix: &str,
    module: Option<PathBuf>,
    token_label: Option<String>,
    key_label: Option<String>,
    pin_file: Option<PathBuf>,
    pin_env: Option<String>,
) -> anyhow::Result<Option<Pkcs11Config>> {
    let Some(module) = module else {
        return Ok(None);
    };
    if pin_file.is_none() && pin_env.is_none() {
        anyhow::bail!(
            "--{prefix}-pkcs11-module needs the user pin's source: --{prefix}-pkcs11-pin-file or --{prefix}-pkcs11-pin-env"
        );
    }
    // vellum.json is read later from any working directory: paths are
    // recorded absolute. A bare module name is left to the loader's
    // search path, as dlopen treats it.
    let module = match module.components().count() > 1 {
        true => std::path::absolute(&module)?,
        false => module,
    };
    let pin_file = pin_file
        .map(|path| std::path::absolute(&path))
        .transpose()?;
    Ok(Some(Pkcs11Config {
        module,
        token_label: token_label.unwrap_or_default(),
        key_label: key_label.unwrap_or_default(),
        pin_file,
        pin_env,
    }))
}
