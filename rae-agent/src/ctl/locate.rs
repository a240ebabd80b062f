//! Where the registry database is: `--db`, else `--state-dir`, else the agent's config, else
//! the built-in state dir when the default config file does not exist.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, Overrides};
use crate::store::{StoreError, StoreReader};

use super::CtlError;

/// The state dir the agent uses when no config says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rae-agent";
/// The database's file name inside the state dir.
pub const DB_FILE_NAME: &str = "registry.db";

/// What the operator asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct DbChoice {
    pub db: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// `-c FILE`; `None` means the default config path.
    pub config: Option<PathBuf>,
}

/// Why raectl looks where it looks; said in errors so the operator knows what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbOrigin {
    DbFlag,
    StateDirFlag(PathBuf),
    Config {
        state_dir: PathBuf,
        config: PathBuf,
    },
    /// The default config file does not exist.
    BuiltIn {
        missing_config: PathBuf,
    },
}

impl fmt::Display for DbOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbOrigin::DbFlag => f.write_str("given with --db"),
            DbOrigin::StateDirFlag(dir) => {
                write!(f, "state dir {}, given with --state-dir", dir.display())
            }
            DbOrigin::Config { state_dir, config } => write!(
                f,
                "state dir {}, from {}",
                state_dir.display(),
                config.display()
            ),
            DbOrigin::BuiltIn { missing_config } => write!(
                f,
                "state dir {DEFAULT_STATE_DIR}, the default, as {} does not exist",
                missing_config.display()
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbLocation {
    pub path: PathBuf,
    pub origin: DbOrigin,
}

/// Resolves the database path; reads the config only when neither `--db` nor `--state-dir`
/// was given. `default_config` is the path used when `-c` was not given.
pub fn locate(choice: &DbChoice, default_config: &Path) -> Result<DbLocation, CtlError> {
    if let Some(db) = &choice.db {
        return Ok(DbLocation {
            path: db.clone(),
            origin: DbOrigin::DbFlag,
        });
    }
    if let Some(dir) = &choice.state_dir {
        return Ok(DbLocation {
            path: dir.join(DB_FILE_NAME),
            origin: DbOrigin::StateDirFlag(dir.clone()),
        });
    }
    let config = match &choice.config {
        Some(config) => config.clone(),
        None if !default_config.exists() => {
            return Ok(DbLocation {
                path: Path::new(DEFAULT_STATE_DIR).join(DB_FILE_NAME),
                origin: DbOrigin::BuiltIn {
                    missing_config: default_config.to_path_buf(),
                },
            })
        }
        None => default_config.to_path_buf(),
    };
    let loaded = Config::load(&config, &Overrides::default()).map_err(CtlError::Config)?;
    let state_dir = loaded.agent.state_dir;
    Ok(DbLocation {
        path: state_dir.join(DB_FILE_NAME),
        origin: DbOrigin::Config { state_dir, config },
    })
}

impl DbLocation {
    /// Opens the database read-only, turning "missing" into advice.
    pub fn open(&self) -> Result<StoreReader, CtlError> {
        match StoreReader::open_read_only(&self.path) {
            Ok(reader) => Ok(reader),
            Err(StoreError::Missing { .. }) => Err(CtlError::DatabaseMissing {
                path: self.path.clone(),
                origin: self.origin.clone(),
            }),
            Err(source) => Err(CtlError::Store {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(db: Option<&str>, state_dir: Option<&str>, config: Option<&Path>) -> DbChoice {
        DbChoice {
            db: db.map(PathBuf::from),
            state_dir: state_dir.map(PathBuf::from),
            config: config.map(Path::to_path_buf),
        }
    }

    #[test]
    fn flags_win_over_the_config() {
        let nowhere = Path::new("/nonexistent/config.toml");
        let found = locate(&choice(Some("/a/x.db"), Some("/b"), None), nowhere).unwrap();
        assert_eq!(found.path, Path::new("/a/x.db"));
        let found = locate(&choice(None, Some("/b"), Some(nowhere)), nowhere).unwrap();
        assert_eq!(found.path, Path::new("/b/registry.db"));
        assert_eq!(
            found.origin.to_string(),
            "state dir /b, given with --state-dir"
        );
    }

    #[test]
    fn a_missing_default_config_means_the_built_in_state_dir() {
        let found = locate(&DbChoice::default(), Path::new("/nonexistent/c.toml")).unwrap();
        assert_eq!(found.path, Path::new("/var/lib/rae-agent/registry.db"));
        assert!(found
            .origin
            .to_string()
            .contains("/nonexistent/c.toml does not exist"));
    }

    #[test]
    fn the_config_names_the_state_dir_and_a_missing_explicit_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            "[agent]\nserial = \"RAE-1\"\nlan_interface = \"lan0\"\nstate_dir = \"/srv/rae\"\n\
             [mqtt]\nhost = \"broker.test\"\n",
        )
        .unwrap();
        let found = locate(&choice(None, None, Some(&config)), Path::new("/none")).unwrap();
        assert_eq!(found.path, Path::new("/srv/rae/registry.db"));
        // The default path is read when it exists.
        let found = locate(&DbChoice::default(), &config).unwrap();
        assert_eq!(found.path, Path::new("/srv/rae/registry.db"));

        let missing = dir.path().join("absent.toml");
        let err = locate(&choice(None, None, Some(&missing)), Path::new("/none")).unwrap_err();
        assert!(matches!(err, CtlError::Config(_)), "{err:?}");
    }

    #[test]
    fn a_missing_database_says_what_to_do() {
        let location = DbLocation {
            path: PathBuf::from("/nonexistent/registry.db"),
            origin: DbOrigin::StateDirFlag(PathBuf::from("/nonexistent")),
        };
        let err = location.open().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/registry.db"), "{text}");
        assert!(text.contains("has it ever run"), "{text}");
    }
}
