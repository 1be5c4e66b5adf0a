//! What agents spend (model tokens, money) and the budget an instance may
//! spend: every result may carry [`Usage`]; the engine sums it per step and
//! per instance, and suspends an instance whose sum crosses its [`Budget`].

use serde::{Deserialize, Serialize};

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_nothing(cost: &f64) -> bool {
    *cost == 0.0
}

/// What one result (or a sum of results) spent. `cost` is in whatever
/// currency the agents report (legato only adds it up).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub input_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub output_tokens: u64,
    #[serde(default, skip_serializing_if = "is_nothing")]
    pub cost: f64,
    /// The model that spent it, for one result; absent on sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Usage {
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    pub fn is_empty(&self) -> bool {
        self.tokens() == 0 && self.cost == 0.0
    }

    /// Adds `other`'s tokens and cost (a sum names no model).
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cost += other.cost;
    }

    /// Adds `other` as more of one attempt's spending: the model stays
    /// named while every part names the same one.
    pub fn merge(&mut self, other: &Usage) {
        let first = self.is_empty() && self.model.is_none();
        let model = if first || self.model == other.model {
            other.model.clone()
        } else {
            None
        };
        self.add(other);
        self.model = model;
    }

    /// Why this usage cannot be taken as reported: costs and tokens are
    /// counted up, never down.
    pub fn check(&self) -> Result<(), String> {
        // JSON readers of the sums (the API's int64) read up to i64::MAX.
        if i64::try_from(self.input_tokens).is_err() || i64::try_from(self.output_tokens).is_err() {
            return Err(format!("tokens must be at most {}", i64::MAX));
        }
        if !self.cost.is_finite() || self.cost < 0.0 {
            return Err("cost must be a finite number of at least 0".into());
        }
        if self.model.as_ref().is_some_and(|m| m.chars().count() > 200) {
            return Err("model must be at most 200 characters".into());
        }
        Ok(())
    }
}

/// The most an instance may spend; either bound may be absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

impl Budget {
    /// The field at fault and why, for a budget that bounds nothing or
    /// bounds it by nonsense.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.tokens.is_none() && self.cost.is_none() {
            return Err(("", "must set tokens, cost or both".into()));
        }
        if self.tokens == Some(0) {
            return Err(("tokens", "must be at least 1".into()));
        }
        if self.tokens.is_some_and(|t| i64::try_from(t).is_err()) {
            return Err(("tokens", format!("must be at most {}", i64::MAX)));
        }
        if let Some(cost) = self.cost
            && (!cost.is_finite() || cost <= 0.0)
        {
            return Err(("cost", "must be a finite number above 0".into()));
        }
        Ok(())
    }

    /// The field at fault and why, when this budget asks for more than
    /// `ceiling` allows.
    pub fn within(&self, ceiling: &Budget) -> Result<(), (&'static str, String)> {
        bound("tokens", self.tokens, ceiling.tokens)?;
        bound("cost", self.cost, ceiling.cost)
    }

    /// Why `spent` is past this budget, if it is.
    pub fn exceeded_by(&self, spent: &Usage) -> Option<String> {
        if let Some(tokens) = self.tokens
            && spent.tokens() > tokens
        {
            return Some(format!(
                "budget exceeded: {} tokens used of {tokens}",
                spent.tokens()
            ));
        }
        if let Some(cost) = self.cost
            && spent.cost > cost
        {
            return Some(format!("budget exceeded: cost {} of {cost}", spent.cost));
        }
        None
    }
}

/// One bound of a budget against the same bound of its ceiling.
fn bound<T: PartialOrd + std::fmt::Display>(
    field: &'static str,
    asked: Option<T>,
    most: Option<T>,
) -> Result<(), (&'static str, String)> {
    match (asked, most) {
        (Some(asked), Some(most)) if asked > most => Err((
            field,
            format!("must be at most {most}, the definition's ceiling"),
        )),
        (None, Some(most)) => Err((
            field,
            format!("must be set, at most {most}: the definition bounds {field}"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: u64, output: u64, cost: f64) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            cost,
            model: Some("m".into()),
        }
    }

    #[test]
    fn sums_add_tokens_and_cost_and_name_no_model() {
        let mut sum = Usage::default();
        sum.add(&usage(10, 5, 0.25));
        sum.add(&usage(1, 1, 0.5));
        assert_eq!(
            sum,
            Usage {
                input_tokens: 11,
                output_tokens: 6,
                cost: 0.75,
                model: None
            }
        );
        assert_eq!(sum.tokens(), 17);
        let mut one = Usage::default();
        one.merge(&usage(1, 0, 0.0));
        one.merge(&usage(2, 0, 0.0));
        assert_eq!(one.model.as_deref(), Some("m"), "one model throughout");
        one.merge(&Usage {
            model: Some("other".into()),
            ..usage(1, 0, 0.0)
        });
        assert_eq!(
            (one.input_tokens, one.model),
            (4, None),
            "two models name none"
        );
        assert!(Usage::default().is_empty());
        assert!(usage(0, 0, -1.0).check().is_err());
        assert!(usage(0, 0, f64::NAN).check().is_err());
    }

    #[test]
    fn a_budget_is_crossed_by_tokens_or_cost() {
        let budget = Budget {
            tokens: Some(100),
            cost: Some(1.0),
        };
        assert_eq!(budget.exceeded_by(&usage(50, 50, 1.0)), None);
        assert!(
            budget
                .exceeded_by(&usage(50, 51, 0.0))
                .unwrap()
                .contains("101 tokens used of 100")
        );
        assert!(
            budget
                .exceeded_by(&usage(0, 0, 1.5))
                .unwrap()
                .contains("cost 1.5 of 1")
        );
    }

    #[test]
    fn a_start_budget_stays_within_the_definitions_ceiling() {
        let ceiling = Budget {
            tokens: Some(1_000),
            cost: None,
        };
        assert!(
            Budget {
                tokens: Some(500),
                cost: Some(3.0)
            }
            .within(&ceiling)
            .is_ok()
        );
        assert_eq!(
            Budget {
                tokens: Some(5_000),
                cost: None
            }
            .within(&ceiling)
            .unwrap_err()
            .0,
            "tokens"
        );
        assert_eq!(
            Budget {
                tokens: None,
                cost: Some(1.0)
            }
            .within(&ceiling)
            .unwrap_err()
            .0,
            "tokens"
        );
        assert_eq!(Budget::default().check().unwrap_err().0, "");
        assert_eq!(
            Budget {
                tokens: Some(0),
                cost: None
            }
            .check()
            .unwrap_err()
            .0,
            "tokens"
        );
        assert_eq!(
            Budget {
                tokens: None,
                cost: Some(-1.0)
            }
            .check()
            .unwrap_err()
            .0,
            "cost"
        );
    }
}
