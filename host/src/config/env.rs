//! `${VAR}` expansion in the configuration text, so secrets stay out of the file.
//!
//! Expansion happens on the text before YAML parsing (as Vector and Grafana
//! Agent do), so numbers and durations can come from the environment too.
//! `${VAR:-default}` supplies a fallback; `$$` is a literal `$`. Values that
//! contain no newline keep every line and column the parser reports exact.

use super::Problem;

/// Expands `${VAR}` / `${VAR:-default}` in `text` using `lookup`.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<Problem>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    for (line_no, line) in text.split_inclusive('\n').enumerate() {
        let mut rest = line;
        let mut column = 1;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            column += rest[..pos].chars().count();
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
                column += 2;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                out.push('$');
                rest = after;
                column += 1;
                continue;
            };
            let Some(end) = body.find('}') else {
                problems.push(Problem::at(
                    "(environment expansion)",
                    line_no + 1,
                    column,
                    "unterminated `${` (expected `${NAME}` or `${NAME:-default}`)",
                ));
                out.push_str(&rest[pos..]);
                rest = "";
                break;
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            let valid_name = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid_name {
                problems.push(Problem::at(
                    "(environment expansion)",
                    line_no + 1,
                    column,
                    format!("`${{{expr}}}` is not a valid variable name (letters, digits, `_`)"),
                ));
            } else {
                match (lookup(name), default) {
                    (Some(value), _) => out.push_str(&value),
                    (None, Some(default)) => out.push_str(default),
                    (None, None) => problems.push(Problem::at(
                        "(environment expansion)",
                        line_no + 1,
                        column,
                        format!(
                            "environment variable {name} is not set (use `${{{name}:-default}}` for a fallback)"
                        ),
                    )),
                }
            }
            column += expr.chars().count() + 3;
            rest = &body[end + 1..];
        }
        out.push_str(rest);
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "PORT" => Some("9000".into()),
            _ => None,
        }
    }

    #[test]
    fn set_variables_are_substituted() {
        let out = expand("token: ${TOKEN}\nport: ${PORT}\n", env).unwrap();
        assert_eq!(out, "token: s3cret\nport: 9000\n");
    }

    #[test]
    fn default_applies_only_when_unset() {
        let out = expand("a: ${NOPE:-x}\nb: ${PORT:-1}\n", env).unwrap();
        assert_eq!(out, "a: x\nb: 9000\n");
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(expand("p: a$$b $x\n", env).unwrap(), "p: a$b $x\n");
    }

    #[test]
    fn unset_variable_reports_line_and_column() {
        let problems = expand("listen: x\ntoken: ${MISSING}\n", env).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(2));
        assert_eq!(problems[0].column, Some(8));
        assert!(problems[0].message.contains("MISSING"));
    }

    #[test]
    fn unterminated_and_bad_names_are_all_reported() {
        let problems = expand("a: ${1X}\nb: ${OPEN\n", env).unwrap_err();
        assert_eq!(problems.len(), 2);
    }
}
