use serde::Serialize;
use serde_json::{Map, Value};

/// The body the host expects back: `{"Outputs": {...}, "Logs": [...], "ReturnValue": ...}`.
/// On a non-2xx answer the host discards Outputs and Logs, so failures are also traced locally.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct InvocationResponse {
    #[serde(rename = "Outputs")]
    pub outputs: Map<String, Value>,
    #[serde(rename = "Logs")]
    pub logs: Vec<String>,
    #[serde(rename = "ReturnValue")]
    pub return_value: Value,
}

impl InvocationResponse {
    pub fn with_logs(logs: Vec<String>) -> Self {
        Self {
            logs,
            ..Self::default()
        }
    }
}
