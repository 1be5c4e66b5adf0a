//! Who may call, as Service Bus checks it.
//!
//! - Shared access signatures (`Authorization: SharedAccessSignature
//!   sr=<url-encoded resource>&sig=<url-encoded base64 HMAC-SHA256>&se=<expiry,
//!   seconds since the epoch>&skn=<policy>`): the signature is recomputed
//!   over `"{sr}\n{se}"` (`sr` as it appears in the token, still encoded)
//!   with the policy key's UTF-8 bytes; the token must not have expired,
//!   and the request's URL must lie under `sr`. A policy grants some of
//!   Send, Listen and Manage.
//! - Microsoft Entra ID bearer tokens (`Authorization: Bearer <JWT>`): an
//!   RS256 signature by the configured issuer key, audience
//!   `https://servicebus.azure.net`, not expired; what the caller may do
//!   comes from the role assignments of its object id (`oid`): Data
//!   Sender, Data Receiver, Data Owner.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::Sha256;
use url::form_urlencoded;

/// What a caller may do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rights {
    pub send: bool,
    pub listen: bool,
    pub manage: bool,
}

impl Rights {
    pub const ALL: Rights = Rights {
        send: true,
        listen: true,
        manage: true,
    };
    /// Azure Service Bus Data Sender.
    pub const SENDER: Rights = Rights {
        send: true,
        listen: false,
        manage: false,
    };
    /// Azure Service Bus Data Receiver.
    pub const RECEIVER: Rights = Rights {
        send: false,
        listen: true,
        manage: false,
    };

    fn allows(&self, needed: Needed) -> bool {
        match needed {
            Needed::Send => self.send || self.manage,
            Needed::Listen => self.listen || self.manage,
            Needed::Manage => self.manage,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needed {
    Send,
    Listen,
    Manage,
}

/// A shared access policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub key: String,
    pub rights: Rights,
}

/// The Entra ID tenant the namespace trusts.
#[derive(Clone)]
pub struct Entra {
    /// The issuer's RS256 public key, PEM.
    pub key: DecodingKey,
    /// Role assignments by object id.
    pub principals: HashMap<String, Rights>,
}

pub const AUDIENCE: &str = "https://servicebus.azure.net";

#[derive(Deserialize)]
struct Claims {
    oid: Option<String>,
}

/// Checks a request for `needed`; `url` is the resource as Azure sees it
/// (`https://<namespace host>/<path>?<query>`). The error is the message
/// of a 401.
pub(crate) fn authorize(
    authorization: Option<&str>,
    url: &str,
    needed: Needed,
    policies: &[Policy],
    entra: Option<&Entra>,
    now_unix: i64,
) -> Result<(), String> {
    let header = authorization.ok_or("no Authorization header")?;
    let rights = if let Some(token) = header.strip_prefix("SharedAccessSignature ") {
        shared_access(token, url, policies, now_unix)?
    } else if let Some(token) = header.strip_prefix("Bearer ") {
        bearer(token, entra)?
    } else {
        return Err(
            "the Authorization header is neither a shared access signature nor a bearer token"
                .into(),
        );
    };
    if rights.allows(needed) {
        Ok(())
    } else {
        Err(format!(
            "Unauthorized access. '{needed:?}' claim(s) are required to perform this operation."
        ))
    }
}

fn shared_access(
    token: &str,
    url: &str,
    policies: &[Policy],
    now_unix: i64,
) -> Result<Rights, String> {
    let mut raw_sr = None;
    let mut fields = HashMap::new();
    for pair in token.split('&') {
        let (k, v) = pair
            .split_once('=')
            .ok_or("malformed shared access signature")?;
        if k == "sr" {
            raw_sr = Some(v);
        }
        let decoded: String = form_urlencoded::parse(format!("v={v}").as_bytes())
            .map(|(_, v)| v.into_owned())
            .next()
            .unwrap_or_default();
        fields.insert(k, decoded);
    }
    let (Some(raw_sr), Some(sr), Some(sig), Some(se), Some(skn)) = (
        raw_sr,
        fields.get("sr"),
        fields.get("sig"),
        fields.get("se"),
        fields.get("skn"),
    ) else {
        return Err("a shared access signature needs sr, sig, se and skn".into());
    };
    let policy = policies
        .iter()
        .find(|p| &p.name == skn)
        .ok_or_else(|| format!("unknown shared access policy {skn}"))?;
    let expiry: i64 = se.parse().map_err(|_| "se is not a number".to_string())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(policy.key.as_bytes())
        .map_err(|_| "unusable key".to_string())?;
    mac.update(format!("{raw_sr}\n{se}").as_bytes());
    let signature = STANDARD
        .decode(sig)
        .map_err(|_| "sig is not base64".to_string())?;
    mac.verify_slice(&signature)
        .map_err(|_| "the signature does not match the policy key".to_string())?;
    if expiry <= now_unix {
        return Err("the shared access signature has expired".into());
    }
    if !under(sr, url) {
        return Err(format!("the token is for {sr}, not for this resource"));
    }
    Ok(policy.rights)
}

/// Whether `url` is `resource` or lies beneath it (scheme and case aside).
fn under(resource: &str, url: &str) -> bool {
    fn strip(s: &str) -> String {
        let s = s.split_once("://").map_or(s, |(_, rest)| rest);
        s.trim_end_matches('/').to_ascii_lowercase()
    }
    let (resource, url) = (strip(resource), strip(url));
    url == resource
        || url.starts_with(&format!("{resource}/"))
        || url.starts_with(&format!("{resource}?"))
}

fn bearer(token: &str, entra: Option<&Entra>) -> Result<Rights, String> {
    let entra = entra.ok_or("this namespace accepts no Entra ID tokens")?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[AUDIENCE, "https://servicebus.azure.net/"]);
    validation.set_required_spec_claims(&["exp", "aud"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Claims>(token, &entra.key, &validation)
        .map_err(|e| format!("invalid bearer token: {e}"))?;
    let oid = data.claims.oid.ok_or("the token has no oid")?;
    entra
        .principals
        .get(&oid)
        .copied()
        .ok_or_else(|| format!("no role assignment for principal {oid}"))
}
