//! The cluster's certificate authority and the mutual-TLS configuration of replication links.
//!
//! `rill cluster init-certs` calls [`init_certs`]: one self-signed cluster CA and, per node, a
//! certificate signed by it whose DNS name is [`crate::types::node_server_name`]. A node loads
//! its files with [`TlsIdentity::load`] and builds both QUIC roles from them:
//! - as a client it trusts only the cluster CA and checks the server's name, so a dial to node 7
//!   succeeds only against node 7's certificate;
//! - as a server it requires a client certificate issued by the cluster CA. Any cluster member
//!   may connect; which core it is comes from the stream preamble (see `quic`).
//!
//! A peer whose certificate comes from another CA fails the handshake on both sides.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::types::{node_server_name, NodeId};
use crate::TransportError;

/// ALPN protocol id of replication links; a peer speaking anything else is refused.
pub const ALPN_REPLICATION: &[u8] = b"rill-repl/1";

/// Files written by [`init_certs`].
#[derive(Clone, Debug)]
pub struct CertFiles {
    /// The CA certificate (`ca.pem`), distributed to every node.
    pub ca_cert: PathBuf,
    /// The CA private key (`ca.key.pem`); keep it off the nodes.
    pub ca_key: PathBuf,
    /// Per node: (`node-<id>.pem`, `node-<id>.key.pem`).
    pub nodes: Vec<(NodeId, PathBuf, PathBuf)>,
}

/// Paths of a node's certificate files inside `dir`.
pub fn node_cert_paths(dir: &Path, node: NodeId) -> (PathBuf, PathBuf) {
    (dir.join(format!("node-{}.pem", node.0)), dir.join(format!("node-{}.key.pem", node.0)))
}

/// Writes a new cluster CA and one certificate per node into `out_dir` (created if missing).
/// Private keys are written with mode 0600.
pub fn init_certs(out_dir: &Path, nodes: &[NodeId]) -> Result<CertFiles, TransportError> {
    let io = |operation: &'static str, path: &Path| {
        let address = path.display().to_string();
        move |source| TransportError::Io { operation, address, source }
    };
    fs::create_dir_all(out_dir).map_err(io("create certificate directory", out_dir))?;
    let (ca_cert, ca_key) = generate_ca("rill cluster CA")?;
    let files = CertFiles {
        ca_cert: out_dir.join("ca.pem"),
        ca_key: out_dir.join("ca.key.pem"),
        nodes: Vec::with_capacity(nodes.len()),
    };
    fs::write(&files.ca_cert, ca_cert.pem()).map_err(io("write CA certificate", &files.ca_cert))?;
    write_private(&files.ca_key, &ca_key.serialize_pem())?;
    let mut files = files;
    for &node in nodes {
        let (cert, key) = generate_node(node, &ca_cert, &ca_key)?;
        let (cert_path, key_path) = node_cert_paths(out_dir, node);
        fs::write(&cert_path, cert.pem()).map_err(io("write node certificate", &cert_path))?;
        write_private(&key_path, &key.serialize_pem())?;
        files.nodes.push((node, cert_path, key_path));
    }
    Ok(files)
}

fn write_private(path: &Path, pem: &str) -> Result<(), TransportError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| TransportError::Io {
        operation: "write private key",
        address: path.display().to_string(),
        source,
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(pem.as_bytes()).map_err(io)
}

fn rcgen_error(error: rcgen::Error) -> TransportError {
    TransportError::Config { reason: format!("certificate generation: {error}") }
}

/// A new self-signed CA (exposed for tests that need a second, foreign CA).
pub fn generate_ca(common_name: &str) -> Result<(rcgen::Certificate, KeyPair), TransportError> {
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(rcgen_error)?;
    Ok((cert, key))
}

/// A node certificate signed by `ca`, usable as both TLS client and server.
pub fn generate_node(
    node: NodeId,
    ca_cert: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> Result<(rcgen::Certificate, KeyPair), TransportError> {
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let mut params = CertificateParams::new(vec![node_server_name(node)]).map_err(rcgen_error)?;
    params.distinguished_name.push(DnType::CommonName, node_server_name(node));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, ca_cert, ca_key).map_err(rcgen_error)?;
    Ok((cert, key))
}

/// A node's TLS identity: the cluster CA, its certificate and its key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The cluster CA certificate.
    pub ca: CertificateDer<'static>,
    /// This node's certificate.
    pub cert: CertificateDer<'static>,
    /// This node's private key.
    pub key: PrivateKeyDer<'static>,
}

impl TlsIdentity {
    /// Loads `ca.pem`, `node-<id>.pem` and `node-<id>.key.pem` from `dir`.
    pub fn load(dir: &Path, node: NodeId) -> Result<Self, TransportError> {
        let (cert_path, key_path) = node_cert_paths(dir, node);
        let pem_error = |path: &Path| {
            let path = path.display().to_string();
            move |e| TransportError::Config { reason: format!("reading {path}: {e}") }
        };
        let ca_path = dir.join("ca.pem");
        Ok(Self {
            ca: CertificateDer::from_pem_file(&ca_path).map_err(pem_error(&ca_path))?,
            cert: CertificateDer::from_pem_file(&cert_path).map_err(pem_error(&cert_path))?,
            key: PrivateKeyDer::from_pem_file(&key_path).map_err(pem_error(&key_path))?,
        })
    }

    /// An identity from in-memory rcgen objects (tests, benchmarks).
    pub fn from_generated(ca: &rcgen::Certificate, cert: &rcgen::Certificate, key: &KeyPair) -> Self {
        Self {
            ca: ca.der().clone(),
            cert: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).expect("rcgen emits PKCS#8"),
        }
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TransportError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls_error)?;
        Ok(roots)
    }

    /// The QUIC server side: requires a client certificate from the cluster CA.
    pub fn quic_server_config(&self) -> Result<quinn_proto::ServerConfig, TransportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            provider.clone(),
        )
        .build()
        .map_err(|e| TransportError::Config { reason: format!("client verifier: {e}") })?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(tls_error)?;
        tls.alpn_protocols = vec![ALPN_REPLICATION.to_vec()];
        let quic = quinn_proto::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TransportError::Config { reason: format!("QUIC server TLS: {e}") })?;
        Ok(quinn_proto::ServerConfig::with_crypto(Arc::new(quic)))
    }

    /// The QUIC client side: trusts only the cluster CA and presents this node's certificate.
    pub fn quic_client_config(&self) -> Result<quinn_proto::ClientConfig, TransportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(tls_error)?;
        tls.alpn_protocols = vec![ALPN_REPLICATION.to_vec()];
        let quic = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TransportError::Config { reason: format!("QUIC client TLS: {e}") })?;
        Ok(quinn_proto::ClientConfig::new(Arc::new(quic)))
    }
}

/// Whether `certificate` carries node `node`'s DNS name ([`node_server_name`]). Checks the name
/// only: the handshake has already checked the chain against the cluster CA.
pub fn certificate_names_node(certificate: &CertificateDer<'_>, node: NodeId) -> bool {
    let Ok(parsed) = rustls::server::ParsedCertificate::try_from(certificate) else { return false };
    let Ok(name) = rustls::pki_types::ServerName::try_from(node_server_name(node)) else { return false };
    rustls::client::verify_server_name(&parsed, &name).is_ok()
}

fn tls_error(error: rustls::Error) -> TransportError {
    TransportError::Config { reason: format!("TLS: {error}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_certs_writes_loadable_files_with_private_keys_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let files = init_certs(dir.path(), &[NodeId(1), NodeId(2)]).unwrap();
        assert_eq!(files.nodes.len(), 2);
        for node in [NodeId(1), NodeId(2)] {
            let identity = TlsIdentity::load(dir.path(), node).unwrap();
            identity.quic_server_config().unwrap();
            identity.quic_client_config().unwrap();
            let (_, key_path) = node_cert_paths(dir.path(), node);
            let mode = fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mode = fs::metadata(&files.ca_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn certificate_names_only_its_own_node() {
        let (ca, ca_key) = generate_ca("test CA").unwrap();
        let (cert, _) = generate_node(NodeId(7), &ca, &ca_key).unwrap();
        assert!(certificate_names_node(cert.der(), NodeId(7)));
        assert!(!certificate_names_node(cert.der(), NodeId(1)));
        assert!(!certificate_names_node(cert.der(), NodeId(77)));
        assert!(!certificate_names_node(&CertificateDer::from(vec![0u8; 8]), NodeId(7)));
    }

    #[test]
    fn load_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(TlsIdentity::load(dir.path(), NodeId(9)), Err(TransportError::Config { .. })));
    }
}
