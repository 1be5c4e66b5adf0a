//! What instances spend, as the API shows and takes it: usage sums and
//! budgets.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The most an instance may spend: tokens, cost, or both (an empty one
/// bounds nothing and is taken as no budget given).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct BudgetView {
    /// Model tokens, input and output together (at least 1).
    #[schema(minimum = 1, maximum = 9223372036854775807_i64, nullable = false)]
    pub tokens: Option<u64>,
    /// In the currency agents report their cost in (above 0).
    #[schema(exclusive_minimum = 0.0, nullable = false)]
    pub cost: Option<f64>,
}

/// What an instance, a step or a result spent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UsageView {
    #[serde(default)]
    #[schema(maximum = 9223372036854775807_i64)]
    pub input_tokens: u64,
    #[serde(default)]
    #[schema(maximum = 9223372036854775807_i64)]
    pub output_tokens: u64,
    #[serde(default)]
    #[schema(minimum = 0.0)]
    pub cost: f64,
    /// The model that spent it (on one result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl From<&legato_contracts::Usage> for UsageView {
    fn from(usage: &legato_contracts::Usage) -> Self {
        Self {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost: usage.cost,
            model: usage.model.clone(),
        }
    }
}

impl From<UsageView> for legato_contracts::Usage {
    fn from(view: UsageView) -> Self {
        Self {
            input_tokens: view.input_tokens,
            output_tokens: view.output_tokens,
            cost: view.cost,
            model: view.model,
        }
    }
}

/// A budget as a request gave it, checked: a 400 naming the field at
/// fault (a JSON pointer under `at`), else the budget (`None` for none or
/// an empty one, which bounds nothing).
pub(crate) fn checked_budget(
    at: &str,
    budget: Option<legato_contracts::Budget>,
    ceiling: Option<&legato_contracts::Budget>,
) -> Result<Option<legato_contracts::Budget>, legato_service::problem::Problem> {
    let Some(budget) = budget.filter(|b| b.tokens.is_some() || b.cost.is_some()) else {
        return Ok(None);
    };
    let fault = |(field, why): (&str, String)| {
        let pointer = if field.is_empty() {
            at.to_owned()
        } else {
            format!("{at}/{field}")
        };
        legato_service::problem::Problem::field(pointer, why)
    };
    budget.check().map_err(fault)?;
    if let Some(ceiling) = ceiling {
        budget.within(ceiling).map_err(fault)?;
    }
    Ok(Some(budget))
}
