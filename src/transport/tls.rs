//! TLS certificates: a production certificate from PEM files, or a self-signed development
//! certificate (ECDSA P-256, valid ≤ 14 days) that is generated into `certs/`, reused across
//! restarts while it is fresh, and renewed before it expires without a restart — new
//! handshakes get the new certificate, open sessions keep theirs.
//!
//! Browsers connect to the dev certificate with `serverCertificateHashes`, so its SHA-256 is
//! printed at start-up and served at `GET /cert-hash`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsConfig;

/// One certificate in service.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// SHA-256 of the end-entity certificate's DER.
    pub sha256: [u8; 32],
    /// Expiry, known for dev certificates (recorded when generated); production
    /// certificates are not parsed, so theirs is `None`.
    pub not_after: Option<SystemTime>,
    /// Whether this is a generated development certificate.
    pub dev: bool,
}

struct Current {
    key: Arc<CertifiedKey>,
    info: CertInfo,
    /// Hashes of earlier dev certificates still within their validity, newest first:
    /// a browser that fetched a hash a moment before renewal can still connect.
    previous: Vec<CertInfo>,
}

/// Holds the certificate in service and hands it to rustls on every handshake.
pub struct CertStore {
    current: RwLock<Current>,
    /// Dev-certificate settings; `None` for a production certificate.
    dev: Option<TlsConfig>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("info", &self.info()).finish()
    }
}

fn read_lock(l: &RwLock<Current>) -> std::sync::RwLockReadGuard<'_, Current> {
    // A poisoned lock only means a writer panicked mid-swap; the old value is still whole.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn certified(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> anyhow::Result<Arc<CertifiedKey>> {
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("unsupported private key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(chain, signer)))
}

fn sha256(der: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl CertStore {
    /// Loads a production certificate, or creates/loads the dev certificate.
    pub fn from_config(cfg: &TlsConfig) -> anyhow::Result<Arc<Self>> {
        match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key)) => Self::from_pem_files(cert, key),
            (None, None) => Self::dev(cfg),
            _ => anyhow::bail!("--cert and --key must be given together"),
        }
    }

    fn from_pem_files(cert: &Path, key: &Path) -> anyhow::Result<Arc<Self>> {
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut std::io::BufReader::new(
            std::fs::File::open(cert).map_err(|e| anyhow::anyhow!("opening certificate {}: {e}", cert.display()))?,
        ))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("reading certificate {}: {e}", cert.display()))?;
        anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
        let key_der = rustls_pemfile::private_key(&mut std::io::BufReader::new(
            std::fs::File::open(key).map_err(|e| anyhow::anyhow!("opening key {}: {e}", key.display()))?,
        ))
        .map_err(|e| anyhow::anyhow!("reading key {}: {e}", key.display()))?
        .ok_or_else(|| anyhow::anyhow!("no private key in {}", key.display()))?;
        let info = CertInfo {
            sha256: sha256(&chain[0]),
            not_after: None,
            dev: false,
        };
        Ok(Arc::new(Self {
            current: RwLock::new(Current {
                key: certified(chain, key_der)?,
                info,
                previous: Vec::new(),
            }),
            dev: None,
        }))
    }

    fn dev(cfg: &TlsConfig) -> anyhow::Result<Arc<Self>> {
        let (key, info) = match load_dev(&cfg.cert_dir, cfg.dev_renew_before)? {
            Some(found) => found,
            None => generate_dev(&cfg.cert_dir, cfg.dev_validity)?,
        };
        Ok(Arc::new(Self {
            current: RwLock::new(Current {
                key,
                info,
                previous: Vec::new(),
            }),
            dev: Some(cfg.clone()),
        }))
    }

    /// The certificate in service.
    pub fn info(&self) -> CertInfo {
        read_lock(&self.current).info.clone()
    }

    /// Current and still-valid previous certificates, newest first.
    pub fn all(&self) -> Vec<CertInfo> {
        let c = read_lock(&self.current);
        let now = SystemTime::now();
        std::iter::once(c.info.clone())
            .chain(
                c.previous
                    .iter()
                    .filter(|p| p.not_after.is_some_and(|t| t > now))
                    .cloned(),
            )
            .collect()
    }

    /// When the dev certificate must be renewed (`None` for production certificates).
    pub fn renew_at(&self) -> Option<SystemTime> {
        let dev = self.dev.as_ref()?;
        read_lock(&self.current)
            .info
            .not_after
            .map(|t| t - dev.dev_renew_before)
    }

    /// Generates and installs a fresh dev certificate.
    pub fn renew(&self) -> anyhow::Result<CertInfo> {
        let dev = self
            .dev
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("not a dev certificate"))?;
        let (key, info) = generate_dev(&dev.cert_dir, dev.dev_validity)?;
        let mut c = self.current.write().unwrap_or_else(|p| p.into_inner());
        let old = std::mem::replace(&mut c.info, info.clone());
        c.previous.insert(0, old);
        c.previous.truncate(4);
        c.key = key;
        Ok(info)
    }

    /// Runs until `stop` resolves, renewing the dev certificate on time.
    pub async fn renew_loop(self: Arc<Self>, mut stop: crate::shutdown::Signal) {
        loop {
            let Some(at) = self.renew_at() else { return };
            // At least a second between renewals, whatever the settings, so a renewal
            // lead close to the validity cannot turn into a busy loop.
            let wait = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait() => return,
            }
            match self.renew() {
                Ok(info) => tracing::info!(sha256 = %hex::encode(info.sha256), "renewed development certificate"),
                Err(e) => {
                    tracing::error!(error = %e, "renewing development certificate failed; retrying in 60 s");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                        _ = stop.wait() => return,
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(read_lock(&self.current).key.clone())
    }
}

fn dev_paths(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("dev-cert.pem"),
        dir.join("dev-key.pem"),
        dir.join("dev-cert.expires"),
    )
}

/// Loads the dev certificate from `dir` if it is still good for longer than `renew_before`.
fn load_dev(dir: &Path, renew_before: Duration) -> anyhow::Result<Option<(Arc<CertifiedKey>, CertInfo)>> {
    let (cert_path, key_path, exp_path) = dev_paths(dir);
    let Ok(exp) = std::fs::read_to_string(&exp_path) else {
        return Ok(None);
    };
    let Ok(exp_secs) = exp.trim().parse::<u64>() else {
        return Ok(None);
    };
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(exp_secs);
    if not_after < SystemTime::now() + renew_before {
        return Ok(None);
    }
    let (Ok(cert_pem), Ok(key_pem)) = (std::fs::read(&cert_path), std::fs::read(&key_path)) else {
        return Ok(None);
    };
    let chain: Vec<CertificateDer<'static>> = match rustls_pemfile::certs(&mut &cert_pem[..]).collect() {
        Ok(c) => c,
        Err(_) => return Ok(None),
    };
    let Some(first) = chain.first() else { return Ok(None) };
    let Ok(Some(key)) = rustls_pemfile::private_key(&mut &key_pem[..]) else {
        return Ok(None);
    };
    let info = CertInfo {
        sha256: sha256(first),
        not_after: Some(not_after),
        dev: true,
    };
    Ok(Some((certified(chain, key)?, info)))
}

/// Creates a self-signed ECDSA P-256 certificate for localhost and writes it to `dir`.
fn generate_dev(dir: &Path, validity: Duration) -> anyhow::Result<(Arc<CertifiedKey>, CertInfo)> {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    let now = time::OffsetDateTime::now_utc();
    // Back-date a little (a minute, or a quarter of a very short validity) for clients
    // whose clocks run slightly behind; the total span stays within the configured
    // validity, since Chrome counts notAfter − notBefore.
    let span = time::Duration::try_from(validity).map_err(|e| anyhow::anyhow!("validity: {e}"))?;
    let backdate: time::Duration = (span / 4i32).min(time::Duration::seconds(60));
    let not_before = now - backdate;
    params.not_before = not_before;
    params.not_after = not_before + span;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Quaver development certificate");
    let cert = params.self_signed(&kp)?;
    let der = cert.der().clone();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(params.not_after.unix_timestamp().max(0) as u64);
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let (cert_path, key_path, exp_path) = dev_paths(dir);
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, kp.serialize_pem())?;
    std::fs::write(&exp_path, params.not_after.unix_timestamp().to_string())?;
    let info = CertInfo {
        sha256: sha256(&der),
        not_after: Some(not_after),
        dev: true,
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
    Ok((certified(vec![der], key)?, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certificate_is_reused_then_renewed() {
        let dir = std::env::temp_dir().join(format!("quaver-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = TlsConfig {
            cert_dir: dir.clone(),
            ..Default::default()
        };
        let a = CertStore::from_config(&cfg).unwrap();
        let b = CertStore::from_config(&cfg).unwrap();
        assert_eq!(
            a.info().sha256,
            b.info().sha256,
            "a fresh dev cert is reused across restarts"
        );
        let span = a.info().not_after.unwrap().duration_since(SystemTime::now()).unwrap();
        assert!(span <= Duration::from_secs(14 * 86_400) && span > Duration::from_secs(9 * 86_400));
        let old = a.info().sha256;
        let new = a.renew().unwrap();
        assert_ne!(new.sha256, old);
        let all: Vec<_> = a.all().iter().map(|c| c.sha256).collect();
        assert_eq!(all, vec![new.sha256, old]);
        // Written PEMs load as a production pair too.
        let prod = CertStore::from_pem_files(&dir.join("dev-cert.pem"), &dir.join("dev-key.pem")).unwrap();
        assert_eq!(prod.info().sha256, new.sha256);
        assert!(prod.renew_at().is_none());
    }
}
