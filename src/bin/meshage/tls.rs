//! The operator's certificates on the command line: `--tls-cert`, `--tls-key` and `--tls-ca`
//! into the node's [`OperatorTls`], reread on SIGHUP too (the node itself polls the files).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use meshage::OperatorTls;

/// The operator's TLS of `meshage node`.
#[derive(Args)]
pub(crate) struct TlsArgs {
    /// This node's certificate chain (PEM, its own certificate first), from your CA (`meshage
    /// certs node`): the node then serves HTTPS only, advertises `https://`, and takes as peers
    /// whoever holds a certificate of --tls-ca. Reread when it changes.
    #[arg(long, env = "MESHAGE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM). Reread when it changes.
    #[arg(long, env = "MESHAGE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The CA certificates (PEM) peers' certificates must chain to. Reread when it changes.
    #[arg(long, env = "MESHAGE_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The node's TLS, if all three files are given; none of them is fine, some is an error.
    pub(crate) fn load(&self) -> Result<Option<OperatorTls>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                let tls = OperatorTls::from_files(cert, key, ca)?;
                let reloaded = tls.clone();
                crate::reload::on_hangup("the TLS certificates", move || {
                    reloaded.reload().map_err(|e| e.to_string())
                });
                Ok(Some(tls))
            }
            _ => bail!("--tls-cert, --tls-key and --tls-ca go together: give all three"),
        }
    }
}
