//! The policy's output: `data.agentvault.authz.decision` as a [`Decision`].

use serde::{Deserialize, Serialize};

use super::{PolicyError, UNDEFINED_REASON};

/// The policy's answer. When denied, `reasons` says why; when allowed, on what grounds.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub reasons: Vec<String>,
}

impl Decision {
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            allow: false,
            reasons: vec![reason.into()],
        }
    }
}

pub(super) fn to_decision(value: &regorus::Value) -> Result<Decision, PolicyError> {
    if *value == regorus::Value::Undefined {
        return Ok(Decision::deny(UNDEFINED_REASON));
    }
    let malformed = || PolicyError::Malformed(value.to_string());
    let allow = *value["allow"].as_bool().map_err(|_| malformed())?;
    let reasons = value["reasons"]
        .as_array()
        .map_err(|_| malformed())?
        .iter()
        .map(|r| {
            r.as_string()
                .map(|r| r.to_string())
                .map_err(|_| malformed())
        })
        .collect::<Result<_, _>>()?;
    Ok(Decision { allow, reasons })
}
