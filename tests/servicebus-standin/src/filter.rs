//! Subscription rule filters as the Service Bus documentation describes
//! them: `TrueFilter`/`FalseFilter`, `CorrelationFilter` (every field the
//! rule sets must equal the message's) and `SqlFilter`, a SQL-92 subset
//! over system properties (`sys.Label`, `sys.MessageId`, …) and user
//! properties (`user.name` or a bare name), with three-valued logic: a
//! missing user property is unknown, and a rule matches only on true.
//!
//! Modelled: `=`, `<>`/`!=`, `<`, `<=`, `>`, `>=`, `AND`, `OR`, `NOT`,
//! `LIKE` with `%`, `_` and `ESCAPE`, `IS [NOT] NULL`, `[NOT] IN (...)`,
//! parentheses, string, number, boolean and NULL literals. Not modelled
//! (refused with 400 when a rule is created): `EXISTS`, arithmetic,
//! functions such as `newid()`, and rule actions.

use sqlparser::ast::{BinaryOperator, Expr, InTarget, UnaryOperator, Value};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::model::{Message, PropertyValue};

#[derive(Debug, Clone)]
pub(crate) enum Filter {
    True,
    False,
    Sql { expression: String, parsed: Expr },
    Correlation(Correlation),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Correlation {
    pub correlation_id: Option<String>,
    pub message_id: Option<String>,
    pub to: Option<String>,
    pub reply_to: Option<String>,
    pub label: Option<String>,
    pub session_id: Option<String>,
    pub reply_to_session_id: Option<String>,
    pub content_type: Option<String>,
    pub properties: Vec<(String, PropertyValue)>,
}

impl Filter {
    /// A `SqlFilter`; `1=1` and `1=0` are what the SDKs send for true and
    /// false filters, and evaluate like any other expression.
    pub(crate) fn sql(expression: &str) -> Result<Self, String> {
        let parsed = Parser::new(&GenericDialect {})
            .try_with_sql(expression)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| format!("invalid SQL filter expression {expression:?}: {e}"))?;
        check_supported(&parsed)?;
        Ok(Self::Sql {
            expression: expression.to_owned(),
            parsed,
        })
    }

    pub(crate) fn matches(&self, message: &Message) -> bool {
        match self {
            Filter::True => true,
            Filter::False => false,
            Filter::Sql { parsed, .. } => predicate(parsed, message) == Some(true),
            Filter::Correlation(c) => c.matches(message),
        }
    }
}

impl Correlation {
    fn matches(&self, m: &Message) -> bool {
        let b = &m.broker;
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        same(&self.correlation_id, &b.correlation_id)
            && same(&self.message_id, &Some(b.message_id.clone()))
            && same(&self.to, &b.to)
            && same(&self.reply_to, &b.reply_to)
            && same(&self.label, &b.label)
            && same(&self.session_id, &b.session_id)
            && same(&self.reply_to_session_id, &b.reply_to_session_id)
            && same(&self.content_type, &m.content_type)
            && self
                .properties
                .iter()
                .all(|(k, v)| m.property(k).is_some_and(|have| have == v))
    }
}

fn check_supported(expr: &Expr) -> Result<(), String> {
    match expr {
        Expr::BinaryOp { left, op, right } => {
            use BinaryOperator::*;
            if !matches!(op, And | Or | Eq | NotEq | Lt | LtEq | Gt | GtEq) {
                return Err(format!("operator {op} is not supported by the stand-in"));
            }
            check_supported(left)?;
            check_supported(right)
        }
        Expr::UnaryOp { op, expr } => match op {
            UnaryOperator::Not | UnaryOperator::Minus => check_supported(expr),
            other => Err(format!("operator {other} is not supported by the stand-in")),
        },
        Expr::Nested(e) | Expr::IsNull(e) | Expr::IsNotNull(e) => check_supported(e),
        Expr::Like {
            expr,
            pattern,
            any: false,
            ..
        } => {
            check_supported(expr)?;
            check_supported(pattern)
        }
        Expr::In {
            expr,
            target: InTarget::List(list),
            ..
        } => {
            check_supported(expr)?;
            list.iter().try_for_each(check_supported)
        }
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_) => Ok(()),
        other => Err(format!("{other} is not supported by the stand-in")),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum V {
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

fn from_property(p: &PropertyValue) -> V {
    match p {
        PropertyValue::Str(s) => V::Str(s.clone()),
        PropertyValue::Num(n) => V::Num(*n),
        PropertyValue::Bool(b) => V::Bool(*b),
    }
}

fn system_property(name: &str, m: &Message) -> V {
    let b = &m.broker;
    let text = |v: &Option<String>| v.clone().map_or(V::Null, V::Str);
    match name.to_ascii_lowercase().as_str() {
        "messageid" => V::Str(b.message_id.clone()),
        "correlationid" => text(&b.correlation_id),
        "label" | "subject" => text(&b.label),
        "to" => text(&b.to),
        "replyto" => text(&b.reply_to),
        "sessionid" => text(&b.session_id),
        "replytosessionid" => text(&b.reply_to_session_id),
        "contenttype" => text(&m.content_type),
        "sequencenumber" => V::Num(m.sequence_number as f64),
        "deliverycount" => V::Num(f64::from(m.delivery_count)),
        _ => V::Null,
    }
}

fn value(expr: &Expr, m: &Message) -> V {
    match expr {
        Expr::Identifier(id) => m.property(&id.value).map_or(V::Null, from_property),
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [scope, name] if scope.value.eq_ignore_ascii_case("sys") => {
                system_property(&name.value, m)
            }
            [scope, name] if scope.value.eq_ignore_ascii_case("user") => {
                m.property(&name.value).map_or(V::Null, from_property)
            }
            _ => V::Null,
        },
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => V::Str(s.clone()),
            Value::Number(n, _) => n.parse().map_or(V::Null, V::Num),
            Value::Boolean(b) => V::Bool(*b),
            _ => V::Null,
        },
        Expr::Nested(e) => value(e, m),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match value(expr, m) {
            V::Num(n) => V::Num(-n),
            _ => V::Null,
        },
        other => match predicate(other, m) {
            Some(b) => V::Bool(b),
            None => V::Null,
        },
    }
}

fn compare(op: &BinaryOperator, a: &V, b: &V) -> Option<bool> {
    use std::cmp::Ordering;
    let ordering = match (a, b) {
        (V::Null, _) | (_, V::Null) => return None,
        (V::Str(x), V::Str(y)) => x.cmp(y),
        (V::Num(x), V::Num(y)) => x.partial_cmp(y)?,
        (V::Bool(x), V::Bool(y)) => x.cmp(y),
        // Values of different types are never equal.
        _ => return Some(matches!(op, BinaryOperator::NotEq)),
    };
    Some(match op {
        BinaryOperator::Eq => ordering == Ordering::Equal,
        BinaryOperator::NotEq => ordering != Ordering::Equal,
        BinaryOperator::Lt => ordering == Ordering::Less,
        BinaryOperator::LtEq => ordering != Ordering::Greater,
        BinaryOperator::Gt => ordering == Ordering::Greater,
        BinaryOperator::GtEq => ordering != Ordering::Less,
        _ => return None,
    })
}

fn predicate(expr: &Expr, m: &Message) -> Option<bool> {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => match (predicate(left, m), predicate(right, m)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Expr::BinaryOp {
            left,
            op: BinaryOperator::Or,
            right,
        } => match (predicate(left, m), predicate(right, m)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Expr::BinaryOp { left, op, right } => compare(op, &value(left, m), &value(right, m)),
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => predicate(expr, m).map(|b| !b),
        Expr::Nested(e) => predicate(e, m),
        Expr::IsNull(e) => Some(value(e, m) == V::Null),
        Expr::IsNotNull(e) => Some(value(e, m) != V::Null),
        Expr::Like {
            negated,
            expr,
            pattern,
            escape_char,
            ..
        } => {
            let (V::Str(text), V::Str(pattern)) = (value(expr, m), value(pattern, m)) else {
                return None;
            };
            let escape = escape_char.as_ref().and_then(|e| match value(e, m) {
                V::Str(s) => s.chars().next(),
                _ => None,
            });
            let pattern: Vec<char> = pattern.chars().collect();
            let text: Vec<char> = text.chars().collect();
            Some(like(&pattern, &text, escape) != *negated)
        }
        Expr::In {
            expr,
            target: InTarget::List(list),
            negated,
            ..
        } => {
            let v = value(expr, m);
            if v == V::Null {
                return None;
            }
            let found = list.iter().any(|e| value(e, m) == v);
            Some(found != *negated)
        }
        Expr::Value(_) | Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
            match value(expr, m) {
                V::Bool(b) => Some(b),
                _ => None,
            }
        }
        _ => None,
    }
}

/// SQL `LIKE`: `%` is any run of characters, `_` exactly one; the escape
/// character makes the next one literal.
fn like(pattern: &[char], text: &[char], escape: Option<char>) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((&c, rest)) if Some(c) == escape => match rest.split_first() {
            Some((&literal, rest)) => {
                text.first() == Some(&literal) && like(rest, &text[1..], escape)
            }
            None => false,
        },
        Some(('%', rest)) => (0..=text.len()).any(|skip| like(rest, &text[skip..], escape)),
        Some(('_', rest)) => !text.is_empty() && like(rest, &text[1..], escape),
        Some((&c, rest)) => text.first() == Some(&c) && like(rest, &text[1..], escape),
    }
}
