//! A stand-in for the Azure Functions host, for the quickstart, the tests and load runs. It is
//! an emulation (a fake), checked against the captured real request bodies in the shared
//! reference: it starts the handler as the host does (port in `FUNCTIONS_CUSTOMHANDLER_PORT`,
//! working directory = app root, no arguments), polls `/` every 25 ms until anything answers,
//! and POSTs invocations in the host's exact wire format (documents double-encoded), applying a
//! function's retry policy with `Metadata.RetryContext` like the host.

pub mod samples;

use crate::host::{INVOCATION_ID_HEADER, PORT_ENV};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Builds an invocation body exactly as the host sends it for a Cosmos DB trigger:
/// `Data.<binding>` is a JSON string of a JSON string of the documents array.
pub fn cosmos_trigger_body(
    binding: &str,
    function: &str,
    documents: &[Value],
    retry: Option<(i64, i64)>,
) -> String {
    let array = Value::Array(documents.to_vec()).to_string();
    let once = Value::String(array).to_string();
    let mut metadata = json!({
        "sys": {
            "MethodName": function,
            "UtcNow": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "RandGuid": uuid::Uuid::new_v4().to_string(),
        }
    });
    if let Some((count, max)) = retry {
        metadata["RetryContext"] = retry_context(count, max);
    }
    json!({ "Data": { binding: once }, "Metadata": metadata }).to_string()
}

/// `Metadata.RetryContext` as the host sends it on a retry.
fn retry_context(retry_count: i64, max_retry_count: i64) -> Value {
    json!({"RetryCount": retry_count, "MaxRetryCount": max_retry_count, "Exception": {"Message": "Exception while executing function"}})
}

/// Sets `Metadata.RetryContext` on an existing body, as the host does on a retry.
pub fn with_retry_context(body: &str, retry_count: i64, max_retry_count: i64) -> String {
    let mut v: Value = serde_json::from_str(body).unwrap_or_else(|_| json!({}));
    if let Some(obj) = v.as_object_mut() {
        let meta = obj.entry("Metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(
                "RetryContext".into(),
                retry_context(retry_count, max_retry_count),
            );
        }
        return v.to_string();
    }
    body.to_string()
}

/// One answer from the handler.
#[derive(Debug, Clone)]
pub struct HostCall {
    pub status: u16,
    pub body: Value,
    pub elapsed: Duration,
}

impl HostCall {
    pub fn logs(&self) -> Vec<String> {
        self.body["Logs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// True when some Logs line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs().iter().any(|l| l.contains(needle))
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The emulated host: a running handler process and a client that speaks to it.
pub struct EmulatedHost {
    child: Option<Child>,
    port: u16,
    client: reqwest::Client,
    /// Process start to the first answer on `/`.
    pub startup: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("the handler did not answer on / within {0:?}{1}")]
    NotReady(Duration, String),
    #[error("no free port: {0}")]
    Port(std::io::Error),
    #[error("another process answers on port {0}")]
    PortTaken(u16),
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
}

/// A free port on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl EmulatedHost {
    /// Starts `binary` in `app_root` like the host does and waits until it answers on `/`,
    /// polling every 25 ms as the host does.
    pub async fn start(
        binary: &Path,
        app_root: &Path,
        env: &[(&str, &str)],
    ) -> Result<Self, HostError> {
        Self::start_polling(binary, app_root, env, Duration::from_millis(25)).await
    }

    /// As [`EmulatedHost::start`], polling `/` at `interval` (the benchmarks poll every 1 ms to
    /// measure the start-up itself, not the host's polling cadence).
    pub async fn start_polling(
        binary: &Path,
        app_root: &Path,
        env: &[(&str, &str)],
        interval: Duration,
    ) -> Result<Self, HostError> {
        // A free port is free only when probed: a concurrently started process may take it
        // before the handler binds. The answer on `/` names the process that gave it; if that
        // is not ours, start again on another port.
        let mut tries = 0;
        loop {
            tries += 1;
            let port = free_port().map_err(HostError::Port)?;
            let mut cmd = Command::new(binary);
            cmd.current_dir(app_root)
                .env(PORT_ENV, port.to_string())
                .stdin(Stdio::null());
            for (k, v) in env {
                cmd.env(k, v);
            }
            let started = Instant::now();
            let child = cmd.spawn().map_err(|source| HostError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
            let mut host = Self {
                child: Some(child),
                port,
                client: reqwest::Client::new(),
                startup: Duration::ZERO,
            };
            match host
                .wait_ready(started, Duration::from_secs(30), interval)
                .await
            {
                Ok(startup) => {
                    host.startup = startup;
                    return Ok(host);
                }
                Err(HostError::PortTaken(_)) if tries < 5 => host.kill(),
                Err(e) => return Err(e),
            }
        }
    }

    async fn wait_ready(
        &mut self,
        started: Instant,
        limit: Duration,
        interval: Duration,
    ) -> Result<Duration, HostError> {
        let url = format!("http://127.0.0.1:{}/", self.port);
        let ours = format!("pid {}", self.pid().unwrap_or_default());
        loop {
            // Any HTTP answer counts, as for the host, once it is our process that answers.
            if let Ok(answer) = self.client.get(&url).send().await {
                let elapsed = started.elapsed();
                let body = answer.text().await.unwrap_or_default();
                if body.ends_with(&ours) {
                    return Ok(elapsed);
                }
                return Err(HostError::PortTaken(self.port));
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(HostError::NotReady(
                    started.elapsed(),
                    format!(" (the process exited with {status})"),
                ));
            }
            if started.elapsed() > limit {
                return Err(HostError::NotReady(limit, String::new()));
            }
            tokio::time::sleep(interval).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// One POST /{function}, as the host sends it.
    pub async fn invoke(&self, function: &str, body: &str) -> Result<HostCall, HostError> {
        self.invoke_raw(function, body.as_bytes().to_vec()).await
    }

    /// One POST /{function} with an arbitrary body (not necessarily UTF-8 or JSON).
    pub async fn invoke_raw(&self, function: &str, body: Vec<u8>) -> Result<HostCall, HostError> {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("http://127.0.0.1:{}/{function}", self.port))
            .header("content-type", "application/json")
            .header(INVOCATION_ID_HEADER, uuid::Uuid::new_v4().to_string())
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok(HostCall {
            status,
            body,
            elapsed: started.elapsed(),
        })
    }

    /// Delivers a batch under a retry policy the way the host does: the first execution has no
    /// RetryContext; each failure is retried with RetryContext until success or until
    /// `max_retry_count` retries are spent (-1: up to `cap` retries here). Returns every answer.
    pub async fn invoke_with_retries(
        &self,
        function: &str,
        body: &str,
        max_retry_count: i64,
        cap: usize,
    ) -> Result<Vec<HostCall>, HostError> {
        let mut calls = vec![self.invoke(function, body).await?];
        let mut retry = 0i64;
        while !calls.last().expect("one call").is_success()
            && (max_retry_count < 0 || retry < max_retry_count)
            && calls.len() <= cap
        {
            retry += 1;
            calls.push(
                self.invoke(function, &with_retry_context(body, retry, max_retry_count))
                    .await?,
            );
        }
        Ok(calls)
    }

    /// SIGTERM, then wait for the process (the handler finishes its in-flight batch).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().ok()
    }

    /// SIGKILL: the handler dies mid-batch, as on a crash or a scale-in.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EmulatedHost {
    fn drop(&mut self) {
        self.kill();
    }
}
