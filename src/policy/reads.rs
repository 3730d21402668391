//! Which parts of `input` a policy set can read, found once at load time,
//! so that a pure rule's answers can be memoized by those parts alone. The
//! OPA-Envoy input carries every request header, `x-request-id` among them,
//! so no two Checks share a whole input; a policy that reads only the host,
//! method, path and role decides the next thousand requests like the first.
//!
//! The analysis over-approximates and never under-approximates: every way a
//! rule can reach a value of `input` is a reference (`input.a.b`, an import
//! of `input…`, or a rule that is only an alias of an input subtree, such as
//! `http_request := input.attributes.request.http`), and each reference is
//! taken up to its first index computed at run time (`headers[name]` reads
//! all headers). `input` used whole, or replaced with `with`, reads it all.

use std::collections::HashMap;

use regorus::unstable::{Expr, Module, Ref, Rule, RuleHead, WithModifier};

use super::ast::{
    chain, imports, package_path, ref_path, rule_ref, var_name, walk_expr, walk_rule, Step, Visit,
};

/// What a policy set can read of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum InputReads {
    /// Anything: no projection is smaller than the input.
    Whole,
    /// Only the subtrees at these paths, none a prefix of another, sorted.
    Paths(Vec<Vec<String>>),
}

/// `rule` (`data.pkg.rule`) and every rule it may reach, over every module.
pub(super) fn input_reads(modules: &[Ref<Module>], entrypoint: &str) -> InputReads {
    let aliases = aliases(modules);
    let mut reads = Reads {
        aliases: &aliases,
        package: Vec::new(),
        imports: Vec::new(),
        paths: Vec::new(),
        whole: false,
    };
    // The entrypoint is read whole, as a reference to it would be.
    reads.data(&split(entrypoint));
    for module in modules {
        let Some(package) = package_path(module) else {
            return InputReads::Whole;
        };
        reads.package = split(&package);
        reads.imports = imports(module)
            .into_iter()
            .map(|(alias, path)| (alias, split(&path)))
            .collect();
        for rule in &module.policy {
            let is_alias = rule_name(rule).is_some_and(|name| {
                aliases.contains_key(&[reads.package.as_slice(), &[name]].concat())
            });
            if !is_alias {
                walk_rule(&mut reads, rule);
            }
        }
    }
    if reads.whole {
        return InputReads::Whole;
    }
    let mut paths = reads.paths;
    paths.sort();
    paths.dedup();
    let mut minimal: Vec<Vec<String>> = Vec::with_capacity(paths.len());
    for path in paths {
        // Sorted, so a prefix comes right before the paths it covers.
        if minimal.last().is_some_and(|kept| path.starts_with(kept)) {
            continue;
        }
        minimal.push(path);
    }
    if minimal.first().is_some_and(Vec::is_empty) {
        return InputReads::Whole;
    }
    InputReads::Paths(minimal)
}

fn split(dotted: &str) -> Vec<String> {
    dotted.split('.').map(str::to_owned).collect()
}

/// The name of a rule whose head is a plain name (`p := …`), not `p.q`, `p[x]` or `f(x)`.
fn rule_name(rule: &Rule) -> Option<String> {
    let Rule::Spec {
        head: RuleHead::Compr { refr, .. },
        ..
    } = rule
    else {
        return None;
    };
    var_name(refr)
}

/// Rules that only name an input subtree (`http_request := input.a.b`, no
/// body, defined once, nothing defined under them), by full data path, with
/// the input path each stands for.
fn aliases(modules: &[Ref<Module>]) -> HashMap<Vec<String>, Vec<String>> {
    let mut candidates = HashMap::new();
    let mut defined: HashMap<Vec<String>, usize> = HashMap::new();
    let mut heads: Vec<Vec<String>> = Vec::new();
    for module in modules {
        let Some(package) = package_path(module) else {
            continue;
        };
        let package = split(&package);
        for rule in &module.policy {
            let (root, steps) = chain(rule_ref(rule));
            let Some(name) = var_name(root) else { continue };
            let mut head = [package.clone(), vec![name]].concat();
            for step in steps {
                match step {
                    Step::Field(field) => head.push(field),
                    Step::Index(_) => break,
                }
            }
            *defined.entry(head.clone()).or_default() += 1;
            heads.push(head.clone());
            let Rule::Spec {
                head:
                    RuleHead::Compr {
                        assign: Some(assign),
                        ..
                    },
                bodies,
                ..
            } = rule.as_ref()
            else {
                continue;
            };
            if !bodies.is_empty() {
                continue;
            }
            let Some(path) = ref_path(&assign.value) else {
                continue;
            };
            let path = split(&path);
            if path.first().map(String::as_str) == Some("input") {
                candidates.insert(head, path[1..].to_vec());
            }
        }
    }
    candidates.retain(|head, _| {
        defined.get(head) == Some(&1)
            && !heads
                .iter()
                .any(|other| other.len() > head.len() && other.starts_with(head))
    });
    candidates
}

struct Reads<'a> {
    aliases: &'a HashMap<Vec<String>, Vec<String>>,
    package: Vec<String>,
    imports: Vec<(String, Vec<String>)>,
    paths: Vec<Vec<String>>,
    whole: bool,
}

impl Reads<'_> {
    /// A reference to `data` with these static steps: through an alias it
    /// reads its subtree (all of it when the reference stops above or at
    /// the alias, as `data.pkg[x]` or `count(http_request)` do).
    fn data(&mut self, path: &[String]) {
        for (alias, input) in self.aliases {
            if path.starts_with(alias) {
                self.paths
                    .push([input.as_slice(), &path[alias.len()..]].concat());
            } else if alias.starts_with(path) {
                self.paths.push(input.clone());
            }
        }
    }

    /// A reference from the variable `name`, with these static steps.
    fn reference(&mut self, name: &str, steps: &[String]) {
        let full = if let Some((_, path)) = self.imports.iter().find(|(alias, _)| alias == name) {
            [path.as_slice(), steps].concat()
        } else if name == "input" || name == "data" {
            [&[name.to_owned()], steps].concat()
        } else {
            // A rule of this package, or a local variable: as a rule it may
            // be an alias; as a local it reads nothing of `input` itself.
            [self.package.as_slice(), &[name.to_owned()], steps].concat()
        };
        match full.first().map(String::as_str) {
            Some("input") => self.paths.push(full[1..].to_vec()),
            Some("data") => self.data(&full),
            _ => {}
        }
    }
}

impl Visit for Reads<'_> {
    fn visit_expr(&mut self, expr: &Expr) {
        if !matches!(
            expr,
            Expr::Var { .. } | Expr::RefDot { .. } | Expr::RefBrack { .. }
        ) {
            return walk_expr(self, expr);
        }
        let (root, steps) = chain(expr);
        let mut fields = Vec::new();
        let mut dynamic = false;
        for step in &steps {
            match step {
                Step::Field(field) if !dynamic => fields.push(field.clone()),
                Step::Field(_) => {}
                Step::Index(index) => {
                    dynamic = true;
                    self.visit_expr(index);
                }
            }
        }
        match var_name(root) {
            Some(name) => self.reference(&name, &fields),
            None => self.visit_expr(root),
        }
    }

    fn visit_with(&mut self, with: &WithModifier) {
        let (root, _) = chain(&with.refr);
        if var_name(root).as_deref() == Some("input") {
            self.whole = true;
        }
        self.visit_expr(&with.r#as);
    }
}

/// The memo key of `input` for a policy that reads only `paths`: for each
/// path, the value there (JSON), or how far the path reached before the
/// input had no such field. `None` when a value cannot be written down, so
/// that no two such inputs share a key.
pub(super) fn projection_key(paths: &[Vec<String>], input: &serde_json::Value) -> Option<Vec<u8>> {
    let mut key = Vec::with_capacity(128);
    for path in paths {
        let mut node = input;
        let mut depth = 0u8;
        for field in path {
            match node.get(field) {
                Some(next) => {
                    node = next;
                    depth = depth.saturating_add(1);
                }
                None => break,
            }
        }
        key.push(depth);
        if usize::from(depth) < path.len() && node.is_object() {
            key.push(b'm');
            continue;
        }
        // A value, or a scalar or array that a further field cannot reach
        // into. Strings, the usual case, are written as they are.
        let start = key.len() + 1;
        match node {
            serde_json::Value::String(text) => {
                key.push(b's');
                key.extend_from_slice(&[0; 4]);
                key.extend_from_slice(text.as_bytes());
            }
            other => {
                key.push(b'v');
                key.extend_from_slice(&[0; 4]);
                serde_json::to_writer(&mut key, other).ok()?;
            }
        }
        let len = u32::try_from(key.len() - start - 4).ok()?;
        key[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reads(policies: &[&str], entrypoint: &str) -> InputReads {
        let mut engine = regorus::Engine::new();
        for (n, policy) in policies.iter().enumerate() {
            engine
                .add_policy(format!("p{n}.rego"), (*policy).to_owned())
                .expect("policy parses");
        }
        input_reads(engine.get_modules(), entrypoint)
    }

    fn paths(list: &[&str]) -> InputReads {
        InputReads::Paths(list.iter().map(|p| split(p)).collect())
    }

    #[test]
    fn static_references_are_read_up_to_their_first_computed_index() {
        let policy = r#"package a
import rego.v1
allow if {
    input.attributes.request.http.method == "GET"
    input.attributes.request.http.headers["x-user"] == "me"
    some name
    input.parsed_query[name]
}"#;
        assert_eq!(
            reads(&[policy], "data.a.allow"),
            paths(&[
                "attributes.request.http.headers.x-user",
                "attributes.request.http.method",
                "parsed_query",
            ])
        );
    }

    #[test]
    fn an_alias_rule_reads_only_what_its_uses_reach() {
        let policy = r#"package a
import rego.v1
http := input.attributes.request.http
host := split(http.host, ":")[0]
allow if data.a.http.method == "GET"
"#;
        assert_eq!(
            reads(&[policy], "data.a.allow"),
            paths(&[
                "attributes.request.http.host",
                "attributes.request.http.method"
            ])
        );
    }

    #[test]
    fn an_alias_used_whole_reads_its_subtree() {
        for (using, read) in [
            ("allow if count(http) > 1", "attributes.request.http"),
            ("allow if data.a[x] == 1", "attributes.request.http"),
            ("allow := http", "attributes.request.http"),
        ] {
            let policy = format!(
                "package a\nimport rego.v1\nhttp := input.attributes.request.http\n{using}\n"
            );
            assert_eq!(reads(&[&policy], "data.a.allow"), paths(&[read]), "{using}");
        }
        // The entrypoint itself is an alias: its answer is the subtree.
        let policy = "package a\nallow := input.x.y\n";
        assert_eq!(reads(&[policy], "data.a.allow"), paths(&["x.y"]));
    }

    #[test]
    fn an_alias_defined_twice_is_an_ordinary_rule() {
        let policy = r#"package a
import rego.v1
http := input.attributes.request.http
http.extra := 1
allow if http.method == "GET"
"#;
        assert_eq!(
            reads(&[policy], "data.a.allow"),
            paths(&["attributes.request.http"])
        );
    }

    #[test]
    fn imports_of_input_and_of_aliases_resolve() {
        let lib = "package lib\nhttp := input.attributes.request.http\n";
        let policy = r#"package a
import rego.v1
import input.agentvault.subject as who
import data.lib
allow if {
    who.role == "researcher"
    lib.http.path == "/"
}"#;
        assert_eq!(
            reads(&[lib, policy], "data.a.allow"),
            paths(&["agentvault.subject.role", "attributes.request.http.path"])
        );
    }

    #[test]
    fn input_used_whole_or_replaced_reads_everything() {
        for policy in [
            "package a\nimport rego.v1\nallow if count(input) > 0\n",
            "package a\nimport rego.v1\nallow if object.get(input, \"x\", 1) == 1\n",
            "package a\nimport rego.v1\nallow if q with input.x as 1\nq if input.y\n",
            "package a\nimport rego.v1\nallow if input[x] == 1\n",
        ] {
            assert_eq!(
                reads(&[policy], "data.a.allow"),
                InputReads::Whole,
                "{policy}"
            );
        }
    }

    #[test]
    fn the_shipped_envoy_policy_reads_host_method_path_and_role() {
        let envoy = include_str!("../../policies/envoy.rego");
        let authz = include_str!("../../policies/authz.rego");
        let InputReads::Paths(read) = reads(&[authz, envoy], "data.envoy.authz.allow") else {
            panic!("the shipped policies read only parts of the input");
        };
        let read: Vec<String> = read.iter().map(|p| p.join(".")).collect();
        for field in ["host", "method", "path"] {
            assert!(
                read.contains(&format!("attributes.request.http.{field}")),
                "{read:?}"
            );
        }
        assert!(
            read.contains(&"agentvault.subject.role".to_owned()),
            "{read:?}"
        );
        assert!(
            !read
                .iter()
                .any(|p| p.starts_with("attributes.request.http.headers")),
            "{read:?}"
        );
    }

    #[test]
    fn keys_differ_exactly_when_a_read_path_differs() {
        let paths = [split("a.b"), split("c")];
        let key = |j| projection_key(&paths, &j).expect("a key");
        let base = key(serde_json::json!({"a": {"b": 1, "z": 1}, "c": "x", "d": 1}));
        assert_eq!(
            base,
            key(serde_json::json!({"a": {"b": 1, "z": 2}, "c": "x", "d": 2}))
        );
        for other in [
            serde_json::json!({"a": {"b": 2}, "c": "x"}),
            serde_json::json!({"a": {"b": "1"}, "c": "x"}),
            serde_json::json!({"a": {}, "c": "x"}),
            serde_json::json!({"c": "x"}),
            serde_json::json!({"a": 1, "c": "x"}),
            serde_json::json!({"a": {"b": 1}, "c": ["x"]}),
            serde_json::json!({"a": {"b": 1}}),
        ] {
            assert_ne!(base, key(other.clone()), "{other}");
        }
        // A missing field and a field that holds null are different inputs.
        assert_ne!(
            key(serde_json::json!({"a": {}, "c": null})),
            key(serde_json::json!({"a": {}}))
        );
    }
}
