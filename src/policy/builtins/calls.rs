//! The load-time check of a policy's function calls: every call must name a
//! function the policies define, a regorus builtin or one of ours. regorus
//! itself finds an unknown function only when evaluation reaches the call,
//! which for a rarely taken branch may be long after the policy went live.

use std::collections::BTreeSet;

use regorus::unstable::{Expr, Literal, Module, Query, Rule, RuleHead};

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

/// The dotted name a reference spells, when it is static (`a.b["c"]`).
fn ref_path(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Var { value, .. } => value.as_string().ok().map(|s| s.to_string()),
        Expr::RefDot { refr, field, .. } => {
            Some(format!("{}.{}", ref_path(refr)?, field.1.as_string().ok()?))
        }
        Expr::RefBrack { refr, index, .. } => match index.as_ref() {
            Expr::String { value, .. } => {
                Some(format!("{}.{}", ref_path(refr)?, value.as_string().ok()?))
            }
            _ => None,
        },
        _ => None,
    }
}

/// The variable a reference starts from, where its name begins.
fn ref_root(expr: &Expr) -> &Expr {
    match expr {
        Expr::RefDot { refr, .. } | Expr::RefBrack { refr, .. } => ref_root(refr),
        _ => expr,
    }
}

/// The longest static prefix of a rule head's reference (`a.b[x]` → `a.b`).
fn head_path(expr: &Expr) -> Option<String> {
    ref_path(expr).or_else(|| match expr {
        Expr::RefBrack { refr, .. } => head_path(refr),
        _ => None,
    })
}

fn package_path(module: &Module) -> Option<String> {
    ref_path(&module.package.refr).map(|p| format!("data.{p}"))
}

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

    fn query(&mut self, query: &Query) {
        for stmt in &query.stmts {
            match &stmt.literal {
                Literal::SomeVars { .. } => {}
                Literal::SomeIn {
                    key,
                    value,
                    collection,
                    ..
                } => {
                    if let Some(key) = key {
                        self.expr(key);
                    }
                    self.expr(value);
                    self.expr(collection);
                }
                Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => self.expr(expr),
                Literal::Every { domain, query, .. } => {
                    self.expr(domain);
                    self.query(query);
                }
            }
            for with in &stmt.with_mods {
                self.expr(&with.r#as);
            }
        }
    }

    fn expr(&mut self, expr: &Expr) {
        match expr {
            Expr::Call { fcn, params, .. } => {
                self.call(fcn);
                params.iter().for_each(|p| self.expr(p));
            }
            Expr::Array { items, .. } | Expr::Set { items, .. } => {
                items.iter().for_each(|i| self.expr(i))
            }
            Expr::Object { fields, .. } => fields.iter().for_each(|(_, k, v)| {
                self.expr(k);
                self.expr(v);
            }),
            Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
                self.expr(term);
                self.query(query);
            }
            Expr::ObjectCompr {
                key, value, query, ..
            } => {
                self.expr(key);
                self.expr(value);
                self.query(query);
            }
            Expr::UnaryExpr { expr, .. } => self.expr(expr),
            Expr::RefDot { refr, .. } => self.expr(refr),
            Expr::RefBrack { refr, index, .. } => {
                self.expr(refr);
                self.expr(index);
            }
            Expr::BinExpr { lhs, rhs, .. }
            | Expr::BoolExpr { lhs, rhs, .. }
            | Expr::ArithExpr { lhs, rhs, .. }
            | Expr::AssignExpr { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            Expr::Membership {
                key,
                value,
                collection,
                ..
            } => {
                if let Some(key) = key {
                    self.expr(key);
                }
                self.expr(value);
                self.expr(collection);
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }

    fn rule(&mut self, rule: &Rule) {
        match rule {
            Rule::Spec { head, bodies, .. } => {
                match head {
                    RuleHead::Compr { assign, .. } => {
                        if let Some(assign) = assign {
                            self.expr(&assign.value);
                        }
                    }
                    RuleHead::Set { key, .. } => {
                        if let Some(key) = key {
                            self.expr(key);
                        }
                    }
                    RuleHead::Func { assign, .. } => {
                        if let Some(assign) = assign {
                            self.expr(&assign.value);
                        }
                    }
                }
                for body in bodies {
                    if let Some(assign) = &body.assign {
                        self.expr(&assign.value);
                    }
                    self.query(&body.query);
                }
            }
            Rule::Default { value, .. } => self.expr(value),
        }
    }
}

fn rule_path(rule: &Rule) -> Option<String> {
    match rule {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => head_path(refr),
        },
        Rule::Default { refr, .. } => head_path(refr),
    }
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
        let imports = module
            .imports
            .iter()
            .filter_map(|import| {
                let path = ref_path(&import.refr)?;
                let alias = match &import.r#as {
                    Some(alias) => alias.text().to_owned(),
                    None => path.rsplit('.').next()?.to_owned(),
                };
                Some((alias, path))
            })
            .collect();
        let mut checker = Checker {
            defined: &defined,
            is_builtin,
            is_extension,
            package,
            imports,
            out: &mut out,
        };
        for rule in &module.policy {
            checker.rule(rule);
        }
    }
    out
}
