//! OPA builtins regorus lacks (`io.jwt.*`, `crypto.*`), registered as regorus
//! extensions on every engine the policy module makes, and the inventory of
//! every builtin a policy may call (`agentvault policy capabilities`).
//!
//! Each builtin follows OPA's documented semantics: where OPA raises an
//! error (which, with strict builtin errors off, makes the expression
//! undefined) ours answer undefined; where OPA answers `false` so do ours.

mod calls;
mod crypto;
mod jwt;
mod keys;
mod sign;
mod x509;

use serde_json::Value as Json;

pub(crate) use self::calls::CallCheck;

/// One of our builtins: `None` is OPA's error, seen by the policy as undefined.
/// Most answer JSON; those whose answers hold numbers beyond JSON's
/// (certificate serials) answer a policy value.
#[derive(Clone, Copy)]
enum Eval {
    Json(fn(&[Json]) -> Option<Json>),
    Value(fn(&[Json]) -> Option<regorus::Value>),
}

struct Builtin {
    name: &'static str,
    arity: u8,
    eval: Eval,
}

const fn builtin(name: &'static str, arity: u8, eval: fn(&[Json]) -> Option<Json>) -> Builtin {
    Builtin {
        name,
        arity,
        eval: Eval::Json(eval),
    }
}

const fn builtin_value(
    name: &'static str,
    arity: u8,
    eval: fn(&[Json]) -> Option<regorus::Value>,
) -> Builtin {
    Builtin {
        name,
        arity,
        eval: Eval::Value(eval),
    }
}

const OURS: &[Builtin] = &[
    builtin("io.jwt.decode", 1, jwt::decode),
    builtin("io.jwt.decode_verify", 2, jwt::decode_verify),
    builtin("io.jwt.encode_sign", 3, sign::encode_sign),
    builtin("io.jwt.encode_sign_raw", 3, sign::encode_sign_raw),
    builtin("io.jwt.verify_hs256", 2, |a| jwt::verify_hmac("HS256", a)),
    builtin("io.jwt.verify_hs384", 2, |a| jwt::verify_hmac("HS384", a)),
    builtin("io.jwt.verify_hs512", 2, |a| jwt::verify_hmac("HS512", a)),
    builtin("io.jwt.verify_rs256", 2, |a| {
        jwt::verify_signature("RS256", a)
    }),
    builtin("io.jwt.verify_rs384", 2, |a| {
        jwt::verify_signature("RS384", a)
    }),
    builtin("io.jwt.verify_rs512", 2, |a| {
        jwt::verify_signature("RS512", a)
    }),
    builtin("io.jwt.verify_ps256", 2, |a| {
        jwt::verify_signature("PS256", a)
    }),
    builtin("io.jwt.verify_ps384", 2, |a| {
        jwt::verify_signature("PS384", a)
    }),
    builtin("io.jwt.verify_ps512", 2, |a| {
        jwt::verify_signature("PS512", a)
    }),
    builtin("io.jwt.verify_es256", 2, |a| {
        jwt::verify_signature("ES256", a)
    }),
    builtin("io.jwt.verify_es384", 2, |a| {
        jwt::verify_signature("ES384", a)
    }),
    builtin("io.jwt.verify_es512", 2, |a| {
        jwt::verify_signature("ES512", a)
    }),
    builtin("io.jwt.verify_eddsa", 2, |a| {
        jwt::verify_signature("EdDSA", a)
    }),
    builtin("crypto.md5", 1, crypto::digest::<md5::Md5>),
    builtin("crypto.sha1", 1, crypto::digest::<sha1::Sha1>),
    builtin("crypto.sha256", 1, crypto::digest::<sha2::Sha256>),
    builtin("crypto.hmac.md5", 2, crypto::hmac::<md5::Md5>),
    builtin("crypto.hmac.sha1", 2, crypto::hmac::<sha1::Sha1>),
    builtin("crypto.hmac.sha256", 2, crypto::hmac::<sha2::Sha256>),
    builtin("crypto.hmac.sha512", 2, crypto::hmac::<sha2::Sha512>),
    builtin("crypto.hmac.equal", 2, crypto::hmac_equal),
    builtin_value(
        "crypto.x509.parse_certificates",
        1,
        x509::parse_certificates,
    ),
    builtin_value(
        "crypto.x509.parse_and_verify_certificates",
        1,
        x509::parse_and_verify_certificates,
    ),
    builtin_value(
        "crypto.x509.parse_and_verify_certificates_with_options",
        2,
        x509::parse_and_verify_certificates_with_options,
    ),
];

/// Who evaluates a builtin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// regorus itself.
    Regorus,
    /// agentvault's extensions (this module).
    Agentvault,
}

/// One builtin a policy may call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Capability {
    pub name: String,
    /// How many arguments it takes.
    pub arity: u8,
    pub provider: Provider,
}

/// Every builtin agentvault evaluates, sorted by name.
pub fn capabilities() -> Vec<Capability> {
    let regorus = regorus::unstable::BUILTINS
        .iter()
        .map(|(name, builtin)| ((*name).to_owned(), builtin.1))
        .chain(std::iter::once(("print".to_owned(), 1)))
        // `__builtin_*` are regorus's internals, not for policies.
        .filter(|(name, _)| !is_extension(name) && !name.starts_with("__"))
        .map(|(name, arity)| Capability {
            name,
            arity,
            provider: Provider::Regorus,
        });
    let ours = OURS.iter().map(|b| Capability {
        name: b.name.to_owned(),
        arity: b.arity,
        provider: Provider::Agentvault,
    });
    let mut all: Vec<Capability> = regorus.chain(ours).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

fn is_extension(name: &str) -> bool {
    OURS.iter().any(|b| b.name == name)
}

fn is_regorus_builtin(name: &str) -> bool {
    name == "print" || regorus::unstable::BUILTINS.contains_key(name)
}

fn call(eval: Eval, args: &[regorus::Value]) -> regorus::Value {
    let Ok(args) = args
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<Json>, _>>()
    else {
        return regorus::Value::Undefined;
    };
    let value = match eval {
        Eval::Json(eval) => eval(&args).map(regorus::Value::from),
        Eval::Value(eval) => eval(&args),
    };
    value.unwrap_or(regorus::Value::Undefined)
}

/// Adds our builtins to `engine`, before its policies are added.
pub(crate) fn register(engine: &mut regorus::Engine) -> Result<(), String> {
    for b in OURS {
        let eval = b.eval;
        engine
            .add_extension(
                b.name.to_owned(),
                b.arity,
                Box::new(move |args: Vec<regorus::Value>| Ok(call(eval, &args))),
            )
            .map_err(|e| format!("cannot register builtin {}: {e:#}", b.name))?;
    }
    Ok(())
}

/// The full path of every rule the policies added to `engine` define.
pub(crate) fn rule_paths(engine: &mut regorus::Engine) -> std::collections::BTreeSet<String> {
    calls::rule_paths(engine.get_modules())
}

/// Checks every call of the policies added to `engine` (see [`calls`]).
pub(crate) fn check_calls(engine: &mut regorus::Engine) -> CallCheck {
    calls::check(engine.get_modules(), &is_regorus_builtin, &is_extension)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_list_both_providers_once() {
        let all = capabilities();
        let names: std::collections::BTreeSet<_> = all.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), all.len(), "a builtin is listed twice");
        for (name, provider) in [
            ("io.jwt.decode_verify", Provider::Agentvault),
            ("crypto.x509.parse_certificates", Provider::Agentvault),
            ("startswith", Provider::Regorus),
            ("time.now_ns", Provider::Regorus),
            ("print", Provider::Regorus),
        ] {
            assert!(
                all.iter().any(|c| c.name == name && c.provider == provider),
                "{name}"
            );
        }
    }

    fn engine(policy: &str) -> regorus::Engine {
        let mut engine = regorus::Engine::new();
        engine.set_strict_builtin_errors(false);
        register(&mut engine).unwrap();
        engine.add_policy("p.rego".into(), policy.into()).unwrap();
        engine
    }

    #[test]
    fn calls_resolve_to_rules_imports_builtins_and_extensions() {
        let mut e = engine(
            "package a\nimport rego.v1\nimport data.lib.util as u\n\
             f(x) := x\n\
             x := f(1)\n\
             y := data.a.f(2)\n\
             z := u.g(3)\n\
             w := crypto.sha256(\"a\")\n\
             v := count([1])\n",
        );
        e.add_policy(
            "lib.rego".into(),
            "package lib.util\nimport rego.v1\ng(x) := x\n".into(),
        )
        .unwrap();
        let check = check_calls(&mut e);
        assert_eq!(check.unknown, vec![]);
        assert!(check.uses_extensions);

        let mut e = engine("package a\nimport rego.v1\nx := count([1])\n");
        assert!(!check_calls(&mut e).uses_extensions);
    }

    #[test]
    fn unknown_calls_name_file_line_and_column() {
        let mut e = engine(
            "package a\nimport rego.v1\n\nx if {\n  input.y\n  not http.send({})\n}\n\
             y := data.lib.nope(1)\n",
        );
        let check = check_calls(&mut e);
        let found: Vec<_> = check
            .unknown
            .iter()
            .map(|u| (u.name.as_str(), u.source.as_str(), u.line, u.col))
            .collect();
        assert_eq!(
            found,
            vec![
                ("http.send", "p.rego", 6, 7),
                ("data.lib.nope", "p.rego", 8, 6)
            ]
        );
    }

    #[test]
    fn extensions_answer_undefined_on_error() {
        let mut e = engine(
            "package a\nimport rego.v1\n\
             bad := io.jwt.decode(\"not a token\")\n\
             good := crypto.sha1(\"abc\")\n",
        );
        assert_eq!(
            e.eval_rule("data.a.bad".into()).unwrap(),
            regorus::Value::Undefined
        );
        assert_eq!(
            e.eval_rule("data.a.good".into()).unwrap(),
            regorus::Value::from("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
    }
}
