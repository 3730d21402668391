//! `admission.k8s.io/v1` AdmissionReview in, AdmissionReview out.
//!
//! Only what the injector reads is modelled; the review is answered with the
//! request's `uid`. A body that is not a review is an error for the HTTP
//! layer (400); everything about the pod itself is an answer to the API
//! server (`allowed` true or false), so a bad annotation shows up in
//! `kubectl` as the reason the pod was refused.

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::inject::{self, InjectorConfig, Plan, Selection, Skip};

pub const API_VERSION: &str = "admission.k8s.io/v1";

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not JSON (line {line}, column {column})")]
    NotJson { line: usize, column: usize },
    #[error("not an {API_VERSION} AdmissionReview: {0}")]
    NotAReview(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionReview {
    api_version: String,
    kind: String,
    request: Option<AdmissionRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AdmissionRequest {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: Option<String>,
    operation: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// What the webhook decided about one review, for its log line.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Injected {
        operations: usize,
    },
    Skipped(Skip),
    /// Not a pod being created: nothing to inject.
    Ignored,
    Denied(String),
}

/// A review answered: the AdmissionReview to send back, and what was decided.
#[derive(Debug)]
pub struct Answer {
    pub uid: String,
    pub namespace: Option<String>,
    pub object: String,
    pub review: Value,
    pub verdict: Verdict,
}

/// Answers one AdmissionReview body.
pub fn answer(
    body: &[u8],
    config: &InjectorConfig,
    selection: Selection,
) -> Result<Answer, ReviewError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ReviewError::NotJson {
        line: e.line(),
        column: e.column(),
    })?;
    let review: AdmissionReview = serde_path_to_error::deserialize(&value)
        .map_err(|e| ReviewError::NotAReview(inject::json_shape_error(&e)))?;
    if review.api_version != API_VERSION || review.kind != "AdmissionReview" {
        return Err(ReviewError::NotAReview(format!(
            "apiVersion/kind is {:?}/{:?}",
            review.api_version, review.kind
        )));
    }
    let request = review
        .request
        .ok_or_else(|| ReviewError::NotAReview("it has no `request`".to_owned()))?;
    let object = request
        .object
        .as_ref()
        .map(inject::manifests::describe)
        .unwrap_or_else(|| request.kind.kind.clone());
    let is_pod_creation = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request
            .sub_resource
            .as_deref()
            .unwrap_or_default()
            .is_empty()
        && request.operation == "CREATE";
    let verdict = match (&request.object, is_pod_creation) {
        (Some(pod), true) => match inject::plan(pod, config, selection) {
            Ok(Plan::Patch(patch)) => {
                let operations = patch.0.len();
                return Ok(Answer {
                    review: response(&request.uid, Some(&patch)),
                    uid: request.uid,
                    namespace: request.namespace,
                    object,
                    verdict: Verdict::Injected { operations },
                });
            }
            Ok(Plan::Skip(skip)) => Verdict::Skipped(skip),
            Err(e) => Verdict::Denied(format!("agentvault sidecar injection: {e}")),
        },
        _ => Verdict::Ignored,
    };
    let review = match &verdict {
        Verdict::Denied(message) => denied(&request.uid, message),
        _ => response(&request.uid, None),
    };
    Ok(Answer {
        uid: request.uid,
        namespace: request.namespace,
        object,
        review,
        verdict,
    })
}

fn response(uid: &str, patch: Option<&inject::Patch>) -> Value {
    let mut response = json!({"uid": uid, "allowed": true});
    if let Some(patch) = patch.filter(|p| !p.0.is_empty()) {
        let bytes = serde_json::to_vec(patch).unwrap_or_default();
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    review(response)
}

fn denied(uid: &str, message: &str) -> Value {
    review(json!({
        "uid": uid,
        "allowed": false,
        "status": {"status": "Failure", "code": 400, "reason": "BadRequest", "message": message}
    }))
}

fn review(response: Value) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "agents",
                "operation": "CREATE",
                "object": object
            }
        }))
        .unwrap()
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "planner-", "annotations": annotations},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        })
    }

    fn answer_for(body: &[u8]) -> Answer {
        answer(body, &InjectorConfig::default(), Selection::OptIn).unwrap()
    }

    #[test]
    fn an_opted_in_pod_gets_a_base64_json_patch_under_its_uid() {
        let a = answer_for(&request(pod(json!({"agentvault.io/inject": "true"}))));
        let r = &a.review["response"];
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r["patch"].as_str().unwrap())
            .unwrap();
        let patch: Value = serde_json::from_slice(&patch).unwrap();
        assert!(patch.as_array().unwrap().iter().all(|op| op["op"] == "add"));
        assert!(matches!(a.verdict, Verdict::Injected { .. }));
        assert_eq!(a.object, "Pod/planner-*");
    }

    #[test]
    fn a_pod_that_does_not_opt_in_is_allowed_unpatched() {
        let a = answer_for(&request(pod(json!({}))));
        assert_eq!(
            a.review["response"],
            json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
        );
        assert_eq!(a.verdict, Verdict::Skipped(Skip::NotOptedIn));
    }

    #[test]
    fn other_kinds_and_operations_are_ignored() {
        let mut body: Value = serde_json::from_slice(&request(json!({"kind": "Service"}))).unwrap();
        body["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
        let a = answer_for(&serde_json::to_vec(&body).unwrap());
        assert_eq!(a.verdict, Verdict::Ignored);
        assert!(a.review["response"].get("patch").is_none());
        let mut body: Value =
            serde_json::from_slice(&request(pod(json!({"agentvault.io/inject": "true"})))).unwrap();
        body["request"]["operation"] = json!("UPDATE");
        assert_eq!(
            answer_for(&serde_json::to_vec(&body).unwrap()).verdict,
            Verdict::Ignored
        );
    }

    #[test]
    fn a_malformed_role_is_denied_with_the_reason() {
        let a = answer_for(&request(pod(json!({
            "agentvault.io/inject": "true",
            "agentvault.io/role.researcher": "uid:someone"
        }))));
        let r = &a.review["response"];
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 400);
        let message = r["status"]["message"].as_str().unwrap();
        assert!(
            message.contains("agentvault.io/role.researcher"),
            "{message}"
        );
        assert!(r.get("patch").is_none());
    }

    #[test]
    fn what_is_not_a_review_is_an_error_that_echoes_no_value() {
        let cases: [(&[u8], &str); 4] = [
            (b"{not json", "not JSON"),
            (br#"{"apiVersion": "v1", "kind": "Pod"}"#, "apiVersion/kind"),
            (
                br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
                "no `request`",
            ),
            (
                br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7, "kind": "sk-live-XYZ"}}"#,
                "wrong type at `request.kind`",
            ),
        ];
        for (body, needle) in cases {
            let err = answer(body, &InjectorConfig::default(), Selection::OptIn)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains("sk-live"), "{err}");
        }
    }
}
