//! The cluster secret on the command line: `meshage keygen`, and `--cluster-key` or
//! `--keyring` into the node's live [`Keys`].

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use meshage::{ClusterKey, Keyring, Keys};
use tracing::info;

use crate::reload;

/// The cluster secret of `meshage node`.
#[derive(Args)]
pub(crate) struct KeyArgs {
    /// The cluster secret (base64, from `meshage keygen`): gossip is sealed with it and peers
    /// talk over mutual TLS. Prefer the environment variable or --keyring: a command line is
    /// visible to every user of the machine.
    #[arg(
        long,
        env = "MESHAGE_CLUSTER_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    cluster_key: Option<String>,
    /// A file of cluster secrets, one a line (`#` comments): the first seals, every one opens.
    /// Reread when it changes and on SIGHUP, so keys rotate without a restart.
    #[arg(
        long,
        env = "MESHAGE_KEYRING",
        value_name = "FILE",
        conflicts_with = "cluster_key"
    )]
    keyring: Option<PathBuf>,
}

impl KeyArgs {
    /// The node's live keys, if it has any; a keyring file is watched from now on.
    pub(crate) fn load(&self) -> Result<Option<Keys>> {
        if let Some(key) = self.cluster_key.as_deref().filter(|k| !k.trim().is_empty()) {
            let key = ClusterKey::parse(key).context("--cluster-key (MESHAGE_CLUSTER_KEY)")?;
            info!(key = %key.id(), "gossip sealed and peers on mutual TLS with the cluster key");
            return Ok(Some(Keys::new(Keyring::new(key))));
        }
        let Some(path) = &self.keyring else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the keyring {}", path.display()))?;
        let keyring = match Keyring::parse(&text) {
            Ok(keyring) => keyring,
            Err(e) => bail!("keyring {}: {e}", path.display()),
        };
        info!(keys = ?keyring.ids(), "gossip sealed and peers on mutual TLS with the keyring's first key");
        let keys = Keys::new(keyring);
        let live = keys.clone();
        reload::watch(path.clone(), "the keyring", move |text| {
            let keyring = Keyring::parse(text).map_err(|e| e.to_string())?;
            let ids = keyring.ids();
            let changed = live.replace(keyring);
            if changed {
                info!(keys = ?ids, "keyring now (the first seals)");
            }
            Ok(changed)
        });
        Ok(Some(keys))
    }
}

/// `meshage keygen`: prints a new cluster secret.
pub(crate) fn keygen() {
    println!("{}", &*ClusterKey::generate().to_base64());
}
