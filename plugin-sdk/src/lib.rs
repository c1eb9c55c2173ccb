//! Write Orchestra tool plugins in Rust.
//!
//! A tool is a plain function from a `Deserialize + JsonSchema` argument
//! struct to a `Serialize + JsonSchema` result; the SDK derives the JSON
//! Schemas, decodes arguments, encodes results and implements the
//! `orchestra:plugin` WIT world. Build with `cargo build --target wasm32-wasip2`.
//!
//! ```ignore
//! use orchestra_plugin_sdk::prelude::*;
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Greet {
//!     /// Who to greet.
//!     name: String,
//! }
//!
//! fn greet(args: Greet) -> Result<String, ToolError> {
//!     Ok(format!("Hello, {}!", args.name))
//! }
//!
//! fn plugin() -> Plugin {
//!     Plugin::new("greeter", env!("CARGO_PKG_VERSION"), "Greets people")
//!         .tool(Tool::new("greet", "Greets someone by name", greet).read_only())
//! }
//!
//! orchestra_plugin_sdk::export!(plugin);
//! ```

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "export_plugin",
        default_bindings_module: "orchestra_plugin_sdk::bindings",
    });
}

mod capabilities;

use bindings::orchestra::plugin::types;
pub use capabilities::{http, kv, secrets};
pub use types::ToolError;

/// Everything a plugin author needs.
pub mod prelude {
    pub use crate::{http, kv, log, secrets};
    pub use crate::{Plugin, Tool, ToolError};
    pub use schemars::{self, JsonSchema};
    pub use serde::{self, Deserialize, Serialize};
    pub use serde_json;
}

/// Host logging, tagged with the plugin and the call.
pub mod log {
    use crate::bindings::orchestra::plugin::log::{log, Level};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

type Handler = Box<dyn Fn(&str) -> Result<String, ToolError>>;

/// One tool: its description, derived schemas, hints and handler.
pub struct Tool {
    name: &'static str,
    description: &'static str,
    input_schema: fn() -> serde_json::Value,
    output_schema: Option<fn() -> serde_json::Value>,
    read_only: bool,
    destructive: bool,
    idempotent: bool,
    handler: Handler,
}

fn schema_of<T: JsonSchema>() -> serde_json::Value {
    schemars::schema_for!(T).to_value()
}

impl Tool {
    /// A tool named `name` running `handler`. The input schema is derived
    /// from `A`, the output schema from `R`.
    pub fn new<A, R, F>(name: &'static str, description: &'static str, handler: F) -> Tool
    where
        A: DeserializeOwned + JsonSchema,
        R: Serialize + JsonSchema,
        F: Fn(A) -> Result<R, ToolError> + 'static,
    {
        Tool {
            name,
            description,
            input_schema: schema_of::<A>,
            output_schema: Some(schema_of::<R>),
            read_only: false,
            destructive: false,
            idempotent: false,
            handler: Box::new(move |arguments| {
                let args: A = serde_json::from_str(arguments)
                    .map_err(|e| ToolError::InvalidArguments(e.to_string()))?;
                let result = handler(args)?;
                serde_json::to_string(&result)
                    .map_err(|e| ToolError::Failed(format!("result is not JSON: {e}")))
            }),
        }
    }

    /// Marks the tool as only reading (implies idempotent).
    pub fn read_only(mut self) -> Tool {
        self.read_only = true;
        self.idempotent = true;
        self
    }

    /// Marks the tool as able to destroy or overwrite data.
    pub fn destructive(mut self) -> Tool {
        self.destructive = true;
        self
    }

    /// Marks the tool as safe to repeat with the same arguments.
    pub fn idempotent(mut self) -> Tool {
        self.idempotent = true;
        self
    }

    /// Declares no output schema (for results whose shape varies).
    pub fn untyped_output(mut self) -> Tool {
        self.output_schema = None;
        self
    }
}

/// A plugin: its identity, tools and requested capabilities.
pub struct Plugin {
    name: &'static str,
    version: &'static str,
    description: &'static str,
    tools: Vec<Tool>,
    http_hosts: Vec<String>,
    key_value: bool,
    secrets: Vec<String>,
    directories: Vec<String>,
}

impl Plugin {
    /// A plugin with no tools yet.
    pub fn new(name: &'static str, version: &'static str, description: &'static str) -> Plugin {
        Plugin {
            name,
            version,
            description,
            tools: Vec::new(),
            http_hosts: Vec::new(),
            key_value: false,
            secrets: Vec::new(),
            directories: Vec::new(),
        }
    }

    /// Adds a tool.
    pub fn tool(mut self, tool: Tool) -> Plugin {
        self.tools.push(tool);
        self
    }

    /// Asks for outbound HTTP(S) to `host` (`api.example.com`,
    /// `api.example.com:8443`, `*.example.com`, or `*` for whatever hosts an
    /// admin grants).
    pub fn http_host(mut self, host: &str) -> Plugin {
        self.http_hosts.push(host.to_owned());
        self
    }

    /// Asks for a key-value store.
    pub fn key_value(mut self) -> Plugin {
        self.key_value = true;
        self
    }

    /// Asks for a directory, seen by the plugin at the absolute path `path`
    /// (e.g. `/data`) and used with `std::fs`; an admin maps it to a
    /// directory of the server, read-only or writable.
    pub fn directory(mut self, path: &str) -> Plugin {
        self.directories.push(path.to_owned());
        self
    }

    /// Asks for the secret `name`.
    pub fn secret(mut self, name: &str) -> Plugin {
        self.secrets.push(name.to_owned());
        self
    }

    #[doc(hidden)]
    pub fn __manifest(&self) -> types::Manifest {
        types::Manifest {
            name: self.name.to_owned(),
            version: self.version.to_owned(),
            description: self.description.to_owned(),
            tools: self
                .tools
                .iter()
                .map(|t| types::Tool {
                    name: t.name.to_owned(),
                    description: t.description.to_owned(),
                    input_schema: (t.input_schema)().to_string(),
                    output_schema: t.output_schema.map(|s| s().to_string()),
                    read_only: t.read_only,
                    destructive: t.destructive,
                    idempotent: t.idempotent,
                })
                .collect(),
            capabilities: types::Capabilities {
                http_hosts: self.http_hosts.clone(),
                key_value: self.key_value,
                secrets: self.secrets.clone(),
                directories: self.directories.clone(),
            },
        }
    }

    #[doc(hidden)]
    pub fn __call(&self, tool: &str, arguments: &str) -> Result<String, ToolError> {
        match self.tools.iter().find(|t| t.name == tool) {
            Some(t) => (t.handler)(arguments),
            None => Err(ToolError::UnknownTool(tool.to_owned())),
        }
    }
}

/// Exports a plugin: give it a function that builds the [`Plugin`].
#[macro_export]
macro_rules! export {
    ($plugin:path) => {
        struct __OrchestraPlugin;

        impl $crate::bindings::Guest for __OrchestraPlugin {
            fn manifest() -> $crate::bindings::orchestra::plugin::types::Manifest {
                $plugin().__manifest()
            }

            fn call(
                tool: ::std::string::String,
                arguments: ::std::string::String,
            ) -> ::std::result::Result<::std::string::String, $crate::ToolError> {
                $plugin().__call(&tool, &arguments)
            }
        }

        $crate::bindings::export_plugin!(__OrchestraPlugin with_types_in $crate::bindings);
    };
}
