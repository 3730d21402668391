//! Policy tooling as OPA users work (`agentvault policy eval/test/check`):
//! a policy directory or bundle, its tests included, on the same regorus
//! engine set-up as the sidecar (our builtins, OPA's builtin error mode, the
//! unknown-function check, `data.agentvault.config`).

use std::path::Path;

use serde::Serialize;
use serde_json::Value as Json;

use super::compiled::prepare_engine;
use super::source::PolicySource;
use super::{builtins, bundle, PolicyConfig, PolicyError, BUILTIN_POLICIES};

/// A loaded policy set for evaluating queries and running its tests.
pub struct PolicySet {
    engine: regorus::Engine,
    tests: Vec<String>,
    files: usize,
}

/// How one `test_` rule came out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "error")]
pub enum TestOutcome {
    Pass,
    /// The rule is false or undefined.
    Fail,
    /// Evaluation failed (the message says why).
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    /// The rule's full path, `data.<package>.test_…`.
    pub rule: String,
    #[serde(flatten)]
    pub outcome: TestOutcome,
}

impl PolicySet {
    /// Every `.rego` file (tests included) and data document of a policy
    /// directory or OPA bundle (directory or `.tar.gz`).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let stamps = bundle::scan(path, true)?;
        let loaded = bundle::read(path, &stamps, true)?;
        Self::new(&loaded.sources, loaded.data)
    }

    /// The built-in policies (`policies/` without its tests).
    pub fn builtin() -> Result<Self, PolicyError> {
        let sources: Vec<PolicySource> = BUILTIN_POLICIES
            .iter()
            .map(|(name, text)| PolicySource {
                name: (*name).to_owned(),
                file: Path::new("<builtin>").join(name),
                text: (*text).to_owned(),
            })
            .collect();
        Self::new(&sources, Json::Null)
    }

    fn new(sources: &[PolicySource], data: Json) -> Result<Self, PolicyError> {
        let (mut engine, _) = prepare_engine(sources)?;
        let tests = builtins::rule_paths(&mut engine)
            .into_iter()
            .filter(|path| {
                path.rsplit('.')
                    .next()
                    .is_some_and(|rule| rule.starts_with("test_"))
            })
            .collect();
        let mut set = Self {
            engine,
            tests,
            files: sources.len(),
        };
        let config = serde_json::json!({ "agentvault": { "config": PolicyConfig::default() } });
        set.add_data(config)?;
        if !data.is_null() {
            set.add_data(data)?;
        }
        Ok(set)
    }

    /// How many Rego files the set holds.
    pub fn files(&self) -> usize {
        self.files
    }

    /// Adds a data document at `data`; an overlap with data already there is an error.
    pub fn add_data(&mut self, data: Json) -> Result<(), PolicyError> {
        self.engine
            .add_data(regorus::Value::from(data))
            .map_err(|e| PolicyError::Compile(format!("data: {e:#}")))
    }

    /// Evaluates `query` (such as `data.agentvault.authz.decision`) with
    /// `input`; `None` when it is undefined.
    pub fn eval(&self, query: &str, input: Option<Json>) -> Result<Option<Json>, PolicyError> {
        let mut engine = self.engine.clone();
        if let Some(input) = input {
            engine.set_input(regorus::Value::from(input));
        }
        let results = engine
            .eval_query(query.to_owned(), false)
            .map_err(|e| PolicyError::Eval(format!("{e:#}")))?;
        let Some(value) = results
            .result
            .first()
            .and_then(|r| r.expressions.first())
            .map(|e| &e.value)
        else {
            return Ok(None);
        };
        if *value == regorus::Value::Undefined {
            return Ok(None);
        }
        serde_json::to_value(value)
            .map(Some)
            .map_err(|e| PolicyError::Eval(e.to_string()))
    }

    /// The `test_` rules, sorted by path.
    pub fn tests(&self) -> &[String] {
        &self.tests
    }

    /// Runs every `test_` rule: it passes when it is true.
    pub fn run_tests(&self) -> Vec<TestResult> {
        self.tests
            .iter()
            .map(|rule| {
                let mut engine = self.engine.clone();
                let outcome = match engine.eval_rule(rule.clone()) {
                    Ok(regorus::Value::Bool(true)) => TestOutcome::Pass,
                    Ok(_) => TestOutcome::Fail,
                    Err(e) => TestOutcome::Error(format!("{e:#}")),
                };
                TestResult {
                    rule: rule.clone(),
                    outcome,
                }
            })
            .collect()
    }
}
