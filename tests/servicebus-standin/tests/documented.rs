//! The stand-in against what Microsoft's documentation of the Service Bus
//! REST API says, spoken with a plain HTTP client (not legato's adapter):
//! signatures, bearer tokens, send limits, peek-lock and the lock
//! operations, delivery counts and `MaxDeliveryCount`, duplicate
//! detection, rule filters, `AutoDeleteOnIdle`. The fixture key pair
//! under `fixtures/` exists only to sign test tokens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use legato_servicebus_standin::{AUDIENCE, Config, Entra, Policy, Rights, StandIn};
use reqwest::StatusCode;
use sha2::Sha256;

const KEY_NAME: &str = "RootManageSharedAccessKey";
const ENTRY: &str = "application/atom+xml;type=entry;charset=utf-8";

struct Ns {
    standin: StandIn,
    key: String,
    http: reqwest::Client,
}

fn key_of(connection: &str) -> String {
    connection
        .split(";SharedAccessKey=")
        .nth(1)
        .unwrap()
        .to_owned()
}

/// The documented algorithm: HMAC-SHA256 with the key's UTF-8 bytes over
/// `URL-encoded resource URI + "\n" + expiry`.
fn sas(resource: &str, policy: &str, key: &str, expiry: i64) -> String {
    let sr: String = url::form_urlencoded::byte_serialize(resource.as_bytes()).collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{sr}\n{expiry}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let sig: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
    format!("SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={policy}")
}

fn in_an_hour() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp() + 3600
}

impl Ns {
    async fn start(config: Config) -> Self {
        let standin = StandIn::start(config).await.unwrap();
        let key = key_of(&standin.connection_string());
        Self {
            standin,
            key,
            http: reqwest::Client::new(),
        }
    }

    fn resource(&self, path: &str) -> String {
        format!("https://{}/{path}", self.standin.host())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let auth = sas(&self.resource(path), KEY_NAME, &self.key, in_an_hour());
        self.http
            .request(method, format!("{}/{path}", self.standin.url()))
            .header("authorization", auth)
    }

    async fn put(&self, path: &str, kind: &str, inner: &str) -> StatusCode {
        let body = format!(
            "<entry xmlns=\"http://www.w3.org/2005/Atom\"><content type=\"application/xml\"><{kind} xmlns=\"http://schemas.microsoft.com/netservices/2010/10/servicebus/connect\" xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\">{inner}</{kind}></content></entry>"
        );
        self.request(reqwest::Method::PUT, &format!("{path}?api-version=2021-05"))
            .header("content-type", ENTRY)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
    }

    async fn topic(&self, topic: &str, inner: &str) {
        assert_eq!(
            self.put(topic, "TopicDescription", inner).await,
            StatusCode::CREATED
        );
    }

    async fn subscription(&self, topic: &str, sub: &str, inner: &str) {
        let path = format!("{topic}/subscriptions/{sub}");
        assert_eq!(
            self.put(&path, "SubscriptionDescription", inner).await,
            StatusCode::CREATED
        );
    }

    async fn send(
        &self,
        topic: &str,
        body: &str,
        broker: &str,
        props: &[(&str, &str)],
    ) -> StatusCode {
        let mut r = self
            .request(reqwest::Method::POST, &format!("{topic}/messages"))
            .header("brokerproperties", broker)
            .header("content-type", "text/plain");
        for (k, v) in props {
            r = r.header(*k, *v);
        }
        r.body(body.to_owned()).send().await.unwrap().status()
    }

    async fn peek_lock(&self, topic: &str, sub: &str) -> reqwest::Response {
        self.request(
            reqwest::Method::POST,
            &format!("{topic}/subscriptions/{sub}/messages/head?timeout=1"),
        )
        .send()
        .await
        .unwrap()
    }

    /// Settles through the `Location` URL, signed for that URL.
    async fn at_lock(&self, method: reqwest::Method, location: &str) -> StatusCode {
        let auth = sas(location, KEY_NAME, &self.key, in_an_hour());
        let local = location.replace(
            &format!("https://{}", self.standin.host()),
            &self.standin.url(),
        );
        self.http
            .request(method, local)
            .header("authorization", auth)
            .send()
            .await
            .unwrap()
            .status()
    }
}

fn broker(r: &reqwest::Response) -> serde_json::Value {
    serde_json::from_str(r.headers()["brokerproperties"].to_str().unwrap()).unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_signature_made_with_another_key_or_expired_or_for_another_resource_is_refused() {
    let ns = Ns::start(Config::new("docs")).await;
    ns.topic("t", "").await;
    let url = format!("{}/t/messages", ns.standin.url());
    let cases = [
        sas(&ns.resource("t"), KEY_NAME, "not-the-key", in_an_hour()),
        sas(&ns.resource("t"), KEY_NAME, &ns.key, 1_000),
        sas(&ns.resource("other"), KEY_NAME, &ns.key, in_an_hour()),
        sas(&ns.resource("t"), "NoSuchPolicy", &ns.key, in_an_hour()),
    ];
    for auth in cases {
        let status = ns
            .http
            .post(&url)
            .header("authorization", &auth)
            .body("x")
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth}");
    }
    // A token for the namespace covers everything under it.
    let ok = sas(
        &format!("https://{}/", ns.standin.host()),
        KEY_NAME,
        &ns.key,
        in_an_hour(),
    );
    let status = ns
        .http
        .post(&url)
        .header("authorization", ok)
        .body("x")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_send_only_policy_cannot_receive_or_manage() {
    let config = Config::new("docs").policy(Policy {
        name: "send".into(),
        key: "c2VuZC1rZXk=".into(),
        rights: Rights::SENDER,
    });
    let ns = Ns::start(config).await;
    ns.topic("t", "").await;
    ns.subscription("t", "s", "").await;
    let send = |path: &str| sas(&ns.resource(path), "send", "c2VuZC1rZXk=", in_an_hour());
    let sent = ns
        .http
        .post(format!("{}/t/messages", ns.standin.url()))
        .header("authorization", send("t/messages"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::CREATED);
    let received = ns
        .http
        .post(format!(
            "{}/t/subscriptions/s/messages/head?timeout=1",
            ns.standin.url()
        ))
        .header(
            "authorization",
            send("t/subscriptions/s/messages/head?timeout=1"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(received.status(), StatusCode::UNAUTHORIZED);
    let listed = ns
        .http
        .get(format!("{}/t/subscriptions", ns.standin.url()))
        .header("authorization", send("t/subscriptions"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), StatusCode::UNAUTHORIZED);
}

#[derive(serde::Serialize)]
struct Claims {
    aud: String,
    oid: String,
    exp: i64,
}

#[tokio::test]
async fn entra_tokens_need_the_right_signature_audience_expiry_and_role() {
    let private =
        jsonwebtoken::EncodingKey::from_rsa_der(include_bytes!("../fixtures/entra-test-key.der"));
    let public = jsonwebtoken::DecodingKey::from_rsa_der(include_bytes!(
        "../fixtures/entra-test-key.pub.der"
    ));
    let principals = HashMap::from([
        ("sender".to_owned(), Rights::SENDER),
        ("owner".to_owned(), Rights::ALL),
    ]);
    let ns = Ns::start(Config::new("docs").entra(Entra {
        key: public,
        principals,
    }))
    .await;
    ns.topic("t", "").await;
    let token = |aud: &str, oid: &str, exp: i64| {
        let claims = Claims {
            aud: aud.into(),
            oid: oid.into(),
            exp,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &private,
        )
        .unwrap()
    };
    let url = format!("{}/t/messages", ns.standin.url());
    let send = |t: String| ns.http.post(&url).bearer_auth(t).body("x").send();
    assert_eq!(
        send(token(AUDIENCE, "sender", in_an_hour()))
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    for refused in [
        token("https://storage.azure.com", "sender", in_an_hour()),
        token(AUDIENCE, "sender", 1_000),
        token(AUDIENCE, "stranger", in_an_hour()),
        format!("{}x", token(AUDIENCE, "sender", in_an_hour())),
    ] {
        assert_eq!(
            send(refused).await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let manage = ns
        .http
        .get(format!("{}/t/subscriptions", ns.standin.url()))
        .bearer_auth(token(AUDIENCE, "sender", in_an_hour()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        manage.status(),
        StatusCode::UNAUTHORIZED,
        "Data Sender has no Manage right"
    );
}

#[tokio::test]
async fn peek_lock_counts_deliveries_and_the_lock_url_completes_unlocks_and_renews() {
    let ns = Ns::start(Config::new("docs")).await;
    ns.topic("t", "").await;
    ns.subscription("t", "s", "<LockDuration>PT5S</LockDuration>")
        .await;
    assert_eq!(
        ns.peek_lock("t", "s").await.status(),
        StatusCode::NO_CONTENT
    );
    let status = ns
        .send(
            "t",
            "hello",
            r#"{"MessageId":"m1","Label":"greeting"}"#,
            &[("priority", "\"High\""), ("count", "3")],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let first = ns.peek_lock("t", "s").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let b = broker(&first);
    assert_eq!(
        (
            b["DeliveryCount"].as_i64(),
            b["MessageId"].as_str(),
            b["Label"].as_str()
        ),
        (Some(1), Some("m1"), Some("greeting"))
    );
    assert!(
        b["SequenceNumber"].as_i64().unwrap() > i64::from(u32::MAX),
        "sequence numbers are 64-bit"
    );
    assert_eq!(
        first.headers()["priority"],
        "\"High\"",
        "string properties come back quoted"
    );
    assert_eq!(first.headers()["count"], "3");
    let lock = location(&first);
    assert!(
        lock.starts_with(&format!(
            "https://{}/t/subscriptions/s/messages/",
            ns.standin.host()
        )),
        "{lock}"
    );
    assert_eq!(first.text().await.unwrap(), "hello");
    assert_eq!(
        ns.at_lock(reqwest::Method::POST, &lock).await,
        StatusCode::OK,
        "renew"
    );
    assert_eq!(
        ns.at_lock(reqwest::Method::PUT, &lock).await,
        StatusCode::OK,
        "unlock"
    );
    let second = ns.peek_lock("t", "s").await;
    assert_eq!(broker(&second)["DeliveryCount"], 2);
    let lock = location(&second);
    assert_eq!(
        ns.at_lock(reqwest::Method::DELETE, &lock).await,
        StatusCode::OK,
        "complete"
    );
    assert_eq!(
        ns.at_lock(reqwest::Method::DELETE, &lock).await,
        StatusCode::NOT_FOUND,
        "a settled lock is gone"
    );
    assert_eq!(
        ns.peek_lock("t", "s").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(ns.peek_lock("t", "nope").await.status(), StatusCode::GONE);
}

#[tokio::test]
async fn an_expired_lock_returns_the_message_and_max_delivery_count_dead_letters_it_with_a_reason()
{
    let ns = Ns::start(Config::new("docs")).await;
    ns.topic("t", "").await;
    ns.subscription(
        "t",
        "s",
        "<LockDuration>PT5S</LockDuration><MaxDeliveryCount>2</MaxDeliveryCount>",
    )
    .await;
    ns.send("t", "poison", r#"{"MessageId":"p"}"#, &[]).await;
    let first = ns.peek_lock("t", "s").await;
    assert_eq!(broker(&first)["DeliveryCount"], 1);
    ns.standin.advance(Duration::from_secs(6));
    let second = ns.peek_lock("t", "s").await;
    assert_eq!(
        broker(&second)["DeliveryCount"],
        2,
        "the expired lock counted as a delivery"
    );
    assert_eq!(
        ns.at_lock(reqwest::Method::PUT, &location(&second)).await,
        StatusCode::OK
    );
    assert_eq!(
        ns.peek_lock("t", "s").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(ns.standin.counts("t", "s"), Some((0, 1)));
    let dead = ns
        .request(
            reqwest::Method::POST,
            "t/subscriptions/s/$DeadLetterQueue/messages/head?timeout=1",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(dead.status(), StatusCode::CREATED);
    assert_eq!(
        dead.headers()["deadletterreason"],
        "\"MaxDeliveryCountExceeded\""
    );
    assert_eq!(dead.text().await.unwrap(), "poison");
}

#[tokio::test]
async fn duplicate_detection_drops_a_message_id_seen_within_the_window() {
    let ns = Ns::start(Config::new("docs")).await;
    ns.topic("t", "<RequiresDuplicateDetection>true</RequiresDuplicateDetection><DuplicateDetectionHistoryTimeWindow>PT1M</DuplicateDetectionHistoryTimeWindow>").await;
    ns.subscription("t", "s", "").await;
    for _ in 0..2 {
        assert_eq!(
            ns.send("t", "once", r#"{"MessageId":"same"}"#, &[]).await,
            StatusCode::CREATED
        );
    }
    assert_eq!(ns.standin.counts("t", "s"), Some((1, 0)));
    ns.standin.advance(Duration::from_secs(61));
    ns.send("t", "again", r#"{"MessageId":"same"}"#, &[]).await;
    assert_eq!(
        ns.standin.counts("t", "s"),
        Some((2, 0)),
        "outside the window it is new"
    );
    assert_eq!(
        ns.put(
            "t",
            "TopicDescription",
            "<DuplicateDetectionHistoryTimeWindow>PT1S</DuplicateDetectionHistoryTimeWindow>"
        )
        .await,
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn a_message_over_256_kb_is_refused() {
    let ns = Ns::start(Config::new("docs")).await;
    ns.topic("t", "").await;
    let big = "x".repeat(256 * 1024 + 1);
    assert_eq!(
        ns.send("t", &big, "{}", &[]).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(
        ns.send("t", "{", "not json", &[]).await,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn rules_route_by_correlation_and_sql_filters_and_a_message_no_rule_takes_is_dropped() {
    let ns = Ns::start(Config::new("docs")).await;
    ns.topic("t", "").await;
    ns.subscription("t", "by-label", "<DefaultRuleDescription><Filter i:type=\"CorrelationFilter\"><Label>echo</Label></Filter><Action i:type=\"EmptyRuleAction\"/><Name>echo</Name></DefaultRuleDescription>").await;
    ns.subscription("t", "by-sql", "<DefaultRuleDescription><Filter i:type=\"SqlFilter\"><SqlExpression>sys.Label LIKE 'cancel.%' OR priority = 'High'</SqlExpression></Filter><Action i:type=\"EmptyRuleAction\"/><Name>cancels</Name></DefaultRuleDescription>").await;
    ns.subscription("t", "none", "<DefaultRuleDescription><Filter i:type=\"FalseFilter\"><SqlExpression>1=0</SqlExpression></Filter><Action i:type=\"EmptyRuleAction\"/><Name>none</Name></DefaultRuleDescription>").await;
    ns.send("t", "1", r#"{"Label":"echo"}"#, &[]).await;
    ns.send("t", "2", r#"{"Label":"cancel.abc"}"#, &[]).await;
    ns.send(
        "t",
        "3",
        r#"{"Label":"other"}"#,
        &[("priority", "\"High\"")],
    )
    .await;
    ns.send("t", "4", r#"{"Label":"nobody"}"#, &[]).await;
    assert_eq!(ns.standin.counts("t", "by-label"), Some((1, 0)));
    assert_eq!(ns.standin.counts("t", "by-sql"), Some((2, 0)));
    assert_eq!(ns.standin.counts("t", "none"), Some((0, 0)));
    let rule = "<Filter i:type=\"SqlFilter\"><SqlExpression>sys.Label = 'nobody'</SqlExpression></Filter><Action i:type=\"EmptyRuleAction\"/><Name>late</Name>";
    assert_eq!(
        ns.put("t/subscriptions/none/rules/late", "RuleDescription", rule)
            .await,
        StatusCode::CREATED
    );
    ns.send("t", "5", r#"{"Label":"nobody"}"#, &[]).await;
    assert_eq!(ns.standin.counts("t", "none"), Some((1, 0)));
    let bad = "<Filter i:type=\"SqlFilter\"><SqlExpression>sys.Label LIKE</SqlExpression></Filter><Name>bad</Name>";
    assert_eq!(
        ns.put("t/subscriptions/none/rules/bad", "RuleDescription", bad)
            .await,
        StatusCode::BAD_REQUEST
    );
    let listed = ns
        .request(
            reqwest::Method::GET,
            "t/subscriptions/none/rules?api-version=2021-05",
        )
        .send()
        .await
        .unwrap();
    let text = listed.text().await.unwrap();
    assert!(
        text.contains("<Name>late</Name>") && text.contains("<Name>none</Name>"),
        "{text}"
    );
}

#[tokio::test]
async fn a_subscription_idle_past_auto_delete_on_idle_goes_away_and_short_settings_are_refused() {
    let ns = Ns::start(Config::new("docs")).await;
    ns.topic("t", "").await;
    assert_eq!(
        ns.put(
            "t/subscriptions/quick",
            "SubscriptionDescription",
            "<AutoDeleteOnIdle>PT1M</AutoDeleteOnIdle>"
        )
        .await,
        StatusCode::BAD_REQUEST,
        "Azure's minimum is 5 minutes"
    );
    assert_eq!(
        ns.put(
            "t/subscriptions/lock",
            "SubscriptionDescription",
            "<LockDuration>PT10M</LockDuration>"
        )
        .await,
        StatusCode::BAD_REQUEST,
        "at most 5 minutes"
    );
    ns.subscription("t", "idle", "<AutoDeleteOnIdle>PT5M</AutoDeleteOnIdle>")
        .await;
    ns.subscription("t", "kept", "").await;
    assert_eq!(
        ns.put("t/subscriptions/idle", "SubscriptionDescription", "")
            .await,
        StatusCode::CONFLICT
    );
    ns.standin.advance(Duration::from_secs(299));
    assert_eq!(ns.standin.subscriptions("t").unwrap().len(), 2);
    ns.standin.advance(Duration::from_secs(2));
    assert_eq!(
        ns.standin.subscriptions("t").unwrap(),
        vec!["kept".to_owned()]
    );
}
