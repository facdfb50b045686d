//! `${VAR}` and `${VAR:-default}` interpolation of environment variables in
//! configuration strings. A missing variable without a default is an error that
//! names the variable; `$$` is a literal `$`.

/// Where variable values come from: the process environment in production,
/// an explicit map in tests.
pub trait Env {
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        std::collections::HashMap::get(self, name).cloned()
    }
}

/// What went wrong while interpolating one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarError {
    /// `${NAME}` with no default, and `NAME` is not set.
    Missing(String),
    /// `${` without a closing `}`, or a name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    Malformed(String),
}

impl std::fmt::Display for VarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VarError::Missing(name) => write!(
                f,
                "environment variable `{name}` is not set (set it, or write `${{{name}:-default}}`)"
            ),
            VarError::Malformed(why) => write!(f, "bad variable reference: {why}"),
        }
    }
}

/// Replaces every `${...}` in `input`. Returns all errors found in the string.
pub fn interpolate(input: &str, env: &dyn Env) -> Result<String, Vec<VarError>> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut errors = Vec::new();
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                errors.push(VarError::Malformed("`${` without a closing `}`".into()));
                rest = "";
                break;
            };
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_name(name) {
                errors.push(VarError::Malformed(format!(
                    "`{name}` is not a variable name (letters, digits and `_`)"
                )));
            } else {
                match (env.get(name), default) {
                    (Some(value), Some(d)) if value.is_empty() => out.push_str(d),
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => errors.push(VarError::Missing(name.to_owned())),
                }
            }
            rest = &body[end + 1..];
        } else {
            // A lone `$` followed by anything else is literal.
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env() -> HashMap<String, String> {
        HashMap::from([
            ("HOST".to_owned(), "nats.internal".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ])
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        let e = env();
        assert_eq!(
            interpolate("nats://${HOST}:4222", &e).unwrap(),
            "nats://nats.internal:4222"
        );
        assert_eq!(interpolate("${PORT:-4222}", &e).unwrap(), "4222");
        assert_eq!(interpolate("${EMPTY:-fallback}", &e).unwrap(), "fallback");
        assert_eq!(interpolate("${EMPTY}", &e).unwrap(), "");
        assert_eq!(
            interpolate("cost $$5 and $x", &e).unwrap(),
            "cost $5 and $x"
        );
    }

    #[test]
    fn missing_variable_is_named() {
        let err = interpolate("a ${NOPE} b ${ALSO_NOPE}", &env()).unwrap_err();
        assert_eq!(
            err,
            vec![
                VarError::Missing("NOPE".into()),
                VarError::Missing("ALSO_NOPE".into())
            ]
        );
        assert!(err[0].to_string().contains("`NOPE` is not set"));
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(matches!(
            interpolate("${HOST", &env()).unwrap_err()[0],
            VarError::Malformed(_)
        ));
        assert!(matches!(
            interpolate("${1X}", &env()).unwrap_err()[0],
            VarError::Malformed(_)
        ));
    }
}
