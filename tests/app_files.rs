//! The Function App's own files, validated against the JSON schemas editors and the tooling use
//! (SchemaStore copies in tests/fixtures/schemas), and the routing config's validation as a
//! user meets it through `fanout check-config`.

use fanout_test_kit as common;

use common::{TestApp, repo_root};
use serde_json::Value;

fn schema(name: &str, draft: jsonschema::Draft) -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(&common::fixture(&format!("schemas/{name}"))).unwrap();
    jsonschema::options()
        .with_draft(draft)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_valid(validator: &jsonschema::Validator, file: &str) {
    let text =
        std::fs::read_to_string(repo_root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let doc: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "{file} violates its schema:\n{}",
        errors.join("\n")
    );
}

#[test]
fn host_json_matches_the_schema_and_our_needs() {
    assert_valid(
        &schema("host.schema.json", jsonschema::Draft::Draft7),
        "host.json",
    );
    let host: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_root().join("host.json")).unwrap())
            .unwrap();
    assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
    assert_eq!(
        host["customHandler"]["description"]["defaultExecutablePath"],
        "fanout"
    );
    assert!(host["functionTimeout"].is_string());
    // The validator itself must reject a broken file, or the check above proves nothing.
    let v = schema("host.schema.json", jsonschema::Draft::Draft7);
    assert!(!v.is_valid(&serde_json::json!({"version": "2.0", "functionTimeout": 5})));
}

#[test]
fn every_function_json_matches_the_schema_and_is_an_identity_based_cosmos_trigger() {
    // The schema says draft-04 but its `sqlBinding` uses `const` (draft-06): under draft-04
    // `const` is ignored and every cosmosDBTrigger binding matches two `oneOf` branches. Draft 6
    // honours what the schema's authors meant.
    let validator = schema("function.schema.json", jsonschema::Draft::Draft6);
    let functions = fanout::config::discover_cosmos_functions(&repo_root());
    assert!(functions.contains_key("orders"), "{functions:?}");
    for name in functions.keys() {
        let file = format!("{name}/function.json");
        assert_valid(&validator, &file);
        let f: Value =
            serde_json::from_str(&std::fs::read_to_string(repo_root().join(&file)).unwrap())
                .unwrap();
        let trigger = f["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["type"] == "cosmosDBTrigger")
            .unwrap();
        for key in [
            "connection",
            "databaseName",
            "containerName",
            "leaseContainerName",
            "leaseContainerPrefix",
            "maxItemsPerInvocation",
        ] {
            assert!(!trigger[key].is_null(), "{file}: `{key}` is missing");
        }
        // Identity-based connections cannot create the lease container.
        assert_eq!(
            trigger["createLeaseContainerIfNotExists"],
            Value::Bool(false),
            "{file}"
        );
        assert!(
            f["retry"]["maxRetryCount"].as_i64().is_some(),
            "{file}: a retry policy lets the handler dead-letter before the checkpoint"
        );
        let def = fanout::config::read_function(&repo_root(), name).unwrap();
        assert_eq!(def.binding, trigger["name"].as_str().unwrap());
    }
    assert!(
        !validator
            .is_valid(&serde_json::json!({"bindings": [], "retry": {"strategy": "sometimes"}}))
    );
}

#[test]
fn local_settings_example_matches_the_schema_and_lists_every_setting() {
    assert_valid(
        &schema("local.settings.schema.json", jsonschema::Draft::Draft4),
        "local.settings.json.example",
    );
    let text = std::fs::read_to_string(repo_root().join("local.settings.json.example")).unwrap();
    let values: Value = serde_json::from_str::<Value>(&text).unwrap()["Values"].clone();
    assert_eq!(values["FUNCTIONS_WORKER_RUNTIME"], "custom");
    // Every ${SETTING} the checked-in config and function.json use is listed.
    let config = std::fs::read_to_string(repo_root().join("fanout.toml")).unwrap();
    let function = std::fs::read_to_string(repo_root().join("orders/function.json")).unwrap();
    let mut names: Vec<String> = Vec::new();
    let config: String = config
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for part in config.split("${").skip(1) {
        names.push(part.split(['}', ':']).next().unwrap().to_string());
    }
    for part in function.split('%').skip(1).step_by(2) {
        names.push(part.to_string());
    }
    names.push("CosmosDBConnection__accountEndpoint".into());
    for name in names {
        assert!(
            values.get(&name).is_some(),
            "local.settings.json.example lacks `{name}`"
        );
    }
}

#[test]
fn the_checked_in_config_is_valid() {
    let out = std::process::Command::new(common::binary())
        .args(["check-config", "--app-root"])
        .arg(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let text = common::stdout(&out);
    assert!(
        text.contains(
            "function orders: binding `documents`, container orders, 5 retries, then dead-letter"
        ),
        "{text}"
    );
}

fn check(app: &TestApp, env: &[(&str, &str)]) -> (i32, String) {
    let out = app.run(&["check-config"], env);
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", common::stdout(&out), common::stderr(&out)),
    )
}

#[test]
fn config_problems_are_all_reported_with_how_to_fix_them() {
    let app = TestApp::new();
    app.function("orders", "documents", Some(3))
        .function("payments", "documents", None)
        .config(
            r#"
[functions.orders]
partition_key = "customerId"
[functions.orders.sinks.changelog]
type = "delta"
table = "${ORDERS_TABLE}"
[functions.orders.sinks."bad name"]
type = "delta"
table = "s3://bucket/x"

[functions.refunds]
partition_key = "/id"
[functions.refunds.sinks.c]
type = "delta"
table = "t"
"#,
        );
    let (code, text) = check(&app, &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("functions.orders.sinks.changelog.table: refers to app setting `ORDERS_TABLE`, which is not set; add it to local.settings.json"), "{text}");
    // Interpolation problems are reported first; with the setting given, the rest appear.
    let (code, text) = check(&app, &[("ORDERS_TABLE", "tables/orders")]);
    assert_eq!(code, 2);
    for expected in [
        "has 5 problems",
        "functions.orders.partition_key: partition key path `customerId` must start with `/`",
        "functions.orders.sinks.bad name: sink names may use only letters",
        "unsupported scheme `s3://`",
        "functions.refunds: cannot read",
        "functions.payments:",
        "has a cosmosDBTrigger but no route; add `[functions.payments]`",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
}

#[test]
fn unknown_keys_and_sink_types_are_refused() {
    let app = TestApp::new();
    app.function("orders", "documents", None).config("[functions.orders]\npartition_key = \"/id\"\n[functions.orders.sinks.x]\ntype = \"kafka2\"\n");
    let (code, text) = check(&app, &[]);
    assert_eq!(code, 2);
    assert!(text.contains("unknown variant `kafka2`"), "{text}");
    app.config("[functions.orders]\npartition_key = \"/id\"\n[functions.orders.sinks.x]\ntype = \"delta\"\ntabel = \"t\"\n");
    let (_, text) = check(&app, &[]);
    assert!(text.contains("unknown field `tabel`"), "{text}");
    app.config(
        "[functions.orders]\npartition_key = \"/id\"\nsinks = {}\n[retry]\nbudget_ms = 999999999\n",
    );
    let (_, text) = check(&app, &[]);
    assert!(text.contains("functions.orders.sinks: no sinks"), "{text}");
    assert!(
        text.contains("must end at least 10 s before host.json's functionTimeout"),
        "{text}"
    );
    // A missing config file says where it was looked for.
    std::fs::remove_file(app.path().join("fanout.toml")).unwrap();
    let (code, text) = check(&app, &[]);
    assert_eq!(code, 2);
    assert!(
        text.contains("fanout.toml has 1 problem") && text.contains("cannot read it"),
        "{text}"
    );
}

#[test]
fn serving_without_a_port_explains_itself() {
    let app = TestApp::new();
    app.function("orders", "documents", None).config("[functions.orders]\npartition_key = \"/id\"\n[functions.orders.sinks.c]\ntype = \"delta\"\ntable = \"t\"\n");
    let out = app.run(&[], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        common::stderr(&out).contains("FUNCTIONS_CUSTOMHANDLER_PORT is not set"),
        "{}",
        common::stderr(&out)
    );
}

#[test]
fn the_azure_config_is_valid_and_every_setting_it_needs_is_set_by_the_templates() {
    let config = std::fs::read_to_string(repo_root().join("fanout.azure.toml")).unwrap();
    let bicep =
        std::fs::read_to_string(repo_root().join("infra/modules/functionapp.bicep")).unwrap();
    let code: String = config
        .lines()
        .map(|l| l.split('#').next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let mut env: Vec<(String, String)> = Vec::new();
    for part in code.split("${").skip(1) {
        let expr = part.split('}').next().unwrap();
        if expr.contains(":-") {
            continue; // has a default
        }
        assert!(
            bicep.contains(&format!("name: '{expr}'")),
            "fanout.azure.toml needs `{expr}`, which infra/modules/functionapp.bicep does not set"
        );
        let value = match expr {
            "FANOUT_DEAD_LETTER_URL" => "abfss://deadletter@acct.dfs.core.windows.net/fanout",
            "ORDERS_CHANGELOG_TABLE" => "abfss://lake@acct.dfs.core.windows.net/orders_changelog",
            "REDIS_URL" => "rediss://example.redis.azure.net:10000",
            "SEARCH_ENDPOINT" => "https://example.search.windows.net",
            _ => "00000000-0000-0000-0000-000000000000",
        };
        env.push((expr.to_string(), value.to_string()));
    }
    assert!(env.len() >= 5, "{env:?}");
    assert!(
        bicep.contains("value: 'fanout.azure.toml'"),
        "the templates select this config with FANOUT_CONFIG"
    );
    let out = std::process::Command::new(common::binary())
        .args(["check-config", "--app-root"])
        .arg(repo_root())
        .env("FANOUT_CONFIG", "fanout.azure.toml")
        .env("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000000")
        .envs(env)
        .output()
        .unwrap();
    let text = format!("{}{}", common::stdout(&out), common::stderr(&out));
    assert!(out.status.success(), "{text}");
    for sink in [
        "sink changelog (delta)",
        "sink cache (redis)",
        "sink search (azure_search)",
    ] {
        assert!(text.contains(sink), "{text}");
    }
    assert!(
        !text.contains("warning:"),
        "the projection must match the index definition: {text}"
    );
}
