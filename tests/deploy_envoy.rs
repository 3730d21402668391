//! Every YAML under `deploy/envoy/` is an Envoy bootstrap that Envoy's own
//! protos accept: no Envoy binary is reachable here, so each file is parsed
//! into `envoy.config.bootstrap.v3.Bootstrap` through the descriptor set
//! `envoy-types` ships (the protos its Rust types were generated from), with
//! unknown fields refused and every `typed_config` `@type` resolved to a
//! message of that set and parsed in turn. Then the wiring to agentvault is
//! checked: the ext_authz filter calls a cluster on a Unix socket over
//! HTTP/2, and every route names an `agentvault_role`; and the SDS wiring:
//! every `sds_config` streams (gRPC, v3) from a cluster on agentvault's
//! socket, every SDS name is one agentvault serves (`default`, `ROOTCA`,
//! `secret:<path>`), and the bootstrap shows both uses: an upstream TLS
//! context on `default`/`ROOTCA` and a credential_injector fed by a
//! `secret:` resource, on for its own routes only.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The descriptor set inside the `envoy-types` package this build uses,
/// found through `cargo metadata`.
fn envoy_pool() -> DescriptorPool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(repo())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types among the dependencies");
    let set = Path::new(manifest)
        .parent()
        .unwrap()
        .join("src/generated/types.bin");
    let bytes = std::fs::read(&set).unwrap_or_else(|e| {
        panic!(
            "envoy-types ships its descriptor set at {}: {e}",
            set.display()
        )
    });
    DescriptorPool::decode(bytes.as_slice()).expect("a FileDescriptorSet")
}

/// Parses one bootstrap as Envoy would: proto JSON names (snake_case or
/// lowerCamelCase), no unknown fields, `Any`s resolved by type URL.
fn parse_bootstrap(pool: &DescriptorPool, yaml: &str) -> Result<DynamicMessage, String> {
    let json: Value = serde_yaml_ng::from_str(yaml).map_err(|e| format!("YAML: {e}"))?;
    let bootstrap = pool
        .get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
        .expect("Bootstrap in the descriptor set");
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    DynamicMessage::deserialize_with_options(bootstrap, json, &options).map_err(|e| e.to_string())
}

fn yaml_files() -> Vec<PathBuf> {
    let dir = repo().join("deploy/envoy");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/envoy holds no YAML");
    files
}

/// Every value under `key`, anywhere in the document.
fn find_all<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == key {
                    out.push(child);
                }
                find_all(child, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| find_all(i, key, out)),
        _ => {}
    }
}

#[test]
fn every_bootstrap_parses_against_envoys_protos() {
    let pool = envoy_pool();
    for file in yaml_files() {
        let yaml = std::fs::read_to_string(&file).unwrap();
        let parsed = parse_bootstrap(&pool, &yaml)
            .unwrap_or_else(|e| panic!("{} is not a valid Envoy bootstrap: {e}", file.display()));
        // Round trip: what was parsed is what the file says, typed configs included.
        let back = serde_json::to_value(&parsed).unwrap();
        let mut types = Vec::new();
        find_all(&back, "@type", &mut types);
        assert!(
            types.len() >= 5,
            "{}: typed configs were kept: {types:?}",
            file.display()
        );

        let doc: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        check_agentvault_wiring(&file, &doc);
        check_sds_wiring(&file, &doc);
    }
}

/// The ext_authz filters call a cluster that reaches a Unix socket over
/// HTTP/2, and every route names the app's role for agentvault.
fn check_agentvault_wiring(file: &Path, doc: &Value) {
    let name = file.display();
    let mut filters = Vec::new();
    find_all(doc, "http_filters", &mut filters);
    let ext_authz: Vec<&Value> = filters
        .iter()
        .flat_map(|f| f.as_array().unwrap())
        .filter(|f| f["name"] == "envoy.filters.http.ext_authz")
        .collect();
    assert!(!ext_authz.is_empty(), "{name}: no ext_authz filter");
    let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
    for filter in ext_authz {
        let config = &filter["typed_config"];
        assert_eq!(config["failure_mode_allow"], false, "{name}: fail closed");
        let cluster_name = &config["grpc_service"]["envoy_grpc"]["cluster_name"];
        let cluster = clusters
            .iter()
            .find(|c| &c["name"] == cluster_name)
            .unwrap_or_else(|| panic!("{name}: no cluster {cluster_name}"));
        let mut pipes = Vec::new();
        find_all(cluster, "pipe", &mut pipes);
        assert!(
            pipes
                .iter()
                .all(|p| p["path"].as_str().is_some_and(|s| s.ends_with(".sock")))
                && !pipes.is_empty(),
            "{name}: the agentvault cluster is a Unix socket"
        );
        let mut h2 = Vec::new();
        find_all(cluster, "http2_protocol_options", &mut h2);
        assert!(
            !h2.is_empty(),
            "{name}: gRPC needs HTTP/2 to the agentvault cluster"
        );
    }
    let mut routes = Vec::new();
    find_all(doc, "routes", &mut routes);
    for route in routes.iter().flat_map(|r| r.as_array().unwrap()) {
        let role = &route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]
            ["check_settings"]["context_extensions"]["agentvault_role"];
        assert!(
            role.is_string(),
            "{name}: route {route} names no agentvault_role"
        );
    }
}

/// The pipe paths of a cluster's endpoints, if it speaks HTTP/2.
fn h2_pipes(doc: &Value, cluster_name: &Value) -> Vec<String> {
    let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
    let Some(cluster) = clusters.iter().find(|c| &c["name"] == cluster_name) else {
        return Vec::new();
    };
    let mut h2 = Vec::new();
    find_all(cluster, "http2_protocol_options", &mut h2);
    if h2.is_empty() {
        return Vec::new();
    }
    let mut pipes = Vec::new();
    find_all(cluster, "pipe", &mut pipes);
    pipes
        .iter()
        .filter_map(|p| p["path"].as_str().map(str::to_owned))
        .collect()
}

/// Every SDS config streams from agentvault's socket (the one ext_authz
/// calls), names only what agentvault serves, and the bootstrap uses SDS
/// for an upstream TLS context and for credential_injector.
fn check_sds_wiring(file: &Path, doc: &Value) {
    let name = file.display();
    let mut authz_pipes = Vec::new();
    let mut filters = Vec::new();
    find_all(doc, "http_filters", &mut filters);
    for filter in filters.iter().flat_map(|f| f.as_array().unwrap()) {
        if filter["name"] == "envoy.filters.http.ext_authz" {
            let cluster = &filter["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"];
            authz_pipes.extend(h2_pipes(doc, cluster));
        }
    }

    let mut sds_configs = Vec::new();
    find_all(doc, "sds_config", &mut sds_configs);
    assert!(!sds_configs.is_empty(), "{name}: nothing uses SDS");
    for config in &sds_configs {
        assert_eq!(config["resource_api_version"], "V3", "{name}: {config}");
        let source = &config["api_config_source"];
        assert!(
            source["api_type"] == "GRPC" || source["api_type"] == "DELTA_GRPC",
            "{name}: SDS is a gRPC stream: {config}"
        );
        assert_eq!(source["transport_api_version"], "V3", "{name}: {config}");
        let services = source["grpc_services"].as_array().unwrap();
        assert!(!services.is_empty(), "{name}: {config}");
        for service in services {
            let pipes = h2_pipes(doc, &service["envoy_grpc"]["cluster_name"]);
            assert!(
                !pipes.is_empty() && pipes.iter().all(|p| authz_pipes.contains(p)),
                "{name}: SDS must come over HTTP/2 from agentvault's Envoy socket \
                 ({authz_pipes:?}), not {pipes:?}"
            );
        }
    }

    // Every object holding an sds_config names an agentvault resource.
    let mut named = Vec::new();
    collect_sds_names(doc, &mut named);
    assert_eq!(named.len(), sds_configs.len(), "{name}: {named:?}");
    for resource in &named {
        assert!(
            resource == "default"
                || resource == "ROOTCA"
                || resource
                    .strip_prefix("secret:")
                    .is_some_and(|p| !p.is_empty() && !p.starts_with('/')),
            "{name}: agentvault serves no SDS resource `{resource}`"
        );
    }

    // An upstream TLS context takes the SVID and the bundle from SDS.
    let mut contexts = Vec::new();
    find_all(doc, "common_tls_context", &mut contexts);
    assert!(
        contexts.iter().any(|c| {
            c["tls_certificate_sds_secret_configs"][0]["name"] == "default"
                && (c["validation_context_sds_secret_config"]["name"] == "ROOTCA"
                    || c["combined_validation_context"]["validation_context_sds_secret_config"]
                        ["name"]
                        == "ROOTCA")
        }),
        "{name}: no TLS context uses default and ROOTCA"
    );

    // credential_injector: fed by a secret: resource, after ext_authz and
    // before the router, off by default and on for named routes only.
    for chain in filters.iter().map(|f| f.as_array().unwrap()) {
        let position = |n: &str| chain.iter().position(|f| f["name"] == n);
        let Some(injector) = position("envoy.filters.http.credential_injector") else {
            continue;
        };
        let filter = &chain[injector];
        assert!(
            position("envoy.filters.http.ext_authz").is_some_and(|a| a < injector)
                && position("envoy.filters.http.router").is_some_and(|r| injector < r),
            "{name}: ext_authz, then credential_injector, then the router"
        );
        let config = &filter["typed_config"];
        assert_eq!(config["allow_request_without_credential"], false, "{name}");
        let credential = &config["credential"]["typed_config"]["credential"];
        assert!(
            credential["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("secret:")),
            "{name}: credential_injector is fed by a secret: resource: {credential}"
        );
        assert_eq!(
            filter["disabled"], true,
            "{name}: the injector is off unless a route turns it on, so the \
             credential goes to no other host"
        );
        let mut per_route = Vec::new();
        find_all(
            doc,
            "envoy.filters.http.credential_injector",
            &mut per_route,
        );
        assert!(
            !per_route.is_empty(),
            "{name}: no route turns the credential_injector on"
        );
    }
    let uses_injector = filters
        .iter()
        .flat_map(|f| f.as_array().unwrap())
        .any(|f| f["name"] == "envoy.filters.http.credential_injector");
    assert!(uses_injector, "{name}: no credential_injector filter");
}

/// The `name` beside every `sds_config`.
fn collect_sds_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if m.contains_key("sds_config") {
                out.push(m["name"].as_str().unwrap_or_default().to_owned());
            }
            m.values().for_each(|c| collect_sds_names(c, out));
        }
        Value::Array(items) => items.iter().for_each(|i| collect_sds_names(i, out)),
        _ => {}
    }
}

#[test]
fn the_check_rejects_what_envoy_would() {
    let pool = envoy_pool();
    let good = std::fs::read_to_string(repo().join("deploy/envoy/envoy.yaml")).unwrap();
    let cases = [
        (
            "failure_mode_allow: false",
            "failure_mode_alow: false",
            "failure_mode_alow",
        ),
        (
            "envoy.extensions.filters.http.router.v3.Router",
            "envoy.extensions.filters.http.router.v3.Rooter",
            "Rooter",
        ),
        ("connect_timeout: 1s", "connect_timeout: soon", "duration"),
        ("type: STATIC", "type: STATICALLY", "STATICALLY"),
        // The SDS parts are checked as deeply.
        ("api_type: GRPC", "api_type: GRPCS", "GRPCS"),
        (
            "allow_request_without_credential: false",
            "allow_request_without_credentials: false",
            "allow_request_without_credentials",
        ),
        (
            "injected_credentials.generic.v3.Generic",
            "injected_credentials.generic.v3.Generik",
            "Generik",
        ),
        (
            "tls_certificate_sds_secret_configs:",
            "tls_certificate_sds_secret_config:",
            "tls_certificate_sds_secret_config",
        ),
    ];
    for (from, to, says) in cases {
        assert!(good.contains(from), "{from}");
        let bad = good.replacen(from, to, 1);
        let err = parse_bootstrap(&pool, &bad).expect_err(to);
        assert!(
            err.to_lowercase().contains(&says.to_lowercase()),
            "{to}: {err}"
        );
    }
}

#[test]
fn the_sds_check_rejects_wrong_wiring() {
    let good = std::fs::read_to_string(repo().join("deploy/envoy/envoy.yaml")).unwrap();
    let file = Path::new("envoy.yaml");
    let doc = |yaml: &str| -> Value { serde_yaml_ng::from_str(yaml).unwrap() };
    check_sds_wiring(file, &doc(&good));
    let cases = [
        // A resource name agentvault does not serve.
        ("name: ROOTCA", "name: ROOTCAS"),
        (
            "name: \"secret:envoy/anthropic/api-key\"",
            "name: \"envoy/anthropic/api-key\"",
        ),
        // SDS from another cluster than agentvault's socket.
        (
            "envoy_grpc: { cluster_name: agentvault_sds }",
            "envoy_grpc: { cluster_name: openai }",
        ),
        // The injector on for every route.
        ("disabled: true", "disabled: false"),
        ("api_type: GRPC", "api_type: REST"),
    ];
    for (from, to) in cases {
        assert!(good.contains(from), "{from}");
        let bad = good.replacen(from, to, 1);
        let outcome = std::panic::catch_unwind(|| check_sds_wiring(file, &doc(&bad)));
        assert!(outcome.is_err(), "{to} passed the SDS check");
    }
}
