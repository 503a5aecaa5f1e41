//! `${NAME}` / `${NAME:-default}` interpolation of app settings (environment variables) into
//! config strings, so endpoints and secrets stay out of the checked-in file. `$$` is a literal `$`.

/// One unresolved reference, reported with where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolationError {
    #[error(
        "refers to app setting `{name}`, which is not set; add it to local.settings.json `Values` (local) or to the Function App's app settings (Azure), or write `${{{name}:-default}}`"
    )]
    Unset { name: String },
    #[error("has an unterminated `${{` (write `$$` for a literal `$`)")]
    Unterminated,
    #[error("has an invalid setting name `{name}` (letters, digits, `_` and `__` only)")]
    BadName { name: String },
}

/// Expands every reference in `input` using `lookup`.
pub fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(InterpolationError::Unterminated)?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(InterpolationError::BadName {
                    name: name.to_string(),
                });
            }
            match lookup(name)
                .filter(|v| !v.is_empty())
                .or(default.map(str::to_string))
            {
                Some(value) => out.push_str(&value),
                None => {
                    return Err(InterpolationError::Unset {
                        name: name.to_string(),
                    });
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("example.net".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_defaults_and_escapes() {
        assert_eq!(
            interpolate("https://${HOST}/x", &env).unwrap(),
            "https://example.net/x"
        );
        assert_eq!(interpolate("${MISSING:-./local}", &env).unwrap(), "./local");
        assert_eq!(interpolate("${EMPTY:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(
            interpolate("cost $$5 and $x", &env).unwrap(),
            "cost $5 and $x"
        );
        assert_eq!(interpolate("${MISSING:-}", &env).unwrap(), "");
    }

    #[test]
    fn errors_say_how_to_fix() {
        let e = interpolate("${NOPE}", &env).unwrap_err();
        assert!(
            e.to_string()
                .contains("`NOPE`, which is not set; add it to local.settings.json"),
            "{e}"
        );
        assert_eq!(
            interpolate("${HOST", &env).unwrap_err(),
            InterpolationError::Unterminated
        );
        assert!(matches!(
            interpolate("${a-b}", &env),
            Err(InterpolationError::BadName { .. })
        ));
    }
}
