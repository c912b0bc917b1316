//! Who is calling: JSON Web Tokens, HS256 with a shared secret (local
//! mode) or RS256/ES256 with keys from a JWKS URL (Cognito or any OIDC
//! provider). The audience, the issuer and the expiry are always checked.
//! The voter is the token's voter claim (`sub` unless configured: on AWS the
//! verified phone number, see `voter_from_claim`); an admin carries the
//! admin role in the role claim (a string or a list of strings; Cognito's
//! groups claim works). Nothing here ever reads an identity from a request
//! body.
//!
//! A key set is fetched by one caller at a time (single flight), never more
//! often than [`JWKS_MIN_REFRESH`] after a success or the backoff after a
//! failure, however many tokens name unknown keys; its body is capped while
//! it is read; and it is fetched over `https` (plain `http` only from a
//! loopback host, for local runs and tests).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use tokio::sync::RwLock;

use super::error::ApiError;
use tally_contract::vote::{voter_from_claim, MAX_ID_CHARS};

/// How tokens are checked.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub keys: KeySource,
    pub audience: String,
    pub issuer: String,
    /// The claim holding the voter id (`sub`, or `phone_number` with
    /// Cognito's phone sign-in). `phone_number` and `email` count only when
    /// the token also says `<claim>_verified: true`.
    pub voter_claim: String,
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
    /// The voter id, from the configured voter claim.
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
    /// At most one fetch this often after a success (see [`JWKS_MIN_REFRESH`]).
    min_refresh: Duration,
    /// Held for the whole of a fetch: one fetch at a time.
    fetching: tokio::sync::Mutex<Attempts>,
}

/// When the key set was last asked for, and how many asks in a row failed.
#[derive(Default)]
struct Attempts {
    last: Option<Instant>,
    failures: u32,
}

impl Attempts {
    /// How long after the last attempt the next may be made.
    fn wait(&self, min_refresh: Duration) -> Duration {
        match self.failures {
            0 => min_refresh,
            n => (JWKS_FIRST_BACKOFF * 2u32.saturating_pow(n - 1)).min(JWKS_MAX_BACKOFF),
        }
    }
}

/// A key set is read again at most this often when a token names an
/// unknown key (key rotation), and at least this often in the background.
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
pub const JWKS_REFRESH: Duration = Duration::from_secs(600);
/// After a failed fetch the next waits this long, doubling with each
/// failure in a row up to [`JWKS_MAX_BACKOFF`].
const JWKS_FIRST_BACKOFF: Duration = Duration::from_secs(1);
const JWKS_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Largest key set accepted; a larger body is abandoned while it is read.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// True for an `https` URL, or an `http` one whose host is loopback.
pub fn acceptable_key_set_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "{url:?} must be https: keys fetched over plain http could be swapped on the way (http is accepted only from a loopback host)"
        )),
        _ => Err(format!("{url:?} is not an https URL")),
    }
}

impl JwksKeys {
    /// Fetches the key set unless another caller is fetching it (then this
    /// waits for that fetch) or the last attempt was too recent. With
    /// `wanted`, a fetch that has already brought that key id is enough.
    async fn refresh(&self, wanted: Option<&str>) -> Result<(), String> {
        let mut attempts = self.fetching.lock().await;
        if let Some(kid) = wanted {
            if self.keys.read().await.1.contains_key(kid) {
                return Ok(());
            }
        }
        if let Some(last) = attempts.last {
            let wait = attempts.wait(self.min_refresh);
            if last.elapsed() < wait {
                return Err(format!(
                    "the key set {} was asked for {} ms ago; the next fetch is due in {} ms",
                    self.url,
                    last.elapsed().as_millis(),
                    (wait - last.elapsed()).as_millis()
                ));
            }
        }
        attempts.last = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                attempts.failures = 0;
                tracing::info!(url = %self.url, keys = keys.len(), "key set loaded");
                *self.keys.write().await = (Some(Instant::now()), keys);
                Ok(())
            }
            Err(error) => {
                attempts.failures = attempts.failures.saturating_add(1);
                Err(error)
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, (DecodingKey, Algorithm)>, String> {
        let mut response = self
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
        let too_large = || {
            format!(
                "the key set {} is larger than {MAX_JWKS_BYTES} bytes",
                self.url
            )
        };
        if response
            .content_length()
            .is_some_and(|length| length > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("cannot read the key set {}: {e}", self.url))?
        {
            if bytes.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
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
        Ok(keys)
    }

    async fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        if let Some(found) = self.keys.read().await.1.get(kid) {
            return Some(found.clone());
        }
        if let Err(error) = self.refresh(Some(kid)).await {
            tracing::debug!(error = %error, kid, "no key set refresh for an unknown key id");
        }
        self.keys.read().await.1.get(kid).cloned()
    }
}

/// The standard OpenID claim saying whether `claim` was verified, for the
/// claims that have one.
fn verified_claim(claim: &str) -> Option<String> {
    matches!(claim, "phone_number" | "email").then(|| format!("{claim}_verified"))
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
                acceptable_key_set_url(url)?;
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    // A redirect could lead to plain http or elsewhere.
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| e.to_string())?;
                Some(Arc::new(JwksKeys {
                    url: url.clone(),
                    client,
                    keys: RwLock::new((None, HashMap::new())),
                    min_refresh: JWKS_MIN_REFRESH,
                    fetching: Default::default(),
                }))
            }
        };
        Ok(Self { config, jwks })
    }

    /// The same verifier with another minimum interval between key set
    /// fetches after a success (tests of key rotation).
    pub fn with_min_refresh(mut self, interval: Duration) -> Self {
        if let Some(jwks) = self.jwks.as_mut().and_then(Arc::get_mut) {
            jwks.min_refresh = interval;
        }
        self
    }

    /// Loads the key set (a no-op for a shared secret), unless it was
    /// asked for too recently (see [`JWKS_MIN_REFRESH`] and the backoff).
    pub async fn refresh(&self) -> Result<(), String> {
        match &self.jwks {
            Some(jwks) => jwks.refresh(None).await,
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
        let subject = self.voter(&claims)?;
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

    /// The voter id the token's voter claim stands for.
    fn voter(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String, ApiError> {
        let claim = self.config.voter_claim.as_str();
        let value = claims
            .get(claim)
            .and_then(|value| value.as_str())
            .ok_or_else(|| ApiError::InvalidToken(format!("claim {claim} is missing")))?;
        if let Some(flag) = verified_claim(claim) {
            let verified = matches!(claims.get(&flag), Some(serde_json::Value::Bool(true)))
                || claims.get(&flag).and_then(|v| v.as_str()) == Some("true");
            if !verified {
                return Err(ApiError::InvalidToken(format!(
                    "claim {claim} is not verified ({flag} is not true)"
                )));
            }
        }
        voter_from_claim(value).ok_or_else(|| {
            ApiError::InvalidToken(format!(
                "the voter claim {claim} must be 1 to {MAX_ID_CHARS} characters of [A-Za-z0-9._:@-] once '+' signs are removed"
            ))
        })
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
        claims[&self.config.voter_claim] = serde_json::json!(subject);
        if let Some(flag) = verified_claim(&self.config.voter_claim) {
            claims[flag] = serde_json::Value::Bool(true);
        }
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
            voter_claim: "sub".into(),
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

    /// An HS256 token with exactly these claims (plus audience, issuer and
    /// expiry), signed with the test secret.
    fn signed(claims: serde_json::Value) -> String {
        let mut all = serde_json::json!({"aud": "tally", "iss": "tally-local",
            "exp": tally_contract::time::now_millis() / 1000 + 60});
        all.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &all,
            &EncodingKey::from_secret(&[7; 32]),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_voter_is_the_configured_claim_and_a_phone_number_must_be_verified() {
        let verifier = Verifier::new(AuthConfig {
            voter_claim: "phone_number".into(),
            ..config(&[7; 32])
        })
        .unwrap();
        let caller = verifier
            .verify(&signed(serde_json::json!({"sub": "5f2b-account",
                "phone_number": "+447700900123", "phone_number_verified": true})))
            .await
            .unwrap();
        assert_eq!(
            caller.subject, "447700900123",
            "the number, not the account"
        );
        for (claims, why) in [
            (
                serde_json::json!({"sub": "a", "phone_number": "+447700900123", "phone_number_verified": false}),
                "not verified",
            ),
            (
                serde_json::json!({"sub": "a", "phone_number": "+447700900123"}),
                "not verified",
            ),
            (serde_json::json!({"sub": "a"}), "phone_number is missing"),
            (
                serde_json::json!({"sub": "a", "phone_number": "+44 7700", "phone_number_verified": true}),
                "voter claim",
            ),
        ] {
            let error = verifier.verify(&signed(claims)).await.unwrap_err();
            assert_eq!(error.status_and_code().1, "invalid_token");
            assert!(error.to_string().contains(why), "{error}");
        }
        // A minted token carries the configured claim, verified.
        let token = verifier
            .mint("447700900123", false, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            verifier.verify(&token).await.unwrap().subject,
            "447700900123"
        );
    }

    #[test]
    fn a_key_set_is_fetched_over_https_or_from_a_loopback_host() {
        for url in [
            "https://cognito-idp.eu-west-1.amazonaws.com/pool/.well-known/jwks.json",
            "http://127.0.0.1:8080/jwks.json",
            "http://localhost/jwks.json",
            "http://[::1]:9/jwks.json",
        ] {
            assert!(acceptable_key_set_url(url).is_ok(), "{url}");
        }
        for url in [
            "http://issuer.example/jwks.json",
            "http://10.0.0.8/jwks.json",
            "ftp://issuer.example/jwks.json",
            "issuer.example/jwks.json",
        ] {
            assert!(acceptable_key_set_url(url).is_err(), "{url}");
        }
        let error = Verifier::new(AuthConfig {
            keys: KeySource::Jwks("http://issuer.example/jwks.json".into()),
            ..config(&[7; 32])
        })
        .err()
        .unwrap();
        assert!(error.contains("must be https"), "{error}");
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
