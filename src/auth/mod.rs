//! Token verification: JWTs signed HS256 (shared secret) or RS256 / ES256 / EdDSA (public
//! key PEM). Every way a token can be bad maps to its own terminal close code, so a client
//! (and an operator reading metrics) knows exactly why a session was refused.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use quaver_proto::{CloseCode, UserId};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

/// Shortest accepted HS256 secret: RFC 7518 §3.2 requires a key at least as long as the
/// hash output (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// The claims Quaver reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// User id, a decimal `u64` (snowflake).
    pub sub: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Not before, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// A verified identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user.
    pub user_id: UserId,
    /// Display name (the `sub` when the token has none).
    pub name: String,
    /// When the token expires.
    pub expires_at: SystemTime,
}

/// Why a token was refused; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token from any source.
    #[error("no token")]
    Missing,
    /// Not a JWT.
    #[error("malformed token")]
    Malformed,
    /// `exp` passed.
    #[error("token expired")]
    Expired,
    /// `nbf` in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// Signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// Signed with an algorithm other than the configured one.
    #[error("wrong algorithm {0}")]
    WrongAlgorithm(String),
    /// `alg: none`.
    #[error("unsigned token (alg none)")]
    Unsigned,
    /// Claims unacceptable.
    #[error("invalid claims: {0}")]
    InvalidClaims(String),
}

impl AuthError {
    /// The close code for this failure.
    pub fn close_code(&self) -> CloseCode {
        match self {
            AuthError::Missing => CloseCode::TOKEN_MISSING,
            AuthError::Malformed => CloseCode::TOKEN_MALFORMED,
            AuthError::Expired => CloseCode::TOKEN_EXPIRED,
            AuthError::NotYetValid => CloseCode::TOKEN_NOT_YET_VALID,
            AuthError::BadSignature => CloseCode::TOKEN_BAD_SIGNATURE,
            AuthError::WrongAlgorithm(_) => CloseCode::TOKEN_WRONG_ALGORITHM,
            AuthError::Unsigned => CloseCode::TOKEN_UNSIGNED,
            AuthError::InvalidClaims(_) => CloseCode::TOKEN_INVALID_CLAIMS,
        }
    }
}

/// Verifies tokens with one configured key and algorithm.
pub struct Verifier {
    /// Key for signature checks.
    key: DecodingKey,
    /// Algorithm, leeway, audience and issuer rules.
    validation: Validation,
    /// The only accepted `alg`.
    algorithm: Algorithm,
    /// Signing key when the server holds the secret (HS256), for `quaver token` and tests.
    signer: Option<EncodingKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn parse_algorithm(name: &str) -> anyhow::Result<Algorithm> {
    match name.to_ascii_uppercase().as_str() {
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EDDSA" => Ok(Algorithm::EdDSA),
        other => anyhow::bail!("unsupported JWT algorithm {other:?} for a public key (use RS256, ES256 or EdDSA)"),
    }
}

impl Verifier {
    /// Builds the verifier from config. With neither a secret nor a public key, uses (and
    /// on first run creates) a random dev secret in `data_dir/dev-jwt-secret`.
    pub fn from_config(cfg: &AuthConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let mut v = if let Some(path) = &cfg.public_key {
            let pem =
                std::fs::read(path).map_err(|e| anyhow::anyhow!("reading JWT public key {}: {e}", path.display()))?;
            let algorithm = parse_algorithm(cfg.algorithm.as_deref().unwrap_or("RS256"))?;
            let key = match algorithm {
                Algorithm::ES256 => DecodingKey::from_ec_pem(&pem),
                Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                _ => DecodingKey::from_rsa_pem(&pem),
            }
            .map_err(|e| anyhow::anyhow!("JWT public key {} is not a {algorithm:?} PEM key: {e}", path.display()))?;
            Self::with_key(key, algorithm, None)
        } else {
            let secret = match &cfg.jwt_secret {
                Some(s) => s.clone().into_bytes(),
                None => dev_secret(data_dir)?,
            };
            Self::hs256(&secret)?
        };
        v.validation.leeway = cfg.leeway.as_secs();
        if let Some(aud) = &cfg.audience {
            v.validation.set_audience(&[aud]);
            v.validation.validate_aud = true;
        }
        if let Some(iss) = &cfg.issuer {
            v.validation.set_issuer(&[iss]);
        }
        Ok(v)
    }

    /// An HS256 verifier (and signer) for `secret`.
    pub fn hs256(secret: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_BYTES,
            "JWT_SECRET is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} (256 bits, RFC 7518 §3.2) — a shorter secret can be brute-forced",
            secret.len()
        );
        Ok(Self::with_key(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
            Some(EncodingKey::from_secret(secret)),
        ))
    }

    fn with_key(key: DecodingKey, algorithm: Algorithm, signer: Option<EncodingKey>) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key,
            validation,
            algorithm,
            signer,
        }
    }

    /// The accepted algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Signs claims with the server's own HS256 secret (dev tokens, tests).
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let signer = self.signer.as_ref().ok_or_else(|| {
            anyhow::anyhow!("this server verifies with a public key; sign tokens with the private key's owner")
        })?;
        Ok(jsonwebtoken::encode(&Header::new(self.algorithm), claims, signer)?)
    }

    /// Mints a token for `user` valid for `ttl`.
    pub fn mint(&self, user: UserId, name: Option<&str>, ttl: Duration) -> anyhow::Result<String> {
        let now = unix_now();
        self.sign(&Claims {
            sub: user.to_string(),
            name: name.map(str::to_string),
            exp: now + ttl.as_secs().max(1),
            nbf: None,
            iat: Some(now),
            aud: self.validation.aud.as_ref().and_then(|a| a.iter().next().cloned()),
            iss: self.validation.iss.as_ref().and_then(|a| a.iter().next().cloned()),
        })
    }

    /// Verifies a token.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // Read `alg` ourselves first: jsonwebtoken cannot even parse a header saying
        // `none`, and we want that case (a classic attack) named precisely.
        let header_b64 = token.split('.').next().unwrap_or_default();
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header_b64.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .ok_or(AuthError::Malformed)?;
        let alg = header.get("alg").and_then(|a| a.as_str()).ok_or(AuthError::Malformed)?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::Unsigned);
        }
        if alg != format!("{:?}", self.algorithm) {
            return Err(AuthError::WrongAlgorithm(alg.to_string()));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm(alg.to_string()),
            ErrorKind::InvalidAudience => AuthError::InvalidClaims("aud".into()),
            ErrorKind::InvalidIssuer => AuthError::InvalidClaims("iss".into()),
            ErrorKind::MissingRequiredClaim(c) => AuthError::InvalidClaims(format!("missing {c}")),
            ErrorKind::InvalidClaimFormat(c) => AuthError::InvalidClaims(format!("bad {c}")),
            _ => AuthError::Malformed,
        })?;
        let c = data.claims;
        let user_id: UserId = c
            .sub
            .parse()
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| AuthError::InvalidClaims("sub must be a positive decimal user id".into()))?;
        let name = c.name.unwrap_or_else(|| c.sub.clone());
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(AuthError::InvalidClaims(
                "name must be 1–64 printable characters".into(),
            ));
        }
        Ok(Identity {
            user_id,
            name,
            expires_at: UNIX_EPOCH + Duration::from_secs(c.exp),
        })
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the dev secret, creating it (random, 48 bytes, hex) on first use.
fn dev_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data_dir.join("dev-jwt-secret");
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim();
        if s.len() >= MIN_SECRET_BYTES {
            return Ok(s.as_bytes().to_vec());
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let mut bytes = [0u8; 48];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    let secret = hex::encode(bytes);
    std::fs::write(&path, &secret)?;
    tracing::warn!(path = %path.display(), "no JWT_SECRET set: generated a development secret (set JWT_SECRET in production)");
    Ok(secret.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(exp_in: i64) -> Claims {
        Claims {
            sub: "42".into(),
            name: Some("ada".into()),
            exp: (unix_now() as i64 + exp_in) as u64,
            nbf: None,
            iat: None,
            aud: None,
            iss: None,
        }
    }

    #[test]
    fn short_secret_refused_with_reason() {
        let e = Verifier::hs256(b"short").unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
    }

    #[test]
    fn every_bad_token_has_its_own_error() {
        let mut v = Verifier::hs256(SECRET).unwrap();
        v.validation.leeway = 0;
        assert_eq!(v.verify(&v.sign(&claims(60)).unwrap()).unwrap().user_id, 42);
        assert_eq!(v.verify(&v.sign(&claims(-10)).unwrap()), Err(AuthError::Expired));
        let mut c = claims(60);
        c.nbf = Some(unix_now() + 100);
        assert_eq!(v.verify(&v.sign(&c).unwrap()), Err(AuthError::NotYetValid));
        let other = Verifier::hs256(b"ffffffffffffffffffffffffffffffff").unwrap();
        assert_eq!(
            v.verify(&other.sign(&claims(60)).unwrap()),
            Err(AuthError::BadSignature)
        );
        // HS384 with the right secret: wrong algorithm, not a bad signature.
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims(60),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert!(matches!(v.verify(&t), Err(AuthError::WrongAlgorithm(a)) if a == "HS384"));
        // alg: none, hand-built.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none","typ":"JWT"}"#),
            b64(r#"{"sub":"42","exp":9999999999}"#)
        );
        assert_eq!(v.verify(&none), Err(AuthError::Unsigned));
        assert_eq!(v.verify("garbage"), Err(AuthError::Malformed));
        assert_eq!(v.verify(""), Err(AuthError::Missing));
        let mut c = claims(60);
        c.sub = "alice".into();
        assert!(matches!(
            v.verify(&v.sign(&c).unwrap()),
            Err(AuthError::InvalidClaims(_))
        ));
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let dir = std::env::temp_dir();
        let cfg = AuthConfig {
            jwt_secret: Some(String::from_utf8(SECRET.to_vec()).unwrap()),
            audience: Some("quaver".into()),
            issuer: Some("https://auth.example".into()),
            ..Default::default()
        };
        let v = Verifier::from_config(&cfg, &dir).unwrap();
        let good = v.mint(7, None, Duration::from_secs(60)).unwrap();
        assert_eq!(v.verify(&good).unwrap().name, "7");
        let mut c = claims(60);
        c.aud = Some("other".into());
        c.iss = Some("https://auth.example".into());
        assert_eq!(
            v.verify(&v.sign(&c).unwrap()),
            Err(AuthError::InvalidClaims("aud".into()))
        );
    }

    #[test]
    fn public_key_algorithms_verify() {
        for (alg, rc_alg, name) in [
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256, "ES256"),
            (Algorithm::EdDSA, &rcgen::PKCS_ED25519, "EdDSA"),
        ] {
            let kp = rcgen::KeyPair::generate_for(rc_alg).unwrap();
            let dir = std::env::temp_dir().join(format!("quaver-auth-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let pubpath = dir.join("pub.pem");
            std::fs::write(&pubpath, kp.public_key_pem()).unwrap();
            let cfg = AuthConfig {
                public_key: Some(pubpath),
                algorithm: Some(name.into()),
                ..Default::default()
            };
            let v = Verifier::from_config(&cfg, &dir).unwrap();
            let enc = match alg {
                Algorithm::ES256 => EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
                _ => EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap(),
            };
            let t = jsonwebtoken::encode(&Header::new(alg), &claims(60), &enc).unwrap();
            assert_eq!(v.verify(&t).unwrap().user_id, 42, "{name}");
            // An HS256 token signed with the public key bytes (key confusion) is refused.
            let confused = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims(60),
                &EncodingKey::from_secret(kp.public_key_pem().as_bytes()),
            )
            .unwrap();
            assert!(matches!(v.verify(&confused), Err(AuthError::WrongAlgorithm(_))));
            assert!(v.sign(&claims(60)).is_err());
        }
    }

    #[test]
    fn rs256_public_key_verifies() {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let private_pem = key.to_pkcs8_pem(LineEnding::LF).unwrap();
        let public_pem = key.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
        let dir = std::env::temp_dir().join(format!("quaver-auth-{}-rs256", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pubpath = dir.join("pub.pem");
        std::fs::write(&pubpath, public_pem).unwrap();
        // RS256 is the default algorithm for a public key.
        let cfg = AuthConfig {
            public_key: Some(pubpath),
            ..Default::default()
        };
        let v = Verifier::from_config(&cfg, &dir).unwrap();
        assert_eq!(v.algorithm(), Algorithm::RS256);
        let enc = EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap();
        let t = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(60), &enc).unwrap();
        assert_eq!(v.verify(&t).unwrap().user_id, 42);
        let other = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let enc = EncodingKey::from_rsa_pem(other.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let t = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(60), &enc).unwrap();
        assert_eq!(v.verify(&t), Err(AuthError::BadSignature));
        let t = jsonwebtoken::encode(&Header::new(Algorithm::RS384), &claims(60), &enc).unwrap();
        assert!(matches!(v.verify(&t), Err(AuthError::WrongAlgorithm(_))));
    }
}
