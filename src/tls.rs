//! TLS listeners (rustls) and client-certificate identities.
//!
//! A listener with a `[listeners.tls]` table serves HTTPS with the configured chain and key. With a
//! client CA bundle it also verifies client certificates (required or optional); the identity method
//! `mtls` then maps a verified certificate's subject (its URI SAN, such as a SPIFFE id, its DNS SAN,
//! or its subject CN, as configured) to an apgate identity. A certificate from another CA fails the
//! handshake; a verified certificate whose subject no mapping names gets `AccessDenied`.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;

/// Which part of a client certificate names the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectSource {
    /// The first URI subject alternative name (e.g. `spiffe://example.org/ns/prod/sa/app`).
    UriSan,
    /// The first DNS subject alternative name.
    DnsSan,
    /// The subject's common name.
    CommonName,
}

impl SubjectSource {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "uri_san" => Some(Self::UriSan),
            "dns_san" => Some(Self::DnsSan),
            "common_name" => Some(Self::CommonName),
            _ => None,
        }
    }
}

/// A running HTTPS listener's acceptor and where its client identities come from.
#[derive(Clone)]
pub struct TlsListener {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub identity_from: SubjectSource,
    /// What client certificates are verified against (listeners with a client CA): kept to check
    /// the certificate of a connection opened under an earlier configuration again.
    pub client_verifier: Option<Arc<dyn ClientCertVerifier>>,
}

/// A TLS connection's verified client certificate chain (leaf first), and the subject it names
/// under the configuration it was last checked against. A reload that changes the trust applies
/// to open connections too: at their next request the chain is checked against the listener's
/// verifier as it now is.
#[derive(Debug)]
pub struct PeerCertificate {
    chain: Vec<CertificateDer<'static>>,
    /// (the state generation it was checked under, the subject; `None` when it no longer verifies).
    checked: std::sync::Mutex<(u64, Option<Arc<str>>)>,
}

impl PeerCertificate {
    /// A chain the handshake verified under state `generation`, naming `subject` (empty when it
    /// has no subject of the configured kind).
    pub fn new(chain: Vec<CertificateDer<'static>>, generation: u64, subject: Arc<str>) -> Self {
        Self {
            chain,
            checked: std::sync::Mutex::new((generation, Some(subject))),
        }
    }

    /// The subject under state `generation`, checking the chain again when the state changed
    /// since the last check; `None` when the listener no longer trusts it.
    pub fn subject(&self, generation: u64, listener: Option<&TlsListener>) -> Option<Arc<str>> {
        let mut checked = self.checked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if checked.0 != generation {
            let verified = listener.and_then(|l| {
                let verifier = l.client_verifier.as_ref()?;
                let (leaf, intermediates) = self.chain.split_first()?;
                verifier
                    .verify_client_cert(leaf, intermediates, UnixTime::now())
                    .ok()
                    .map(|_| Arc::<str>::from(client_subject(&self.chain, l.identity_from).unwrap_or_default()))
            });
            *checked = (generation, verified);
        }
        checked.1.clone()
    }
}

impl fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsListener")
            .field("identity_from", &self.identity_from)
            .field("client_verifier", &self.client_verifier.is_some())
            .finish_non_exhaustive()
    }
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

/// Loaded, parsed TLS material of one listener.
#[derive(Clone)]
pub struct TlsMaterial {
    pub chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    pub client_roots: Option<(Vec<CertificateDer<'static>>, ClientAuth)>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("chain_len", &self.chain.len())
            .field("key", &"[REDACTED]")
            .field(
                "client_auth",
                &self.client_roots.as_ref().map(|(roots, auth)| (roots.len(), auth)),
            )
            .finish()
    }
}

/// A TLS file could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

impl TlsMaterial {
    /// Reads PEM files: the certificate chain, its private key, and optionally a client CA bundle.
    pub fn load(chain: &Path, key: &Path, client_ca: Option<(&Path, ClientAuth)>) -> Result<Self, TlsError> {
        let certs = read_certs(chain)?;
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| TlsError(format!("{}: no usable private key: {e}", key.display())))?;
        let client_roots = match client_ca {
            Some((path, auth)) => Some((read_certs(path)?, auth)),
            None => None,
        };
        let material = Self {
            chain: certs,
            key: Arc::new(key),
            client_roots,
        };
        // Building the config now catches a key that does not match the certificate.
        material.server_config()?;
        Ok(material)
    }

    /// The verifier of client certificates, for listeners with a client CA bundle.
    pub fn client_verifier(&self) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
        let Some((roots, auth)) = &self.client_roots else {
            return Ok(None);
        };
        let mut store = RootCertStore::empty();
        for cert in roots {
            store
                .add(cert.clone())
                .map_err(|e| TlsError(format!("client CA bundle: {e}")))?;
        }
        let verifier = WebPkiClientVerifier::builder(Arc::new(store));
        let verifier = match auth {
            ClientAuth::Required => verifier,
            ClientAuth::Optional => verifier.allow_unauthenticated(),
        };
        let verifier = verifier
            .build()
            .map_err(|e| TlsError(format!("client CA bundle: {e}")))?;
        Ok(Some(verifier))
    }

    /// The rustls server configuration (HTTP/1.1 over TLS).
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let builder = ServerConfig::builder();
        let builder = match self.client_verifier()? {
            None => builder.with_no_client_auth(),
            Some(verifier) => builder.with_client_cert_verifier(verifier),
        };
        let mut config = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError(format!("certificate and key do not go together: {e}")))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!("{}: no certificates", path.display())));
    }
    Ok(certs)
}

/// The subject of a verified client certificate chain (the leaf first, then the intermediates the
/// client sent), as the listener is configured to read it; `None` when it is missing or ambiguous.
///
/// Unambiguous means exactly one: a leaf with two CNs, two URI SANs or two DNS SANs names no
/// identity (X.509 stacks disagree on which of several they take). And a CN is only taken when no
/// intermediate carries name constraints: constraints bind SANs, never the CN, so a constrained
/// intermediate could otherwise mint any CN (the roots' constraints are refused by `check`).
pub fn client_subject(chain: &[CertificateDer<'_>], source: SubjectSource) -> Option<String> {
    let (leaf, intermediates) = chain.split_first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let names: Vec<String> = match source {
        SubjectSource::CommonName => {
            if intermediates.iter().any(|c| has_name_constraints(c.as_ref())) {
                return None;
            }
            parsed
                .subject()
                .iter_common_name()
                .map(|cn| cn.as_str().map(str::to_owned))
                .collect::<Result<_, _>>()
                .ok()?
        }
        SubjectSource::UriSan | SubjectSource::DnsSan => {
            let san = parsed.subject_alternative_name().ok().flatten()?;
            san.value
                .general_names
                .iter()
                .filter_map(|name| match (name, source) {
                    (GeneralName::URI(uri), SubjectSource::UriSan) => Some((*uri).to_owned()),
                    (GeneralName::DNSName(dns), SubjectSource::DnsSan) => Some((*dns).to_owned()),
                    _ => None,
                })
                .collect()
        }
    };
    match <[String; 1]>::try_from(names) {
        Ok([name]) => Some(name),
        Err(_) => None,
    }
}

/// Whether a certificate (DER) carries the name constraints extension.
pub fn has_name_constraints(der: &[u8]) -> bool {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .is_some_and(|(_, c)| !matches!(c.name_constraints(), Ok(None)))
}
