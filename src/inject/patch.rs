//! The JSONPatch that turns a pod into its injected self.
//!
//! Injection only ever adds: new keys, new array elements (the sidecar first
//! in `initContainers`, mounts, env vars, volumes) and the status annotation.
//! So the patch is made of `add` operations (and `replace` for a scalar that
//! changed), each naming exactly what was added. Elements the pod already had
//! are never rewritten, so fields this build does not know survive.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, ReplaceOperation};
use serde_json::Value;

use super::InjectError;

/// The operations that turn `before` into `after`, where `after` only adds
/// to `before`. Array paths use the element's index in `after`, and the
/// operations are in document order, so they apply one after another.
pub fn additions(before: &Value, after: &Value) -> Result<Patch, InjectError> {
    let mut ops = Vec::new();
    walk(before, after, &mut PointerBuf::root(), &mut ops)?;
    Ok(Patch(ops))
}

fn walk(
    before: &Value,
    after: &Value,
    path: &mut PointerBuf,
    ops: &mut Vec<PatchOperation>,
) -> Result<(), InjectError> {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            if let Some(gone) = b.keys().find(|k| !a.contains_key(*k)) {
                return Err(removed(path, gone));
            }
            for (key, value) in a {
                path.push_back(key.as_str());
                match b.get(key) {
                    Some(old) => walk(old, value, path, ops)?,
                    None => ops.push(add(path, value)),
                }
                path.pop_back();
            }
            Ok(())
        }
        (Value::Array(b), Value::Array(a)) => {
            let mut kept = b.iter().peekable();
            for (index, value) in a.iter().enumerate() {
                path.push_back(index);
                match kept.peek() {
                    Some(old) if extends(old, value) => {
                        walk(old, value, path, ops)?;
                        kept.next();
                    }
                    _ => ops.push(add(path, value)),
                }
                path.pop_back();
            }
            match kept.next() {
                Some(_) => Err(removed(path, "an array element")),
                None => Ok(()),
            }
        }
        (b, a) if b == a => Ok(()),
        (_, a) => {
            ops.push(PatchOperation::Replace(ReplaceOperation {
                path: path.clone(),
                value: a.clone(),
            }));
            Ok(())
        }
    }
}

/// Whether `after` is `before` with only additions: the same scalars, every
/// key kept, every array element kept in order.
fn extends(before: &Value, after: &Value) -> bool {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => b
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|new| extends(v, new))),
        (Value::Array(b), Value::Array(a)) => {
            let mut rest = a.iter();
            b.iter().all(|old| rest.any(|new| extends(old, new)))
        }
        (b, a) => b == a,
    }
}

fn add(path: &PointerBuf, value: &Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: path.clone(),
        value: value.clone(),
    })
}

fn removed(path: &PointerBuf, what: &str) -> InjectError {
    InjectError::Internal(format!(
        "injection would remove {what} at `{path}`; it only adds"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(before: Value, after: Value) -> Patch {
        let patch = additions(&before, &after).unwrap();
        let mut doc = before.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(doc, after, "patch {patch:?}");
        patch
    }

    #[test]
    fn a_missing_array_is_added_whole() {
        let patch = roundtrip(
            json!({"spec": {"containers": [{"name": "app"}]}}),
            json!({"spec": {"containers": [{"name": "app"}], "volumes": [{"name": "v"}]}}),
        );
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([{"op": "add", "path": "/spec/volumes", "value": [{"name": "v"}]}])
        );
    }

    #[test]
    fn an_element_inserted_first_shifts_nothing_it_rewrites() {
        let patch = roundtrip(
            json!({"init": [{"name": "a", "x": 1}, {"name": "b"}]}),
            json!({"init": [{"name": "sidecar"}, {"name": "a", "x": 1, "m": [1]}, {"name": "b", "m": [1]}]}),
        );
        let ops = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            ops,
            json!([
                {"op": "add", "path": "/init/0", "value": {"name": "sidecar"}},
                {"op": "add", "path": "/init/1/m", "value": [1]},
                {"op": "add", "path": "/init/2/m", "value": [1]},
            ])
        );
    }

    #[test]
    fn slash_and_tilde_in_keys_are_escaped() {
        let patch = roundtrip(
            json!({"metadata": {"annotations": {"a~b/c": "1"}}}),
            json!({"metadata": {"annotations": {"a~b/c": "1", "agentvault.io/status": "injected"}}}),
        );
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([{"op": "add", "path": "/metadata/annotations/agentvault.io~1status", "value": "injected"}])
        );
        let patch = roundtrip(json!({"a~b/c": 1}), json!({"a~b/c": 2}));
        assert_eq!(
            serde_json::to_value(&patch).unwrap(),
            json!([{"op": "replace", "path": "/a~0b~1c", "value": 2}])
        );
    }

    #[test]
    fn nothing_added_is_an_empty_patch() {
        let pod = json!({"spec": {"containers": [{"name": "app", "env": []}]}});
        assert!(additions(&pod, &pod).unwrap().0.is_empty());
    }

    #[test]
    fn a_removal_is_refused() {
        let err = additions(&json!({"a": [1, 2]}), &json!({"a": [1]})).unwrap_err();
        assert!(err.to_string().contains("/a"), "{err}");
        assert!(additions(&json!({"a": 1, "b": 2}), &json!({"a": 1})).is_err());
    }
}
