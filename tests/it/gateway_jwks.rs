//! Production tokens: RS256 and ES256 keys published as a JWKS on a local
//! HTTP server (port 0), as Cognito or any OIDC provider publishes them.
//! Keys are generated at test time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::StreamExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::EncodePrivateKey;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde_json::json;
use tally_gateway::auth::{AuthConfig, KeySource, Verifier};

struct Keys {
    rsa_pem: String,
    ec_pem: String,
    jwks: serde_json::Value,
}

fn keys() -> Keys {
    let mut rng = rand::rngs::OsRng;
    let rsa_key = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let rsa_pem = rsa_key
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string();
    let ec_key = p256::SecretKey::random(&mut rng);
    let ec_pem = ec_key
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .unwrap()
        .to_string();
    let point = ec_key.public_key().to_encoded_point(false);
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256",
         "n": URL_SAFE_NO_PAD.encode(rsa_key.n().to_bytes_be()),
         "e": URL_SAFE_NO_PAD.encode(rsa_key.e().to_bytes_be())},
        {"kty": "EC", "kid": "ec-1", "use": "sig", "alg": "ES256", "crv": "P-256",
         "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
         "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())},
    ]});
    Keys {
        rsa_pem,
        ec_pem,
        jwks,
    }
}

fn sign(algorithm: Algorithm, kid: &str, key: &EncodingKey, claims: serde_json::Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[tokio::test]
async fn rs256_and_es256_tokens_from_a_jwks_url() {
    let keys = keys();
    let fetches = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/.well-known/jwks.json",
        get({
            let jwks = keys.jwks.clone();
            let fetches = fetches.clone();
            move || async move {
                fetches.fetch_add(1, Ordering::Relaxed);
                axum::Json(jwks)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let verifier = Verifier::new(AuthConfig {
        keys: KeySource::Jwks(url),
        audience: "client-123".into(),
        issuer: "https://issuer.example".into(),
        voter_claim: "sub".into(),
        role_claim: "cognito:groups".into(),
        admin_role: "admins".into(),
        leeway: Duration::from_secs(0),
    })
    .unwrap();
    assert!(!verifier.ready().await, "no keys before the first fetch");
    verifier.refresh().await.unwrap();
    assert!(verifier.ready().await);
    let now = tally_contract::time::now_millis() / 1000;
    let claims = |sub: &str| json!({"sub": sub, "aud": "client-123", "iss": "https://issuer.example", "exp": now + 60});
    let rsa = EncodingKey::from_rsa_pem(keys.rsa_pem.as_bytes()).unwrap();
    let ec = EncodingKey::from_ec_pem(keys.ec_pem.as_bytes()).unwrap();

    let caller = verifier
        .verify(&sign(Algorithm::RS256, "rsa-1", &rsa, claims("u-rsa")))
        .await
        .unwrap();
    assert_eq!((caller.subject.as_str(), caller.admin), ("u-rsa", false));
    let mut admin_claims = claims("ops");
    admin_claims["cognito:groups"] = json!(["voters", "admins"]);
    let caller = verifier
        .verify(&sign(Algorithm::ES256, "ec-1", &ec, admin_claims))
        .await
        .unwrap();
    assert_eq!((caller.subject.as_str(), caller.admin), ("ops", true));

    let code =
        |result: Result<_, tally_gateway::error::ApiError>| result.unwrap_err().status_and_code().1;
    // A key used under another key's id, an unknown id, a wrong audience,
    // an expired token, a symmetric token: all refused.
    assert_eq!(
        code(
            verifier
                .verify(&sign(Algorithm::RS256, "ec-1", &rsa, claims("u")))
                .await
        ),
        "invalid_token"
    );
    assert_eq!(
        code(
            verifier
                .verify(&sign(Algorithm::RS256, "rsa-9", &rsa, claims("u")))
                .await
        ),
        "invalid_token"
    );
    let mut wrong_audience = claims("u");
    wrong_audience["aud"] = json!("other-client");
    assert_eq!(
        code(
            verifier
                .verify(&sign(Algorithm::RS256, "rsa-1", &rsa, wrong_audience))
                .await
        ),
        "invalid_token"
    );
    let mut expired = claims("u");
    expired["exp"] = json!(now - 30);
    assert_eq!(
        code(
            verifier
                .verify(&sign(Algorithm::ES256, "ec-1", &ec, expired))
                .await
        ),
        "token_expired"
    );
    let symmetric = sign(
        Algorithm::HS256,
        "rsa-1",
        &EncodingKey::from_secret(&[1; 32]),
        claims("u"),
    );
    assert_eq!(code(verifier.verify(&symmetric).await), "invalid_token");
    assert!(
        verifier.mint("u", false, Duration::from_secs(60)).is_err(),
        "no minting without a secret"
    );
    assert!(
        fetches.load(Ordering::Relaxed) <= 2,
        "an unknown key id refreshes the set at most once per 30 s"
    );
}

/// Serves `app` on a free loopback port; the key set's URL.
async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

fn jwks_verifier(url: String) -> Verifier {
    Verifier::new(AuthConfig {
        keys: KeySource::Jwks(url),
        audience: "client-123".into(),
        issuer: "https://issuer.example".into(),
        voter_claim: "sub".into(),
        role_claim: "cognito:groups".into(),
        admin_role: "admins".into(),
        leeway: Duration::from_secs(0),
    })
    .unwrap()
}

/// An RS256 token naming key `kid` (its signature is never reached: the
/// key is looked up first).
fn token_with_kid(kid: &str) -> String {
    let part = |value: serde_json::Value| URL_SAFE_NO_PAD.encode(value.to_string());
    format!(
        "{}.{}.c2lnbmF0dXJl",
        part(json!({"alg": "RS256", "typ": "JWT", "kid": kid})),
        part(
            json!({"sub": "u", "aud": "client-123", "iss": "https://issuer.example", "exp": 4_000_000_000u64})
        )
    )
}

#[tokio::test]
async fn tokens_with_random_key_ids_fetch_the_key_set_once() {
    let keys = keys();
    let fetches = Arc::new(AtomicUsize::new(0));
    let url = serve(Router::new().route(
        "/.well-known/jwks.json",
        get({
            let (jwks, fetches) = (keys.jwks.clone(), fetches.clone());
            move || async move {
                fetches.fetch_add(1, Ordering::Relaxed);
                // Slow enough that the callers below all arrive during it.
                tokio::time::sleep(Duration::from_millis(200)).await;
                axum::Json(jwks)
            }
        }),
    ))
    .await;
    let verifier = Arc::new(jwks_verifier(url));
    let callers: Vec<_> = (0..50)
        .map(|i| {
            let verifier = verifier.clone();
            tokio::spawn(async move {
                verifier
                    .verify(&token_with_kid(&format!("random-{i}")))
                    .await
            })
        })
        .collect();
    for caller in callers {
        assert!(caller.await.unwrap().is_err());
    }
    assert_eq!(
        fetches.load(Ordering::Relaxed),
        1,
        "50 unknown key ids at once make one fetch, not one each"
    );
    assert!(verifier.ready().await, "the one fetch loaded the set");
}

#[tokio::test]
async fn a_failing_key_set_is_asked_for_again_only_after_a_backoff() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let url = serve(Router::new().route(
        "/.well-known/jwks.json",
        get({
            let fetches = fetches.clone();
            move || async move {
                fetches.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::INTERNAL_SERVER_ERROR
            }
        }),
    ))
    .await;
    let verifier = jwks_verifier(url);
    for i in 0..20 {
        assert!(verifier
            .verify(&token_with_kid(&format!("k{i}")))
            .await
            .is_err());
    }
    assert!(verifier.refresh().await.is_err());
    assert_eq!(
        fetches.load(Ordering::Relaxed),
        1,
        "no retry within the backoff"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let error = verifier.refresh().await.unwrap_err();
    assert!(error.contains("500"), "{error}");
    assert_eq!(
        fetches.load(Ordering::Relaxed),
        2,
        "one retry after a second"
    );
    assert!(verifier.verify(&token_with_kid("k-late")).await.is_err());
    assert_eq!(
        fetches.load(Ordering::Relaxed),
        2,
        "the backoff doubles after a second failure"
    );
}

#[tokio::test]
async fn a_huge_key_set_is_abandoned_while_it_is_read() {
    // 64 MiB streamed without a length, counting what the server produced.
    let produced = Arc::new(AtomicUsize::new(0));
    let url = serve(Router::new().route(
        "/.well-known/jwks.json",
        get({
            let produced = produced.clone();
            move || async move {
                let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
                let body = futures::stream::iter(0..1024).map(move |_| {
                    produced.fetch_add(chunk.len(), Ordering::Relaxed);
                    Ok::<_, std::io::Error>(chunk.clone())
                });
                axum::body::Body::from_stream(body)
            }
        }),
    ))
    .await;
    let verifier = jwks_verifier(url);
    let error = verifier.refresh().await.unwrap_err();
    assert!(error.contains("larger than"), "{error}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let produced = produced.load(Ordering::Relaxed);
    assert!(
        produced < 16 << 20,
        "the client stopped reading early; the server produced {produced} bytes of 64 MiB"
    );
}

/// Key rotation: the provider publishes a new key (and drops the old one)
/// after the first fetch; a token signed with the new key is verified once
/// the set may be fetched again, and the old key stops working.
#[tokio::test]
async fn a_rotated_key_is_fetched_and_the_old_one_dropped() {
    let mut rng = rand::rngs::OsRng;
    let ec_key = |rng: &mut rand::rngs::OsRng| {
        let key = p256::SecretKey::random(rng);
        let point = key.public_key().to_encoded_point(false);
        let pem = key
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
            .to_string();
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        );
        let jwk = move |kid: &str| {
            json!({"kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
                   "x": x, "y": y})
        };
        (EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(), jwk)
    };
    let (old_key, old_jwk) = ec_key(&mut rng);
    let (new_key, new_jwk) = ec_key(&mut rng);
    let before = json!({"keys": [old_jwk("ec-old")]});
    let after = json!({"keys": [new_jwk("ec-new")]});
    let rotated = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fetches = Arc::new(AtomicUsize::new(0));
    let url = serve(Router::new().route(
        "/.well-known/jwks.json",
        get({
            let (rotated, fetches) = (rotated.clone(), fetches.clone());
            move || async move {
                fetches.fetch_add(1, Ordering::Relaxed);
                axum::Json(if rotated.load(Ordering::Relaxed) {
                    after
                } else {
                    before
                })
            }
        }),
    ))
    .await;
    let verifier = jwks_verifier(url).with_min_refresh(Duration::from_secs(2));
    verifier.refresh().await.unwrap();
    let now = tally_contract::time::now_millis() / 1000;
    let claims =
        json!({"sub": "u", "aud": "client-123", "iss": "https://issuer.example", "exp": now + 60});
    let old_token = sign(Algorithm::ES256, "ec-old", &old_key, claims.clone());
    let new_token = sign(Algorithm::ES256, "ec-new", &new_key, claims);
    assert!(verifier.verify(&old_token).await.is_ok());
    rotated.store(true, Ordering::Relaxed);
    assert!(
        verifier.verify(&new_token).await.is_err(),
        "too soon after the last fetch: not fetched again yet"
    );
    assert_eq!(fetches.load(Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let caller = verifier
        .verify(&new_token)
        .await
        .expect("the rotated key is fetched");
    assert_eq!(caller.subject, "u");
    assert_eq!(fetches.load(Ordering::Relaxed), 2);
    assert!(
        verifier.verify(&old_token).await.is_err(),
        "the old key left the set"
    );
}
