//! Bearer JWTs from an OpenID Connect issuer: RS256 or ES256 only, the
//! signing key chosen by `kid` from the issuer's JWKS (fetched at the
//! first token, cached, fetched again when a token names an unknown key,
//! at most once per `jwks_refresh_s`), `iss`, `aud`, `exp` and `nbf`
//! checked with the configured leeway. `jsonwebtoken` does the
//! cryptography.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use legato_contracts::TenantId;
use serde_json::Value;
use tokio::sync::Mutex;

use super::settings::{JwtSettings, Role};
use super::{Principal, Refusal};

struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    fetched: Option<Instant>,
}

pub struct JwtVerifier {
    settings: JwtSettings,
    http: reqwest::Client,
    keys: Mutex<Keys>,
}

impl JwtVerifier {
    pub fn new(settings: JwtSettings, section: &str) -> Result<Self, String> {
        for (name, value) in [
            ("issuer", &settings.issuer),
            ("audience", &settings.audience),
            ("jwks_url", &settings.jwks_url),
        ] {
            if value.is_empty() {
                return Err(format!("{section}.jwt.{name} is required in jwt mode"));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            settings,
            http,
            keys: Mutex::new(Keys {
                by_kid: HashMap::new(),
                fetched: None,
            }),
        })
    }

    pub async fn verify(&self, token: &str) -> Result<Principal, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| Refusal::Unauthenticated(format!("not a JWT: {e}")))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(Refusal::Unauthenticated(format!(
                "algorithm {:?} is not accepted (RS256, ES256)",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| Refusal::Unauthenticated("the token names no key (kid)".into()))?;
        let (key, alg) = self.key(&kid).await?;
        if alg != header.alg {
            return Err(Refusal::Unauthenticated(
                "the token's algorithm is not its key's".into(),
            ));
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway_s;
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| Refusal::Unauthenticated(format!("token refused: {e}")))?
            .claims;
        let roles = match &claims[&self.settings.roles_claim] {
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_str)
                .filter_map(Role::parse)
                .collect(),
            Value::String(one) => Role::parse(one).into_iter().collect(),
            _ => Vec::new(),
        };
        let tenant = match &claims[&self.settings.tenant_claim] {
            Value::Null => None,
            Value::String(text) => Some(TenantId::parse(text.as_str()).map_err(|e| {
                Refusal::Unauthenticated(format!("claim {}: {e}", self.settings.tenant_claim))
            })?),
            _ => {
                return Err(Refusal::Unauthenticated(format!(
                    "claim {} is not a string",
                    self.settings.tenant_claim
                )));
            }
        };
        Ok(Principal {
            subject: claims["sub"].as_str().unwrap_or_default().to_owned(),
            tenant,
            roles,
            agents: None,
        })
    }

    /// The key `kid` names, from the cache or a fresh JWKS.
    async fn key(&self, kid: &str) -> Result<(DecodingKey, Algorithm), Refusal> {
        let mut keys = self.keys.lock().await;
        if let Some(found) = keys.by_kid.get(kid) {
            return Ok(found.clone());
        }
        let gap = Duration::from_secs(self.settings.jwks_refresh_s);
        if keys.fetched.is_some_and(|at| at.elapsed() < gap) {
            return Err(Refusal::Unauthenticated(format!(
                "unknown signing key {kid}"
            )));
        }
        keys.fetched = Some(Instant::now());
        let set: JwkSet = self
            .http
            .get(&self.settings.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| Refusal::Unavailable(format!("the issuer's keys: {e}")))?
            .json()
            .await
            .map_err(|e| Refusal::Unavailable(format!("the issuer's keys are not a JWKS: {e}")))?;
        keys.by_kid = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec)
                        if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                    {
                        Algorithm::ES256
                    }
                    _ => return None,
                };
                Some((kid, (DecodingKey::from_jwk(jwk).ok()?, alg)))
            })
            .collect();
        keys.by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| Refusal::Unauthenticated(format!("unknown signing key {kid}")))
    }
}
