//! Token verification: JWTs signed HS256 (shared secret) or RS256 / ES256 / EdDSA (public
//! key PEM). Every way a token can be bad maps to its own terminal close code, so a client
//! (and an operator reading metrics) knows exactly why a session was refused.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
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

/// Latest `exp`/`nbf` accepted: 9999-12-31T23:59:59Z. Beyond it a NumericDate is not a
/// date a token means (and `exp` ≥ 2^63 used to overflow the session's clock).
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// Highest user id: ids are stored as signed 64-bit integers, so `sub` is 1 ..= 2^63 − 1.
pub const MAX_USER_ID: u64 = i64::MAX as u64;

/// Verifies tokens with one configured key and algorithm.
///
/// The signature is checked with `jsonwebtoken`; the claims are checked here, one rule per
/// case (PROTOCOL.md §2), so every bad claim is `token_invalid_claims` with its reason and
/// `token_malformed` means only "not a JWT".
pub struct Verifier {
    /// Key for signature checks.
    key: DecodingKey,
    /// The only accepted `alg`.
    algorithm: Algorithm,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    leeway: u64,
    /// Required `aud` (the token's `aud`, a string or an array of strings, must contain it).
    audience: Option<String>,
    /// Required `iss`.
    issuer: Option<String>,
    /// Signing key when the server holds the secret (HS256), for `quaver token` and tests.
    signer: Option<EncodingKey>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
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

fn invalid(why: impl Into<String>) -> AuthError {
    AuthError::InvalidClaims(why.into())
}

/// A NumericDate claim (RFC 7519 §2): a JSON number of seconds, fractions allowed (and
/// dropped), between 0 and [`MAX_NUMERIC_DATE`].
fn numeric_date(claims: &serde_json::Map<String, serde_json::Value>, name: &str) -> Result<Option<u64>, AuthError> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    let secs = v
        .as_u64()
        .map(|n| n as f64)
        .or_else(|| v.as_f64())
        .filter(|n| n.is_finite() && *n >= 0.0 && *n <= MAX_NUMERIC_DATE as f64)
        .ok_or_else(|| {
            invalid(format!(
                "{name} must be a number of seconds from 0 to {MAX_NUMERIC_DATE}"
            ))
        })?;
    Ok(Some(secs.floor() as u64))
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
        v.leeway = cfg.leeway.as_secs();
        v.audience = cfg.audience.clone();
        v.issuer = cfg.issuer.clone();
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
        Self {
            key,
            algorithm,
            leeway: 0,
            audience: None,
            issuer: None,
            signer,
        }
    }

    /// The accepted algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Signs claims with the server's own HS256 secret (dev tokens, tests).
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        self.sign_json(&serde_json::to_value(claims)?)
    }

    /// Signs any JSON payload with the server's own HS256 secret (tests of bad claims).
    pub fn sign_json(&self, payload: &serde_json::Value) -> anyhow::Result<String> {
        let signer = self.signer.as_ref().ok_or_else(|| {
            anyhow::anyhow!("this server verifies with a public key; sign tokens with the private key's owner")
        })?;
        Ok(jsonwebtoken::encode(&Header::new(self.algorithm), payload, signer)?)
    }

    /// Mints a token for `user` valid for `ttl`.
    pub fn mint(&self, user: UserId, name: Option<&str>, ttl: Duration) -> anyhow::Result<String> {
        let now = unix_now();
        self.sign(&Claims {
            sub: user.to_string(),
            name: name.map(str::to_string),
            exp: now.saturating_add(ttl.as_secs().max(1)).min(MAX_NUMERIC_DATE),
            nbf: None,
            iat: Some(now),
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
        })
    }

    /// Verifies a token at the current time.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_at(token, unix_now())
    }

    /// Verifies a token at Unix time `now` (seconds). In this order: the JWT's form, its
    /// `alg`, its signature, then each claim.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let json_object = |b64: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b64.trim_end_matches('='))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| match v {
                    serde_json::Value::Object(m) => Some(m),
                    _ => None,
                })
                .ok_or(AuthError::Malformed)
        };
        // Read `alg` ourselves first: jsonwebtoken cannot even parse a header saying
        // `none`, and we want that case (a classic attack) named precisely.
        let header = json_object(header_b64)?;
        let alg = header.get("alg").and_then(|a| a.as_str()).ok_or(AuthError::Malformed)?;
        if alg.eq_ignore_ascii_case("none") {
            return Err(AuthError::Unsigned);
        }
        if alg != format!("{:?}", self.algorithm) {
            return Err(AuthError::WrongAlgorithm(alg.to_string()));
        }
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        match jsonwebtoken::crypto::verify(signature, signed.as_bytes(), &self.key, self.algorithm) {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::BadSignature),
            // The signature part is not base64url, or not a signature of this algorithm.
            Err(_) => return Err(AuthError::BadSignature),
        }
        let claims = json_object(payload_b64)?;
        self.check_claims(&claims, now)
    }

    /// The claim rules, one per case.
    fn check_claims(&self, c: &serde_json::Map<String, serde_json::Value>, now: u64) -> Result<Identity, AuthError> {
        let exp = numeric_date(c, "exp")?.ok_or_else(|| invalid("missing exp"))?;
        let nbf = numeric_date(c, "nbf")?;
        numeric_date(c, "iat")?;
        let sub = match c.get("sub") {
            None => return Err(invalid("missing sub")),
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err(invalid("sub must be a string (a decimal user id)")),
        };
        let user_id: UserId = Some(sub.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .filter(|id| (1..=MAX_USER_ID).contains(id))
            .ok_or_else(|| invalid(format!("sub must be a decimal user id from 1 to {MAX_USER_ID}")))?;
        let name = match c.get("name") {
            None | Some(serde_json::Value::Null) => sub.clone(),
            Some(serde_json::Value::String(n)) => n.clone(),
            Some(_) => return Err(invalid("name must be a string")),
        };
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(invalid("name must be 1–64 printable characters"));
        }
        if let Some(want) = &self.audience {
            let ok = match c.get("aud") {
                None => return Err(invalid("missing aud")),
                Some(serde_json::Value::String(a)) => a == want,
                Some(serde_json::Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
                Some(_) => return Err(invalid("aud must be a string or an array of strings")),
            };
            if !ok {
                return Err(invalid("aud"));
            }
        }
        if let Some(want) = &self.issuer {
            match c.get("iss") {
                None => return Err(invalid("missing iss")),
                Some(serde_json::Value::String(i)) if i == want => {}
                Some(_) => return Err(invalid("iss")),
            }
        }
        if exp.saturating_add(self.leeway) <= now {
            return Err(AuthError::Expired);
        }
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(self.leeway)) {
            return Err(AuthError::NotYetValid);
        }
        Ok(Identity {
            user_id,
            name,
            expires_at: UNIX_EPOCH + Duration::from_secs(exp),
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
        let v = Verifier::hs256(SECRET).unwrap();
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
    fn claim_rules_one_per_case() {
        use serde_json::json;
        let v = Verifier::hs256(SECRET).unwrap();
        let now = 1_800_000_000u64;
        let at = |payload: serde_json::Value| v.verify_at(&v.sign_json(&payload).unwrap(), now);
        let bad = |r: Result<Identity, AuthError>| match r {
            Err(AuthError::InvalidClaims(why)) => why,
            other => panic!("expected invalid claims, got {other:?}"),
        };
        assert_eq!(at(json!({"sub": "7", "exp": now + 60})).unwrap().user_id, 7);
        assert_eq!(bad(at(json!({"sub": "7"}))), "missing exp");
        assert_eq!(bad(at(json!({"exp": now + 60}))), "missing sub");
        assert!(bad(at(json!({"sub": 7, "exp": now + 60}))).contains("string"));
        for exp in [
            json!("soon"),
            json!(-5),
            json!(9_223_372_036_854_775_808u64),
            json!(u64::MAX),
            json!(null),
        ] {
            assert!(bad(at(json!({"sub": "7", "exp": exp}))).contains("exp"), "{exp}");
        }
        // A NumericDate may carry a fraction.
        let id = at(json!({"sub": "7", "exp": (now + 60) as f64 + 0.5})).unwrap();
        assert_eq!(id.expires_at, UNIX_EPOCH + Duration::from_secs(now + 60));
        assert_eq!(at(json!({"sub": "7", "exp": now})), Err(AuthError::Expired));
        assert_eq!(
            at(json!({"sub": "7", "exp": now + 60, "nbf": now + 10})),
            Err(AuthError::NotYetValid)
        );
        assert!(bad(at(json!({"sub": "7", "exp": now + 60, "nbf": "x"}))).contains("nbf"));
        assert!(bad(at(json!({"sub": "7", "exp": now + 60, "iat": "x"}))).contains("iat"));
        // The whole id range the store can hold, and nothing past it.
        assert_eq!(
            at(json!({"sub": "9223372036854775807", "exp": now + 60}))
                .unwrap()
                .user_id,
            MAX_USER_ID
        );
        for sub in [
            "9223372036854775808",
            "18446744073709551615",
            "0",
            "+5",
            " 5",
            "5 ",
            "",
            "1e3",
            "-1",
        ] {
            assert!(bad(at(json!({"sub": sub, "exp": now + 60}))).contains("sub"), "{sub:?}");
        }
        assert!(bad(at(json!({"sub": "7", "exp": now + 60, "name": 3}))).contains("name"));
        assert!(bad(at(json!({"sub": "7", "exp": now + 60, "name": ""}))).contains("name"));
        // Not a JWT at all.
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        for t in ["a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(v.verify_at(t, now), Err(AuthError::Malformed), "{t}");
        }
        let array_payload = v.sign_json(&json!(["sub", "7"])).unwrap();
        assert_eq!(v.verify_at(&array_payload, now), Err(AuthError::Malformed));
        let header_only = format!("{}.{}.{}", b64(r#"{"typ":"JWT"}"#), b64("{}"), b64("sig"));
        assert_eq!(v.verify_at(&header_only, now), Err(AuthError::Malformed));
    }

    #[test]
    fn required_audience_and_issuer_must_be_present() {
        use serde_json::json;
        let mut v = Verifier::hs256(SECRET).unwrap();
        v.audience = Some("quaver".into());
        v.issuer = Some("https://auth.example".into());
        let now = 1_800_000_000u64;
        let at = |payload: serde_json::Value| v.verify_at(&v.sign_json(&payload).unwrap(), now);
        let base = |extra: serde_json::Value| {
            let mut p = json!({"sub": "7", "exp": now + 60});
            p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            p
        };
        let iss = "https://auth.example";
        assert!(at(base(json!({"aud": "quaver", "iss": iss}))).is_ok());
        // RFC 7519 §4.1.3: `aud` may be an array.
        assert!(at(base(json!({"aud": ["other", "quaver"], "iss": iss}))).is_ok());
        assert_eq!(
            at(base(json!({"iss": iss}))),
            Err(AuthError::InvalidClaims("missing aud".into()))
        );
        assert_eq!(
            at(base(json!({"aud": "quaver"}))),
            Err(AuthError::InvalidClaims("missing iss".into()))
        );
        assert_eq!(
            at(base(json!({"aud": ["other"], "iss": iss}))),
            Err(AuthError::InvalidClaims("aud".into()))
        );
        assert_eq!(
            at(base(json!({"aud": "quaver", "iss": "https://evil.example"}))),
            Err(AuthError::InvalidClaims("iss".into()))
        );
        assert!(matches!(
            at(base(json!({"aud": 5, "iss": iss}))),
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
