use super::{CommandError, Context};
use fanout::sinks::azure_search::SearchClient;

/// Creates or updates every AI Search index the config names, from its checked-in definition.
pub async fn run(ctx: &Context) -> Result<(), CommandError> {
    let config = ctx.load()?;
    let mut done = 0;
    for (function, route) in &config.routes {
        for (name, sink) in &route.sinks {
            let Some(v) = sink.as_search() else {
                continue;
            };
            let c = &v.config;
            let (Some(path), Some((def, raw))) = (&c.index_definition, &v.definition) else {
                println!("{function}.{name}: no index_definition; skipped");
                continue;
            };
            if def.name != c.index {
                return Err(CommandError::Usage(format!(
                    "{path} defines index `{}` but {function}.{name} writes to `{}`",
                    def.name, c.index
                )));
            }
            let client = SearchClient::new(c).map_err(|e| CommandError::Failed(e.to_string()))?;
            let status = client.put_index(raw).await.map_err(|e| {
                CommandError::Failed(format!(
                    "{function}.{name}: cannot create index `{}`: {e}",
                    c.index
                ))
            })?;
            println!(
                "{function}.{name}: index `{}` {} ({} fields, key `{}`)",
                c.index,
                if status == 201 { "created" } else { "updated" },
                def.fields.len(),
                def.key_field()
            );
            done += 1;
        }
    }
    if done == 0 {
        println!(
            "no azure_search sink with an index_definition in {}",
            config.file.display()
        );
    }
    Ok(())
}
