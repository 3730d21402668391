//! One traversal of the policies' syntax trees, shared by the load-time
//! analyses (which functions the policies call, which parts of `input` they
//! can read), and the reference helpers both need.

use regorus::unstable::{Expr, Literal, Module, Query, Rule, RuleHead, WithModifier};

/// One step of a reference: a field known at compile time (`.a`, `["a"]`),
/// or an index computed at run time (`[x]`, `[0]`).
pub(super) enum Step<'a> {
    Field(String),
    Index(&'a Expr),
}

/// A reference taken apart: the expression it starts from (a variable, or a
/// call or literal for `f(x).a`) and its steps, outermost last.
pub(super) fn chain(expr: &Expr) -> (&Expr, Vec<Step<'_>>) {
    let mut steps = Vec::new();
    let mut at = expr;
    loop {
        match at {
            Expr::RefDot { refr, field, .. } => {
                let name = match field.1.as_string() {
                    Ok(name) => name.to_string(),
                    Err(_) => field.0.text().to_owned(),
                };
                steps.push(Step::Field(name));
                at = refr;
            }
            Expr::RefBrack { refr, index, .. } => {
                match index.as_ref() {
                    Expr::String { value, .. } | Expr::RawString { value, .. } => {
                        match value.as_string() {
                            Ok(name) => steps.push(Step::Field(name.to_string())),
                            Err(_) => steps.push(Step::Index(index)),
                        }
                    }
                    other => steps.push(Step::Index(other)),
                }
                at = refr;
            }
            _ => break,
        }
    }
    steps.reverse();
    (at, steps)
}

/// The name of a variable expression.
pub(super) fn var_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Var { value, .. } => value.as_string().ok().map(|s| s.to_string()),
        _ => None,
    }
}

/// The dotted name of a reference's variable and its fields up to the first
/// computed index, and whether that covers the whole reference.
fn static_prefix(expr: &Expr) -> Option<(String, bool)> {
    let (root, steps) = chain(expr);
    let mut path = var_name(root)?;
    for step in steps {
        match step {
            Step::Field(name) => {
                path.push('.');
                path.push_str(&name);
            }
            Step::Index(_) => return Some((path, false)),
        }
    }
    Some((path, true))
}

/// The dotted name a reference spells, when it is static (`a.b["c"]`).
pub(super) fn ref_path(expr: &Expr) -> Option<String> {
    static_prefix(expr).and_then(|(path, whole)| whole.then_some(path))
}

/// The variable a reference starts from, where its name begins.
pub(super) fn ref_root(expr: &Expr) -> &Expr {
    chain(expr).0
}

/// The longest static prefix of a rule head's reference (`a.b[x]` → `a.b`).
pub(super) fn head_path(expr: &Expr) -> Option<String> {
    static_prefix(expr).map(|(path, _)| path)
}

/// `data.` and the module's package, dotted.
pub(super) fn package_path(module: &Module) -> Option<String> {
    ref_path(&module.package.refr).map(|p| format!("data.{p}"))
}

/// The module's imports: each alias (the `as` name, else the last step) and
/// the dotted path it stands for.
pub(super) fn imports(module: &Module) -> Vec<(String, String)> {
    module
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
        .collect()
}

/// The reference a rule defines (`p`, `p.q[x]`, `f`).
pub(super) fn rule_ref(rule: &Rule) -> &Expr {
    match rule {
        Rule::Spec { head, .. } => match head {
            RuleHead::Compr { refr, .. }
            | RuleHead::Set { refr, .. }
            | RuleHead::Func { refr, .. } => refr,
        },
        Rule::Default { refr, .. } => refr,
    }
}

/// A visitor over expressions. Each method's default walks on into the
/// node's children; an override that still wants them calls the `walk_`
/// function itself.
pub(super) trait Visit {
    fn visit_expr(&mut self, expr: &Expr) {
        walk_expr(self, expr);
    }

    fn visit_with(&mut self, with: &WithModifier) {
        self.visit_expr(&with.r#as);
    }
}

pub(super) fn walk_expr<V: Visit + ?Sized>(v: &mut V, expr: &Expr) {
    match expr {
        Expr::Call { fcn, params, .. } => {
            v.visit_expr(fcn);
            params.iter().for_each(|p| v.visit_expr(p));
        }
        Expr::Array { items, .. } | Expr::Set { items, .. } => {
            items.iter().for_each(|i| v.visit_expr(i))
        }
        Expr::Object { fields, .. } => fields.iter().for_each(|(_, k, val)| {
            v.visit_expr(k);
            v.visit_expr(val);
        }),
        Expr::ArrayCompr { term, query, .. } | Expr::SetCompr { term, query, .. } => {
            v.visit_expr(term);
            walk_query(v, query);
        }
        Expr::ObjectCompr {
            key, value, query, ..
        } => {
            v.visit_expr(key);
            v.visit_expr(value);
            walk_query(v, query);
        }
        Expr::UnaryExpr { expr, .. } => v.visit_expr(expr),
        Expr::RefDot { refr, .. } => v.visit_expr(refr),
        Expr::RefBrack { refr, index, .. } => {
            v.visit_expr(refr);
            v.visit_expr(index);
        }
        Expr::BinExpr { lhs, rhs, .. }
        | Expr::BoolExpr { lhs, rhs, .. }
        | Expr::ArithExpr { lhs, rhs, .. }
        | Expr::AssignExpr { lhs, rhs, .. } => {
            v.visit_expr(lhs);
            v.visit_expr(rhs);
        }
        Expr::Membership {
            key,
            value,
            collection,
            ..
        } => walk_membership(v, key.as_deref(), value, collection),
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

/// `key, value in collection`, as a test (`x in xs`) or a binding (`some x in xs`).
fn walk_membership<V: Visit + ?Sized>(
    v: &mut V,
    key: Option<&Expr>,
    value: &Expr,
    collection: &Expr,
) {
    if let Some(key) = key {
        v.visit_expr(key);
    }
    v.visit_expr(value);
    v.visit_expr(collection);
}

pub(super) fn walk_query<V: Visit + ?Sized>(v: &mut V, query: &Query) {
    for stmt in &query.stmts {
        match &stmt.literal {
            Literal::SomeVars { .. } => {}
            Literal::SomeIn {
                key,
                value,
                collection,
                ..
            } => walk_membership(v, key.as_deref(), value, collection),
            Literal::Expr { expr, .. } | Literal::NotExpr { expr, .. } => v.visit_expr(expr),
            Literal::Every { domain, query, .. } => {
                v.visit_expr(domain);
                walk_query(v, query);
            }
        }
        for with in &stmt.with_mods {
            v.visit_with(with);
        }
    }
}

/// Walks what a rule computes: the run-time indexes of its head reference
/// (`p[input.x]`), its values and its bodies. The names it defines and a
/// function's parameters are not expressions it evaluates.
pub(super) fn walk_rule<V: Visit + ?Sized>(v: &mut V, rule: &Rule) {
    for step in chain(rule_ref(rule)).1 {
        if let Step::Index(index) = step {
            v.visit_expr(index);
        }
    }
    match rule {
        Rule::Spec { head, bodies, .. } => {
            match head {
                RuleHead::Compr { assign, .. } | RuleHead::Func { assign, .. } => {
                    if let Some(assign) = assign {
                        v.visit_expr(&assign.value);
                    }
                }
                RuleHead::Set { key, .. } => {
                    if let Some(key) = key {
                        v.visit_expr(key);
                    }
                }
            }
            for body in bodies {
                if let Some(assign) = &body.assign {
                    v.visit_expr(&assign.value);
                }
                walk_query(v, &body.query);
            }
        }
        Rule::Default { value, .. } => v.visit_expr(value),
    }
}
