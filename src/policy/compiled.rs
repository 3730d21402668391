//! A compiled policy set and how it is evaluated: regorus's VM where the
//! policy compiles to bytecode, else its interpreter.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::builtins::{self, CallCheck};
use super::decision::{to_decision, Decision};
use super::input::{cache_key, input_value, PolicyInput};
use super::memo::DecisionCache;
use super::reads::{input_reads, projection_key, InputReads};
use super::rule_input::RuleInput;
use super::source::PolicySource;
use super::{PolicyConfig, PolicyError, DECISION_RULE};

/// A policy that runs longer than this is stopped and the request denied.
const EVAL_TIME_LIMIT: Duration = Duration::from_millis(250);

/// Evaluation steps between two looks at the clock for [`EVAL_TIME_LIMIT`].
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::MIN.saturating_add(63);

/// The VM's instruction budget per decision; its default (25,000) is too tight
/// for policies that walk long grant lists.
const MAX_VM_INSTRUCTIONS: usize = 5_000_000;

/// Idle VMs kept per compiled policy, at most: about one per concurrent request.
const MAX_IDLE_VMS: usize = 64;

/// How a compiled policy set is evaluated.
pub(super) enum Evaluator {
    /// Bytecode for regorus's VM, about ten times faster than the interpreter
    /// on the default policy. Idle VMs are kept for reuse: each run resets
    /// the VM's evaluation state, and a fresh VM costs more than the run.
    Vm {
        program: Arc<regorus::rvm::program::Program>,
        data: regorus::Value,
        idle: Mutex<Vec<regorus::rvm::vm::RegoVM>>,
    },
    /// The tree-walking interpreter, for policies the VM compiler does not
    /// handle (such as `with`). Each evaluation clones the prepared engine,
    /// which shares modules and data behind `Arc`s.
    Interpreter(Box<regorus::Engine>),
}

/// A compiled policy set: an evaluator for each entrypoint it was compiled
/// for, [`DECISION_RULE`] first, then any others its front ends ask for
/// (such as the Envoy decision rule).
pub(super) struct Compiled {
    pub(super) evaluator: Evaluator,
    /// The other entrypoints, each proven to exist at compile time.
    others: Vec<Entrypoint>,
    /// Decisions of [`DECISION_RULE`] by input; `None` when the policy calls
    /// an impure builtin.
    decisions: Option<DecisionCache>,
}

/// A rule other than [`DECISION_RULE`] that a front end evaluates.
struct Entrypoint {
    /// Its full path (`data.envoy.authz.allow`).
    rule: String,
    evaluator: Evaluator,
    /// Its answers by the parts of the input it can read, when the policy
    /// is pure and those parts are less than the whole input.
    memo: Option<ProjectionMemo>,
}

struct ProjectionMemo {
    /// The input paths the rule can read.
    paths: Vec<Vec<String>>,
    /// Answers by the values at those paths.
    answers: DecisionCache<regorus::Value>,
    /// The same answers by the front end's own request key
    /// ([`RuleInput::key`]), which spares building the input.
    by_request: DecisionCache<regorus::Value>,
}

impl ProjectionMemo {
    /// The memo of `rule`, if it can have one; says which at load, since a
    /// rule elsewhere in the policy set can turn it off.
    fn for_rule(engine: &mut regorus::Engine, rule: &str, impure: bool) -> Option<Self> {
        if impure {
            tracing::info!(rule, "answers not memoized: a policy calls a builtin that reads the clock, randomness or the network");
            return None;
        }
        let InputReads::Paths(paths) = input_reads(engine.get_modules(), rule) else {
            tracing::info!(rule, "answers not memoized: a policy uses `input` whole (`input`, `input[x]` or `with input`)");
            return None;
        };
        let reads: Vec<String> = paths.iter().map(|p| p.join(".")).collect();
        tracing::info!(rule, reads = ?reads, "answers memoized by the parts of input the policies read");
        Some(Self {
            paths,
            answers: DecisionCache::default(),
            by_request: DecisionCache::default(),
        })
    }
}

impl Entrypoint {
    /// Answered by the request's key when it was answered before, else
    /// evaluated (or memoized) on the input built for the paths the rule
    /// reads. Only answers to inputs that could be built are kept.
    fn eval_from<I: RuleInput, E: From<PolicyError> + From<I::Error>>(
        &self,
        input: &I,
    ) -> Result<regorus::Value, E> {
        let Some(memo) = &self.memo else {
            return Ok(self.eval(&input.build(None)?)?);
        };
        let key = input.key(&memo.paths);
        if let Some(answer) = key.as_deref().and_then(|k| memo.by_request.get(k)) {
            return Ok(answer);
        }
        let answer = self.eval(&input.build(Some(&memo.paths))?)?;
        if let Some(key) = key {
            memo.by_request.insert(key, answer.clone());
        }
        Ok(answer)
    }

    /// Memoized by the parts of `input` the rule can read when the policy
    /// is pure; errors are not remembered.
    fn eval(&self, input: &serde_json::Value) -> Result<regorus::Value, PolicyError> {
        let evaluate = || {
            self.evaluator
                .eval(&self.rule, regorus::Value::from(input.clone()))
        };
        let Some(memo) = &self.memo else {
            return evaluate();
        };
        match projection_key(&memo.paths, input) {
            Some(key) => memo.answers.get_or_try_insert(key, evaluate),
            None => evaluate(),
        }
    }
}

fn timer_config() -> regorus::utils::limits::ExecutionTimerConfig {
    regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: TIMER_CHECK_INTERVAL,
    }
}

/// A parse error with the line and column regorus reports (`--> file:line:col`)
/// moved up front, `file:line:col: error: …`, as compilers print them.
fn parse_error(source: &PolicySource, text: &str) -> PolicyError {
    let marker = format!("--> {}:", source.name);
    let at = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(marker.as_str()))
        .map(|pos| format!(":{}", pos.trim()))
        .unwrap_or_default();
    let message = match text.lines().rev().find(|l| l.starts_with("error: ")) {
        Some(error) => format!("{error}\n{text}"),
        None => text.to_owned(),
    };
    PolicyError::Parse {
        file: source.file.clone(),
        at,
        message,
    }
}

/// A regorus engine holding `sources`, with OPA's builtin error mode, the
/// time limit and our builtins, after checking that every function the
/// policies call exists. Also says what their calls need (our builtins,
/// impure builtins).
pub(super) fn prepare_engine(
    sources: &[PolicySource],
) -> Result<(regorus::Engine, CallCheck), PolicyError> {
    let mut engine = regorus::Engine::new();
    // OPA's default: a builtin error makes its expression undefined instead of failing the query.
    engine.set_strict_builtin_errors(false);
    engine.set_execution_timer_config(timer_config());
    builtins::register(&mut engine).map_err(PolicyError::Compile)?;
    for source in sources {
        engine
            .add_policy(source.name.clone(), source.text.clone())
            .map_err(|e| parse_error(source, &format!("{e:#}")))?;
    }
    let calls = builtins::check_calls(&mut engine);
    if let Some(call) = calls.unknown.first() {
        let file = sources
            .iter()
            .find(|s| s.name == call.source)
            .map_or_else(|| call.source.clone().into(), |s| s.file.clone());
        return Err(PolicyError::UnknownFunction {
            file,
            line: call.line,
            col: call.col,
            name: call.name.clone(),
        });
    }
    Ok((engine, calls))
}

impl Compiled {
    #[cfg(test)]
    pub(super) fn build(
        sources: &[PolicySource],
        config: &PolicyConfig,
        prefer_vm: bool,
    ) -> Result<Self, PolicyError> {
        Self::build_with_data(sources, &serde_json::Value::Null, config, &[], prefer_vm)
    }

    /// Compiles [`DECISION_RULE`] and each of `rules` (every one must be
    /// defined by the policy set), with `data` (a bundle's data documents)
    /// beside the config. A policy that calls one of our builtins runs on the
    /// interpreter: regorus's VM has no extensions.
    pub(super) fn build_with_data(
        sources: &[PolicySource],
        data: &serde_json::Value,
        config: &PolicyConfig,
        rules: &[String],
        prefer_vm: bool,
    ) -> Result<Self, PolicyError> {
        let (mut engine, calls) = prepare_engine(sources)?;
        let prefer_vm = prefer_vm && !calls.uses_extensions;
        let config_data = serde_json::json!({ "agentvault": { "config": config } });
        for doc in [&config_data, data].into_iter().filter(|d| !d.is_null()) {
            engine
                .add_data(regorus::Value::from(doc.clone()))
                .map_err(|e| PolicyError::Compile(format!("{e:#}")))?;
        }
        let data = engine.get_data();
        // Evaluating once prepares the engine (analysis, scheduling) and proves
        // each rule exists, so load fails early and clones start ready.
        engine.set_input(regorus::Value::new_object());
        for rule in std::iter::once(DECISION_RULE).chain(rules.iter().map(String::as_str)) {
            engine
                .eval_rule(rule.to_owned())
                .map_err(|e| PolicyError::Compile(format!("{rule}: {e:#}")))?;
        }
        let others = rules
            .iter()
            .map(|rule| Entrypoint {
                rule: rule.clone(),
                evaluator: evaluator(&mut engine, &data, rule, prefer_vm),
                memo: ProjectionMemo::for_rule(&mut engine, rule, calls.impure),
            })
            .collect();
        Ok(Self {
            evaluator: evaluator(&mut engine, &data, DECISION_RULE, prefer_vm),
            others,
            decisions: (!calls.impure).then(DecisionCache::default),
        })
    }

    /// [`DECISION_RULE`] for `input`, memoized when the policy is pure.
    /// Errors are not remembered.
    pub(super) fn decide(&self, input: &PolicyInput) -> Result<Decision, PolicyError> {
        let Some(cache) = &self.decisions else {
            return to_decision(&self.eval(input_value(input))?);
        };
        cache.get_or_try_insert(cache_key(input), || {
            to_decision(&self.eval(input_value(input))?)
        })
    }

    #[cfg(test)]
    pub(super) fn memoizes(&self) -> bool {
        self.decisions.is_some()
    }

    pub(super) fn uses_vm(&self) -> bool {
        matches!(self.evaluator, Evaluator::Vm { .. })
    }

    /// Evaluates [`DECISION_RULE`].
    pub(super) fn eval(&self, input: regorus::Value) -> Result<regorus::Value, PolicyError> {
        self.evaluator.eval(DECISION_RULE, input)
    }

    /// Evaluates one of the other rules this policy set was compiled for,
    /// memoized by the parts of the input it can read when the policy is
    /// pure. The input comes as JSON, so that a memoized answer costs no
    /// conversion to a regorus value. Errors are not remembered.
    pub(super) fn eval_rule(
        &self,
        rule: &str,
        input: &serde_json::Value,
    ) -> Result<regorus::Value, PolicyError> {
        self.entrypoint(rule)?.eval(input)
    }

    /// [`Self::eval_rule`] on a front end's request (see
    /// [`super::PolicyEngine::eval_rule_from`]).
    pub(super) fn eval_rule_from<I: RuleInput, E: From<PolicyError> + From<I::Error>>(
        &self,
        rule: &str,
        input: &I,
    ) -> Result<regorus::Value, E> {
        self.entrypoint(rule)?.eval_from(input)
    }

    fn entrypoint(&self, rule: &str) -> Result<&Entrypoint, PolicyError> {
        self.others
            .iter()
            .find(|e| e.rule == rule)
            .ok_or_else(|| PolicyError::Eval(format!("{rule} was not compiled")))
    }

    #[cfg(test)]
    pub(super) fn memoizes_rule(&self, rule: &str) -> bool {
        self.others
            .iter()
            .any(|e| e.rule == rule && e.memo.is_some())
    }
}

/// VM bytecode for `rule` where regorus compiles it, else the interpreter.
fn evaluator(
    engine: &mut regorus::Engine,
    data: &regorus::Value,
    rule: &str,
    prefer_vm: bool,
) -> Evaluator {
    if !prefer_vm {
        return Evaluator::Interpreter(Box::new(engine.clone()));
    }
    let program = engine
        .compile_with_entrypoint(&rule.into())
        .map_err(|e| format!("{e:#}"))
        .and_then(|policy| {
            regorus::languages::rego::compiler::Compiler::compile_from_policy(&policy, &[rule])
                .map_err(|e| e.to_string())
        });
    match program {
        Ok(program) => Evaluator::Vm {
            program,
            data: data.clone(),
            idle: Mutex::new(Vec::new()),
        },
        Err(e) => {
            tracing::warn!(rule, error = %e, "policy does not compile to VM bytecode; using the slower interpreter");
            Evaluator::Interpreter(Box::new(engine.clone()))
        }
    }
}

impl Evaluator {
    fn eval(&self, rule: &str, input: regorus::Value) -> Result<regorus::Value, PolicyError> {
        match self {
            Self::Vm {
                program,
                data,
                idle,
            } => {
                let pooled = idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
                let mut vm = match pooled {
                    Some(vm) => vm,
                    None => {
                        let mut vm = regorus::rvm::vm::RegoVM::new();
                        vm.load_program(Arc::clone(program));
                        vm.set_data(data.clone())
                            .map_err(|e| PolicyError::Eval(format!("{e:#}")))?;
                        vm.set_max_instructions(MAX_VM_INSTRUCTIONS);
                        vm.set_execution_timer_config(Some(timer_config()));
                        vm
                    }
                };
                vm.set_input(input);
                let result = vm.execute().map_err(|e| PolicyError::Eval(e.to_string()));
                vm.set_input(regorus::Value::Null);
                let mut idle = idle.lock().unwrap_or_else(PoisonError::into_inner);
                if idle.len() < MAX_IDLE_VMS {
                    idle.push(vm);
                }
                result
            }
            Self::Interpreter(engine) => {
                let mut engine = (**engine).clone();
                engine.set_input(input);
                engine
                    .eval_rule(rule.to_owned())
                    .map_err(|e| PolicyError::Eval(format!("{e:#}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn source(name: &str, text: &str) -> PolicySource {
        PolicySource {
            name: name.into(),
            file: PathBuf::from(name),
            text: text.into(),
        }
    }

    fn sources() -> Vec<PolicySource> {
        vec![
            source("authz.rego", include_str!("../../policies/authz.rego")),
            source("envoy.rego", include_str!("../../policies/envoy.rego")),
            source(
                "routes.rego",
                "package envoy.authz\nroutes := {\"h\": {\"roles\": [\"r\"], \"inject\": {\"x\": {\"secret\": \"s\"}}}}\n",
            ),
        ]
    }

    #[test]
    fn other_rules_agree_between_vm_and_interpreter() {
        let rule = "data.envoy.authz.allow".to_owned();
        let config = PolicyConfig::default();
        let vm = Compiled::build_with_data(
            &sources(),
            &serde_json::Value::Null,
            &config,
            std::slice::from_ref(&rule),
            true,
        )
        .unwrap();
        let interpreter = Compiled::build_with_data(
            &sources(),
            &serde_json::Value::Null,
            &config,
            std::slice::from_ref(&rule),
            false,
        )
        .unwrap();
        assert!(vm.uses_vm());
        for (host, role) in [("h", "r"), ("h", "q"), ("other", "r")] {
            let input = serde_json::json!({
                "attributes": {"request": {"http": {"host": host, "method": "GET", "path": "/"}}},
                "agentvault": {"subject": {"role": role}},
            });
            let a = vm.eval_rule(&rule, &input).unwrap();
            let b = interpreter.eval_rule(&rule, &input).unwrap();
            assert_eq!(a, b, "{host} {role}");
            assert_eq!(
                a["allowed"],
                regorus::Value::from(host == "h" && role == "r")
            );
        }
        assert!(vm
            .eval_rule("data.other.rule", &serde_json::json!({}))
            .is_err());
    }

    #[test]
    fn a_missing_rule_fails_to_compile() {
        let only_authz = &sources()[..1];
        let err = Compiled::build_with_data(
            only_authz,
            &serde_json::Value::Null,
            &PolicyConfig::default(),
            &["data.envoy.authz.allow".to_owned()],
            true,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("data.envoy.authz.allow"), "{err}");
        assert!(Compiled::build(only_authz, &PolicyConfig::default(), true).is_ok());
    }

    fn envoy(rule: &str, sources: &[PolicySource]) -> Compiled {
        Compiled::build_with_data(
            sources,
            &serde_json::Value::Null,
            &PolicyConfig::default(),
            &[rule.to_owned()],
            true,
        )
        .unwrap()
    }

    fn envoy_input(
        host: &str,
        method: &str,
        path: &str,
        role: Option<&str>,
        request_id: u32,
    ) -> serde_json::Value {
        serde_json::json!({
            "attributes": {"request": {"http": {
                "host": host, "method": method, "path": path,
                "headers": {":authority": host, "x-request-id": request_id.to_string()},
            }}},
            "parsed_path": path.split('/').filter(|s| !s.is_empty()).collect::<Vec<_>>(),
            "agentvault": {"subject": {"role": role}},
        })
    }

    proptest::proptest! {
        /// A memoized answer is the one evaluation gives, whatever the
        /// order of inputs that share or differ in what the policy reads.
        #[test]
        fn memoized_envoy_answers_are_the_evaluated_ones(
            calls in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["h", "h:443", "other", "H", ""]),
                    proptest::sample::select(vec!["GET", "POST", "get"]),
                    proptest::sample::select(vec!["/", "/v1/x", "/v2", ""]),
                    proptest::option::of(proptest::sample::select(vec!["r", "q"])),
                    proptest::num::u32::ANY,
                ),
                1..40,
            )
        ) {
            let rule = "data.envoy.authz.allow";
            let mut sources = sources();
            sources[2] = source(
                "routes.rego",
                "package envoy.authz\nroutes := {\"h\": {\"roles\": [\"r\"], \"methods\": [\"GET\"], \"path_prefixes\": [\"/v1/\"]}}\n",
            );
            let compiled = envoy(rule, &sources);
            proptest::prop_assert!(compiled.memoizes_rule(rule));
            let entry = &compiled.others[0];
            for (host, method, path, role, id) in calls {
                let input = envoy_input(host, method, path, role, id);
                let memoized = compiled.eval_rule(rule, &input).unwrap();
                let evaluated = entry.evaluator.eval(rule, regorus::Value::from(input)).unwrap();
                proptest::prop_assert_eq!(memoized, evaluated);
            }
        }
    }

    #[test]
    fn requests_that_differ_only_in_unread_headers_share_one_answer() {
        let rule = "data.envoy.authz.allow";
        let compiled = envoy(rule, &sources());
        let memo = compiled.others[0].memo.as_ref().expect("memoized");
        for id in 0..100 {
            compiled
                .eval_rule(rule, &envoy_input("h", "GET", "/", Some("r"), id))
                .unwrap();
        }
        assert_eq!(memo.answers.len(), 1);
    }

    #[test]
    fn a_policy_that_reads_the_clock_or_the_whole_input_is_not_memoized() {
        let rule = "data.envoy.authz.allow";
        for extra in [
            "package envoy.authz\nimport rego.v1\nlate if time.now_ns() > 0\n",
            "package envoy.authz\nimport rego.v1\nbig if count(input) > 3\n",
        ] {
            let mut sources = sources();
            sources.push(source("extra.rego", extra));
            assert!(!envoy(rule, &sources).memoizes_rule(rule), "{extra}");
        }
        assert!(envoy(rule, &sources()).memoizes_rule(rule));
    }
}
