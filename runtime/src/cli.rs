//! The `orchestra` command line: `serve`, `migrate`, operator commands for
//! bootstrapping accounts without the API, `openapi`, and `mcp stdio`.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::db::Db;
use crate::server;
use crate::users::model::Role;

/// Orchestra: a self-hosted agent server with sandboxed WebAssembly tools.
#[derive(Debug, Parser)]
#[command(name = "orchestra", version)]
pub struct Cli {
    /// TOML configuration file (defaults < file < ORCHESTRA_* environment).
    #[arg(long, global = true, env = "ORCHESTRA_CONFIG")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server (creates the data directory and database on first run).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage accounts directly in the database.
    #[command(subcommand)]
    User(UserCommand),
    /// Print the OpenAPI document as JSON.
    Openapi,
    /// Serve Orchestra's tools over MCP.
    #[command(subcommand)]
    Mcp(McpCommand),
}

/// MCP commands.
#[derive(Debug, Subcommand)]
pub enum McpCommand {
    /// Serve the key owner's catalogue (plugins, exposed bridged tools, their
    /// agents) over stdin/stdout, for desktop MCP clients. Opens the
    /// configured database directly (no running server needed); logs go to
    /// stderr.
    Stdio {
        /// An API key of the user whose tools to serve.
        #[arg(long, env = "ORCHESTRA_API_KEY", hide_env_values = true)]
        api_key: String,
    },
}

/// Account commands for operators.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account with a role.
    Create {
        /// Login email.
        #[arg(long)]
        email: String,
        /// admin, user or viewer.
        #[arg(long, default_value = "user", value_parser = parse_role)]
        role: Role,
        /// Name shown in clients.
        #[arg(long)]
        display_name: Option<String>,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Set a new password and end every session of the account.
    ResetPassword {
        /// Login email.
        #[arg(long)]
        email: String,
        #[command(flatten)]
        password: PasswordSource,
    },
}

/// Where the password comes from (never the command line, which `ps` shows).
#[derive(Debug, Args)]
pub struct PasswordSource {
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordSource {
    fn read(&self) -> anyhow::Result<String> {
        if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
        }
        match std::env::var("ORCHESTRA_PASSWORD") {
            Ok(p) => Ok(p),
            Err(_) => bail!("give the password on standard input with --password-stdin, or in ORCHESTRA_PASSWORD"),
        }
    }
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not a role (admin, user, viewer)"))
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Openapi = cli.command {
        let (_, openapi) = server::api();
        println!("{}", openapi.to_pretty_json()?);
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    crate::telemetry::init(&config.log);
    match cli.command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            if config.database_url.is_none() {
                std::fs::create_dir_all(&config.data_dir)?;
            }
            let db = Db::connect(&config).await?;
            db.migrate().await?;
            db.close().await;
            println!("migrations applied ({})", db.backend());
            Ok(())
        }
        Command::User(command) => {
            let state = server::build_state(config).await?;
            let result = user_command(&state, command).await;
            state.db.close().await;
            result
        }
        Command::Openapi => unreachable!("handled above"),
        Command::Mcp(McpCommand::Stdio { api_key }) => {
            let state = server::build_state(config).await?;
            let principal = state
                .users
                .authenticate(&api_key)
                .await
                .map_err(|e| anyhow::anyhow!("the API key was refused: {e}"))?;
            tracing::info!(user = %principal.user_id, "serving MCP over stdio");
            let result = crate::mcp::host::serve_stdio(state.clone(), principal).await;
            state.engine.shutdown().await;
            state.mcp.shutdown();
            state.db.close().await;
            result
        }
    }
}

async fn user_command(state: &crate::http::AppState, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Create {
            email,
            role,
            display_name,
            password,
        } => {
            let user = state
                .users
                .create_user_offline(&email, password.read()?, role, display_name)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "created {} ({}) with id {}",
                user.email,
                user.role.as_str(),
                user.id
            );
        }
        UserCommand::ResetPassword { email, password } => {
            state
                .users
                .reset_password_offline(&email, password.read()?)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("password reset for {email}; every session of the account has ended");
        }
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let data_dir = config.data_dir.clone();
    let state = server::build_state(config).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} (set ORCHESTRA_LISTEN to use another address)"))?;
    let url = format!("http://{}", listener.local_addr()?);
    tracing::info!(%url, database = state.db.backend(), data_dir = %data_dir.display(), "orchestra listening");
    println!("Orchestra is listening on {url}");
    println!("  API docs:   {url}/docs");
    println!("  Database:   {}", state.db.backend());
    println!("  First user: the first account registered becomes admin:");
    println!(
        "    curl -X POST {url}/api/v1/auth/register -H 'Content-Type: application/json' \\\n      -d '{{\"email\":\"you@example.com\",\"password\":\"a long password\"}}'"
    );
    println!("    or: orchestra user create --email you@example.com --role admin --password-stdin");
    server::serve(listener, state, server::shutdown_signal()).await?;
    println!("Orchestra stopped.");
    Ok(())
}
