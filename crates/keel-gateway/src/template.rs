//! Path templates of `google.api.http` rules, per the grammar in `google/api/http.proto`:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{name}` is `{name=*}`. `**` matches zero or more segments and may only come last.
//! Variables bind the segments they cover to a (possibly nested) request field.

use std::fmt;

/// One segment of a template, as matching sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Exactly this text (compared with the percent-decoded request segment).
    Literal(String),
    /// Any one segment.
    Any,
    /// Any number of segments, zero included; only last.
    Rest,
}

/// A variable: the field it fills and the segments it covers (`end` exclusive; `None`
/// when it ends with `**` and covers the rest of the path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// The field path, e.g. `["book", "name"]` for `{book.name=...}`.
    pub field_path: Vec<String>,
    /// Index of its first segment.
    pub start: usize,
    /// Index after its last segment, or `None` for "to the end".
    pub end: Option<usize>,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// The segments, variables flattened into them.
    pub segments: Vec<Segment>,
    /// The variables, in order.
    pub variables: Vec<Variable>,
    /// The custom verb (`:refund`), without its colon.
    pub verb: Option<String>,
}

/// A template that does not parse, saying where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

impl Template {
    /// Parses `template`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let error = |reason: String| TemplateError {
            template: template.to_owned(),
            reason,
        };
        let Some(body) = template.strip_prefix('/') else {
            return Err(error("a template starts with /".into()));
        };
        let (path, verb) = split_verb(body);
        if verb.is_some_and(str::is_empty) {
            return Err(error("the verb after ':' is empty".into()));
        }
        let mut parser = Parser {
            text: path,
            position: 0,
            segments: Vec::new(),
            variables: Vec::new(),
        };
        parser.segments(false).map_err(error)?;
        if parser.position != path.len() {
            return Err(error(format!(
                "unexpected {:?} at {}",
                &path[parser.position..],
                parser.position + 1
            )));
        }
        let last = parser.segments.len().saturating_sub(1);
        if let Some(index) = parser
            .segments
            .iter()
            .position(|segment| *segment == Segment::Rest)
            && index != last
        {
            return Err(error("'**' may only be the last segment".into()));
        }
        let mut names: Vec<&Vec<String>> = Vec::new();
        for variable in &parser.variables {
            if names.contains(&&variable.field_path) {
                return Err(error(format!(
                    "the field {} is bound twice",
                    variable.field_path.join(".")
                )));
            }
            names.push(&variable.field_path);
        }
        Ok(Self {
            segments: parser.segments,
            variables: parser.variables,
            verb: verb.map(str::to_owned),
        })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut index = 0;
        while index < self.segments.len() {
            f.write_str("/")?;
            if let Some(variable) = self.variables.iter().find(|v| v.start == index) {
                let end = variable.end.unwrap_or(self.segments.len());
                write!(f, "{{{}", variable.field_path.join("."))?;
                let covered = &self.segments[index..end];
                if covered != [Segment::Any] {
                    f.write_str("=")?;
                    for (i, segment) in covered.iter().enumerate() {
                        if i > 0 {
                            f.write_str("/")?;
                        }
                        segment.fmt(f)?;
                    }
                }
                f.write_str("}")?;
                index = end;
            } else {
                self.segments[index].fmt(f)?;
                index += 1;
            }
        }
        if let Some(verb) = &self.verb {
            write!(f, ":{verb}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(text) => f.write_str(text),
            Self::Any => f.write_str("*"),
            Self::Rest => f.write_str("**"),
        }
    }
}

/// The path and the verb: the text after the last ':' that is outside any variable and
/// after the last '/'.
fn split_verb(body: &str) -> (&str, Option<&str>) {
    let mut depth = 0;
    let mut colon = None;
    for (index, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => colon = None,
            ':' if depth == 0 => colon = Some(index),
            _ => {}
        }
    }
    match colon {
        Some(index) => (&body[..index], Some(&body[index + 1..])),
        None => (body, None),
    }
}

struct Parser<'a> {
    text: &'a str,
    position: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.position..]
    }

    /// Segments until the end, or until `}` inside a variable.
    fn segments(&mut self, in_variable: bool) -> Result<(), String> {
        loop {
            self.segment(in_variable)?;
            if self.rest().starts_with('/') {
                self.position += 1;
            } else {
                return Ok(());
            }
        }
    }

    fn segment(&mut self, in_variable: bool) -> Result<(), String> {
        let rest = self.rest();
        if rest.starts_with("**") {
            self.position += 2;
            self.segments.push(Segment::Rest);
        } else if rest.starts_with('*') {
            self.position += 1;
            self.segments.push(Segment::Any);
        } else if rest.starts_with('{') {
            if in_variable {
                return Err("variables cannot nest".into());
            }
            self.variable()?;
        } else {
            let end = rest.find(['/', '{', '}', '*']).unwrap_or(rest.len());
            let literal = &rest[..end];
            if literal.is_empty() {
                return Err(format!("an empty segment at {}", self.position + 1));
            }
            if let Some(bad) = literal
                .chars()
                .find(|c| c.is_whitespace() || matches!(c, '?' | '#' | '='))
            {
                return Err(format!("{bad:?} cannot appear in the literal {literal:?}"));
            }
            let literal = Segment::Literal(literal.to_owned());
            self.position += end;
            self.segments.push(literal);
        }
        Ok(())
    }

    fn variable(&mut self) -> Result<(), String> {
        self.position += 1; // {
        let rest = self.rest();
        let end = rest
            .find(['=', '}'])
            .ok_or("a variable is not closed with '}'")?;
        let field_path: Vec<String> = rest[..end].split('.').map(str::to_owned).collect();
        if field_path.iter().any(|part| !is_identifier(part)) {
            return Err(format!("{:?} is not a field path", &rest[..end]));
        }
        self.position += end;
        let start = self.segments.len();
        if self.rest().starts_with('=') {
            self.position += 1;
            self.segments(true)?;
        } else {
            self.segments.push(Segment::Any);
        }
        if !self.rest().starts_with('}') {
            return Err("a variable is not closed with '}'".into());
        }
        self.position += 1;
        let end = match self.segments.last() {
            Some(Segment::Rest) => None,
            _ => Some(self.segments.len()),
        };
        self.variables.push(Variable {
            field_path,
            start,
            end,
        });
        Ok(())
    }
}

fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(text: &str) -> Segment {
        Segment::Literal(text.into())
    }

    fn var(path: &str, start: usize, end: Option<usize>) -> Variable {
        Variable {
            field_path: path.split('.').map(str::to_owned).collect(),
            start,
            end,
        }
    }

    #[test]
    fn templates_parse_into_segments_variables_and_verbs() {
        /// Template, segments, variables, verb.
        type Case = (
            &'static str,
            Vec<Segment>,
            Vec<Variable>,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "/v1/accounts",
                vec![lit("v1"), lit("accounts")],
                vec![],
                None,
            ),
            (
                "/v1/accounts/{account_id}",
                vec![lit("v1"), lit("accounts"), Segment::Any],
                vec![var("account_id", 2, Some(3))],
                None,
            ),
            (
                "/v1/payments/{payment_id}:refund",
                vec![lit("v1"), lit("payments"), Segment::Any],
                vec![var("payment_id", 2, Some(3))],
                Some("refund"),
            ),
            (
                "/v1/{name=shelves/*/books/*}",
                vec![
                    lit("v1"),
                    lit("shelves"),
                    Segment::Any,
                    lit("books"),
                    Segment::Any,
                ],
                vec![var("name", 1, Some(5))],
                None,
            ),
            (
                "/v1/{book.name=shelves/*}/x/{rest=**}:get",
                vec![
                    lit("v1"),
                    lit("shelves"),
                    Segment::Any,
                    lit("x"),
                    Segment::Rest,
                ],
                vec![var("book.name", 1, Some(3)), var("rest", 4, None)],
                Some("get"),
            ),
            (
                "/v1/*/files/**",
                vec![lit("v1"), Segment::Any, lit("files"), Segment::Rest],
                vec![],
                None,
            ),
            ("/v1:batch", vec![lit("v1")], vec![], Some("batch")),
        ];
        for (text, segments, variables, verb) in cases {
            let template = Template::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(template.segments, segments, "{text}");
            assert_eq!(template.variables, variables, "{text}");
            assert_eq!(template.verb.as_deref(), verb, "{text}");
            let shown = template.to_string();
            assert_eq!(
                Template::parse(&shown).unwrap(),
                template,
                "{text} → {shown}"
            );
        }
    }

    #[test]
    fn bad_templates_say_why() {
        for (text, hint) in [
            ("v1/x", "starts with /"),
            ("/v1/**/x", "last segment"),
            ("/v1/{a={b}}", "nest"),
            ("/v1/{a", "closed"),
            ("/v1/{a.}", "field path"),
            ("/v1/{1a}", "field path"),
            ("/v1//x", "empty segment"),
            ("/v1/x:", "verb"),
            ("/v1/{a}/{a}", "twice"),
            ("/v1/a b", "cannot appear"),
        ] {
            let error = Template::parse(text).unwrap_err().to_string();
            assert!(error.contains(hint), "{text}: {error}");
        }
    }
}
