//! The injection contract, one pod shape at a time.

use serde_json::{json, Value};

use super::manifests::{inject_object, inject_yaml, Report};
use super::*;

fn config() -> InjectorConfig {
    InjectorConfig::default()
}

fn annotated_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "planner",
            "namespace": "agents",
            "annotations": {"agentvault.io/inject": "true"}
        },
        "spec": {
            "containers": [{"name": "app", "image": "python:3.12"}]
        }
    })
}

fn injected(pod: &Value) -> Value {
    let mut out = pod.clone();
    assert_eq!(
        inject_value(&mut out, &config(), Selection::OptIn).unwrap(),
        None
    );
    out
}

fn patch_of(pod: &Value, selection: Selection) -> Patch {
    match plan(pod, &config(), selection).unwrap() {
        Plan::Patch(p) => p,
        Plan::Skip(s) => panic!("skipped: {s:?}"),
    }
}

/// Each operation as `"op path"`.
fn ops(patch: &Patch) -> Vec<String> {
    serde_json::to_value(patch)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|op| {
            format!(
                "{} {}",
                op["op"].as_str().unwrap(),
                op["path"].as_str().unwrap()
            )
        })
        .collect()
}

fn sidecar_of(pod: &Value) -> &Value {
    pod.pointer("/spec/initContainers/0").unwrap()
}

fn arg_after<'a>(container: &'a Value, flag: &str) -> Option<&'a str> {
    let args = container["args"].as_array().unwrap();
    args.iter()
        .position(|a| a == flag)
        .map(|i| args[i + 1].as_str().unwrap())
}

#[test]
fn a_bare_pod_gets_every_array_added_whole() {
    let pod = annotated_pod();
    let patch = patch_of(&pod, Selection::OptIn);
    assert_eq!(
        ops(&patch),
        [
            "add /metadata/annotations/agentvault.io~1status",
            "add /spec/containers/0/env",
            "add /spec/containers/0/volumeMounts",
            "add /spec/initContainers",
            "add /spec/volumes",
        ]
    );
    let out = injected(&pod);
    assert_eq!(
        out["metadata"]["annotations"][ANNOTATION_STATUS],
        "injected"
    );
    let sidecar = sidecar_of(&out);
    assert_eq!(sidecar["name"], "agentvault");
    assert_eq!(sidecar["restartPolicy"], "Always");
    assert_eq!(sidecar["args"][0], "serve");
    assert_eq!(
        sidecar["startupProbe"]["exec"]["command"],
        json!([
            "agentvault",
            "health",
            "--socket",
            "/run/agentvault/agentvault.sock"
        ])
    );
    let app = &out["spec"]["containers"][0];
    assert_eq!(
        app["env"],
        json!([{"name": "AGENTVAULT_SOCKET", "value": "/run/agentvault/agentvault.sock"}])
    );
    assert_eq!(
        app["volumeMounts"],
        json!([{"name": "agentvault-socket", "mountPath": "/run/agentvault"}])
    );
    let volumes: Vec<&str> = out["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        volumes,
        [
            "agentvault-socket",
            "spiffe-workload-api",
            "agentvault-keyring",
            "agentvault-policies",
            "agentvault-data"
        ]
    );
    assert_eq!(out["spec"]["volumes"][0]["emptyDir"]["medium"], "Memory");
    assert_eq!(
        out["spec"]["volumes"][1]["csi"],
        json!({"driver": "csi.spiffe.io", "readOnly": true})
    );
}

#[test]
fn the_sidecar_is_hardened_and_only_it_sees_the_workload_api() {
    let out = injected(&annotated_pod());
    let sidecar = sidecar_of(&out);
    assert_eq!(
        sidecar["securityContext"],
        json!({
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsGroup": 65532,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "seccompProfile": {"type": "RuntimeDefault"}
        })
    );
    assert_eq!(
        sidecar["resources"],
        json!({"limits": {"cpu": "500m", "memory": "256Mi"}, "requests": {"cpu": "50m", "memory": "64Mi"}})
    );
    assert_eq!(
        sidecar["env"],
        json!([{"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///spiffe-workload-api/spire-agent.sock"}])
    );
    let app = &out["spec"]["containers"][0];
    assert!(!app.to_string().contains("SPIFFE_ENDPOINT_SOCKET"));
    assert!(!app.to_string().contains("spiffe-workload-api"));
}

#[test]
fn existing_arrays_get_elements_appended_and_the_sidecar_goes_first() {
    let pod = json!({
        "metadata": {"generateName": "planner-7d9f-", "annotations": {"agentvault.io/inject": "true"}},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "busybox", "env": [{"name": "A", "value": "1"}]}],
            "containers": [{
                "name": "app", "image": "python:3.12",
                "env": [{"name": "B", "value": "2"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]
            }],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    });
    let patch = patch_of(&pod, Selection::OptIn);
    assert_eq!(
        ops(&patch),
        [
            "add /metadata/annotations/agentvault.io~1status",
            "add /spec/containers/0/env/1",
            "add /spec/containers/0/volumeMounts/1",
            "add /spec/initContainers/0",
            "add /spec/initContainers/1/env/1",
            "add /spec/initContainers/1/volumeMounts",
            "add /spec/volumes/1",
            "add /spec/volumes/2",
            "add /spec/volumes/3",
            "add /spec/volumes/4",
            "add /spec/volumes/5",
        ]
    );
    let mut out = pod.clone();
    json_patch::patch(&mut out, &patch).unwrap();
    assert_eq!(out["metadata"]["generateName"], "planner-7d9f-");
    assert!(out["metadata"].get("name").is_none());
    let init: Vec<&str> = out["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["agentvault", "migrate"]);
    assert_eq!(
        out["spec"]["initContainers"][1]["volumeMounts"],
        json!([{"name": "agentvault-socket", "mountPath": "/run/agentvault"}])
    );
    assert_eq!(out["spec"]["containers"][0]["env"][0]["name"], "B");
}

#[test]
fn fields_this_build_does_not_know_survive() {
    let mut pod = annotated_pod();
    pod["spec"]["containers"][0]["someFutureField"] = json!({"x": 1});
    pod["spec"]["futurePodField"] = json!(true);
    let out = injected(&pod);
    assert_eq!(
        out["spec"]["containers"][0]["someFutureField"],
        json!({"x": 1})
    );
    assert_eq!(out["spec"]["futurePodField"], json!(true));
}

#[test]
fn reinjection_is_a_no_op() {
    let once = injected(&annotated_pod());
    assert_eq!(
        plan(&once, &config(), Selection::OptIn).unwrap(),
        Plan::Skip(Skip::AlreadyInjected)
    );
    assert_eq!(
        plan(&once, &config(), Selection::OptOut).unwrap(),
        Plan::Skip(Skip::AlreadyInjected)
    );
}

#[test]
fn opting_in_and_out() {
    let mut pod = annotated_pod();
    pod["metadata"]["annotations"] = json!({});
    assert_eq!(
        plan(&pod, &config(), Selection::OptIn).unwrap(),
        Plan::Skip(Skip::NotOptedIn)
    );
    assert!(matches!(
        plan(&pod, &config(), Selection::OptOut).unwrap(),
        Plan::Patch(_)
    ));
    pod["metadata"]["annotations"] = json!({"agentvault.io/inject": "false"});
    for selection in [Selection::OptIn, Selection::OptOut] {
        assert_eq!(
            plan(&pod, &config(), selection).unwrap(),
            Plan::Skip(Skip::OptedOut)
        );
    }
    // The label (what a webhook objectSelector sees) opts in too; the annotation wins.
    pod["metadata"]["annotations"] = json!({});
    pod["metadata"]["labels"] = json!({"agentvault.io/inject": "true"});
    assert!(matches!(
        plan(&pod, &config(), Selection::OptIn).unwrap(),
        Plan::Patch(_)
    ));
    pod["metadata"]["annotations"] = json!({"agentvault.io/inject": "false"});
    assert_eq!(
        plan(&pod, &config(), Selection::OptIn).unwrap(),
        Plan::Skip(Skip::OptedOut)
    );
    pod["metadata"]["annotations"] = json!({"agentvault.io/inject": "yes"});
    let err = plan(&pod, &config(), Selection::OptIn).unwrap_err();
    assert!(err.to_string().contains("agentvault.io/inject"), "{err}");
}

#[test]
fn roles_come_from_annotations_in_name_order() {
    let mut pod = annotated_pod();
    let annotations = &mut pod["metadata"]["annotations"];
    annotations["agentvault.io/role.writer"] = json!("gid:2000, exe:/usr/bin/writer");
    annotations["agentvault.io/role.researcher"] = json!("uid:1001");
    let out = injected(&pod);
    let args = sidecar_of(&out)["args"].as_array().unwrap().clone();
    let roles: Vec<&str> = args
        .iter()
        .enumerate()
        .filter(|(i, _)| *i > 0 && args[i - 1] == "--role")
        .map(|(_, a)| a.as_str().unwrap())
        .collect();
    assert_eq!(
        roles,
        [
            "researcher=uid:1001",
            "writer=gid:2000",
            "writer=exe:/usr/bin/writer"
        ]
    );
}

#[test]
fn a_malformed_role_annotation_is_an_error_naming_it() {
    for bad in ["1001", "uid:abc", "exe:relative/path", "pid:1", ""] {
        let mut pod = annotated_pod();
        pod["metadata"]["annotations"]["agentvault.io/role.researcher"] = json!(bad);
        let err = plan(&pod, &config(), Selection::OptIn).unwrap_err();
        assert!(
            matches!(err, InjectError::Annotation { .. }),
            "{bad}: {err}"
        );
        assert!(
            err.to_string().contains("agentvault.io/role.researcher"),
            "{err}"
        );
    }
    let mut pod = annotated_pod();
    pod["metadata"]["annotations"]["agentvault.io/role.Bad Name"] = json!("uid:1");
    assert!(plan(&pod, &config(), Selection::OptIn).is_err());
}

#[test]
fn annotations_choose_the_keyring_and_policies() {
    let mut pod = annotated_pod();
    pod["metadata"]["annotations"]["agentvault.io/keyring-secret"] = json!("team-a-keyring");
    pod["metadata"]["annotations"]["agentvault.io/policy-configmap"] = json!("team-a-policies");
    let out = injected(&pod);
    let volumes = out["spec"]["volumes"].as_array().unwrap();
    assert!(volumes.contains(
        &json!({"name": "agentvault-keyring", "secret": {"secretName": "team-a-keyring"}})
    ));
    assert!(volumes.contains(
        &json!({"name": "agentvault-policies", "configMap": {"name": "team-a-policies"}})
    ));
    assert_eq!(
        arg_after(sidecar_of(&out), "--policy-dir"),
        Some("/etc/agentvault/policies")
    );

    // An empty policy annotation means the built-in policy.
    pod["metadata"]["annotations"]["agentvault.io/policy-configmap"] = json!("");
    let out = injected(&pod);
    assert_eq!(arg_after(sidecar_of(&out), "--policy-dir"), None);
    assert!(!out.to_string().contains("agentvault-policies"));

    pod["metadata"]["annotations"]["agentvault.io/keyring-secret"] = json!("../etc");
    assert!(matches!(
        plan(&pod, &config(), Selection::OptIn).unwrap_err(),
        InjectError::InvalidName { .. }
    ));
}

#[test]
fn redis_comes_by_reference_only() {
    let config = InjectorConfig::parse(
        "redis: {url: 'redis://agentvault-redis.agentvault.svc:6379/', passwordSecret: {name: agentvault-redis, key: password}}\n\
         metrics: {port: 0}\nlogFormat: text\n",
    )
    .unwrap();
    let mut pod = annotated_pod();
    inject_value(&mut pod, &config, Selection::OptIn).unwrap();
    let sidecar = sidecar_of(&pod);
    assert_eq!(
        sidecar["env"],
        json!([
            {"name": "SPIFFE_ENDPOINT_SOCKET", "value": "unix:///spiffe-workload-api/spire-agent.sock"},
            {"name": "AGENTVAULT_REDIS_URL", "value": "redis://agentvault-redis.agentvault.svc:6379/"},
            {"name": "AGENTVAULT_REDIS_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "agentvault-redis", "key": "password"}}}
        ])
    );
    assert_eq!(arg_after(sidecar, "--data-dir"), None);
    assert_eq!(arg_after(sidecar, "--metrics-addr"), Some("off"));
    assert_eq!(arg_after(sidecar, "--log-format"), Some("text"));
    assert!(sidecar.get("ports").is_none());
    assert!(!pod.to_string().contains("agentvault-data"));
}

#[test]
fn a_tenants_redis_user_and_tls_files_come_from_its_own_namespace_by_reference() {
    let config = InjectorConfig::parse(
        "redis:\n\
         \x20 url: 'rediss://redis.shared.svc:6380/'\n\
         \x20 usernameSecret: {name: agentvault-redis, key: username}\n\
         \x20 passwordSecret: {name: agentvault-redis, key: password}\n\
         \x20 tls: {caSecret: {name: redis-ca, key: root.pem}, clientCertSecret: redis-client}\n",
    )
    .unwrap();
    let mut pod = annotated_pod();
    inject_value(&mut pod, &config, Selection::OptIn).unwrap();
    let sidecar = sidecar_of(&pod);
    let env = sidecar["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "AGENTVAULT_REDIS_USERNAME",
        "valueFrom": {"secretKeyRef": {"name": "agentvault-redis", "key": "username"}}})));
    assert_eq!(
        arg_after(sidecar, "--redis-tls-ca-file"),
        Some("/etc/agentvault/redis-ca/ca.crt")
    );
    assert_eq!(
        arg_after(sidecar, "--redis-tls-cert-file"),
        Some("/etc/agentvault/redis-client/tls.crt")
    );
    assert_eq!(
        arg_after(sidecar, "--redis-tls-key-file"),
        Some("/etc/agentvault/redis-client/tls.key")
    );
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    assert!(volumes.contains(&json!({"name": "agentvault-redis-ca",
        "secret": {"secretName": "redis-ca", "items": [{"key": "root.pem", "path": "ca.crt"}]}})));
    assert!(volumes.contains(
        &json!({"name": "agentvault-redis-client", "secret": {"secretName": "redis-client"}})
    ));
    let mounts = sidecar["volumeMounts"].as_array().unwrap();
    for (name, path) in [
        ("agentvault-redis-ca", "/etc/agentvault/redis-ca"),
        ("agentvault-redis-client", "/etc/agentvault/redis-client"),
    ] {
        assert!(mounts.contains(&json!({"name": name, "mountPath": path, "readOnly": true})));
    }
    // mounted into the sidecar only
    for c in pod["spec"]["containers"].as_array().unwrap() {
        assert!(!c.to_string().contains("agentvault-redis-"), "{c}");
    }
}

#[test]
fn conflicting_names_are_refused() {
    let mut pod = annotated_pod();
    pod["spec"]["volumes"] = json!([{"name": "agentvault-socket", "emptyDir": {}}]);
    assert!(matches!(
        plan(&pod, &config(), Selection::OptIn).unwrap_err(),
        InjectError::Conflict(_)
    ));
    let mut pod = annotated_pod();
    pod["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "x", "mountPath": "/run/agentvault"}]);
    assert!(matches!(
        plan(&pod, &config(), Selection::OptIn).unwrap_err(),
        InjectError::Conflict(_)
    ));
}

#[test]
fn a_pod_of_the_wrong_shape_is_named_by_path_not_value() {
    let mut pod = annotated_pod();
    pod["spec"]["containers"][0]["env"] = json!([{"name": "KEY", "value": ["sk-live-123"]}]);
    let err = plan(&pod, &config(), Selection::OptIn)
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.containers[0].env[0].value"), "{err}");
    assert!(!err.contains("sk-live"), "{err}");
}

#[test]
fn an_app_that_sets_the_socket_itself_keeps_its_value() {
    let mut pod = annotated_pod();
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "AGENTVAULT_SOCKET", "value": "/x.sock"}]);
    let out = injected(&pod);
    assert_eq!(
        out["spec"]["containers"][0]["env"],
        json!([{"name": "AGENTVAULT_SOCKET", "value": "/x.sock"}])
    );
}

fn template() -> Value {
    json!({
        "metadata": {"labels": {"app": "planner"}, "annotations": {"agentvault.io/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "python:3.12"}]}
    })
}

#[test]
fn every_workload_kind_has_its_template_injected() {
    for (kind, api_version, pointer) in [
        ("Deployment", "apps/v1", "/spec/template"),
        ("StatefulSet", "apps/v1", "/spec/template"),
        ("DaemonSet", "apps/v1", "/spec/template"),
        ("ReplicaSet", "apps/v1", "/spec/template"),
        ("Job", "batch/v1", "/spec/template"),
        ("CronJob", "batch/v1", "/spec/jobTemplate/spec/template"),
    ] {
        let mut object =
            json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": "planner"}});
        let mut spec = json!({"template": template()});
        if kind == "CronJob" {
            spec = json!({"schedule": "@hourly", "jobTemplate": {"spec": spec}});
        }
        object["spec"] = spec;
        let mut report = Report::default();
        inject_object(&mut object, &config(), Selection::OptIn, &mut report).unwrap();
        assert_eq!(report.injected, [format!("{kind}/planner")]);
        let t = object.pointer(pointer).unwrap();
        assert_eq!(
            t["spec"]["initContainers"][0]["name"], "agentvault",
            "{kind}"
        );
        assert_eq!(t["metadata"]["annotations"][ANNOTATION_STATUS], "injected");
        // The object's own metadata is not the template's.
        assert!(object["metadata"].get("annotations").is_none(), "{kind}");
    }
}

#[test]
fn a_workload_without_a_template_passes_through() {
    let patch = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 3}});
    let mut object = patch.clone();
    let mut report = Report::default();
    inject_object(&mut object, &config(), Selection::OptOut, &mut report).unwrap();
    assert_eq!(object, patch);
    assert_eq!(
        report.skipped,
        [("Deployment/d".to_owned(), Skip::NoPodTemplate)]
    );
}

#[test]
fn a_list_is_walked_and_other_kinds_pass_through() {
    let mut list = json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}},
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": template()}},
        ]
    });
    let service = list["items"][0].clone();
    let mut report = Report::default();
    inject_object(&mut list, &config(), Selection::OptIn, &mut report).unwrap();
    assert_eq!(report.injected, ["Deployment/d"]);
    assert_eq!(list["items"][0], service);
}

#[test]
fn multi_document_yaml_keeps_untouched_documents_verbatim() {
    let text = "# a service\napiVersion: v1\nkind: Service\nmetadata: {name: s}   # kept as written\n---\n\
                apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations: {agentvault.io/inject: \"true\"}\n\
                spec:\n  containers: [{name: app, image: busybox}]\n---\n# only a comment\n";
    let (out, report) = inject_yaml(text, &config(), Selection::OptIn).unwrap();
    assert_eq!(report.injected, ["Pod/p"]);
    assert!(out.starts_with(
        "# a service\napiVersion: v1\nkind: Service\nmetadata: {name: s}   # kept as written\n---\n"
    ));
    assert!(out.ends_with("---\n# only a comment\n"));
    let docs: Vec<Value> = out
        .split("---\n")
        .map(|d| serde_yaml_ng::from_str::<Value>(d).unwrap_or(Value::Null))
        .collect();
    assert_eq!(docs[1]["spec"]["initContainers"][0]["name"], "agentvault");
    // Injecting the output again changes nothing.
    let (again, report) = inject_yaml(&out, &config(), Selection::OptIn).unwrap();
    assert_eq!(again, out);
    assert_eq!(
        report.skipped,
        [("Pod/p".to_owned(), Skip::AlreadyInjected)]
    );
}

#[test]
fn a_bad_document_names_itself_and_nothing_is_returned() {
    let text = "kind: Pod\nmetadata: {name: ok, annotations: {agentvault.io/inject: \"true\"}}\nspec: {containers: [{name: a}]}\n---\n\
                kind: Pod\nmetadata: {name: bad, annotations: {agentvault.io/inject: \"true\", agentvault.io/role.x: \"uid:-1\"}}\nspec: {containers: [{name: a}]}\n";
    let err = inject_yaml(text, &config(), Selection::OptIn)
        .unwrap_err()
        .to_string();
    assert!(err.contains("document 1 (Pod/bad)"), "{err}");
    assert!(err.contains("agentvault.io/role.x"), "{err}");
    let err = inject_yaml("a: [1\n", &config(), Selection::OptIn)
        .unwrap_err()
        .to_string();
    assert!(err.contains("document 0: not valid YAML"), "{err}");
}
