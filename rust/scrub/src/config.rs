//! `remote_scrubbing.Config` as `clientd serve` reads it: the text proto Bazel 7 reads for
//! `--experimental_remote_scrubbing_config` and `clientd scrub-config` writes, checked against
//! the schema, with every regex compiled.
//!
//! What a proxy can match: the target label and the mnemonic, from the RequestMetadata Bazel
//! sends with each call (`target_id`, `action_mnemonic`). It cannot see the rule kind, or whether
//! an action was built for a tool, so `kind` and `match_tools: false` are refused rather than
//! ignored; `match_tools: true` is what clientd does anyway.

use crate::textproto::{self, Field, SyntaxError, Value};
use fancy_regex::Regex;
use std::path::Path;
use thiserror::Error;

/// Why a scrubbing configuration file cannot be used; the message names the file.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("scrubbing config {file}: cannot read it: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("scrubbing config {file}: {source}")]
    Invalid {
        file: String,
        #[source]
        source: ParseError,
    },
}

/// What is wrong in a configuration's text. Each names the line, and the rule (1-based, in file
/// order) and field where there is one.
#[derive(Debug, Error)]
pub enum ParseError {
    #[error(transparent)]
    Syntax(#[from] SyntaxError),
    #[error("rule {number}: {source}")]
    InRule {
        number: usize,
        #[source]
        source: Box<ParseError>,
    },
    #[error("line {line}: {message} has no field {name:?} (it has: {known})")]
    UnknownField {
        line: usize,
        message: &'static str,
        name: String,
        known: &'static str,
    },
    #[error("line {line}: {name} is a message: write {name} {{ ... }}")]
    NotMessage { line: usize, name: String },
    #[error("line {line}: {name} takes a quoted string")]
    NotString { line: usize, name: String },
    #[error("line {line}: {name} is given twice (it is not repeated)")]
    Twice { line: usize, name: String },
    #[error("line {line}: {field}: {pattern:?} is not a valid regular expression: {error}")]
    Regex {
        line: usize,
        /// `matcher.label`, `transform.omitted_inputs`, ...
        field: String,
        pattern: String,
        error: Box<fancy_regex::Error>,
    },
    #[error(
        "line {line}: matcher.kind: clientd cannot match on the rule kind: Bazel does not send it \
         with remote calls. Match the label or mnemonic instead"
    )]
    Kind { line: usize },
    #[error(
        "line {line}: matcher.match_tools: clientd cannot tell actions built for tools from others \
         (Bazel does not send the configuration kind), so it applies every rule to both, as \
         match_tools: true does. Remove the field, or narrow the label and mnemonic instead"
    )]
    ToolsUnmatched { line: usize },
    #[error("line {line}: matcher.match_tools: takes true or false")]
    NotBool { line: usize },
}

/// The rules, in file order; the last one that matches an action applies (as in Bazel).
#[derive(Debug, Default)]
pub struct ScrubbingConfig {
    rules: Vec<Rule>,
}

#[derive(Debug)]
pub struct Rule {
    /// 1-based position in the file, for logs.
    pub number: usize,
    /// None: any label (the field was empty or absent).
    pub label: Option<Pattern>,
    pub mnemonic: Option<Pattern>,
    pub transform: Transform,
}

/// A regex as written in the file, and compiled.
#[derive(Debug)]
pub struct Pattern {
    pub source: String,
    regex: Regex,
}

/// How a matched action's cache key is scrubbed.
#[derive(Debug, Default)]
pub struct Transform {
    /// Inputs whose path (relative to the input root, Bazel's exec root) matches one of these,
    /// as a whole, are left out of the key.
    pub omitted_inputs: Vec<Pattern>,
    /// Applied in order to each argument: the first match of each is replaced, literally.
    pub arg_replacements: Vec<(Pattern, String)>,
    /// Mixed into the key, to invalidate entries on purpose.
    pub salt: String,
}

impl Pattern {
    /// `regex` (made from `source`) compiled; an error names `field`, on `field`'s line.
    fn compile(source: &str, regex: &str, field: &Field, within: &str) -> Result<Self, ParseError> {
        Ok(Pattern {
            source: source.to_string(),
            regex: Regex::new(regex).map_err(|error| ParseError::Regex {
                line: field.line,
                field: format!("{within}.{}", field.name),
                pattern: source.to_string(),
                error: Box::new(error),
            })?,
        })
    }

    /// A regex that must match a whole string, as Java's `Matcher.matches()` does.
    fn whole(source: &str, field: &Field, within: &str) -> Result<Self, ParseError> {
        Self::compile(source, &format!(r"\A(?:{source})\z"), field, within)
    }

    /// A regex that may match anywhere, as Java's `Matcher.find()` does.
    fn anywhere(source: &str, field: &Field, within: &str) -> Result<Self, ParseError> {
        Self::compile(source, source, field, within)
    }

    fn is_match(&self, text: &str) -> bool {
        self.regex.is_match(text).unwrap_or(false)
    }
}

impl Transform {
    pub fn omits(&self, path: &str) -> bool {
        self.omitted_inputs.iter().any(|p| p.is_match(path))
    }

    /// An argument with each replacement applied to the result of the previous one.
    pub fn argument(&self, argument: &str) -> String {
        let mut argument = argument.to_string();
        for (source, target) in &self.arg_replacements {
            if let Ok(Some(found)) = source.regex.find(&argument) {
                argument.replace_range(found.range(), target);
            }
        }
        argument
    }
}

impl Rule {
    fn matches(&self, label: &str, mnemonic: &str) -> bool {
        let ok =
            |pattern: &Option<Pattern>, text| pattern.as_ref().is_none_or(|p| p.is_match(text));
        ok(&self.label, label) && ok(&self.mnemonic, mnemonic)
    }
}

impl ScrubbingConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Invalid { file, source })
    }

    /// The configuration in `text`, or what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let fields = textproto::parse(text)?;
        let mut rules = Vec::new();
        for field in fields {
            match field.name.as_str() {
                "rules" => {
                    let number = rules.len() + 1;
                    let fields = message(&field)?;
                    rules.push(rule(number, fields).map_err(|source| ParseError::InRule {
                        number,
                        source: Box::new(source),
                    })?);
                }
                _ => return Err(unknown(&field, "Config", "rules")),
            }
        }
        Ok(ScrubbingConfig { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rule for an action of target `label` (canonical form, `//pkg:name`) with `mnemonic`:
    /// the last that matches. Empty strings when the client sent no RequestMetadata.
    pub fn rule_for(&self, label: &str, mnemonic: &str) -> Option<&Rule> {
        self.rules.iter().rev().find(|r| r.matches(label, mnemonic))
    }
}

fn unknown(field: &Field, message: &'static str, known: &'static str) -> ParseError {
    ParseError::UnknownField {
        line: field.line,
        message,
        name: field.name.clone(),
        known,
    }
}

fn message(field: &Field) -> Result<&[Field], ParseError> {
    match &field.value {
        Value::Message(fields) => Ok(fields),
        _ => Err(ParseError::NotMessage {
            line: field.line,
            name: field.name.clone(),
        }),
    }
}

fn string(field: &Field) -> Result<&str, ParseError> {
    match &field.value {
        Value::String(s) => Ok(s),
        _ => Err(ParseError::NotString {
            line: field.line,
            name: field.name.clone(),
        }),
    }
}

/// Proto3 text format refuses a singular field given twice; so does clientd.
fn once<'a>(seen: &mut Vec<&'a str>, field: &'a Field) -> Result<(), ParseError> {
    if seen.contains(&field.name.as_str()) {
        return Err(ParseError::Twice {
            line: field.line,
            name: field.name.clone(),
        });
    }
    seen.push(&field.name);
    Ok(())
}

fn rule(number: usize, fields: &[Field]) -> Result<Rule, ParseError> {
    let mut rule = Rule {
        number,
        label: None,
        mnemonic: None,
        transform: Transform::default(),
    };
    let mut seen = Vec::new();
    for field in fields {
        once(&mut seen, field)?;
        match field.name.as_str() {
            "matcher" => matcher(&mut rule, message(field)?)?,
            "transform" => rule.transform = transform(message(field)?)?,
            _ => return Err(unknown(field, "Rule", "matcher, transform")),
        }
    }
    Ok(rule)
}

fn matcher(rule: &mut Rule, fields: &[Field]) -> Result<(), ParseError> {
    let mut seen = Vec::new();
    for field in fields {
        once(&mut seen, field)?;
        let line = field.line;
        match field.name.as_str() {
            "label" | "mnemonic" => {
                let pattern = string(field)?;
                // Empty matches everything, as in Bazel.
                let regex = match pattern {
                    "" => None,
                    _ => Some(Pattern::whole(pattern, field, "matcher")?),
                };
                if field.name == "label" {
                    rule.label = regex;
                } else {
                    rule.mnemonic = regex;
                }
            }
            "kind" => {
                if !string(field)?.is_empty() {
                    return Err(ParseError::Kind { line });
                }
            }
            "match_tools" => match &field.value {
                Value::Word(w) if matches!(w.as_str(), "true" | "True" | "t" | "1") => {}
                Value::Word(w) if matches!(w.as_str(), "false" | "False" | "f" | "0") => {
                    return Err(ParseError::ToolsUnmatched { line });
                }
                _ => return Err(ParseError::NotBool { line }),
            },
            _ => {
                return Err(unknown(
                    field,
                    "Matcher",
                    "label, mnemonic, kind, match_tools",
                ))
            }
        }
    }
    Ok(())
}

fn transform(fields: &[Field]) -> Result<Transform, ParseError> {
    let mut transform = Transform::default();
    let mut seen = Vec::new();
    for field in fields {
        match field.name.as_str() {
            "omitted_inputs" => {
                transform
                    .omitted_inputs
                    .push(Pattern::whole(string(field)?, field, "transform")?)
            }
            "arg_replacements" => {
                let (mut source, mut target) = (None, String::new());
                let mut seen = Vec::new();
                for part in message(field)? {
                    once(&mut seen, part)?;
                    match part.name.as_str() {
                        "source" => {
                            source = Some(Pattern::anywhere(string(part)?, field, "transform")?)
                        }
                        "target" => target = string(part)?.to_string(),
                        _ => return Err(unknown(part, "Replacement", "source, target")),
                    }
                }
                // Bazel compiles an absent source as the empty regex, which matches at 0.
                let source = match source {
                    Some(source) => source,
                    None => Pattern::anywhere("", field, "transform")?,
                };
                transform.arg_replacements.push((source, target));
            }
            "salt" => {
                once(&mut seen, field)?;
                transform.salt = string(field)?.to_string();
            }
            _ => {
                return Err(unknown(
                    field,
                    "Transform",
                    "omitted_inputs, arg_replacements, salt",
                ))
            }
        }
    }
    Ok(transform)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{scrub_config, ScrubOptions};

    #[test]
    fn what_scrub_config_writes_reads_back() {
        let options = ScrubOptions {
            mnemonics: vec!["Genrule".into()],
            labels: vec!["//app:.*".into(), "//release:stamp".into()],
            replace: vec![(r"build-\d+".into(), "build-N".into())],
            salt: Some("v2".into()),
            ..Default::default()
        };
        let (text, _) = scrub_config(&options).unwrap();
        let config = ScrubbingConfig::parse(&text).unwrap();
        assert_eq!(config.rules().len(), 2);
        let rule = config.rule_for("//app:x", "Genrule").unwrap();
        assert_eq!(rule.number, 1);
        assert!(rule.transform.omits("bazel-out/volatile-status.txt"));
        assert!(!rule.transform.omits("x/bazel-out/volatile-status.txt"));
        assert!(!rule.transform.omits("bazel-out/volatile-status.txt.bak"));
        assert_eq!(
            rule.transform.argument("--v=build-12-build-3"),
            "--v=build-N-build-3"
        );
        assert_eq!(rule.transform.salt, "v2");
        assert_eq!(
            config
                .rule_for("//release:stamp", "Genrule")
                .unwrap()
                .number,
            2
        );
        assert!(config.rule_for("//app:x", "CppCompile").is_none());
        assert!(
            config.rule_for("//apps:x", "Genrule").is_none(),
            "whole-string match"
        );
    }

    #[test]
    fn the_last_matching_rule_wins_and_empty_matchers_match_all() {
        let text = r#"
            rules { transform { salt: "any" } }
            rules { matcher { mnemonic: "Gen.*" label: "" } transform { salt: "gen" } }
            rules { matcher { kind: "" match_tools: true } }
        "#;
        let config = ScrubbingConfig::parse(text).unwrap();
        assert_eq!(config.rule_for("", "").unwrap().number, 3);
        let text = r#"rules { transform { salt: "any" } }
                      rules { matcher { mnemonic: "Gen.*" } transform { salt: "gen" } }"#;
        let config = ScrubbingConfig::parse(text).unwrap();
        assert_eq!(
            config.rule_for("//a:b", "Genrule").unwrap().transform.salt,
            "gen"
        );
        assert_eq!(
            config
                .rule_for("//a:b", "CppCompile")
                .unwrap()
                .transform
                .salt,
            "any"
        );
    }

    #[test]
    fn replacements_apply_in_order_once_each_and_literally() {
        let text = r#"rules { transform {
            arg_replacements { source: "foo" target: "bar" }
            arg_replacements { source: "spam" target: "$0eggs" }
        } }"#;
        let config = ScrubbingConfig::parse(text).unwrap();
        let t = &config.rule_for("", "").unwrap().transform;
        assert_eq!(t.argument("abcfoo123spamxyz"), "abcbar123$0eggsxyz");
        assert_eq!(t.argument("foofoo"), "barfoo");
        assert_eq!(t.argument("bareggs"), "bareggs");
    }

    #[test]
    fn bad_configs_say_which_rule_and_field() {
        let cases = [
            (
                "rules { matcher { kind: \"genrule rule\" } }",
                "rule 1: line 1: matcher.kind: clientd cannot match on the rule kind",
            ),
            (
                "rules {}\nrules { matcher { match_tools: false } }",
                "rule 2: line 2: matcher.match_tools: clientd cannot tell",
            ),
            (
                "rules { matcher { label: \"//a:(\" } }",
                "rule 1: line 1: matcher.label: \"//a:(\" is not a valid regular expression",
            ),
            (
                "rules { transform { omitted_inputs: \"[\" } }",
                "rule 1: line 1: transform.omitted_inputs: \"[\"",
            ),
            (
                "rules { transform { arg_replacements { source: \"(\" } } }",
                "rule 1: line 1: transform.arg_replacements:",
            ),
            (
                "rules { matcher { labels: \"x\" } }",
                "rule 1: line 1: Matcher has no field \"labels\"",
            ),
            ("rule { }", "line 1: Config has no field \"rule\""),
            (
                "rules { transform { salt: \"a\" salt: \"b\" } }",
                "rule 1: line 1: salt is given twice",
            ),
            (
                "rules { matcher: \"x\" }",
                "rule 1: line 1: matcher is a message",
            ),
            (
                "rules { matcher { label: //x } }",
                "line 1: expected a value, found \"//x } }\"",
            ),
        ];
        for (text, want) in cases {
            let err = ScrubbingConfig::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scrub.txtpb");
        std::fs::write(&path, "rules { matcher { kind: \"x\" } }").unwrap();
        let err = ScrubbingConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("scrubbing config {}: rule 1:", path.display())),
            "{err}"
        );
        let err = ScrubbingConfig::load(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read it"), "{err}");
    }
}
