//! How a node gets into a secured etcd: TLS (the CA that signed etcd's certificate, and the
//! client certificate etcd asks for with `--client-cert-auth`) and a user with its password.
//! The files are read and checked once, when the configuration is made, so that a bad file is
//! a clear error at start and not a failed connection later.

use std::fmt;
use std::path::Path;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use zeroize::Zeroizing;

use crate::security::trust::{read_certificates, read_private_key, system_bundle};
use crate::security::{Secret, TlsError};

/// TLS to etcd: the endpoints are dialed as `https://`, etcd's certificate is verified against
/// the CA (the system's bundle when none is given), and the client certificate, if any, is
/// presented.
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM certificates of the CA; `None`: the system's bundle.
    ca: Option<Vec<u8>>,
    /// PEM certificate chain and private key.
    identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    /// The files, for `Debug`.
    files: String,
}

impl EtcdTls {
    /// Reads the CA file (`None`: trust the system's bundle) and the client certificate and
    /// key files (`None`: present none). Fails when a file cannot be read or does not hold
    /// what it should; the error names the file and never quotes the key.
    pub fn new(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<EtcdTls, TlsError> {
        let ca_pem = ca.map(read_certificates).transpose()?;
        let identity_pem = identity
            .map(|(cert, key)| {
                Ok::<_, TlsError>((read_certificates(cert)?, read_private_key(key)?))
            })
            .transpose()?;
        let files = format!(
            "ca: {}, client certificate: {}",
            ca.map_or("system".into(), |p| p.display().to_string()),
            identity.map_or("none".into(), |(cert, key)| format!(
                "{} (key {})",
                cert.display(),
                key.display()
            )),
        );
        Ok(EtcdTls {
            ca: ca_pem,
            identity: identity_pem,
            files,
        })
    }

    /// tonic's TLS settings. rustls with ring underneath: tonic builds its config with the
    /// process's default provider when one is installed, else with ring's.
    fn options(&self) -> Result<TlsOptions, TlsError> {
        let ca = match &self.ca {
            Some(pem) => pem.clone(),
            None => system_bundle()?.1,
        };
        let mut options = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &self.identity {
            options = options.identity(Identity::from_pem(cert, key.as_slice()));
        }
        Ok(options)
    }
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("EtcdTls").field(&self.files).finish()
    }
}

/// An etcd user (with `auth enable`): the node authenticates as it, and etcd-client takes a new
/// token when the old one expires (an etcd restart forgets its tokens).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EtcdCredentials {
    pub user: String,
    /// Shown as `***` by `Debug`; sent only to etcd's `Authenticate`.
    pub password: Secret,
}

impl EtcdCredentials {
    /// The etcd user `user` with its password.
    pub fn new(user: impl Into<String>, password: impl Into<Secret>) -> Self {
        EtcdCredentials {
            user: user.into(),
            password: password.into(),
        }
    }
}

/// The connection options for a config's TLS and credentials.
pub(super) fn secure(
    mut options: ConnectOptions,
    tls: Option<&EtcdTls>,
    credentials: Option<&EtcdCredentials>,
) -> Result<ConnectOptions, TlsError> {
    if let Some(tls) = tls {
        options = options.with_tls(tls.options()?);
    }
    if let Some(c) = credentials {
        options = options
            .with_user(c.user.clone(), c.password.expose())
            .with_auto_token_refresh(true);
    }
    Ok(options)
}
