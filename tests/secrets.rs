//! No configured secret (keys, passwords in URLs, storage keys) ever appears in what the
//! handler prints or answers: its logs (debug level, every dependency included, librdkafka's too), the host's
//! `Logs`, the dead-letter records, and `check-config`. The sinks are pointed at closed
//! loopback ports so that every error path runs. Also: the server listens on 127.0.0.1 only.

use fanout_test_kit as common;

use common::TestApp;
use fanout::hostsim::{cosmos_trigger_body, free_port, samples};

const SECRETS: [&str; 5] = [
    "LEAK-redis-url-password",
    "LEAK-search-api-key",
    "TEVBSy1zdG9yYWdlLWtleQ==",
    "LEAK-event-hubs-key",
    "TEVBSy1jb3Ntb3Mta2V5",
];

fn config(closed: u16) -> String {
    format!(
        r#"
[retry]
initial_backoff_ms = 10
max_backoff_ms = 20
budget_ms = 300

[functions.orders]
partition_key = "/customerId"

[functions.orders.sinks.changelog]
type = "delta"
table = "az://lake/orders"
storage_options = {{ azure_storage_account_name = "devstoreaccount1", azure_storage_account_key = "${{STORAGE_KEY}}", azure_storage_endpoint = "http://127.0.0.1:{closed}/devstoreaccount1", azure_allow_http = "true" }}

[functions.orders.sinks.cache]
type = "redis"
url = "redis://default:${{REDIS_PASSWORD}}@127.0.0.1:{closed}"
keys = ["order:{{id}}"]
connect_timeout_ms = 100

[functions.orders.sinks.search]
type = "azure_search"
endpoint = "http://127.0.0.1:{closed}"
index = "orders"
auth = "api_key"
api_key = "${{SEARCH_KEY}}"

[functions.orders.sinks.stream]
type = "kafka"
brokers = "127.0.0.1:{closed}"
topic = "orders"
auth = "connection_string"
connection_string = "${{EH_CONNECTION}}"
tls = false
message_timeout_ms = 200
"#
    )
}

fn secret_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("REDIS_PASSWORD", SECRETS[0]),
        ("SEARCH_KEY", SECRETS[1]),
        ("STORAGE_KEY", SECRETS[2]),
        (
            "EH_CONNECTION",
            "Endpoint=sb://fake.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey=LEAK-event-hubs-key",
        ),
    ]
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(
            !text.contains(secret),
            "{what} contains the secret {secret}:\n{text}"
        );
    }
}

#[tokio::test]
async fn no_secret_reaches_logs_answers_or_dead_letters() {
    let closed = free_port().unwrap();
    let app = TestApp::new();
    app.function("orders", "documents", None)
        .config(&config(closed));
    let mut env = secret_env();
    env.push(("FANOUT_LOG", "debug"));
    let handler = app.serve_logged(&env).await;
    let port = handler.port;

    // Listening on loopback only: the kernel's table shows 127.0.0.1, not 0.0.0.0 / ::.
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let listening: Vec<&str> = tcp
        .lines()
        .filter(|l| {
            l.contains(&format!(":{port:04X} ")) && l.split_whitespace().nth(3) == Some("0A")
        })
        .collect();
    assert_eq!(listening.len(), 1, "{tcp}");
    assert!(
        listening[0]
            .split_whitespace()
            .nth(1)
            .unwrap()
            .starts_with("0100007F:"),
        "{}",
        listening[0]
    );
    let tcp6 = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    assert!(
        !tcp6.contains(&format!(":{port:04X} ")),
        "listening on IPv6 too"
    );

    let body = cosmos_trigger_body(
        "documents",
        "orders",
        &samples::order_batches(1, 1, 5, 2)[0],
        None,
    );
    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/orders"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let answer = answer.text().await.unwrap();
    assert!(
        answer.contains("dead-lettered"),
        "every sink fails: {answer}"
    );
    assert_no_secret("the answer to the host", &answer);

    let logs = handler.stop();
    assert!(logs.contains("DEBUG"), "debug logging was on");
    assert_no_secret("the handler's logs", &logs);
    let records = app.dead_letters();
    assert_eq!(records.len(), 4, "{records:?}");
    for key in records {
        assert_no_secret(&key, &app.dead_letter(&key).to_string());
    }

    // A backfill whose account does not answer: its errors and logs name no key.
    let mut env = secret_env();
    let cosmos = format!(
        "AccountEndpoint=https://127.0.0.1:{closed}/;AccountKey={};",
        SECRETS[4]
    );
    env.push(("CosmosDBConnection", cosmos.as_str()));
    env.push(("FANOUT_LOG", "debug"));
    let out = app.run(&["backfill", "--function", "orders"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", common::stderr(&out));
    assert_no_secret("backfill", &(common::stdout(&out) + &common::stderr(&out)));
    // The same for verify and for a restore into a container, run side by side.
    let restore_args = [
        "restore",
        "--function",
        "orders",
        "--as-of",
        "2026-01-01T00:00:00Z",
        "--to",
        "cosmos",
        "--container",
        "restored",
        "--without-baseline",
    ];
    let (verify, restore) = std::thread::scope(|s| {
        let verify = s.spawn(|| app.run(&["verify", "--function", "orders"], &env));
        let restore = s.spawn(|| app.run(&restore_args, &env));
        (verify.join().unwrap(), restore.join().unwrap())
    });
    for (what, out) in [("verify", verify), ("restore", restore)] {
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: {}",
            common::stderr(&out)
        );
        assert_no_secret(what, &(common::stdout(&out) + &common::stderr(&out)));
    }

    // check-config, valid and with a mistake next to the secrets.
    let env = secret_env();
    let out = app.run(&["check-config"], &env);
    assert_no_secret(
        "check-config",
        &(common::stdout(&out) + &common::stderr(&out)),
    );
    app.config(&config(closed).replace("connect_timeout_ms", "conect_timeout_ms"));
    let out = app.run(&["check-config"], &env);
    assert!(!out.status.success());
    assert_no_secret(
        "check-config",
        &(common::stdout(&out) + &common::stderr(&out)),
    );
}
