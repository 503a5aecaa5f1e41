//! The function's monitored container, opened for a command (backfill, verify, restore): the
//! route and its partition key paths from the config, where the container is from the
//! trigger's own settings, and the client. Set up one way for every command, the test kit
//! and the benches.

use crate::change::PartitionKeyPaths;
use crate::config::AppConfig;
use crate::cosmos::{CosmosTarget, SourceError};
use crate::pipeline::{Pipeline, Route};
use azure_data_cosmos::clients::ContainerClient;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no function `{function}` in {file}; its functions: {known}")]
    NoRoute {
        function: String,
        file: String,
        known: String,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl OpenError {
    /// Bad input (stopped before any work): exit 2.
    pub fn is_usage(&self) -> bool {
        match self {
            OpenError::NoRoute { .. } => true,
            OpenError::Source(e) => e.is_usage(),
        }
    }
}

pub struct FunctionSource<'a> {
    pub route: &'a Route,
    pub partition_key: &'a PartitionKeyPaths,
    pub target: CosmosTarget,
    pub container: ContainerClient,
}

impl<'a> FunctionSource<'a> {
    /// The route of `function`, or why there is none (no request made).
    pub fn route(
        config: &'a AppConfig,
        pipeline: &'a Pipeline,
        function: &str,
    ) -> Result<(&'a Route, &'a PartitionKeyPaths), OpenError> {
        match (pipeline.routes().get(function), config.routes.get(function)) {
            (Some(route), Some(route_config)) => Ok((route, &route_config.partition_key)),
            _ => Err(OpenError::NoRoute {
                function: function.to_string(),
                file: config.file.display().to_string(),
                known: config.routes.keys().cloned().collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// Opens the container of `route` named by the trigger's settings (`setting`: the app
    /// settings) with `builder` (`CosmosClientBuilder::new()`; tests pass the in-memory
    /// emulator's). Call after every check that needs no service.
    pub async fn open(
        route: &'a Route,
        partition_key: &'a PartitionKeyPaths,
        setting: &dyn Fn(&str) -> Option<String>,
        builder: azure_data_cosmos::CosmosClientBuilder,
    ) -> Result<Self, OpenError> {
        let target =
            crate::cosmos::resolve_target(&route.function, setting).map_err(SourceError::from)?;
        let container = crate::cosmos::open_container(&target, builder).await?;
        Ok(Self {
            route,
            partition_key,
            target,
            container,
        })
    }
}
