//! Standard Webhooks signatures (v1: HMAC-SHA256 over
//! `<webhook-id>.<webhook-timestamp>.<body>`, keyed with the secret's bytes
//! after its `whsec_` prefix, base64), so a receiver verifies a push with
//! the `standardwebhooks` package of its language; and the signed
//! capability a push's callback URL carries.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// A signing secret, as the settings hold it (`whsec_<base64>`).
#[derive(Clone)]
pub(crate) struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    /// The secret's key, or why the setting is not one.
    pub fn new(secret: &str) -> Result<Self, String> {
        let encoded = secret
            .strip_prefix("whsec_")
            .ok_or("gateway.push.signing_secret must start with whsec_")?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "gateway.push.signing_secret is not whsec_ and base64")?;
        if key.len() < 24 {
            return Err("gateway.push.signing_secret must hold at least 24 bytes".into());
        }
        Ok(Self { key })
    }

    fn mac(&self, parts: &[&[u8]]) -> Vec<u8> {
        // Any key length is a valid HMAC key.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// The `webhook-signature` header's value for one message.
    pub fn webhook_signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let ts = timestamp.to_string();
        let sig = self.mac(&[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
        format!("v1,{}", STANDARD.encode(sig))
    }

    /// The capability a callback URL carries for `token`'s attempt.
    pub fn callback_signature(&self, token: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(&[b"legato-callback.", token.as_bytes()]))
    }

    /// Whether `signature` is the callback capability for `token`
    /// (compared without stopping at the first difference).
    pub fn verify_callback(&self, token: &str, signature: &str) -> bool {
        let expected = self.callback_signature(token);
        expected.len() == signature.len()
            && expected
                .bytes()
                .zip(signature.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's reference
    /// implementations (their test suites sign this message with this
    /// secret and timestamp).
    #[test]
    fn signs_as_the_standard_webhooks_reference_does() {
        let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = signer.webhook_signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn callback_capabilities_verify_only_for_their_token() {
        let signer = Signer::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = signer.callback_signature("token-a");
        assert!(signer.verify_callback("token-a", &sig));
        assert!(!signer.verify_callback("token-b", &sig));
        assert!(!signer.verify_callback("token-a", "forged"));
        assert!(Signer::new("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Signer::new("whsec_c2hvcnQ=").is_err());
    }
}
