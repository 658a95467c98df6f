//! Job files: serde types, loading TOML/YAML with source spans, validation, schema.

pub mod error;
pub mod load;
pub mod span;
pub mod types;
pub mod units;

pub use error::{Source, SpecError};
pub use load::{load_file, LoadedFile};
pub use types::*;
