//! The `--kek-pkcs11-*` flags of `vellum init` and `vellum demo`: where a
//! PKCS#11 KEK lives. Wiring only; the KEK itself is `crypto::Pkcs11Kek`.

use std::path::PathBuf;

use clap::Args;

use crate::crypto::{KekConfig, Pkcs11Config};

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
        let Some(module) = self.kek_pkcs11_module else {
            return Ok(None);
        };
        if self.kek_pkcs11_pin_file.is_none() && self.kek_pkcs11_pin_env.is_none() {
            anyhow::bail!(
                "--kek-pkcs11-module needs the user pin's source: --kek-pkcs11-pin-file or --kek-pkcs11-pin-env"
            );
        }
        // vellum.json is read later from any working directory: paths are
        // recorded absolute. A bare module name is left to the loader's
        // search path, as dlopen treats it.
        let module = match module.components().count() > 1 {
            true => std::path::absolute(&module)?,
            false => module,
        };
        let pin_file = self
            .kek_pkcs11_pin_file
            .map(|path| std::path::absolute(&path))
            .transpose()?;
        Ok(Some(KekConfig::Pkcs11(Pkcs11Config {
            module,
            token_label: self.kek_pkcs11_token.unwrap_or_default(),
            key_label: self.kek_pkcs11_key.unwrap_or_default(),
            pin_file,
            pin_env: self.kek_pkcs11_pin_env,
        })))
    }
}
