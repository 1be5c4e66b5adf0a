//! `${{ expr }}` expressions and the templates that contain them.
//!
//! Expressions are CEL (the `cel` crate): a small, side-effect-free language
//! made for exactly this, so evaluation is deterministic and safe to replay.
//! They see `input` (the instance input), `steps.<id>.output` and
//! `steps.<id>.status`, `item` inside a `for_each`, and `iteration` and
//! `previous` inside a loop.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const OPEN: &str = "${{";
const CLOSE: &str = "}}";

/// The variables an expression may read, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variables {
    /// `input` and `steps`.
    Instance,
    /// `input`, `steps` and `item` (the fields of a `for_each` step).
    ForEachItem,
    /// `input`, `steps`, `iteration` (1 for the first) and `previous` (the
    /// last iteration's output; null in the first): inside a loop, and
    /// its `until` and `output`.
    Loop,
    /// A `for_each` step inside a loop: all of the above.
    ForEachItemInLoop,
}

impl Variables {
    fn allows(self, name: &str) -> bool {
        match name {
            "input" | "steps" => true,
            "item" => matches!(self, Self::ForEachItem | Self::ForEachItemInLoop),
            "iteration" | "previous" => matches!(self, Self::Loop | Self::ForEachItemInLoop),
            _ => false,
        }
    }

    /// The same variables, seen from inside a loop's body.
    pub fn in_loop(self) -> Self {
        match self {
            Self::Instance | Self::Loop => Self::Loop,
            Self::ForEachItem | Self::ForEachItemInLoop => Self::ForEachItemInLoop,
        }
    }

    /// [`Variables::in_loop`] when `in_loop`.
    pub fn in_loop_if(self, in_loop: bool) -> Self {
        if in_loop { self.in_loop() } else { self }
    }

    fn names(self) -> &'static str {
        match self {
            Self::Instance => "input, steps",
            Self::ForEachItem => "input, steps, item",
            Self::Loop => "input, steps, iteration, previous",
            Self::ForEachItemInLoop => "input, steps, item, iteration, previous",
        }
    }
}

/// One compiled-and-checked CEL expression, kept as its source text so it
/// serialises with the definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Expr {
    source: String,
}

/// Why an expression could not be accepted or evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

impl Expr {
    /// Parses a field that must be exactly one `${{ expr }}`.
    pub fn parse_wrapped(text: &str, vars: Variables) -> Result<Self, ExprError> {
        let inner = text
            .trim()
            .strip_prefix(OPEN)
            .and_then(|rest| rest.strip_suffix(CLOSE))
            .filter(|inner| !inner.contains(OPEN))
            .ok_or_else(|| {
                ExprError(format!(
                    "expected one `${{{{ expression }}}}`, got {text:?}"
                ))
            })?;
        Self::parse_inner(inner, vars)
    }

    fn parse_inner(inner: &str, vars: Variables) -> Result<Self, ExprError> {
        let source = inner.trim().to_owned();
        if source.is_empty() {
            return Err(ExprError("empty expression".into()));
        }
        let program = compile(&source)?;
        let mut read = BTreeSet::new();
        free_variables(program.expression(), &mut Vec::new(), &mut read);
        let unknown: Vec<&str> = read.into_iter().filter(|v| !vars.allows(v)).collect();
        if !unknown.is_empty() {
            return Err(ExprError(format!(
                "`{source}` reads unknown variable(s) {}; available here: {}",
                unknown.join(", "),
                vars.names()
            )));
        }
        Ok(Self { source })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The step ids this expression reads as `steps.<id>`, so validation can
    /// insist they are ancestors (their output exists when this runs).
    pub fn step_references(&self) -> BTreeSet<String> {
        step_references(&self.source)
    }

    /// Whether this expression reads `steps` other than as `steps.<id>`
    /// (`size(steps)`, `steps["a"]`), so it needs every step in its scope.
    pub fn reads_all_steps(&self) -> bool {
        reads_all_steps(&self.source)
    }

    pub fn evaluate(&self, scope: &Scope) -> Result<Value, ExprError> {
        let program = compile(&self.source)?;
        let mut context = cel::Context::with_env(environment());
        context.set_variable_resolver(scope);
        let value = program
            .execute(&context)
            .map_err(|e| ExprError(format!("`{}` failed: {e}", self.source)))?;
        value.json().map_err(|e| {
            ExprError(format!(
                "`{}` produced a value JSON cannot hold: {e:?}",
                self.source
            ))
        })
    }

    pub fn evaluate_bool(&self, scope: &Scope) -> Result<bool, ExprError> {
        match self.evaluate(scope)? {
            Value::Bool(b) => Ok(b),
            other => Err(ExprError(format!(
                "`{}` must be a boolean, got {other}",
                self.source
            ))),
        }
    }

    pub fn evaluate_list(&self, scope: &Scope) -> Result<Vec<Value>, ExprError> {
        match self.evaluate(scope)? {
            Value::Array(items) => Ok(items),
            other => Err(ExprError(format!(
                "`{}` must be a list, got {other}",
                self.source
            ))),
        }
    }
}

impl From<Expr> for String {
    fn from(expr: Expr) -> String {
        format!("{OPEN} {} {CLOSE}", expr.source)
    }
}

impl TryFrom<String> for Expr {
    type Error = ExprError;
    fn try_from(text: String) -> Result<Self, ExprError> {
        // Stored definitions were validated with their real scope at
        // registration; reloading only needs the syntax back.
        Self::parse_wrapped(&text, Variables::ForEachItemInLoop)
    }
}

fn environment() -> Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(cel::Env::stdlib())).clone()
}

/// Compiled programs by source text. Definitions are few and long-lived
/// while evaluations are many (every step start, every `for_each` item), so
/// each distinct expression is parsed once per process. The bound keeps a
/// process that sees endless distinct definitions from growing without end.
fn compile(source: &str) -> Result<Arc<cel::Program>, ExprError> {
    const MAX_CACHED: usize = 10_000;
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<cel::Program>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let lock = || {
        cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some(program) = lock().get(source) {
        return Ok(program.clone());
    }
    let program = Arc::new(
        cel::Program::compile(source)
            .map_err(|e| ExprError(format!("`{source}` is not a valid CEL expression: {e}")))?,
    );
    let mut cache = lock();
    if cache.len() >= MAX_CACHED {
        cache.clear();
    }
    cache.insert(source.to_owned(), program.clone());
    Ok(program)
}

/// JSON numbers become CEL `int` whenever they fit, so `input.n * 2` works:
/// a generic serde conversion would make non-negative numbers `uint`, and
/// CEL refuses to mix `uint` with `int` literals.
fn to_cel(value: &Value) -> Result<cel::Value, ExprError> {
    Ok(match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => cel::Value::Int(i),
            (None, Some(u), _) => cel::Value::UInt(u),
            (_, _, Some(f)) => cel::Value::Float(f),
            _ => {
                return Err(ExprError(format!(
                    "number {n} is not usable in an expression"
                )));
            }
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(
            items.iter().map(to_cel).collect::<Result<Vec<_>, _>>()?,
        )),
        Value::Object(map) => {
            let entries = map
                .iter()
                .map(|(k, v)| Ok((cel::objects::Key::String(Arc::new(k.clone())), to_cel(v)?)))
                .collect::<Result<std::collections::HashMap<_, _>, ExprError>>()?;
            cel::Value::Map(cel::objects::Map {
                map: Arc::new(entries),
            })
        }
    })
}

/// The variables an expression reads from its scope: its identifiers but
/// those a macro binds (the `t` of `list.all(t, ...)`) and the macros'
/// accumulators. (`Program::references` in cel 0.15 counts those too.)
fn free_variables<'e>(
    expr: &'e cel::common::ast::IdedExpr,
    bound: &mut Vec<&'e str>,
    read: &mut BTreeSet<&'e str>,
) {
    use cel::common::ast::{EntryExpr, Expr};
    let mut entries = |entries: &'e [cel::common::ast::IdedEntryExpr], bound: &mut Vec<&'e str>| {
        for entry in entries {
            match &entry.expr {
                EntryExpr::StructField(field) => free_variables(&field.value, bound, read),
                EntryExpr::MapEntry(entry) => {
                    free_variables(&entry.key, bound, read);
                    free_variables(&entry.value, bound, read);
                }
            }
        }
    };
    match &expr.expr {
        Expr::Ident(name) => {
            if !name.starts_with('@') && !bound.contains(&name.as_str()) {
                read.insert(name);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                free_variables(target, bound, read);
            }
            for arg in &call.args {
                free_variables(arg, bound, read);
            }
        }
        Expr::Comprehension(c) => {
            free_variables(&c.iter_range, bound, read);
            free_variables(&c.accu_init, bound, read);
            let outer = bound.len();
            bound.push(&c.iter_var);
            bound.extend(c.iter_var2.as_deref());
            bound.push(&c.accu_var);
            for part in [&c.loop_cond, &c.loop_step, &c.result] {
                free_variables(part, bound, read);
            }
            bound.truncate(outer);
        }
        Expr::List(list) => {
            for element in &list.elements {
                free_variables(element, bound, read);
            }
        }
        Expr::Map(map) => entries(&map.entries, bound),
        Expr::Struct(s) => entries(&s.entries, bound),
        Expr::Select(select) => free_variables(&select.operand, bound, read),
        Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn step_references(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let bytes = source.as_bytes();
    let mut start = 0;
    while let Some(pos) = source[start..].find("steps.") {
        let at = start + pos;
        let preceded_by_ident = at > 0
            && (bytes[at - 1].is_ascii_alphanumeric()
                || bytes[at - 1] == b'_'
                || bytes[at - 1] == b'.');
        let id_start = at + "steps.".len();
        let id_len = source[id_start..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if !preceded_by_ident && id_len > 0 {
            found.insert(source[id_start..id_start + id_len].to_owned());
        }
        start = id_start;
    }
    found
}

fn reads_all_steps(source: &str) -> bool {
    let bytes = source.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    source.match_indices("steps").any(|(at, _)| {
        let end = at + "steps".len();
        let token = (at == 0 || !(ident(bytes[at - 1]) || bytes[at - 1] == b'.'))
            && bytes.get(end).is_none_or(|b| !ident(*b));
        let selects_one =
            bytes.get(end) == Some(&b'.') && bytes.get(end + 1).is_some_and(|b| ident(*b));
        token && !selects_one
    })
}

/// What an expression can see while it is evaluated, converted to CEL once:
/// a `for_each` renders one input per item from the same scope, and every
/// evaluation borrows these values instead of converting the instance's
/// input and step outputs again.
#[derive(Debug, Clone)]
pub struct Scope {
    input: Arc<dyn cel::common::value::Val>,
    /// `{ "<step id>": { "output": ..., "status": "Completed" }, ... }`
    steps: Arc<dyn cel::common::value::Val>,
    item: Option<Arc<dyn cel::common::value::Val>>,
    /// `(iteration, previous)` inside a loop.
    repeat: Option<(
        Arc<dyn cel::common::value::Val>,
        Arc<dyn cel::common::value::Val>,
    )>,
}

impl Scope {
    pub fn new(input: &Value, steps: Map<String, Value>) -> Result<Self, ExprError> {
        Ok(Self {
            input: to_val(input)?,
            steps: to_val(&Value::Object(steps))?,
            item: None,
            repeat: None,
        })
    }

    pub fn with_item(&self, item: &Value) -> Result<Scope, ExprError> {
        Ok(Scope {
            item: Some(to_val(item)?),
            ..self.clone()
        })
    }

    /// The scope inside a loop's `iteration` (1 for the first), whose
    /// previous iteration ended with `previous` (null in the first).
    pub fn in_iteration(self, iteration: u32, previous: &Value) -> Result<Scope, ExprError> {
        Ok(Scope {
            repeat: Some((to_val(&Value::from(iteration))?, to_val(previous)?)),
            ..self
        })
    }
}

impl cel::context::VariableResolver for Scope {
    fn resolve<'b>(&'b self, variable: &str) -> Option<cel::common::value::CowVal<'b, 'b>> {
        let value = match variable {
            "input" => &self.input,
            "steps" => &self.steps,
            "item" => self.item.as_ref()?,
            "iteration" => &self.repeat.as_ref()?.0,
            "previous" => &self.repeat.as_ref()?.1,
            _ => return None,
        };
        Some(cel::common::value::CowVal::Borrowed(value.as_ref()))
    }
}

fn to_val(value: &Value) -> Result<Arc<dyn cel::common::value::Val>, ExprError> {
    let val: Box<dyn cel::common::value::Val> = to_cel(value)?
        .try_into()
        .map_err(|e| ExprError(format!("value not usable in an expression: {e}")))?;
    Ok(Arc::from(val))
}

/// A JSON value in which strings may contain `${{ expr }}`.
///
/// A string that is exactly one expression is replaced by the expression's
/// value with its type kept (a list stays a list); expressions embedded in
/// longer text are interpolated as text.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
#[serde(transparent)]
pub struct Template(Value);

impl Template {
    /// Checks every embedded expression; lists every problem found.
    pub fn parse(value: Value, vars: Variables) -> Result<Self, Vec<ExprError>> {
        let mut problems = Vec::new();
        for_each_string(&value, &mut |text| {
            for piece in split(text) {
                match piece {
                    Ok(Piece::Expr(inner)) => {
                        if let Err(e) = Expr::parse_inner(inner, vars) {
                            problems.push(e);
                        }
                    }
                    Ok(Piece::Text(_)) => {}
                    Err(e) => problems.push(e),
                }
            }
        });
        if problems.is_empty() {
            Ok(Self(value))
        } else {
            Err(problems)
        }
    }

    pub fn literal(value: Value) -> Self {
        Self(value)
    }

    pub fn as_value(&self) -> &Value {
        &self.0
    }

    pub fn step_references(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for_each_string(&self.0, &mut |text| {
            for piece in split(text).flatten() {
                if let Piece::Expr(inner) = piece {
                    found.extend(step_references(inner));
                }
            }
        });
        found
    }

    /// Whether an embedded expression reads `steps` as a whole.
    pub fn reads_all_steps(&self) -> bool {
        let mut all = false;
        for_each_string(&self.0, &mut |text| {
            for piece in split(text).flatten() {
                if let Piece::Expr(inner) = piece {
                    all |= reads_all_steps(inner);
                }
            }
        });
        all
    }

    pub fn render(&self, scope: &Scope) -> Result<Value, ExprError> {
        render(&self.0, scope)
    }
}

fn render(value: &Value, scope: &Scope) -> Result<Value, ExprError> {
    Ok(match value {
        Value::String(text) => render_string(text, scope)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render(v, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render(v, scope)?)))
                .collect::<Result<_, ExprError>>()?,
        ),
        other => other.clone(),
    })
}

fn render_string(text: &str, scope: &Scope) -> Result<Value, ExprError> {
    let pieces: Vec<Piece<'_>> = split(text).collect::<Result<_, _>>()?;
    let evaluate = |inner: &str| {
        Expr {
            source: inner.trim().to_owned(),
        }
        .evaluate(scope)
    };
    if let [Piece::Expr(inner)] = pieces.as_slice() {
        return evaluate(inner);
    }
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Expr(inner) => match evaluate(inner)? {
                Value::String(s) => out.push_str(&s),
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Value::String(out))
}

fn for_each_string(value: &Value, visit: &mut dyn FnMut(&str)) {
    match value {
        Value::String(s) => visit(s),
        Value::Array(items) => items.iter().for_each(|v| for_each_string(v, visit)),
        Value::Object(map) => {
            for (k, v) in map {
                visit(k);
                for_each_string(v, visit);
            }
        }
        _ => {}
    }
}

enum Piece<'a> {
    Text(&'a str),
    Expr(&'a str),
}

/// Splits `a ${{ x }} b` into text and expression pieces. An expression that
/// is opened but never closed is an error, never silently left as text.
fn split(text: &str) -> impl Iterator<Item = Result<Piece<'_>, ExprError>> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        if current.is_empty() {
            rest = None;
            return None;
        }
        match current.find(OPEN) {
            Some(0) => match current[OPEN.len()..].find(CLOSE) {
                Some(end) => {
                    rest = Some(&current[OPEN.len() + end + CLOSE.len()..]);
                    Some(Ok(Piece::Expr(&current[OPEN.len()..OPEN.len() + end])))
                }
                None => {
                    rest = None;
                    Some(Err(ExprError(format!("unclosed `${{{{` in {text:?}"))))
                }
            },
            Some(pos) => {
                rest = Some(&current[pos..]);
                Some(Ok(Piece::Text(&current[..pos])))
            }
            None => {
                rest = None;
                Some(Ok(Piece::Text(current)))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scope_with(input: &Value) -> Scope {
        let mut steps = Map::new();
        steps.insert(
            "plan".into(),
            json!({"output": {"tasks": [1, 2, 3]}, "status": "Completed"}),
        );
        Scope::new(input, steps).unwrap()
    }

    #[test]
    fn whole_string_expression_keeps_its_type() {
        let input = json!({"n": 2});
        let t = Template::parse(
            json!({"tasks": "${{ steps.plan.output.tasks }}", "double": "${{ input.n * 2 }}"}),
            Variables::Instance,
        )
        .unwrap();
        assert_eq!(
            t.render(&scope_with(&input)).unwrap(),
            json!({"tasks": [1, 2, 3], "double": 4})
        );
    }

    #[test]
    fn embedded_expressions_interpolate_text() {
        let input = json!({"who": "billing"});
        let t = Template::parse(
            json!("fix ${{ input.who }} (${{ size(steps.plan.output.tasks) }} tasks)"),
            Variables::Instance,
        )
        .unwrap();
        assert_eq!(
            t.render(&scope_with(&input)).unwrap(),
            json!("fix billing (3 tasks)")
        );
    }

    #[test]
    fn item_is_only_visible_in_for_each() {
        let err = Template::parse(json!("${{ item.x }}"), Variables::Instance).unwrap_err();
        assert!(err[0].0.contains("unknown variable(s) item"), "{err:?}");
        assert!(Template::parse(json!("${{ item.x }}"), Variables::ForEachItem).is_ok());
    }

    #[test]
    fn syntax_errors_and_unclosed_markers_are_reported() {
        let errs =
            Template::parse(json!(["${{ 1 + }}", "${{ input.a"]), Variables::Instance).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].0.contains("not a valid CEL expression"), "{errs:?}");
        assert!(errs[1].0.contains("unclosed"), "{errs:?}");
    }

    #[test]
    fn finds_step_references() {
        let e = Expr::parse_wrapped(
            "${{ steps.a.output.x + size(steps.b_2.output) > 0 && mysteps.c }}",
            Variables::Instance,
        );
        // `mysteps` is not a known variable, so this is rejected; the scan itself:
        assert!(e.is_err());
        assert!(!reads_all_steps(
            "steps.a.output.x + size(steps.b_2.output) + x.steps"
        ));
        assert!(reads_all_steps("size(steps) > 2"));
        assert!(reads_all_steps("steps[\"a\"].output"));
        assert!(!reads_all_steps("my_steps + steps_count"));
        let refs = step_references("steps.a.output.x + size(steps.b_2.output) + x.steps.c");
        assert_eq!(refs.into_iter().collect::<Vec<_>>(), vec!["a", "b_2"]);
    }

    #[test]
    fn bool_and_list_results_are_checked() {
        let input = json!({"flag": true});
        let s = scope_with(&input);
        assert!(
            Expr::parse_wrapped("${{ input.flag }}", Variables::Instance)
                .unwrap()
                .evaluate_bool(&s)
                .unwrap()
        );
        let err = Expr::parse_wrapped("${{ 1 }}", Variables::Instance)
            .unwrap()
            .evaluate_bool(&s)
            .unwrap_err();
        assert!(err.0.contains("must be a boolean"));
        let err = Expr::parse_wrapped("${{ input }}", Variables::Instance)
            .unwrap()
            .evaluate_list(&s)
            .unwrap_err();
        assert!(err.0.contains("must be a list"));
    }

    #[test]
    fn missing_keys_fail_with_a_message() {
        let input = json!({});
        let err = Expr::parse_wrapped("${{ input.nope }}", Variables::Instance)
            .unwrap()
            .evaluate(&scope_with(&input))
            .unwrap_err();
        assert!(err.0.contains("input.nope"), "{err}");
    }
}
