//! The binary's subcommands. Each loads the config the same way as the server does.

pub mod backfill;
pub mod changelog;
pub mod check;
pub mod demo;
pub mod history;
pub mod maintain;
pub mod replay;
pub mod restore;
pub mod search_index;
pub mod serve;
pub mod verify;

use fanout::config::{AppConfig, AppSettings, CONFIG_FILE, ConfigError, resolve_app_root};
use fanout::pipeline::{BuildError, Pipeline};
use std::path::PathBuf;

/// A command's failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    /// `verify` found drift: exit 3, so scripts tell it from a verify that could not run.
    #[error("{0}")]
    Drift(String),
}

impl CommandError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Config(_) | CommandError::Build(_) | CommandError::Usage(_) => 2,
            CommandError::Failed(_) => 1,
            CommandError::Drift(_) => 3,
        }
    }
}

/// The checks every command that reads or writes Cosmos DB makes of its rate settings.
pub fn check_rate(max_ru_per_second: Option<f64>, parallel: usize) -> Result<(), CommandError> {
    if max_ru_per_second.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(CommandError::Usage(
            "--max-ru-per-second must be a positive number".into(),
        ));
    }
    if parallel == 0 {
        return Err(CommandError::Usage("--parallel must be at least 1".into()));
    }
    Ok(())
}

/// The route of `function`, or a usage error naming the functions there are.
pub fn route_of<'a>(
    config: &'a AppConfig,
    function: &str,
) -> Result<&'a fanout::config::RouteConfig, CommandError> {
    config.routes.get(function).ok_or_else(|| {
        CommandError::Usage(format!(
            "no function `{function}` in {}; its functions: {}",
            config.file.display(),
            config.routes.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

pub struct Context {
    pub app_root: PathBuf,
    pub config_file: PathBuf,
    /// The environment, then the app's local.settings.json `Values`.
    pub settings: AppSettings,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Context {
    pub fn new(app_root: Option<PathBuf>, config: Option<PathBuf>) -> Self {
        let app_root = resolve_app_root(app_root.as_deref(), &env);
        let config_file = config
            .map(|c| if c.is_absolute() { c } else { app_root.join(c) })
            .unwrap_or_else(|| app_root.join(CONFIG_FILE));
        let settings = AppSettings::load(&app_root);
        Self {
            app_root,
            config_file,
            settings,
        }
    }

    pub fn load(&self) -> Result<AppConfig, ConfigError> {
        AppConfig::load(&self.app_root, &self.config_file, &|name| {
            self.settings.get(name)
        })
    }

    pub fn pipeline(&self) -> Result<(AppConfig, Pipeline), CommandError> {
        self.pipeline_with(|_| {})
    }

    /// The pipeline of the loaded config after `adjust` (a command's overrides of it).
    pub fn pipeline_with(
        &self,
        adjust: impl FnOnce(&mut AppConfig),
    ) -> Result<(AppConfig, Pipeline), CommandError> {
        let mut config = self.load()?;
        adjust(&mut config);
        let pipeline = Pipeline::build(&config)?;
        Ok((config, pipeline))
    }
}
