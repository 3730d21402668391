//! Every builtin agentvault adds to regorus (`io.jwt.*`, `crypto.*`) against
//! real OPA (`../shared/tools/opa-eval`) on the same inputs: valid and
//! malformed tokens, wrong keys, expired and not-yet-valid tokens, wrong
//! audiences and issuers, JWK sets with several keys, certificate chains.
//! Both engines run one policy that applies the builtin the input names to
//! the input's arguments. Also: the load-time check of unknown functions and
//! the interpreter fallback for policies that call our builtins.

mod support;

use support::jwt::{b64, fixture, hmac_sign, token, TestKey, SECRET};

use std::path::Path;

use agentvault::policy::{
    capabilities, Action, PolicyConfig, PolicyEngine, PolicyError, PolicyInput, PolicySet,
    Provider, Resource, Subject,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::signature as sig;
use serde_json::{json, Value};

/// 2023-11-14T22:13:20Z in seconds, the tests' "now" for `time` constraints.
const NOW: i64 = 1_700_000_000;

/// The policy both engines run: `out` is the named builtin applied to `input.args`.
fn policy() -> String {
    let mut text = String::from("package t\nimport rego.v1\n\n");
    for capability in capabilities()
        .iter()
        .filter(|c| c.provider == Provider::Agentvault)
    {
        let name = &capability.name;
        let arity = capability.arity;
        let args: Vec<String> = (0..arity).map(|i| format!("input.args[{i}]")).collect();
        text.push_str(&format!(
            "out := {name}({}) if input.fn == \"{name}\"\n",
            args.join(", ")
        ));
    }
    // Tokens with randomized signatures (PS*, ES*) can only be compared verified.
    text.push_str(
        "out := io.jwt.decode_verify(io.jwt.encode_sign(input.args[0], input.args[1], input.args[2]), input.args[3]) if input.fn == \"sign_then_verify\"\n",
    );
    // Certificate serials beyond 64 bits compare exactly (SPIRE's are 128 bits).
    for (name, serial) in [
        ("big_serial", "1334440654591915542993625911497130241"),
        (
            "big_serial_off_by_one",
            "1334440654591915542993625911497130240",
        ),
    ] {
        text.push_str(&format!(
            "out := crypto.x509.parse_certificates(input.args[0])[0].SerialNumber == {serial} if input.fn == \"{name}\"\n"
        ));
    }
    text
}

fn case(function: &str, args: Vec<Value>) -> Value {
    json!({"fn": function, "args": args})
}

fn jwt_cases() -> Vec<Value> {
    let rsa = TestKey::rsa("rsa_a.pem");
    let rsa_other = TestKey::rsa("rsa_b.pem");
    let es256 = TestKey::ecdsa(
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
        "P-256",
    );
    let es384 = TestKey::ecdsa(
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
        "P-384",
    );
    let ed = TestKey::ed25519();
    let es512 = TestKey::p521();
    let claims = json!({"sub": "alice", "iss": "https://issuer.example", "aud": "agentvault",
        "exp": NOW + 3600, "nbf": NOW - 60, "iat": NOW - 60, "roles": ["reader"]});
    let mut cases = Vec::new();

    // Per-algorithm verify_* with every key form, the wrong key and a bad token.
    let asymmetric: [(&str, &TestKey); 10] = [
        ("RS256", &rsa),
        ("RS384", &rsa),
        ("RS512", &rsa),
        ("PS256", &rsa),
        ("PS384", &rsa),
        ("PS512", &rsa),
        ("ES256", &es256),
        ("ES384", &es384),
        ("ES512", &es512),
        ("EdDSA", &ed),
    ];
    for (alg, key) in asymmetric {
        let function = format!("io.jwt.verify_{}", alg.to_lowercase());
        let good = token(alg, json!({"typ": "JWT"}), claims.clone(), Some(key));
        let mut forms = vec![key.jwk.to_string(), json!({"keys": [key.jwk]}).to_string()];
        if !key.cert_pem.is_empty() {
            forms.push(key.cert_pem.clone());
            forms.push(key.public_pem.clone());
        }
        for form in forms {
            cases.push(case(&function, vec![json!(good), json!(form)]));
        }
        cases.push(case(
            &function,
            vec![json!(good), json!(rsa_other.public_pem)],
        ));
        cases.push(case(
            &function,
            vec![
                json!(good),
                json!(format!("{}\n{}", key.cert_pem, rsa_other.cert_pem)),
            ],
        ));
        cases.push(case(
            &function,
            vec![json!("not.a.token"), key.jwk.to_string().into()],
        ));
        cases.push(case(
            &function,
            vec![json!("two.parts"), key.jwk.to_string().into()],
        ));
        cases.push(case(&function, vec![json!(good), json!("not a key")]));
        let tampered = good.replacen('.', ".e30", 1);
        cases.push(case(
            &function,
            vec![json!(tampered), key.jwk.to_string().into()],
        ));
        // decode_verify with the key as `cert`, honouring every claim check.
        let constraints =
            json!({"cert": key.jwk.to_string(), "aud": "agentvault", "time": NOW * 1_000_000_000});
        cases.push(case("io.jwt.decode_verify", vec![json!(good), constraints]));
    }

    // JWK sets with several keys: kid matching, alg filtering, fall-back to every key.
    let set = json!({"keys": [
        rsa_other.jwk_with("k-other", Some("RS256")),
        rsa.jwk_with("k-main", Some("RS256")),
        es256.jwk_with("k-ec", Some("ES256")),
        rsa.jwk_with("k-ps", Some("PS256")),
    ]})
    .to_string();
    for (alg, kid, key) in [
        ("RS256", "k-main", &rsa),
        ("RS256", "k-other", &rsa),
        ("RS256", "k-unknown", &rsa),
        ("RS256", "", &rsa),
        ("ES256", "k-ec", &es256),
        ("ES256", "k-main", &es256),
        ("PS256", "k-unknown", &rsa),
        ("RS256", "k-other", &rsa_other),
    ] {
        let header = if kid.is_empty() {
            json!({})
        } else {
            json!({"kid": kid})
        };
        let t = token(alg, header, claims.clone(), Some(key));
        cases.push(case(
            &format!("io.jwt.verify_{}", alg.to_lowercase()),
            vec![json!(t), json!(set)],
        ));
        cases.push(case(
            "io.jwt.decode_verify",
            vec![
                json!(t),
                json!({"cert": set, "aud": "agentvault", "time": NOW * 1_000_000_000}),
            ],
        ));
    }
    let unknown_alg_only = json!({"keys": [rsa.jwk_with("k", Some("RSA-OAEP"))]}).to_string();
    let t = token("RS256", json!({"kid": "k"}), claims.clone(), Some(&rsa));
    cases.push(case(
        "io.jwt.verify_rs256",
        vec![json!(t), json!(unknown_alg_only)],
    ));
    cases.push(case(
        "io.jwt.decode_verify",
        vec![
            json!(t),
            json!({"cert": unknown_alg_only, "aud": "agentvault", "time": NOW * 1_000_000_000}),
        ],
    ));
    cases.push(case(
        "io.jwt.verify_rs256",
        vec![
            json!(t),
            json!({"keys": [{"kty": "RSA"}]}).to_string().into(),
        ],
    ));

    // HMAC.
    for alg in ["HS256", "HS384", "HS512"] {
        let function = format!("io.jwt.verify_{}", alg.to_lowercase());
        let t = token(alg, json!({}), claims.clone(), None);
        cases.push(case(&function, vec![json!(t), json!(SECRET)]));
        cases.push(case(&function, vec![json!(t), json!("wrong secret")]));
        cases.push(case(&function, vec![json!("a.b"), json!(SECRET)]));
        cases.push(case(&function, vec![json!("a.b.!!"), json!(SECRET)]));
        cases.push(case(&function, vec![json!(t), json!(42)]));
    }

    // decode_verify: every claim rule, with a secret.
    let ns = |s: i64| json!(s * 1_000_000_000);
    let hs = |header: Value, claims: Value| token("HS256", header, claims, None);
    let base = hs(json!({}), claims.clone());
    let verify =
        |t: &str, constraints: Value| case("io.jwt.decode_verify", vec![json!(t), constraints]);
    let mut push_all = |cs: Vec<Value>| cases.extend(cs);
    push_all(vec![
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "time": ns(NOW)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "time": ns(NOW + 3600)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "time": ns(NOW + 3599)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "time": ns(NOW - 60)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "time": ns(NOW - 61)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "time": ns(NOW + 100_000)}),
        ),
        verify(&base, json!({"secret": SECRET, "aud": "agentvault"})),
        verify(&base, json!({"secret": SECRET, "time": ns(NOW)})),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "other", "time": ns(NOW)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "iss": "https://issuer.example", "time": ns(NOW)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "iss": "https://evil.example", "time": ns(NOW)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "alg": "HS256", "time": ns(NOW)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "alg": "RS256", "time": ns(NOW)}),
        ),
        verify(
            &base,
            json!({"secret": "wrong", "aud": "agentvault", "time": ns(NOW)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "cert": rsa.public_pem, "time": ns(NOW)}),
        ),
        verify(&base, json!({"aud": "agentvault", "time": ns(NOW)})),
        verify(
            &base,
            json!({"secret": "", "aud": "agentvault", "time": ns(NOW)}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "bogus": 1}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "time": -1}),
        ),
        verify(
            &base,
            json!({"secret": SECRET, "aud": "agentvault", "time": "now"}),
        ),
        verify(
            &base,
            json!({"cert": rsa.public_pem, "aud": "agentvault", "time": ns(NOW)}),
        ),
        verify(
            &base,
            json!({"cert": "garbage", "aud": "agentvault", "time": ns(NOW)}),
        ),
        verify(&base, json!("not an object")),
        verify("garbage", json!({"secret": SECRET})),
        verify("a.b.c", json!({"secret": SECRET})),
        verify(
            &hs(
                json!({}),
                json!({"aud": ["x", "agentvault"], "exp": NOW + 10}),
            ),
            json!({"secret": SECRET, "aud": "agentvault", "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({}), json!({"aud": ["x", "y"]})),
            json!({"secret": SECRET, "aud": "agentvault", "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({}), json!({"aud": 7})),
            json!({"secret": SECRET, "aud": "agentvault", "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({}), json!({"sub": "no aud"})),
            json!({"secret": SECRET, "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({}), json!({"sub": "no iss"})),
            json!({"secret": SECRET, "iss": "x", "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({}), json!({"exp": "tomorrow"})),
            json!({"secret": SECRET, "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({}), json!({"nbf": "yesterday"})),
            json!({"secret": SECRET, "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({}), json!({"exp": NOW as f64 + 0.5})),
            json!({"secret": SECRET, "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({}), json!({"exp": NOW + 10_000_000_000})),
            json!({"secret": SECRET}),
        ),
        verify(
            &hs(json!({}), json!({"exp": 1000})),
            json!({"secret": SECRET}),
        ),
        verify(
            &hs(json!({"crit": ["exp2"], "exp2": 1}), json!({})),
            json!({"secret": SECRET, "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({"crit": ["kid"], "kid": "a"}), json!({})),
            json!({"secret": SECRET, "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({"kid": 5}), json!({})),
            json!({"secret": SECRET, "time": ns(NOW)}),
        ),
        verify(
            &hs(json!({"typ": "JWT", "extra": true}), json!({"sub": "x"})),
            json!({"secret": SECRET, "time": ns(NOW)}),
        ),
        verify(
            &token("none", json!({}), json!({"sub": "x"}), None),
            json!({"secret": SECRET, "time": ns(NOW)}),
        ),
    ]);

    // Headers without alg, nested tokens, JWE, payloads that are not objects.
    let no_alg = format!(
        "{}.{}.{}",
        b64(br#"{"typ":"JWT"}"#),
        b64(br#"{"sub":"x"}"#),
        b64(b"sig")
    );
    let inner = hs(json!({}), json!({"sub": "inner"}));
    let nested = hs(json!({"cty": "JWT"}), json!(inner));
    let nested_raw = {
        let signed = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","cty":"jwt"}"#),
            b64(inner.as_bytes())
        );
        format!(
            "{signed}.{}",
            b64(&hmac_sign("HS256", SECRET.as_bytes(), signed.as_bytes()))
        )
    };
    let jwe = format!(
        "{}.{}.{}",
        b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#),
        b64(b"x"),
        b64(b"y")
    );
    let array_payload = hs(json!({}), json!([1, 2]));
    let bad_json = format!("{}.{}.{}", b64(b"{not json"), b64(br#"{"a":1}"#), b64(b"s"));
    let padded = format!(
        "{}.{}.{}",
        STANDARD
            .encode(br#"{"alg":"HS256"}"#)
            .replace('+', "-")
            .replace('/', "_"),
        b64(br#"{"a":1}"#),
        ""
    );
    for t in [
        &base,
        &no_alg,
        &nested,
        &nested_raw,
        &jwe,
        &array_payload,
        &bad_json,
        &padded,
        &inner,
    ] {
        cases.push(case("io.jwt.decode", vec![json!(t)]));
        cases.push(case(
            "io.jwt.decode_verify",
            vec![json!(t), json!({"secret": SECRET, "time": ns(NOW)})],
        ));
    }
    for t in ["", "a.b", "a.b.c.d", "!.!.!"] {
        cases.push(case("io.jwt.decode", vec![json!(t)]));
    }
    cases.push(case("io.jwt.decode", vec![json!(5)]));
    cases
}

/// A private JWK fixture and its public part.
fn private_jwk(name: &str) -> (Value, Value) {
    let private: Value = serde_json::from_str(&fixture(name)).unwrap();
    let mut public = private.clone();
    for field in ["d", "p", "q", "dp", "dq", "qi"] {
        public.as_object_mut().unwrap().remove(field);
    }
    (private, public)
}

fn sign_cases() -> Vec<Value> {
    let (rsa, rsa_public) = private_jwk("rsa_a.jwk.json");
    let (ec, ec_public) = private_jwk("ec256.jwk.json");
    let (ed, _) = private_jwk("ed25519.jwk.json");
    let oct = json!({"kty": "oct", "k": b64(SECRET.as_bytes())});
    let claims = json!({"sub": "alice", "aud": "agentvault", "exp": NOW + 60, "note": "<b>&</b>", "n": [1, 2.5, true, null]});
    let sign = "io.jwt.encode_sign";
    let raw = "io.jwt.encode_sign_raw";
    let mut cases = Vec::new();
    for (alg, key) in [
        ("HS256", &oct),
        ("HS384", &oct),
        ("HS512", &oct),
        ("RS256", &rsa),
        ("RS384", &rsa),
        ("RS512", &rsa),
        ("EdDSA", &ed),
    ] {
        cases.push(case(
            sign,
            vec![
                json!({"alg": alg, "typ": "JWT"}),
                claims.clone(),
                key.clone(),
            ],
        ));
    }
    for (alg, key, public) in [
        ("PS256", &rsa, &rsa_public),
        ("PS512", &rsa, &rsa_public),
        ("ES256", &ec, &ec_public),
    ] {
        let constraints =
            json!({"cert": public.to_string(), "aud": "agentvault", "time": NOW * 1_000_000_000});
        cases.push(case(
            "sign_then_verify",
            vec![
                json!({"alg": alg, "kid": "k"}),
                claims.clone(),
                key.clone(),
                constraints,
            ],
        ));
    }
    let set = json!({"keys": [oct, rsa]});
    for (headers, key) in [
        (json!({"alg": "HS256"}), set.clone()),
        (json!({"alg": "HS256", "kid": "x<y"}), oct.clone()),
        (json!({"alg": "RS256"}), oct.clone()),
        (json!({"alg": "ES256"}), rsa.clone()),
        (json!({"alg": "none"}), oct.clone()),
        (json!({"typ": "JWT"}), oct.clone()),
        (json!({"alg": "HS256"}), json!({"keys": []})),
    ] {
        cases.push(case(sign, vec![headers, claims.clone(), key]));
    }
    let oct_text = oct.to_string();
    for (headers, payload) in [
        (
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"sub": "spaced",  "x": 1}"#,
        ),
        (r#"{"alg":"HS256"}"#, "not json"),
        (r#"{"alg":"HS256","typ":"text"}"#, "not json"),
        (r#"{"alg":"HS256","typ":"JWT"}"#, "not json"),
        ("not json", "{}"),
    ] {
        cases.push(case(
            raw,
            vec![json!(headers), json!(payload), json!(oct_text)],
        ));
    }
    cases.push(case(
        raw,
        vec![json!(r#"{"alg":"HS256"}"#), json!("{}"), json!("not a key")],
    ));
    cases
}

fn crypto_cases() -> Vec<Value> {
    let mut cases = Vec::new();
    for text in ["", "abc", "grüße, 世界", "a\nb"] {
        for f in ["crypto.md5", "crypto.sha1", "crypto.sha256"] {
            cases.push(case(f, vec![json!(text)]));
        }
        for f in [
            "crypto.hmac.md5",
            "crypto.hmac.sha1",
            "crypto.hmac.sha256",
            "crypto.hmac.sha512",
        ] {
            cases.push(case(f, vec![json!(text), json!("key")]));
            cases.push(case(f, vec![json!(text), json!("k".repeat(200))]));
        }
    }
    cases.push(case("crypto.sha256", vec![json!(1)]));
    cases.push(case("crypto.hmac.sha256", vec![json!("x"), json!(null)]));
    for (a, b) in [("abc", "abc"), ("abc", "abd"), ("abc", "ab"), ("", "")] {
        cases.push(case("crypto.hmac.equal", vec![json!(a), json!(b)]));
    }
    cases.push(case("crypto.hmac.equal", vec![json!("a"), json!(1)]));
    cases
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

fn ca_params(cn: &str, serial: u64, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "agentvault tests");
    params.distinguished_name.push(DnType::CountryName, "DE");
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from(serial));
    params
}

fn leaf_params(serial: u64, ekus: Vec<ExtendedKeyUsagePurpose>) -> CertificateParams {
    let names = vec!["bot.example.org".to_owned(), "*.svc.example.org".to_owned()];
    let mut params = CertificateParams::new(names).unwrap();
    params.subject_alt_names.push(SanType::URI(
        "spiffe://example.org/agent/acme/bot".try_into().unwrap(),
    ));
    params
        .subject_alt_names
        .push(SanType::IpAddress("10.1.2.3".parse().unwrap()));
    params
        .subject_alt_names
        .push(SanType::Rfc822Name("bot@example.org".try_into().unwrap()));
    params.distinguished_name.push(DnType::CommonName, "bot");
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, "agents");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = ekus;
    params.serial_number = Some(SerialNumber::from(serial));
    params.use_authority_key_identifier_extension = true;
    params
}

fn x509_cases() -> Vec<Value> {
    let root = Ca {
        params: ca_params("Test Root", 1, None),
        key: KeyPair::generate().unwrap(),
    };
    let root_pem = root.params.self_signed(&root.key).unwrap().pem();
    let other = Ca {
        params: ca_params("Other Root", 9, None),
        key: KeyPair::generate().unwrap(),
    };
    let other_pem = other.params.self_signed(&other.key).unwrap().pem();
    let inter = Ca {
        params: ca_params("Test Intermediate", 2, Some(0)),
        key: KeyPair::generate().unwrap(),
    };
    let inter_pem = inter
        .params
        .signed_by(&inter.key, &root.issuer())
        .unwrap()
        .pem();
    let both = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params(3, both.clone())
        .signed_by(&leaf_key, &inter.issuer())
        .unwrap();
    let leaf_pem = leaf.pem();
    let direct_pem = leaf_params(4, both.clone())
        .signed_by(&leaf_key, &root.issuer())
        .unwrap()
        .pem();
    let mut expired = leaf_params(5, both.clone());
    expired.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let expired_pem = expired.signed_by(&leaf_key, &inter.issuer()).unwrap().pem();
    let mut future = leaf_params(6, both);
    future.not_before = rcgen::date_time_ymd(2999, 1, 1);
    let future_pem = future.signed_by(&leaf_key, &inter.issuer()).unwrap().pem();
    let client_only = leaf_params(7, vec![ExtendedKeyUsagePurpose::ClientAuth])
        .signed_by(&leaf_key, &inter.issuer())
        .unwrap()
        .pem();
    let no_eku = leaf_params(8, vec![])
        .signed_by(&leaf_key, &inter.issuer())
        .unwrap()
        .pem();
    let rsa = TestKey::rsa("rsa_a.pem");

    let mut big = leaf_params(1, vec![]);
    big.serial_number = Some(SerialNumber::from_slice(&[1; 16]));
    let big_pem = big.signed_by(&leaf_key, &inter.issuer()).unwrap().pem();

    let mut cases = vec![
        case("big_serial", vec![json!(big_pem)]),
        case("big_serial_off_by_one", vec![json!(big_pem)]),
    ];
    let parse = "crypto.x509.parse_certificates";
    let verify = "crypto.x509.parse_and_verify_certificates";
    for input in [
        leaf_pem.clone(),
        format!("{root_pem}{inter_pem}{leaf_pem}"),
        STANDARD.encode(leaf.der()),
        STANDARD.encode(format!("{root_pem}{leaf_pem}")),
        rsa.cert_pem.clone(),
        "garbage".to_owned(),
        String::new(),
        rsa.public_pem.clone(),
    ] {
        cases.push(case(parse, vec![json!(input)]));
    }
    for chain in [
        vec![&root_pem, &inter_pem, &leaf_pem],
        vec![&root_pem, &direct_pem],
        vec![&inter_pem, &leaf_pem],
        vec![&other_pem, &inter_pem, &leaf_pem],
        vec![&root_pem, &inter_pem, &expired_pem],
        vec![&root_pem, &inter_pem, &future_pem],
        vec![&root_pem, &inter_pem, &client_only],
        vec![&root_pem, &inter_pem, &no_eku],
        vec![&root_pem, &leaf_pem],
        vec![&leaf_pem],
        vec![&root_pem, &root_pem],
    ] {
        let text: String = chain.into_iter().map(String::as_str).collect();
        cases.push(case(verify, vec![json!(text)]));
    }
    cases.push(case(verify, vec![json!("garbage")]));

    let with_options = "crypto.x509.parse_and_verify_certificates_with_options";
    let chain = |leaf: &str| format!("{root_pem}{inter_pem}{leaf}");
    let year_2000 = json!(960_000_000i64 * 1_000_000_000);
    for (leaf, options) in [
        (&leaf_pem, json!({})),
        (&leaf_pem, json!({"DNSName": "bot.example.org"})),
        (&leaf_pem, json!({"DNSName": "BOT.example.org."})),
        (&leaf_pem, json!({"DNSName": "a.svc.example.org"})),
        (&leaf_pem, json!({"DNSName": "a.b.svc.example.org"})),
        (&leaf_pem, json!({"DNSName": "other.example.org"})),
        (&leaf_pem, json!({"DNSName": "10.1.2.3"})),
        (&leaf_pem, json!({"DNSName": 5})),
        (
            &leaf_pem,
            json!({"KeyUsages": ["KeyUsageClientAuth", "KeyUsageCodeSigning"]}),
        ),
        (&leaf_pem, json!({"KeyUsages": ["KeyUsageCodeSigning"]})),
        (&leaf_pem, json!({"KeyUsages": ["KeyUsageBogus"]})),
        (&leaf_pem, json!({"KeyUsages": "KeyUsageAny"})),
        (&leaf_pem, json!({"MaxConstraintComparisons": 10})),
        (&leaf_pem, json!({"Bogus": true})),
        (&client_only, json!({})),
        (&client_only, json!({"KeyUsages": ["KeyUsageClientAuth"]})),
        (&client_only, json!({"KeyUsages": ["KeyUsageAny"]})),
        (&client_only, json!({"KeyUsages": []})),
        (&expired_pem, json!({})),
        (&expired_pem, json!({"CurrentTime": year_2000})),
        (&expired_pem, json!({"CurrentTime": "2000-06-01"})),
        (&future_pem, json!({"CurrentTime": year_2000})),
    ] {
        cases.push(case(with_options, vec![json!(chain(leaf)), options]));
    }
    cases.push(case(
        with_options,
        vec![json!("garbage"), json!({"Bogus": 1})],
    ));
    cases.push(case(
        with_options,
        vec![json!(chain(&leaf_pem)), json!("not an object")],
    ));
    cases
}

/// Whether every field we give is in OPA's answer with the same value (OPA's
/// certificates carry more of Go's fields than we reproduce).
fn covered(ours: &Value, theirs: &Value) -> bool {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| covered(v, w))),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| covered(x, y))
        }
        _ => ours == theirs,
    }
}

#[test]
fn every_builtin_agrees_with_opa() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.rego"), policy()).unwrap();
    let set = PolicySet::load(dir.path()).unwrap();
    let mut inputs = jwt_cases();
    inputs.extend(crypto_cases());
    inputs.extend(sign_cases());
    inputs.extend(x509_cases());
    let opa = support::opa::run_opa(dir.path(), None, "data.t.out", &inputs);

    let mut differences = Vec::new();
    let mut seen = std::collections::BTreeMap::<String, [usize; 2]>::new();
    let mut verdicts = std::collections::BTreeSet::new();
    for (input, theirs) in inputs.iter().zip(&opa) {
        let function = input["fn"].as_str().unwrap().to_owned();
        let ours = set.eval("data.t.out", Some(input.clone())).unwrap();
        // opa-eval runs OPA with strict builtin errors; agentvault, like OPA's
        // default, makes a builtin that errs undefined. So OPA's builtin and
        // operand type errors are our undefined; no other error is expected.
        if let Some(error) = theirs.get("error") {
            assert!(
                error.as_str().is_some_and(
                    |e| e.contains("eval_builtin_error") || e.contains("eval_type_error")
                ),
                "{input}: OPA failed: {error}"
            );
        }
        let theirs_value = theirs.get("result").cloned();
        let same = match (&ours, &theirs_value) {
            (Some(a), Some(b)) if function.starts_with("crypto.x509") => covered(a, b),
            (a, b) => a == b,
        };
        if let Some(verdict) = ours.as_ref().and_then(|v| v.as_bool().or(v[0].as_bool())) {
            verdicts.insert((function.clone(), verdict));
        }
        let counts = seen.entry(function.clone()).or_default();
        counts[usize::from(ours.is_some())] += 1;
        if !same {
            differences.push(format!(
                "{input}\n  agentvault: {ours:?}\n  opa:        {theirs}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} builtin calls differ:\n{}",
        differences.len(),
        inputs.len(),
        differences.join("\n")
    );
    let ours: Vec<String> = capabilities()
        .into_iter()
        .filter(|c| c.provider == Provider::Agentvault)
        .map(|c| c.name)
        .collect();
    for name in &ours {
        let [undefined, defined] = seen.get(name).copied().unwrap_or_default();
        assert!(
            defined > 0,
            "{name} never gave a value ({undefined} undefined)"
        );
        if name.contains("verify") {
            for verdict in [true, false] {
                assert!(
                    verdicts.contains(&(name.clone(), verdict)),
                    "{name} never answered {verdict}"
                );
            }
        }
    }
    eprintln!("{} builtin calls agree with OPA: {seen:?}", inputs.len());
}

#[test]
fn io_jwt_decode_verify_answers_true_and_false_where_opa_does() {
    // Spot checks on top of the differential test, so a shared mistake shows.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.rego"), policy()).unwrap();
    let set = PolicySet::load(dir.path()).unwrap();
    let t = token(
        "HS256",
        json!({}),
        json!({"aud": "a", "exp": NOW + 10}),
        None,
    );
    let eval = |constraints: Value| {
        set.eval(
            "data.t.out",
            Some(case("io.jwt.decode_verify", vec![json!(t), constraints])),
        )
        .unwrap()
    };
    let at = |s: i64| json!(s * 1_000_000_000);
    assert_eq!(
        eval(json!({"secret": SECRET, "aud": "a", "time": at(NOW)})).unwrap()[0],
        json!(true)
    );
    assert_eq!(
        eval(json!({"secret": SECRET, "aud": "a", "time": at(NOW + 10)})),
        Some(json!([false, {}, {}]))
    );
    assert_eq!(
        eval(json!({"secret": SECRET, "aud": "b", "time": at(NOW)})),
        Some(json!([false, {}, {}]))
    );
    assert_eq!(eval(json!({"aud": "a"})), None);
}

fn write_policy(dir: &Path, text: &str) {
    std::fs::write(dir.join("authz.rego"), text).unwrap();
}

const GOOD: &str = "package agentvault.authz\nimport rego.v1\n\
                    decision := {\"allow\": true, \"reasons\": [\"ok\"]}\n";

fn read_input() -> PolicyInput {
    PolicyInput {
        subject: Subject {
            spiffe_id: "spiffe://example.org/agent/acme/bot".into(),
            tenant: "acme".into(),
            agent: "bot".into(),
            agent_id: "spiffe://example.org/agent/acme/bot".into(),
            role: None,
            uid: 1000,
            pid: Some(1),
        },
        action: Action::Read,
        resource: Resource::missing("x"),
        grants: vec![],
        token: None,
        event: None,
    }
}

#[test]
fn a_policy_calling_an_unknown_builtin_is_rejected_and_the_last_good_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), GOOD);
    let engine = PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap();
    assert!(engine.decide(&read_input()).unwrap().allow);

    let unknown = "package agentvault.authz\nimport rego.v1\n\n\
                   default decision := {\"allow\": false, \"reasons\": []}\n\
                   decision := {\"allow\": true, \"reasons\": []} if {\n\
                   \x20 input.action == \"never\"\n\
                   \x20 net.lookup_ip_addr(\"example.org\")\n}\n";
    write_policy(dir.path(), unknown);
    let err = engine.reload().unwrap_err();
    let PolicyError::UnknownFunction {
        file, line, name, ..
    } = &err
    else {
        panic!("expected an unknown function error, got {err}")
    };
    assert_eq!((name.as_str(), *line), ("net.lookup_ip_addr", 7));
    assert!(file.ends_with("authz.rego"));
    let message = err.to_string();
    assert!(
        message.contains("authz.rego:7:") && message.contains("net.lookup_ip_addr"),
        "{message}"
    );
    assert!(
        engine.decide(&read_input()).unwrap().allow,
        "the last good policy must stay"
    );
    assert!(matches!(
        PolicyEngine::load(dir.path(), PolicyConfig::default()),
        Err(PolicyError::UnknownFunction { .. })
    ));
}

#[test]
fn a_policy_calling_our_builtins_runs_on_the_interpreter_and_others_on_the_vm() {
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), GOOD);
    let engine = PolicyEngine::load(dir.path(), PolicyConfig::default()).unwrap();
    assert!(engine.uses_vm());

    write_policy(
        dir.path(),
        "package agentvault.authz\nimport rego.v1\n\
         decision := {\"allow\": crypto.sha256(input.resource.path) == \
         \"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881\", \"reasons\": [\"hash\"]}\n",
    );
    engine.reload().unwrap();
    assert!(!engine.uses_vm());
    assert!(engine.decide(&read_input()).unwrap().allow);
}
