//! The Atom management API: `PUT` creates an entity (409 when it exists,
//! unless `If-Match: *` asks for an update), `GET` reads one entity or
//! lists a collection (`$skip`, `$top`), `DELETE` removes it (a missing
//! one is no error). Requests need the Manage right.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::filter::{Correlation, Filter};
use crate::model::{self, Rule, Subscription, Topic};
use crate::xml::{self, Fields, escape, format_duration, parse_duration};
use crate::{Call, Namespace, Route, error};

const MIN_LOCK: Duration = Duration::from_secs(5);
const MAX_LOCK: Duration = Duration::from_secs(300);
const MIN_AUTO_DELETE: Duration = Duration::from_secs(300);
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(20);
const MAX_DUPLICATE_WINDOW: Duration = Duration::from_secs(7 * 86_400);
const DEFAULT_RULE: &str = "$Default";
/// `TimeSpan.MaxValue`, what Azure shows for "never".
const FOREVER: &str = "P10675199DT2H48M5.4775807S";

pub(crate) enum Op {
    Topic {
        topic: String,
        method: Method,
    },
    Subscriptions {
        topic: String,
    },
    Subscription {
        topic: String,
        subscription: String,
        method: Method,
    },
    Rules {
        topic: String,
        subscription: String,
    },
    Rule {
        topic: String,
        subscription: String,
        rule: String,
        method: Method,
    },
}

fn is(segment: &str, word: &str) -> bool {
    segment.eq_ignore_ascii_case(word)
}

pub(crate) fn route(method: &Method, path: &[String]) -> Option<Route> {
    let entity = [Method::PUT, Method::GET, Method::DELETE].contains(method);
    let op = match path {
        [topic] if entity => Op::Topic {
            topic: topic.clone(),
            method: method.clone(),
        },
        [topic, subs] if is(subs, "subscriptions") && method == Method::GET => Op::Subscriptions {
            topic: topic.clone(),
        },
        [topic, subs, sub] if is(subs, "subscriptions") && entity => Op::Subscription {
            topic: topic.clone(),
            subscription: sub.clone(),
            method: method.clone(),
        },
        [topic, subs, sub, rules]
            if is(subs, "subscriptions") && is(rules, "rules") && method == Method::GET =>
        {
            Op::Rules {
                topic: topic.clone(),
                subscription: sub.clone(),
            }
        }
        [topic, subs, sub, rules, rule]
            if is(subs, "subscriptions") && is(rules, "rules") && entity =>
        {
            Op::Rule {
                topic: topic.clone(),
                subscription: sub.clone(),
                rule: rule.clone(),
                method: method.clone(),
            }
        }
        _ => return None,
    };
    Some(Route::Management(op))
}

fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '$'))
}

fn atom(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            "content-type",
            "application/atom+xml;type=entry;charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    error(StatusCode::NOT_FOUND, &format!("{what} does not exist"))
}

pub(crate) fn run(ns: &Namespace, op: Op, call: &Call) -> Response {
    match op {
        Op::Topic { topic, method } => topic_op(ns, &topic, method, call),
        Op::Subscriptions { topic } => {
            let state = ns.state();
            let Some(t) = state.topics.get(&model::key(&topic)) else {
                return not_found(&format!("topic {topic}"));
            };
            let entries: Vec<String> = page(call, t.subscriptions.values())
                .map(|s| subscription_entry(ns, t, s))
                .collect();
            atom(
                StatusCode::OK,
                xml::feed(
                    &format!("https://{}/{topic}/subscriptions", ns.host),
                    "Subscriptions",
                    &entries,
                    ns.clock.wall(),
                ),
            )
        }
        Op::Subscription {
            topic,
            subscription,
            method,
        } => subscription_op(ns, &topic, &subscription, method, call),
        Op::Rules {
            topic,
            subscription,
        } => {
            let mut state = ns.state();
            let Ok(sub) = state.subscription_mut(&topic, &subscription) else {
                return not_found(&format!("subscription {topic}/{subscription}"));
            };
            let base = format!(
                "https://{}/{topic}/subscriptions/{subscription}/rules",
                ns.host
            );
            let entries: Vec<String> = page(call, sub.rules.values())
                .map(|r| rule_entry(&format!("{base}/{}", r.name), r))
                .collect();
            atom(
                StatusCode::OK,
                xml::feed(&base, "Rules", &entries, ns.clock.wall()),
            )
        }
        Op::Rule {
            topic,
            subscription,
            rule,
            method,
        } => rule_op(ns, &topic, &subscription, &rule, method, call),
    }
}

fn page<'a, T: 'a>(call: &Call, items: impl Iterator<Item = &'a T>) -> impl Iterator<Item = &'a T> {
    let skip = call
        .query("$skip")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let top = call
        .query("$top")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    items.skip(skip).take(top)
}

/// The request body's `<kind>` description, or why there is none.
fn description(call: &Call, kind: &str) -> Result<Fields, String> {
    let fields = Fields::parse(&call.body)?;
    if fields.has_prefix(kind) {
        Ok(fields)
    } else {
        Err(format!("the body holds no {kind}"))
    }
}

fn updating(call: &Call) -> bool {
    call.header("if-match") == Some("*")
}

fn topic_op(ns: &Namespace, name: &str, method: Method, call: &Call) -> Response {
    let key = model::key(name);
    let url = format!("https://{}/{name}", ns.host);
    let mut state = ns.state();
    match method {
        Method::GET => match state.topics.get(&key) {
            Some(t) => atom(StatusCode::OK, topic_entry(&url, t)),
            None => not_found(&format!("topic {name}")),
        },
        Method::DELETE => {
            state.topics.remove(&key);
            StatusCode::OK.into_response()
        }
        _ => {
            if !valid_name(name, 260) {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid topic name {name:?}"),
                );
            }
            let fields = match description(call, "TopicDescription") {
                Ok(f) => f,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            };
            let exists = state.topics.contains_key(&key);
            if exists && !updating(call) {
                return error(
                    StatusCode::CONFLICT,
                    &format!("topic {name} already exists"),
                );
            }
            let duplicates =
                fields.get("TopicDescription/RequiresDuplicateDetection") == Some("true");
            let window = match fields.get("TopicDescription/DuplicateDetectionHistoryTimeWindow") {
                Some(text) => match parse_duration(text) {
                    Some(d) if (MIN_DUPLICATE_WINDOW..=MAX_DUPLICATE_WINDOW).contains(&d) => d,
                    _ => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            &format!(
                                "DuplicateDetectionHistoryTimeWindow {text} must lie between 20 seconds and 7 days"
                            ),
                        );
                    }
                },
                None => model::DEFAULT_DUPLICATE_WINDOW,
            };
            let size = fields
                .get("TopicDescription/MaxSizeInMegabytes")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1024);
            let wall = ns.clock.wall();
            let topic = state
                .topics
                .entry(key)
                .or_insert_with(|| Topic::new(name, None, size, wall));
            topic.duplicate_window = duplicates.then_some(window);
            topic.max_size_mb = size;
            let status = if exists {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            atom(status, topic_entry(&url, topic))
        }
    }
}

fn topic_entry(url: &str, t: &Topic) -> String {
    let description = format!(
        "<DefaultMessageTimeToLive>{FOREVER}</DefaultMessageTimeToLive>\
         <MaxSizeInMegabytes>{}</MaxSizeInMegabytes>\
         <RequiresDuplicateDetection>{}</RequiresDuplicateDetection>\
         <DuplicateDetectionHistoryTimeWindow>{}</DuplicateDetectionHistoryTimeWindow>\
         <EnableBatchedOperations>true</EnableBatchedOperations><Status>Active</Status>\
         <CreatedAt>{}</CreatedAt><SubscriptionCount>{}</SubscriptionCount>\
         <AutoDeleteOnIdle>{FOREVER}</AutoDeleteOnIdle><EnablePartitioning>false</EnablePartitioning>",
        t.max_size_mb,
        t.duplicate_window.is_some(),
        format_duration(
            t.duplicate_window
                .unwrap_or(model::DEFAULT_DUPLICATE_WINDOW)
        ),
        xml::time(t.created),
        t.subscriptions.len(),
    );
    xml::entry(url, &t.name, "TopicDescription", &description, t.created)
}

fn subscription_op(
    ns: &Namespace,
    topic: &str,
    name: &str,
    method: Method,
    call: &Call,
) -> Response {
    let (now, wall) = (ns.clock.now(), ns.clock.wall());
    let url = format!("https://{}/{topic}/subscriptions/{name}", ns.host);
    let mut state = ns.state();
    let Ok(t) = state.topic_mut(topic) else {
        return not_found(&format!("topic {topic}"));
    };
    let key = model::key(name);
    match method {
        Method::GET => match t.subscriptions.get(&key) {
            Some(s) => atom(StatusCode::OK, subscription_entry(ns, t, s)),
            None => not_found(&format!("subscription {topic}/{name}")),
        },
        Method::DELETE => {
            t.subscriptions.remove(&key);
            StatusCode::OK.into_response()
        }
        _ => {
            if !valid_name(name, 50) {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "invalid subscription name {name:?}: 1-50 letters, digits, '.', '-', '_'"
                    ),
                );
            }
            let fields = match description(call, "SubscriptionDescription") {
                Ok(f) => f,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            };
            let exists = t.subscriptions.contains_key(&key);
            if exists && !updating(call) {
                return error(
                    StatusCode::CONFLICT,
                    &format!("subscription {topic}/{name} already exists"),
                );
            }
            let mut sub = Subscription::new(name, now, wall);
            if let Err(e) = describe(&mut sub, &fields, wall) {
                return error(StatusCode::BAD_REQUEST, &e);
            }
            let status = if exists {
                // An update keeps the messages and rules.
                if let Some(old) = t.subscriptions.get_mut(&key) {
                    old.lock_duration = sub.lock_duration;
                    old.max_delivery_count = sub.max_delivery_count;
                    old.auto_delete_on_idle = sub.auto_delete_on_idle;
                }
                StatusCode::OK
            } else {
                t.subscriptions.insert(key.clone(), sub);
                StatusCode::CREATED
            };
            let Some(s) = t.subscriptions.get(&key) else {
                return not_found(&url);
            };
            atom(status, subscription_entry(ns, t, s))
        }
    }
}

/// Reads a `SubscriptionDescription` into `sub`, refusing what Azure
/// refuses.
fn describe(
    sub: &mut Subscription,
    fields: &Fields,
    wall: time::OffsetDateTime,
) -> Result<(), String> {
    let p = "SubscriptionDescription";
    if let Some(text) = fields.get(&format!("{p}/LockDuration")) {
        sub.lock_duration = parse_duration(text)
            .filter(|d| (MIN_LOCK..=MAX_LOCK).contains(d))
            .ok_or_else(|| {
                format!("LockDuration {text} must lie between 5 seconds and 5 minutes")
            })?;
    }
    if let Some(text) = fields.get(&format!("{p}/MaxDeliveryCount")) {
        sub.max_delivery_count = text.parse().ok().filter(|n| *n >= 1).ok_or_else(|| {
            format!("MaxDeliveryCount {text} must be a whole number of at least 1")
        })?;
    }
    if let Some(text) = fields
        .get(&format!("{p}/AutoDeleteOnIdle"))
        .filter(|t| *t != FOREVER)
    {
        let idle = parse_duration(text)
            .filter(|d| *d >= MIN_AUTO_DELETE)
            .ok_or_else(|| format!("AutoDeleteOnIdle {text} must be at least 5 minutes"))?;
        sub.auto_delete_on_idle = Some(idle);
    }
    sub.dead_lettering_on_expiration =
        fields.get(&format!("{p}/DeadLetteringOnMessageExpiration")) == Some("true");
    let default_rule = format!("{p}/DefaultRuleDescription");
    let (name, filter) = if fields.has_prefix(&default_rule) {
        let name = fields
            .get(&format!("{default_rule}/Name"))
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_RULE)
            .to_owned();
        (name, filter_of(fields, &format!("{default_rule}/Filter"))?)
    } else {
        (DEFAULT_RULE.to_owned(), Filter::True)
    };
    sub.rules.insert(
        model::key(&name),
        Rule {
            name,
            filter,
            created: wall,
        },
    );
    Ok(())
}

fn filter_of(fields: &Fields, at: &str) -> Result<Filter, String> {
    let kind = fields
        .get(&format!("{at}@type"))
        .map(|t| t.rsplit(':').next().unwrap_or(t).to_owned())
        .ok_or_else(|| format!("{at} has no i:type"))?;
    let text = |name: &str| {
        fields
            .get(&format!("{at}/{name}"))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    match kind.as_str() {
        "TrueFilter" => Ok(Filter::True),
        "FalseFilter" => Ok(Filter::False),
        "SqlFilter" => {
            let expression = text("SqlExpression").ok_or("a SqlFilter needs a SqlExpression")?;
            Filter::sql(&expression)
        }
        "CorrelationFilter" => {
            if fields.has_prefix(&format!("{at}/Properties"))
                && fields.has_prefix(&format!("{at}/Properties/KeyValueOfstringanyType"))
            {
                return Err(
                    "correlation filter properties are not modelled by the stand-in".into(),
                );
            }
            let c = Correlation {
                correlation_id: text("CorrelationId"),
                message_id: text("MessageId"),
                to: text("To"),
                reply_to: text("ReplyTo"),
                label: text("Label"),
                session_id: text("SessionId"),
                reply_to_session_id: text("ReplyToSessionId"),
                content_type: text("ContentType"),
                properties: Vec::new(),
            };
            Ok(Filter::Correlation(c))
        }
        other => Err(format!("unknown filter type {other}")),
    }
}

fn subscription_entry(ns: &Namespace, t: &Topic, s: &Subscription) -> String {
    let url = format!("https://{}/{}/subscriptions/{}", ns.host, t.name, s.name);
    let description = format!(
        "<LockDuration>{}</LockDuration><RequiresSession>false</RequiresSession>\
         <DefaultMessageTimeToLive>{FOREVER}</DefaultMessageTimeToLive>\
         <DeadLetteringOnMessageExpiration>{}</DeadLetteringOnMessageExpiration>\
         <DeadLetteringOnFilterEvaluationExceptions>true</DeadLetteringOnFilterEvaluationExceptions>\
         <MessageCount>{}</MessageCount><MaxDeliveryCount>{}</MaxDeliveryCount>\
         <EnableBatchedOperations>true</EnableBatchedOperations><Status>Active</Status>\
         <CreatedAt>{}</CreatedAt>\
         <CountDetails xmlns:d2p1=\"http://schemas.microsoft.com/netservices/2011/06/servicebus\">\
         <d2p1:ActiveMessageCount>{}</d2p1:ActiveMessageCount><d2p1:DeadLetterMessageCount>{}</d2p1:DeadLetterMessageCount>\
         <d2p1:ScheduledMessageCount>0</d2p1:ScheduledMessageCount><d2p1:TransferMessageCount>0</d2p1:TransferMessageCount>\
         <d2p1:TransferDeadLetterMessageCount>0</d2p1:TransferDeadLetterMessageCount></CountDetails>\
         <AutoDeleteOnIdle>{}</AutoDeleteOnIdle><EntityAvailabilityStatus>Available</EntityAvailabilityStatus>",
        format_duration(s.lock_duration),
        s.dead_lettering_on_expiration,
        s.message_count(),
        s.max_delivery_count,
        xml::time(s.created),
        s.active_count(),
        s.dead_letter_count(),
        s.auto_delete_on_idle
            .map_or(FOREVER.to_owned(), format_duration),
    );
    xml::entry(
        &url,
        &s.name,
        "SubscriptionDescription",
        &description,
        s.created,
    )
}

fn rule_op(
    ns: &Namespace,
    topic: &str,
    subscription: &str,
    name: &str,
    method: Method,
    call: &Call,
) -> Response {
    let url = format!(
        "https://{}/{topic}/subscriptions/{subscription}/rules/{name}",
        ns.host
    );
    let wall = ns.clock.wall();
    let mut state = ns.state();
    let Ok(sub) = state.subscription_mut(topic, subscription) else {
        return not_found(&format!("subscription {topic}/{subscription}"));
    };
    let key = model::key(name);
    match method {
        Method::GET => match sub.rules.get(&key) {
            Some(r) => atom(StatusCode::OK, rule_entry(&url, r)),
            None => not_found(&format!("rule {name}")),
        },
        Method::DELETE => {
            sub.rules.remove(&key);
            StatusCode::OK.into_response()
        }
        _ => {
            if !valid_name(name, 50) {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid rule name {name:?}"),
                );
            }
            if sub.rules.contains_key(&key) && !updating(call) {
                return error(StatusCode::CONFLICT, &format!("rule {name} already exists"));
            }
            let filter = description(call, "RuleDescription")
                .and_then(|f| filter_of(&f, "RuleDescription/Filter"));
            let filter = match filter {
                Ok(f) => f,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
            };
            let rule = Rule {
                name: name.to_owned(),
                filter,
                created: wall,
            };
            let entry = rule_entry(&url, &rule);
            sub.rules.insert(key, rule);
            atom(StatusCode::CREATED, entry)
        }
    }
}

fn rule_entry(url: &str, r: &Rule) -> String {
    let filter = match &r.filter {
        Filter::True => "<Filter i:type=\"TrueFilter\"><SqlExpression>1=1</SqlExpression><CompatibilityLevel>20</CompatibilityLevel></Filter>".to_owned(),
        Filter::False => "<Filter i:type=\"FalseFilter\"><SqlExpression>1=0</SqlExpression><CompatibilityLevel>20</CompatibilityLevel></Filter>".to_owned(),
        Filter::Sql { expression, .. } => format!(
            "<Filter i:type=\"SqlFilter\"><SqlExpression>{}</SqlExpression><CompatibilityLevel>20</CompatibilityLevel></Filter>",
            escape(expression)
        ),
        Filter::Correlation(c) => {
            let mut inner = String::new();
            for (name, value) in [
                ("CorrelationId", &c.correlation_id),
                ("MessageId", &c.message_id),
                ("To", &c.to),
                ("ReplyTo", &c.reply_to),
                ("Label", &c.label),
                ("SessionId", &c.session_id),
                ("ReplyToSessionId", &c.reply_to_session_id),
                ("ContentType", &c.content_type),
            ] {
                if let Some(v) = value {
                    inner.push_str(&format!("<{name}>{}</{name}>", escape(v)));
                }
            }
            format!("<Filter i:type=\"CorrelationFilter\">{inner}</Filter>")
        }
    };
    let description = format!(
        "{filter}<Action i:type=\"EmptyRuleAction\"/><Name>{}</Name><CreatedAt>{}</CreatedAt>",
        escape(&r.name),
        xml::time(r.created)
    );
    xml::entry(url, &r.name, "RuleDescription", &description, r.created)
}
