//! The Atom documents of the management API: an `<entry>` whose
//! `<content type="application/xml">` holds a `TopicDescription`,
//! `SubscriptionDescription` or `RuleDescription` (namespace
//! `http://schemas.microsoft.com/netservices/2010/10/servicebus/connect`),
//! and a `<feed>` of entries for a listing.

use std::collections::HashMap;
use std::time::Duration;

use quick_xml::Reader;
use quick_xml::events::Event;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub(crate) const CONNECT_NS: &str =
    "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect";
const INSTANCE_NS: &str = "http://www.w3.org/2001/XMLSchema-instance";

/// A request body flattened: `"Desc/Child"` -> text, and
/// `"Desc/Child@type"` -> the `i:type` attribute, with namespace prefixes
/// and the Atom wrapper (`entry/content/`) removed.
pub(crate) struct Fields(HashMap<String, String>);

impl Fields {
    pub(crate) fn parse(body: &[u8]) -> Result<Self, String> {
        let mut reader = Reader::from_reader(body);
        reader.trim_text(true);
        let mut path: Vec<String> = Vec::new();
        let mut fields = HashMap::new();
        let mut buf = Vec::new();
        loop {
            match reader.read_event_into(&mut buf) {
                Ok(Event::Start(e)) => {
                    let name = local(e.name().as_ref());
                    path.push(name);
                    record_type(&e, &path, &mut fields);
                    fields.entry(key(&path)).or_insert_with(String::new);
                }
                Ok(Event::Empty(e)) => {
                    path.push(local(e.name().as_ref()));
                    record_type(&e, &path, &mut fields);
                    fields.entry(key(&path)).or_insert_with(String::new);
                    path.pop();
                }
                Ok(Event::Text(t)) => {
                    let text = t.unescape().map_err(|e| format!("invalid XML text: {e}"))?;
                    fields.insert(key(&path), text.into_owned());
                }
                Ok(Event::End(_)) => {
                    path.pop();
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("invalid XML: {e}")),
            }
            buf.clear();
        }
        Ok(Self(fields))
    }

    pub(crate) fn get(&self, path: &str) -> Option<&str> {
        self.0.get(path).map(String::as_str)
    }

    pub(crate) fn has_prefix(&self, prefix: &str) -> bool {
        self.0
            .keys()
            .any(|k| k == prefix || k.starts_with(&format!("{prefix}/")))
    }
}

fn local(name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    name.rsplit(':').next().unwrap_or_default().to_owned()
}

fn key(path: &[String]) -> String {
    let skip = match path {
        [entry, content, ..] if entry == "entry" && content == "content" => 2,
        _ => 0,
    };
    path[skip.min(path.len())..].join("/")
}

fn record_type(
    e: &quick_xml::events::BytesStart<'_>,
    path: &[String],
    fields: &mut HashMap<String, String>,
) {
    for attribute in e.attributes().flatten() {
        if local(attribute.key.as_ref()) == "type" && attribute.key.as_ref().contains(&b':') {
            let value = String::from_utf8_lossy(&attribute.value).into_owned();
            fields.insert(format!("{}@type", key(path)), value);
        }
    }
}

/// `xs:duration` as .NET writes `TimeSpan`: `P[nD][T[nH][nM][n[.n]S]]`.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let rest = text.trim().strip_prefix('P')?;
    let (days, time) = match rest.split_once('T') {
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut seconds = 0f64;
    if !days.is_empty() {
        seconds += days.strip_suffix('D')?.parse::<f64>().ok()? * 86_400.0;
    }
    let mut number = String::new();
    for c in time.chars() {
        match c {
            'H' | 'M' | 'S' => {
                let n: f64 = number.parse().ok()?;
                seconds += n * match c {
                    'H' => 3_600.0,
                    'M' => 60.0,
                    _ => 1.0,
                };
                number.clear();
            }
            c if c.is_ascii_digit() || c == '.' => number.push(c),
            _ => return None,
        }
    }
    (number.is_empty() && seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::from_secs_f64(seconds.min(1e12)))
}

pub(crate) fn format_duration(d: Duration) -> String {
    let total = d.as_secs();
    let (days, rest) = (total / 86_400, total % 86_400);
    let (h, m, s) = (rest / 3_600, rest % 3_600 / 60, rest % 60);
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    out.push_str(&format!("T{h}H{m}M{s}S"));
    out
}

pub(crate) fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

fn timestamp(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// One entity as an Atom entry; `description` is the inner XML of the
/// `<{kind}>` element.
pub(crate) fn entry(
    url: &str,
    title: &str,
    kind: &str,
    description: &str,
    created: OffsetDateTime,
) -> String {
    format!(
        "<entry xmlns=\"http://www.w3.org/2005/Atom\"><id>{url}</id><title type=\"text\">{title}</title>\
         <published>{t}</published><updated>{t}</updated><link rel=\"self\" href=\"{url}\"/>\
         <content type=\"application/xml\"><{kind} xmlns=\"{CONNECT_NS}\" xmlns:i=\"{INSTANCE_NS}\">{description}</{kind}></content></entry>",
        url = escape(url),
        title = escape(title),
        t = timestamp(created),
    )
}

pub(crate) fn feed(url: &str, title: &str, entries: &[String], now: OffsetDateTime) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><feed xmlns=\"http://www.w3.org/2005/Atom\">\
         <title type=\"text\">{title}</title><id>{url}</id><updated>{t}</updated>\
         <link rel=\"self\" href=\"{url}\"/>{entries}</feed>",
        url = escape(url),
        title = escape(title),
        t = timestamp(now),
        entries = entries.join(""),
    )
}

pub(crate) fn time(t: OffsetDateTime) -> String {
    timestamp(t)
}
