//! Topics, subscriptions and rules through the Service Bus management API
//! (Atom XML over REST, `api-version=2021-05`), which the crate does not
//! cover. It needs the Manage right: a policy with Manage, or the Data
//! Owner role for an Entra ID identity.
//!
//! Creating is idempotent: `PUT` answers 201, or 409 when the entity
//! exists, and then the rules legato needs are added to what is there.
//! A subscription is created with its first rule as its default rule, so
//! there is no moment in which it takes every message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use azure_core::auth::Secret;
use azure_core::{HttpClient, Method, Request, Url};
use quick_xml::Reader;
use quick_xml::events::Event;

use super::ServiceBusAuth;
use super::errors;
use super::http::ServiceBusHttp;
use super::names::RuleFilter;
use crate::BusError;

const API_VERSION: &str = "2021-05";
const ATOM_ENTRY: &str = "application/atom+xml;type=entry;charset=utf-8";
const CONNECT: &str = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect";
const INSTANCE: &str = "http://www.w3.org/2001/XMLSchema-instance";
/// A listing page; Service Bus returns at most 100 entries per request.
const PAGE: usize = 100;
/// How long a signature made here is valid for.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(3600);

/// How a subscription is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSettings {
    pub lock_duration: Duration,
    pub max_delivery_count: u32,
    pub auto_delete_on_idle: Option<Duration>,
}

pub(super) struct Management {
    pub(super) http: Arc<ServiceBusHttp>,
    pub(super) host: String,
    pub(super) auth: ServiceBusAuth,
}

/// One `<entry>` of a feed, flattened: local element names to text, and
/// `Filter@type` to the filter's `i:type`.
type Entry = HashMap<String, String>;

pub(super) enum Put {
    Created,
    Existed,
}

fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

/// `xs:duration` seconds, as .NET reads `TimeSpan`.
fn duration(d: Duration) -> String {
    format!("PT{}S", d.as_secs().max(1))
}

fn filter_xml(filter: &RuleFilter) -> String {
    match (filter, filter.sql()) {
        (RuleFilter::Label(label), _) => format!(
            "<Filter i:type=\"CorrelationFilter\"><Label>{}</Label></Filter>",
            escape(label)
        ),
        (_, Some(sql)) => format!(
            "<Filter i:type=\"SqlFilter\"><SqlExpression>{}</SqlExpression><CompatibilityLevel>20</CompatibilityLevel></Filter>",
            escape(&sql)
        ),
        (_, None) => String::new(),
    }
}

fn entry(kind: &str, inner: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><entry xmlns=\"http://www.w3.org/2005/Atom\">\
         <content type=\"application/xml\"><{kind} xmlns=\"{CONNECT}\" xmlns:i=\"{INSTANCE}\">{inner}</{kind}></content></entry>"
    )
}

pub(super) fn topic_description(duplicate_window: Duration) -> String {
    entry(
        "TopicDescription",
        &format!(
            "<RequiresDuplicateDetection>true</RequiresDuplicateDetection>\
             <DuplicateDetectionHistoryTimeWindow>{}</DuplicateDetectionHistoryTimeWindow>",
            duration(duplicate_window)
        ),
    )
}

/// Elements in the order the service's data contract expects.
pub(super) fn subscription_description(
    settings: &SubscriptionSettings,
    first: &RuleFilter,
) -> String {
    let idle = settings
        .auto_delete_on_idle
        .map(|d| format!("<AutoDeleteOnIdle>{}</AutoDeleteOnIdle>", duration(d)))
        .unwrap_or_default();
    entry(
        "SubscriptionDescription",
        &format!(
            "<LockDuration>{}</LockDuration>\
             <DeadLetteringOnMessageExpiration>true</DeadLetteringOnMessageExpiration>\
             <DefaultRuleDescription>{}<Action i:type=\"EmptyRuleAction\"/><Name>{}</Name></DefaultRuleDescription>\
             <MaxDeliveryCount>{}</MaxDeliveryCount>{idle}",
            duration(settings.lock_duration),
            filter_xml(first),
            escape(&first.rule_name()),
            settings.max_delivery_count,
        ),
    )
}

pub(super) fn rule_description(filter: &RuleFilter) -> String {
    entry(
        "RuleDescription",
        &format!(
            "{}<Action i:type=\"EmptyRuleAction\"/><Name>{}</Name>",
            filter_xml(filter),
            escape(&filter.rule_name())
        ),
    )
}

/// The entries of an Atom feed.
fn entries(xml: &[u8]) -> Result<Vec<Entry>, String> {
    let mut reader = Reader::from_reader(xml);
    reader.trim_text(true);
    let mut all = Vec::new();
    let mut current: Option<Entry> = None;
    let mut element = String::new();
    let mut buf = Vec::new();
    loop {
        let event = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("unreadable Atom feed: {e}"))?;
        match event {
            Event::Start(e) | Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if name == "entry" {
                    current = Some(Entry::new());
                }
                if let Some(entry) = current.as_mut() {
                    for a in e.attributes().flatten() {
                        if a.key.local_name().as_ref() == b"type" && a.key.prefix().is_some() {
                            let value = String::from_utf8_lossy(&a.value).into_owned();
                            let value = value.rsplit(':').next().unwrap_or_default().to_owned();
                            entry.insert(format!("{name}@type"), value);
                        }
                    }
                }
                element = name;
            }
            Event::Text(t) => {
                if let Some(entry) = current.as_mut() {
                    let text = t
                        .unescape()
                        .map_err(|e| format!("unreadable Atom text: {e}"))?;
                    entry
                        .entry(element.clone())
                        .or_insert_with(|| text.into_owned());
                }
            }
            Event::End(e) if e.local_name().as_ref() == b"entry" => {
                all.extend(current.take());
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(all)
}

impl Management {
    fn url(&self, path: &str, query: &str) -> Result<Url, BusError> {
        Url::parse(&format!(
            "https://{}/{path}?api-version={API_VERSION}{query}",
            self.host
        ))
        .map_err(|e| BusError::Rejected(format!("entity path {path:?}: {e}")))
    }

    fn signature(&self, url: &Url) -> Result<Option<String>, BusError> {
        let ServiceBusAuth::SharedKey { policy, key } = &self.auth else {
            // The HTTP client adds the bearer token.
            return Ok(None);
        };
        let sr: String = url::form_urlencoded::byte_serialize(url.as_str().as_bytes()).collect();
        let expiry =
            time::OffsetDateTime::now_utc().unix_timestamp() + SIGNATURE_LIFETIME.as_secs() as i64;
        // azure_core's HMAC takes its key base64-encoded; the key is used as
        // its UTF-8 bytes, as the SAS documentation specifies.
        use base64::Engine;
        let secret = Secret::new(base64::engine::general_purpose::STANDARD.encode(key.as_bytes()));
        let sig = azure_core::hmac::hmac_sha256(&format!("{sr}\n{expiry}"), &secret)
            .map_err(|e| BusError::Unavailable(format!("signing a management request: {e}")))?;
        let sig: String = url::form_urlencoded::byte_serialize(sig.as_bytes()).collect();
        Ok(Some(format!(
            "SharedAccessSignature sr={sr}&sig={sig}&se={expiry}&skn={policy}"
        )))
    }

    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<String>,
    ) -> Result<(u16, bytes::Bytes), BusError> {
        self.call_with(method, url, body.map(|b| (b, ATOM_ENTRY)))
            .await
    }

    /// A signed request with `body` of its content type, answering the
    /// status and body.
    pub(super) async fn call_with(
        &self,
        method: Method,
        url: Url,
        body: Option<(String, &str)>,
    ) -> Result<(u16, bytes::Bytes), BusError> {
        let mut request = Request::new(url.clone(), method);
        if let Some(signature) = self.signature(&url)? {
            request.insert_header(azure_core::headers::AUTHORIZATION, signature);
        }
        match body {
            Some((body, content_type)) => {
                request.insert_header(azure_core::headers::CONTENT_TYPE, content_type.to_owned());
                request.set_body(body);
            }
            None => {
                request.insert_header(azure_core::headers::CONTENT_LENGTH, "0");
                request.set_body(azure_core::EMPTY_BODY);
            }
        }
        let doing = format!("{} {}", request.method(), url.path());
        let response = self
            .http
            .execute_request(&request)
            .await
            .map_err(|e| errors::from_azure(e, &doing))?;
        let status = u16::from(response.status());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| errors::from_azure(e, &doing))?;
        Ok((status, body))
    }

    /// Creates the entity at `path`, or finds it there.
    async fn put(&self, path: &str, description: String) -> Result<Put, BusError> {
        let url = self.url(path, "")?;
        let (status, body) = self.call(Method::Put, url, Some(description)).await?;
        match status {
            200 | 201 => Ok(Put::Created),
            409 => Ok(Put::Existed),
            other => Err(errors::from_status(
                other,
                &format!("creating {path}"),
                &String::from_utf8_lossy(&body),
            )),
        }
    }

    pub(super) async fn delete(&self, path: &str) -> Result<(), BusError> {
        let url = self.url(path, "")?;
        let (status, body) = self.call(Method::Delete, url, None).await?;
        match status {
            200..=299 | 404 => Ok(()),
            other => Err(errors::from_status(
                other,
                &format!("deleting {path}"),
                &String::from_utf8_lossy(&body),
            )),
        }
    }

    /// Every entry of a collection, page by page; `None` when the entity
    /// holding the collection does not exist (404 or 410).
    async fn list(&self, path: &str) -> Result<Option<Vec<Entry>>, BusError> {
        let mut all = Vec::new();
        // Bounded: a namespace holds at most a few thousand of anything.
        for page in 0..1_000 {
            let url = self.url(path, &format!("&$skip={}&$top={PAGE}", page * PAGE))?;
            let (status, body) = self.call(Method::Get, url, None).await?;
            if errors::gone(status) {
                return Ok(None);
            }
            if status != 200 {
                return Err(errors::from_status(
                    status,
                    &format!("listing {path}"),
                    &String::from_utf8_lossy(&body),
                ));
            }
            let entries = entries(&body).map_err(BusError::Unavailable)?;
            let full = entries.len() == PAGE;
            all.extend(entries);
            if !full {
                break;
            }
        }
        Ok(Some(all))
    }

    /// Messages of a subscription ready for a receiver (its
    /// `CountDetails/ActiveMessageCount`, which counts locked ones too);
    /// `Some(0)` when it does not exist, `None` when this identity may not
    /// read it.
    pub(super) async fn active_messages(
        &self,
        topic: &str,
        subscription: &str,
    ) -> Result<Option<u64>, BusError> {
        let path = format!("{topic}/subscriptions/{subscription}");
        let (status, body) = self.call(Method::Get, self.url(&path, "")?, None).await?;
        match status {
            200 => {}
            401 | 403 => return Ok(None),
            status if errors::gone(status) => return Ok(Some(0)),
            other => {
                return Err(errors::from_status(
                    other,
                    &format!("reading {path}"),
                    &String::from_utf8_lossy(&body),
                ));
            }
        }
        let entry = entries(&body)
            .map_err(BusError::Unavailable)?
            .into_iter()
            .next();
        let count = entry.as_ref().and_then(|e| e.get("ActiveMessageCount"));
        count
            .map(|c| {
                c.parse().map_err(|_| {
                    BusError::Unavailable(format!("{path}: active message count {c:?}"))
                })
            })
            .transpose()
    }

    pub(super) async fn ensure_topic(
        &self,
        topic: &str,
        duplicate_window: Duration,
    ) -> Result<(), BusError> {
        self.put(topic, topic_description(duplicate_window))
            .await
            .map(|_| ())
    }

    /// Creates the subscription with these rules, or adds the missing ones
    /// to the one that exists (dropping a catch-all `$Default` rule that
    /// legato did not ask for, which Azure adds to subscriptions created
    /// without rules).
    pub(super) async fn ensure_subscription(
        &self,
        topic: &str,
        subscription: &str,
        settings: &SubscriptionSettings,
        rules: &[RuleFilter],
    ) -> Result<(), BusError> {
        let Some((first, rest)) = rules.split_first() else {
            return Err(BusError::Rejected(
                "a subscription needs at least one rule".into(),
            ));
        };
        let path = format!("{topic}/subscriptions/{subscription}");
        let created = self
            .put(&path, subscription_description(settings, first))
            .await?;
        let existing: Vec<Entry> = match created {
            Put::Created => Vec::new(),
            Put::Existed => self
                .list(&format!("{path}/rules"))
                .await?
                .unwrap_or_default(),
        };
        let has = |name: &str| {
            existing
                .iter()
                .any(|e| e.get("Name").map(String::as_str) == Some(name))
        };
        let wanted = match created {
            Put::Created => rest,
            Put::Existed => rules,
        };
        for rule in wanted {
            if !has(&rule.rule_name()) {
                self.put(
                    &format!("{path}/rules/{}", rule.rule_name()),
                    rule_description(rule),
                )
                .await?;
            }
        }
        if matches!(created, Put::Existed) && has("$Default") && !rules.contains(&RuleFilter::All) {
            self.delete(&format!("{path}/rules/$Default")).await?;
        }
        Ok(())
    }

    /// The subscriptions of a topic with their rules; a rule legato did
    /// not write is `None` (it may match anything).
    pub(super) async fn routes(
        &self,
        topic: &str,
    ) -> Result<Vec<Vec<Option<RuleFilter>>>, BusError> {
        let path = format!("{topic}/subscriptions");
        let subscriptions = self.list(&path).await?.ok_or_else(|| {
            BusError::Unavailable(format!("listing {path}: the topic does not exist"))
        })?;
        let mut routes = Vec::with_capacity(subscriptions.len());
        for subscription in subscriptions {
            let Some(name) = subscription.get("title") else {
                continue;
            };
            let Some(rules) = self
                .list(&format!("{topic}/subscriptions/{name}/rules"))
                .await?
            else {
                // Deleted while we looked (an ephemeral one going away).
                continue;
            };
            routes.push(
                rules
                    .iter()
                    .map(|r| {
                        RuleFilter::recognise(
                            r.get("Filter@type").map(String::as_str).unwrap_or_default(),
                            r.get("SqlExpression").map(String::as_str),
                            r.get("Label").map(String::as_str),
                        )
                    })
                    .collect(),
            );
        }
        Ok(routes)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_feed_of_rules_reads_back() {
        let feed = format!(
            "<feed xmlns=\"http://www.w3.org/2005/Atom\"><title type=\"text\">Rules</title>\
             <entry><title type=\"text\">key-1</title><content type=\"application/xml\">\
             <RuleDescription xmlns=\"{CONNECT}\" xmlns:i=\"{INSTANCE}\"><Filter i:type=\"CorrelationFilter\"><Label>echo</Label></Filter>\
             <Action i:type=\"EmptyRuleAction\"/><Name>key-1</Name></RuleDescription></content></entry>\
             <entry><title type=\"text\">$Default</title><content type=\"application/xml\">\
             <RuleDescription xmlns=\"{CONNECT}\" xmlns:i=\"{INSTANCE}\"><Filter i:type=\"TrueFilter\"><SqlExpression>1=1</SqlExpression></Filter>\
             <Name>$Default</Name></RuleDescription></content></entry></feed>"
        );
        let e = entries(feed.as_bytes()).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0]["Filter@type"], "CorrelationFilter");
        assert_eq!(e[0]["Label"], "echo");
        assert_eq!(e[1]["title"], "$Default");
        assert_eq!(e[1]["SqlExpression"], "1=1");
    }

    #[test]
    fn descriptions_carry_the_settings_in_contract_order() {
        let s = SubscriptionSettings {
            lock_duration: Duration::from_secs(10),
            max_delivery_count: 21,
            auto_delete_on_idle: Some(Duration::from_secs(300)),
        };
        let xml = subscription_description(&s, &RuleFilter::Label("a&b".into()));
        let order = [
            "<LockDuration>PT10S",
            "<DefaultRuleDescription>",
            "<Label>a&amp;b</Label>",
            "<MaxDeliveryCount>21",
            "<AutoDeleteOnIdle>PT300S",
        ];
        let positions: Vec<usize> = order.iter().map(|p| xml.find(p).unwrap()).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{xml}");
    }
}
