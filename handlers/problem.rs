//! One thing wrong with the configuration, located by its key path: the shape every layer
//! (the routing file, each sink's settings) reports problems in.

/// One problem, located by its key path (`functions.orders.sinks.cache.key`), saying how to
/// fix it. `at` is relative to whoever reports it; the caller prefixes its own position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: String,
    pub message: String,
}

impl Problem {
    pub fn new(at: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            at: at.into(),
            message: message.into(),
        }
    }

    /// A problem with the whole setting it is reported for (no key of its own).
    pub fn here(message: impl Into<String>) -> Self {
        Self::new("", message)
    }

    /// The same problem, seen from `prefix` (`fields.total` under `functions.f.sinks.s`).
    pub fn under(self, prefix: &str) -> Self {
        let at = match (prefix.is_empty(), self.at.is_empty()) {
            (true, _) => self.at,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{}", self.at),
        };
        Self { at, ..self }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.at, self.message)
        }
    }
}

/// Collects the problems of several checks, keeping what each check parsed.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(at, message));
    }

    /// The value of a check that may fail; its problem is kept, `None` returned.
    pub fn take<T, E: std::fmt::Display>(&mut self, at: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(at, e.to_string());
                None
            }
        }
    }

    /// The value of a check that reports problems of its own; they are kept, `None` returned.
    pub fn take_all<T>(&mut self, result: Result<T, Vec<Problem>>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(found) => {
                self.0.extend(found);
                None
            }
        }
    }

    /// Problems with the whole setting, as a sink's own `check` words them.
    pub fn here(messages: Vec<String>) -> Self {
        Self(messages.into_iter().map(Problem::here).collect())
    }

    /// `Ok(value)` when nothing was found wrong.
    pub fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, Vec<Problem>> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_located_from_where_they_are_seen() {
        let cases = [
            (
                Problem::new("key", "m"),
                "functions.f.sinks.s",
                "functions.f.sinks.s.key",
            ),
            (
                Problem::here("m"),
                "functions.f.sinks.s",
                "functions.f.sinks.s",
            ),
            (Problem::new("key", "m"), "", "key"),
        ];
        for (p, prefix, at) in cases {
            assert_eq!(p.under(prefix).at, at);
        }
        assert_eq!(Problem::new("a.b", "bad").to_string(), "a.b: bad");
    }
}
