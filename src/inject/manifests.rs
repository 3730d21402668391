//! Manifests: finds the pod templates in Kubernetes objects (Pod, the
//! workload kinds, CronJob, `List`) and injects them, in multi-document YAML.
//! Documents without a pod template that is injected are written back
//! exactly as they were read, comments and all.

use serde_json::Value;

use super::{inject_value, InjectError, InjectorConfig, Selection, Skip};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {index}: not valid YAML: {reason}")]
    Yaml { index: usize, reason: String },
    #[error("document {index} ({object}): {source}")]
    Inject {
        index: usize,
        object: String,
        #[source]
        source: InjectError,
    },
}

/// Where a kind keeps its pod template (a JSON pointer; `""` is the object itself).
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// What happened to each pod template met.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Report {
    /// `Kind/name` of each injected object.
    pub injected: Vec<String>,
    /// `Kind/name` of each object left alone, and why.
    pub skipped: Vec<(String, Skip)>,
}

/// Injects every pod template in `object` (recursing into a `List`'s items).
pub fn inject_object(
    object: &mut Value,
    config: &InjectorConfig,
    selection: Selection,
    report: &mut Report,
) -> Result<(), InjectError> {
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    if kind == "List" || kind.ends_with("List") {
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                inject_object(item, config, selection, report)?;
            }
        }
        return Ok(());
    }
    let Some(pointer) = template_pointer(&kind) else {
        return Ok(());
    };
    let name = describe(object);
    let Some(template) = object.pointer_mut(pointer).filter(|t| t.is_object()) else {
        report.skipped.push((name, Skip::NoPodTemplate));
        return Ok(());
    };
    match inject_value(template, config, selection) {
        Ok(None) => report.injected.push(name),
        Ok(Some(skip)) => report.skipped.push((name, skip)),
        Err(e) => return Err(e),
    }
    Ok(())
}

/// `Kind/name`, or `Kind/generateName*` for objects not named yet.
pub fn describe(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or("object");
    let metadata = &object["metadata"];
    match (metadata["name"].as_str(), metadata["generateName"].as_str()) {
        (Some(name), _) => format!("{kind}/{name}"),
        (None, Some(prefix)) => format!("{kind}/{prefix}*"),
        (None, None) => kind.to_owned(),
    }
}

/// Injects every document of a multi-document YAML text. Either every
/// document is processed and the whole output returned, or nothing is.
pub fn inject_yaml(
    text: &str,
    config: &InjectorConfig,
    selection: Selection,
) -> Result<(String, Report), ManifestError> {
    let mut out = String::with_capacity(text.len() * 2);
    let mut report = Report::default();
    for (index, (separator, body)) in split_documents(text).into_iter().enumerate() {
        out.push_str(separator);
        let blank = body.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        });
        if blank {
            out.push_str(body);
            continue;
        }
        let mut value: Value = serde_yaml_ng::from_str(body).map_err(|e| ManifestError::Yaml {
            index,
            reason: e.to_string(),
        })?;
        let before = report.injected.len();
        inject_object(&mut value, config, selection, &mut report).map_err(|source| {
            ManifestError::Inject {
                index,
                object: describe(&value),
                source,
            }
        })?;
        if report.injected.len() == before {
            out.push_str(body);
        } else {
            let rendered = serde_yaml_ng::to_string(&value).map_err(|e| ManifestError::Yaml {
                index,
                reason: e.to_string(),
            })?;
            out.push_str(&rendered);
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok((out, report))
}

/// Splits YAML text at `---` lines: (the separator line, or "", and the
/// document's text after it).
fn split_documents(text: &str) -> Vec<(&str, &str)> {
    let mut docs = Vec::new();
    let mut separator = "";
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let is_separator =
            line.starts_with("---") && line[3..].chars().next().is_none_or(char::is_whitespace);
        if is_separator {
            docs.push((separator, &text[start..offset]));
            separator = line;
            start = offset + line.len();
        }
        offset += line.len();
    }
    docs.push((separator, &text[start..]));
    // A text that starts with `---` has nothing before it worth keeping.
    if docs.len() > 1 && docs[0].1.trim().is_empty() && docs[0].0.is_empty() {
        docs.remove(0);
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_separator_lines_only() {
        let text = "---\na: 1\n--- # two\nb: '---'\n---\n";
        assert_eq!(
            split_documents(text),
            vec![
                ("---\n", "a: 1\n"),
                ("--- # two\n", "b: '---'\n"),
                ("---\n", "")
            ]
        );
        assert_eq!(split_documents("a: 1"), vec![("", "a: 1")]);
    }
}
