//! Who is calling: JSON Web Tokens, HS256 with a shared secret (local
//! mode) or RS256/ES256 with keys from a JWKS URL (Cognito or any OIDC
//! provider). The audience, the issuer and the expiry are always checked.
//! The voter is the token's subject; an admin carries the admin role in the
//! role claim (a string or a list of strings; Cognito's groups claim works).
//! Nothing here ever reads an identity from a request body.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use tokio::sync::RwLock;

use super::error::ApiError;
use tally_contract::vote::{valid_id, MAX_ID_CHARS};

/// How tokens are checked.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub keys: KeySource,
    pub audience: String,
    pub issuer: String,
    /// The claim holding the caller's roles.
    pub role_claim: String,
    pub admin_role: String,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

#[derive(Clone)]
pub enum KeySource {
    /// HS256 with this secret (at least 32 bytes).
    Secret(Vec<u8>),
    /// RS256/ES256 keys published at this URL.
    Jwks(String),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Secret(_) => f.write_str("Secret(..)"),
            KeySource::Jwks(url) => write!(f, "Jwks({url})"),
        }
    }
}

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's subject: the voter.
    pub subject: String,
    pub admin: bool,
}

/// The keys of a set by key id, and when the set was fetched.
type KeysById = (Option<Instant>, HashMap<String, (DecodingKey, Algorithm)>);

/// Keys fetched from a JWKS URL, by key id.
struct JwksKeys {
    url: String,
    client: reqwest::Client,
    keys: RwLock<KeysById>,
}

/// A key set is read again at most this often when a token names an
/// unknown key (key rotation), and at least this often in the background.
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
pub const JWKS_REFRESH: Duration = Duration::from_secs(600);
/// Largest key set accepted.
const MAX_JWKS_BYTES: usize = 256 * 1024;

impl JwksKeys {
    async fn fetch(&self) -> Result<(), String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("cannot fetch the key set {}: {e}", self.url))?;
        if !response.status().is_success() {
            return Err(format!(
                "the key set {} answered {}",
                self.url,
                response.status()
            ));
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| format!("cannot read the key set {}: {e}", self.url))?;
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!("the key set {} is too large", self.url));
        }
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&bytes)
            .map_err(|e| format!("the key set {} is not a JWKS: {e}", self.url))?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let algorithm = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec)
                    if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (key, algorithm));
            }
        }
        tracing::info!(url = %self.url, keys = keys.len(), "key set loaded");
        *self.keys.write().await = (Some(Instant::now()), keys);
        Ok(())
    }

    async fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        let stale = {
            let keys = self.keys.read().await;
            if let Some(found) = keys.1.get(kid) {
                return Some(found.clone());
            }
            keys.0.is_none_or(|at| at.elapsed() >= JWKS_MIN_REFRESH)
        };
        if stale {
            if let Err(error) = self.fetch().await {
                tracing::warn!(error = %error, "key set refresh failed");
            }
        }
        self.keys.read().await.1.get(kid).cloned()
    }
}

/// Checks tokens.
pub struct Verifier {
    config: AuthConfig,
    jwks: Option<Arc<JwksKeys>>,
}

impl Verifier {
    pub fn new(config: AuthConfig) -> Result<Self, String> {
        let jwks = match &config.keys {
            KeySource::Secret(secret) if secret.len() < 32 => {
                return Err("the HS256 secret must be at least 32 bytes".into())
            }
            KeySource::Secret(_) => None,
            KeySource::Jwks(url) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(format!("{url:?} is not an http(s) URL"));
                }
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .map_err(|e| e.to_string())?;
                Some(Arc::new(JwksKeys {
                    url: url.clone(),
                    client,
                    keys: RwLock::new((None, HashMap::new())),
                }))
            }
        };
        Ok(Self { config, jwks })
    }

    /// Loads the key set (a no-op for a shared secret).
    pub async fn refresh(&self) -> Result<(), String> {
        match &self.jwks {
            Some(jwks) => jwks.fetch().await,
            None => Ok(()),
        }
    }

    /// True once keys are there to check tokens with.
    pub async fn ready(&self) -> bool {
        match &self.jwks {
            Some(jwks) => !jwks.keys.read().await.1.is_empty(),
            None => true,
        }
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&[&self.config.audience]);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.leeway = self.config.leeway.as_secs();
        validation.validate_nbf = true;
        validation
    }

    /// Verifies a bearer token and names its caller.
    pub async fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        if token.len() > 16 * 1024 {
            return Err(ApiError::InvalidToken("the token is too long".into()));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| ApiError::InvalidToken(format!("not a JWT: {e}")))?;
        let (key, algorithm) = match (&self.config.keys, &self.jwks) {
            (KeySource::Secret(secret), _) => {
                if header.alg != Algorithm::HS256 {
                    return Err(ApiError::InvalidToken(format!(
                        "algorithm {:?} is not accepted (HS256 only)",
                        header.alg
                    )));
                }
                (DecodingKey::from_secret(secret), Algorithm::HS256)
            }
            (KeySource::Jwks(_), Some(jwks)) => {
                if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
                    return Err(ApiError::InvalidToken(format!(
                        "algorithm {:?} is not accepted (RS256 or ES256 only)",
                        header.alg
                    )));
                }
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| ApiError::InvalidToken("the token names no key (kid)".into()))?;
                let (key, algorithm) = jwks
                    .key(kid)
                    .await
                    .ok_or_else(|| ApiError::InvalidToken(format!("unknown key {kid:?}")))?;
                if algorithm != header.alg {
                    return Err(ApiError::InvalidToken(format!(
                        "key {kid:?} is not a {:?} key",
                        header.alg
                    )));
                }
                (key, algorithm)
            }
            (KeySource::Jwks(_), None) => {
                return Err(ApiError::Internal("no key set configured".into()))
            }
        };
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &self.validation(algorithm),
        )
        .map_err(|error| match error.kind() {
            ErrorKind::ExpiredSignature => ApiError::TokenExpired,
            ErrorKind::InvalidSignature => ApiError::InvalidToken("bad signature".into()),
            ErrorKind::InvalidAudience => ApiError::InvalidToken("wrong audience".into()),
            ErrorKind::InvalidIssuer => ApiError::InvalidToken("wrong issuer".into()),
            ErrorKind::ImmatureSignature => ApiError::InvalidToken("not valid yet".into()),
            ErrorKind::MissingRequiredClaim(claim) => {
                ApiError::InvalidToken(format!("claim {claim} is missing"))
            }
            _ => ApiError::InvalidToken(error.to_string()),
        })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(|sub| sub.as_str())
            .unwrap_or_default()
            .to_owned();
        if !valid_id(&subject, MAX_ID_CHARS) {
            return Err(ApiError::InvalidToken(format!(
                "the subject must be 1 to {MAX_ID_CHARS} characters of [A-Za-z0-9._:@-]"
            )));
        }
        let admin = match claims.get(&self.config.role_claim) {
            Some(serde_json::Value::String(roles)) => roles
                .split_whitespace()
                .any(|role| role == self.config.admin_role),
            Some(serde_json::Value::Array(roles)) => roles
                .iter()
                .any(|role| role.as_str() == Some(self.config.admin_role.as_str())),
            _ => false,
        };
        Ok(Caller { subject, admin })
    }

    /// Mints an HS256 token (local mode's demo tokens and tests).
    pub fn mint(&self, subject: &str, admin: bool, lifetime: Duration) -> Result<String, String> {
        let KeySource::Secret(secret) = &self.config.keys else {
            return Err("tokens can only be minted with an HS256 secret".into());
        };
        let now = tally_contract::time::now_millis() / 1000;
        let mut claims = serde_json::json!({
            "sub": subject,
            "aud": self.config.audience,
            "iss": self.config.issuer,
            "iat": now,
            "exp": now + lifetime.as_secs() as i64,
        });
        if admin {
            claims[&self.config.role_claim] = serde_json::json!([self.config.admin_role]);
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .map_err(|e| e.to_string())
    }
}

/// The bearer token of a request's `Authorization` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or(ApiError::MissingToken)?
        .to_str()
        .map_err(|_| ApiError::InvalidToken("the Authorization header is not text".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::InvalidToken("expected `Bearer <token>`".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::InvalidToken("expected `Bearer <token>`".into()));
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &[u8]) -> AuthConfig {
        AuthConfig {
            keys: KeySource::Secret(secret.to_vec()),
            audience: "tally".into(),
            issuer: "tally-local".into(),
            role_claim: "roles".into(),
            admin_role: "admin".into(),
            leeway: Duration::from_secs(0),
        }
    }

    #[tokio::test]
    async fn minted_tokens_verify_and_tampered_ones_do_not() {
        let verifier = Verifier::new(config(&[7; 32])).unwrap();
        let token = verifier
            .mint("u-1", false, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            verifier.verify(&token).await.unwrap(),
            Caller {
                subject: "u-1".into(),
                admin: false
            }
        );
        let admin = verifier.mint("ops", true, Duration::from_secs(60)).unwrap();
        assert!(verifier.verify(&admin).await.unwrap().admin);
        let other = Verifier::new(config(&[8; 32])).unwrap();
        let forged = other.mint("u-1", true, Duration::from_secs(60)).unwrap();
        let error = verifier.verify(&forged).await.unwrap_err();
        assert_eq!(error.status_and_code().1, "invalid_token");
        assert!(error.to_string().contains("signature"), "{error}");
        let bad_subject = verifier
            .mint("no spaces please", false, Duration::from_secs(60))
            .unwrap();
        assert!(verifier.verify(&bad_subject).await.is_err());
        assert!(Verifier::new(config(b"short")).is_err());
    }

    #[test]
    fn bearer_header_forms() {
        let mut headers = axum::http::HeaderMap::new();
        assert!(matches!(bearer(&headers), Err(ApiError::MissingToken)));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(bearer(&headers), Err(ApiError::InvalidToken(_))));
        headers.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers).unwrap(), "abc");
    }
}
