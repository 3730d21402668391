//! The load-time check of a policy's function calls: every call must name a
//! function the policies define, a regorus builtin or one of ours. regorus
//! itself finds an unknown function only when evaluation reaches the call,
//! which for a rarely taken branch may be long after the policy went live.

use std::collections::BTreeSet;

use regorus::unstable::{Expr, Module, Rule};

use crate::policy::ast::{
    head_path, imports, package_path, ref_path, ref_root, rule_ref, walk_expr, walk_rule, Visit,
};

/// A call to a function nothing provides, where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnknownCall {
    pub(crate) name: String,
    /// The name the policy was added under (its path relative to the policy directory).
    pub(crate) source: String,
    pub(crate) line: u32,
    pub(crate) col: u32,
}

/// What the calls of a policy set need.
#[derive(Debug, Default)]
pub(crate) struct CallCheck {
    /// Calls to functions nothing provides, in file order.
    pub(crate) unknown: Vec<UnknownCall>,
    /// Whether any call reaches one of our extensions, which only regorus's
    /// interpreter can run.
    pub(crate) uses_extensions: bool,
    /// Whether any call reaches a builtin whose answer depends on more than
    /// its arguments (the clock, randomness, the network), so the same input
    /// may get a different decision.
    pub(crate) impure: bool,
}

/// Builtins whose result is not a function of their arguments alone. The
/// JWT and certificate verifiers read the clock unless told the time.
const IMPURE: &[&str] = &[
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "http.send",
    "net.lookup_ip_addr",
    "opa.runtime",
    "io.jwt.decode_verify",
    "crypto.x509.parse_and_verify_certificates",
    "crypto.x509.parse_and_verify_certificates_with_options",
    "trace",
    "print",
];

struct Checker<'a> {
    defined: &'a BTreeSet<String>,
    is_builtin: &'a dyn Fn(&str) -> bool,
    is_extension: &'a dyn Fn(&str) -> bool,
    package: String,
    /// Import aliases and the paths they stand for.
    imports: Vec<(String, String)>,
    out: &'a mut CallCheck,
}

impl Checker<'_> {
    fn resolves(&self, name: &str) -> bool {
        if name.starts_with("data.") {
            return self.defined.contains(name);
        }
        let (first, rest) = name.split_once('.').unwrap_or((name, ""));
        if let Some((_, path)) = self.imports.iter().find(|(alias, _)| alias == first) {
            let full = if rest.is_empty() {
                path.clone()
            } else {
                format!("{path}.{rest}")
            };
            return self.defined.contains(&full);
        }
        self.defined.contains(&format!("{}.{name}", self.package))
    }

    fn call(&mut self, fcn: &Expr) {
        let Some(name) = ref_path(fcn) else { return };
        if self.resolves(&name) {
            return;
        }
        if IMPURE.contains(&name.as_str()) {
            self.out.impure = true;
        }
        if (self.is_extension)(&name) {
            self.out.uses_extensions = true;
        } else if !(self.is_builtin)(&name) {
            let span = ref_root(fcn).span();
            self.out.unknown.push(UnknownCall {
                name,
                source: span.source.get_path().clone(),
                line: span.line,
                col: span.col,
            });
        }
    }
}

impl Visit for Checker<'_> {
    fn visit_expr(&mut self, expr: &Expr) {
        if let Expr::Call { fcn, .. } = expr {
            self.call(fcn);
        }
        walk_expr(self, expr);
    }
}

fn rule_path(rule: &Rule) -> Option<String> {
    head_path(rule_ref(rule))
}

/// The full path (`data.pkg.rule`) of every rule and function in `modules`.
pub(crate) fn rule_paths(modules: &[regorus::unstable::Ref<Module>]) -> BTreeSet<String> {
    let mut defined = BTreeSet::new();
    for module in modules {
        let Some(package) = package_path(module) else {
            continue;
        };
        for rule in &module.policy {
            if let Some(path) = rule_path(rule) {
                defined.insert(format!("{package}.{path}"));
            }
        }
    }
    defined
}

/// Checks every call in `modules`.
pub(crate) fn check(
    modules: &[regorus::unstable::Ref<Module>],
    is_builtin: &dyn Fn(&str) -> bool,
    is_extension: &dyn Fn(&str) -> bool,
) -> CallCheck {
    let defined = rule_paths(modules);
    let mut out = CallCheck::default();
    for module in modules {
        let Some(package) = package_path(module) else {
            continue;
        };
        let imports = imports(module);
        let mut checker = Checker {
            defined: &defined,
            is_builtin,
            is_extension,
            package,
            imports,
            out: &mut out,
        };
        for rule in &module.policy {
            walk_rule(&mut checker, rule);
        }
    }
    out
}
