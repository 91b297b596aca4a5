//! `meshage certs`: a small certificate authority for operators without a PKI, as
//! `consul tls` has: `certs ca` makes the CA, `certs node` a certificate for one node signed by
//! it, valid for the hosts and addresses given. Keys are ECDSA P-256, written readable by
//! their owner only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// The CA's name. `certs node` rebuilds the issuer from it and the CA's key, then checks that
/// the new certificate verifies against `ca.pem`.
const CA_NAME: &str = "meshage CA";

#[derive(Subcommand)]
pub(crate) enum CertsCommand {
    /// Make a certificate authority: writes DIR/ca.pem and DIR/ca-key.pem.
    Ca {
        /// Directory to write to (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 1825)]
        days: u32,
    },
    /// Make a node's certificate signed by the CA: writes DIR/NAME.pem and DIR/NAME-key.pem.
    Node(NodeCertArgs),
}

#[derive(Args)]
pub(crate) struct NodeCertArgs {
    /// Directory of the CA (`ca.pem`, `ca-key.pem`) made by `meshage certs ca`.
    #[arg(long, value_name = "DIR")]
    ca: PathBuf,
    /// The node's name: the certificate's common name and its files' names.
    #[arg(long)]
    name: String,
    /// A host name or IP address the node is reached at (repeatable); `localhost` and
    /// 127.0.0.1 are always included.
    #[arg(long = "host", value_name = "HOST")]
    hosts: Vec<String>,
    /// Directory to write to (made if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

pub(crate) fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::Ca { out, days } => {
            let (cert, key) = make_ca(days)?;
            std::fs::create_dir_all(&out)
                .with_context(|| format!("cannot make {}", out.display()))?;
            write(&out.join("ca.pem"), &cert, false)?;
            write(&out.join("ca-key.pem"), &key, true)?;
            println!(
                "wrote {} and {}",
                out.join("ca.pem").display(),
                out.join("ca-key.pem").display()
            );
        }
        CertsCommand::Node(args) => {
            if args.name.is_empty() || args.name.contains(['/', '\0']) || args.name.starts_with('.')
            {
                bail!("--name must be a plain file name");
            }
            let read = |file: &str| {
                let path = args.ca.join(file);
                std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))
            };
            let (ca_cert, ca_key) = (read("ca.pem")?, read("ca-key.pem")?);
            let (cert, key) = make_node(&ca_cert, &ca_key, &args.name, &args.hosts, args.days)?;
            std::fs::create_dir_all(&args.out)
                .with_context(|| format!("cannot make {}", args.out.display()))?;
            let cert_path = args.out.join(format!("{}.pem", args.name));
            let key_path = args.out.join(format!("{}-key.pem", args.name));
            write(&cert_path, &cert, false)?;
            write(&key_path, &key, true)?;
            println!("wrote {} and {}", cert_path.display(), key_path.display());
        }
    }
    Ok(())
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that run behind.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn ca_params(days: u32) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, days);
    params
}

/// A new CA: its certificate and key, as PEM.
fn make_ca(days: u32) -> Result<(String, String)> {
    let key = KeyPair::generate().context("cannot make a key")?;
    let cert = ca_params(days)
        .self_signed(&key)
        .context("cannot make the CA certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A node certificate signed by the CA, for server and client use (peers present it both
/// ways), and its key, as PEM. Checked against the CA's certificate before it is returned.
fn make_node(
    ca_cert: &str,
    ca_key: &str,
    name: &str,
    hosts: &[String],
    days: u32,
) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(ca_key).context("the CA key is not a PEM private key")?;
    let issuer = Issuer::new(ca_params(days), ca_key);
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into()];
    for host in hosts {
        if !names.contains(host) {
            names.push(host.clone());
        }
    }
    let mut params = CertificateParams::new(names.clone())
        .with_context(|| format!("a --host is not a valid name or address: {names:?}"))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let key = KeyPair::generate().context("cannot make a key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("cannot sign the node certificate")?;
    verify(ca_cert, cert.der(), &names[0])?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Checks that `cert` verifies against the CA certificate for `host`, as a peer will check it.
fn verify(ca_cert: &str, cert: &CertificateDer<'_>, host: &str) -> Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_cert.as_bytes()) {
        roots
            .add(ca.context("the CA certificate is not PEM")?)
            .context("the CA certificate is not usable")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .context("the CA certificate is not usable")?;
    let server = ServerName::try_from(host.to_owned()).context("not a host name")?;
    verifier
        .verify_server_cert(cert, &[], &server, &[], UnixTime::now())
        .map(|_| ())
        .context("the new certificate does not verify against ca.pem: was the CA made by `meshage certs ca`, with this ca-key.pem?")
}

/// Writes `text` to a new or replaced file; `secret` files are readable by their owner only.
fn write(path: &Path, text: &str, secret: bool) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    if secret {
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_verifies_against_its_ca_and_not_another() {
        let (ca, ca_key) = make_ca(30).unwrap();
        let (cert, _key) = make_node(
            &ca,
            &ca_key,
            "n1",
            &["10.0.0.7".into(), "node1.example".into()],
            10,
        )
        .unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        for host in ["localhost", "127.0.0.1", "10.0.0.7", "node1.example"] {
            verify(&ca, &der, host).unwrap();
        }
        assert!(verify(&ca, &der, "other.example").is_err());
        let (other_ca, _) = make_ca(30).unwrap();
        assert!(verify(&other_ca, &der, "localhost").is_err());
        let (_, other_key) = make_ca(30).unwrap();
        assert!(
            make_node(&ca, &other_key, "n2", &[], 10).is_err(),
            "a key that is not the CA's"
        );
    }
}
