//! What a plugin counts with the `outcome` import for its request: names
//! checked against the bounds the WIT promises, each counted once, a few per
//! request. The service hands them to the request's experiment arm.

use super::call_log::cut;

/// Longest outcome name, in bytes (the WIT's doc comment says so too).
pub const MAX_OUTCOME_NAME: usize = 32;

/// Distinct outcome names one request may count; the rest are dropped.
pub const MAX_OUTCOMES_PER_CALL: usize = 8;

/// The outcomes one call counted: valid names, each once, at most
/// [`MAX_OUTCOMES_PER_CALL`]. Empty (and unallocated) unless the plugin
/// called `outcome`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcomes(Vec<String>);

impl Outcomes {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `name`, or says why not.
    pub(super) fn count(&mut self, name: String) -> Result<(), String> {
        if let Some(why) = invalid_outcome_name(&name) {
            return Err(why);
        }
        if self.0.contains(&name) {
            return Ok(());
        }
        if self.0.len() == MAX_OUTCOMES_PER_CALL {
            return Err(format!("a request may count at most {MAX_OUTCOMES_PER_CALL} outcomes; dropped {name:?}"));
        }
        self.0.push(name);
        Ok(())
    }
}

impl<S: Into<String>> FromIterator<S> for Outcomes {
    /// Counts each valid name, as the `outcome` import would.
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Self {
        let mut outcomes = Self::default();
        for name in names {
            let _ = outcomes.count(name.into());
        }
        outcomes
    }
}

/// Why `name` cannot be an outcome, if it cannot: 1 to
/// [`MAX_OUTCOME_NAME`] bytes of `a-z`, `0-9`, `-`, `_`.
pub fn invalid_outcome_name(name: &str) -> Option<String> {
    let mut shown = name.to_owned();
    cut(&mut shown, MAX_OUTCOME_NAME);
    if name.is_empty() || name.len() > MAX_OUTCOME_NAME {
        return Some(format!("an outcome name is 1 to {MAX_OUTCOME_NAME} bytes; refused {shown:?}"));
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        return Some(format!("an outcome name is made of a-z, 0-9, - and _; refused {shown:?}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_names_are_short_lowercase_words() {
        for good in ["hit", "miss", "a", "no-match", "top_3", &"x".repeat(MAX_OUTCOME_NAME)] {
            assert_eq!(invalid_outcome_name(good), None, "{good:?}");
        }
        for bad in ["", "Hit", "hit!", "with space", "é", "a\nb", &"x".repeat(MAX_OUTCOME_NAME + 1)] {
            assert!(invalid_outcome_name(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn a_request_counts_each_name_once_and_a_few_names_at_most() {
        let outcomes: Outcomes = ["hit", "hit", "Bad", "miss"].into_iter().collect();
        assert_eq!(outcomes.iter().collect::<Vec<_>>(), ["hit", "miss"]);
        let many: Outcomes = (0..20).map(|i| format!("o{i}")).collect();
        assert_eq!(many.iter().count(), MAX_OUTCOMES_PER_CALL);
        assert_eq!(many.iter().last(), Some("o7"));
        assert!(Outcomes::default().is_empty());
    }
}

