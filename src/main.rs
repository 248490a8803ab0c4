//! The `quaver` command line: `serve`, `token`.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use quaver::config::{ConfigArgs, parse_duration};

#[derive(Parser)]
#[command(
    name = "quaver",
    version,
    about = "Real-time chat, presence and voice over QUIC and WebTransport"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default). With no settings: dev certificate, dev JWT secret.
    Serve(ConfigArgs),
    /// A command-line chat client: list guilds, tail a channel, send.
    Chat(quaver::cli::ChatArgs),
    /// Create or upgrade the database schema, then exit (`serve` also does this at start).
    Migrate(ConfigArgs),
    /// Make a key for the server API: prints the key (once: it is stored nowhere) and the
    /// configuration that accepts it.
    ApiKey {
        /// Its id: letters, digits, - and _ (up to 32).
        #[arg(long)]
        id: String,
        /// Its scopes, comma-separated (e.g. messages:write,moderation; admin for all).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// Make a webhook signing secret (`whsec_` + base64 of 32 random bytes) for an endpoint
    /// in the config file.
    WebhookSecret,
    /// Mint a token signed with the configured HS256 secret (development and tests).
    Token {
        /// User id (a positive integer).
        #[arg(long)]
        user: u64,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

/// Logs to stderr, filtered by `QUAVER_LOG` (default `info`). Whatever that says, no
/// credential reaches a log: wtransport's debug and trace events print the WebTransport
/// request's headers and path, and with them a `?token=` JWT or an `Authorization` header,
/// so that crate is capped at `info` by a filter the environment cannot lift.
fn init_logging() {
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let env = tracing_subscriber::EnvFilter::try_from_env("QUAVER_LOG")
        .unwrap_or_else(|_| "info,quinn=warn,wtransport=warn".into());
    let no_credentials = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("wtransport", LevelFilter::INFO);
    // One filter, `env` AND the cap: its level hint is the lower of the two, so with the
    // default `info` every debug/trace callsite (quinn's per-packet ones, sqlx's per-query
    // logging, which formats each query first) stays disabled at no cost. (Two stacked
    // per-layer filters raised the hint to TRACE: +16 % server instructions on a small chat
    // run, measured with callgrind.)
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(env.and(no_credentials)),
        )
        .init();
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    // No command is `serve` with its settings from the environment, exactly as `quaver serve`
    // reads them (a `ConfigArgs::default()` here would silently ignore QUAVER_API_KEYS,
    // JWT_SECRET, …). A bare `quaver` takes no arguments, so nothing on the command line is lost.
    let command = match cli.command {
        Some(c) => c,
        None => Cli::parse_from(["quaver", "serve"])
            .command
            .expect("invariant: `serve` parses to a command"),
    };
    match command {
        Command::Token {
            user,
            name,
            ttl,
            config,
        } => {
            let cfg = config.resolve()?;
            let v = quaver::auth::Verifier::from_config(&cfg.auth, &cfg.data_dir)?;
            println!("{}", v.mint(user, name.as_deref(), ttl)?);
            Ok(())
        }
        Command::ApiKey { id, scopes } => {
            let key = quaver::config::ApiKeyConfig {
                id: id.clone(),
                secret_sha256: String::new(),
                scopes: scopes.clone(),
            };
            // Checked as the server will check it.
            let (secret, hash) = quaver::api::auth::mint(&id)?;
            let key = quaver::config::ApiKeyConfig {
                secret_sha256: hash,
                ..key
            };
            let check = quaver::config::Config {
                api: quaver::config::ApiConfig {
                    keys: vec![key.clone()],
                    ..Default::default()
                },
                ..Default::default()
            };
            check.validate()?;
            println!("{secret}");
            eprintln!(
                "# the key is above (shown once, stored nowhere). Accept it with, in the config file:\n\n[[api.keys]]\nid = {:?}\nsecret_sha256 = {:?}\nscopes = {:?}\n\n# or in the environment: QUAVER_API_KEYS='{}'",
                key.id,
                key.secret_sha256,
                key.scopes,
                serde_json::to_string(&[&key]).unwrap_or_default()
            );
            Ok(())
        }
        Command::WebhookSecret => {
            println!("{}", quaver::webhooks::new_secret());
            Ok(())
        }
        Command::Chat(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(quaver::cli::run(args)),
        Command::Migrate(args) => {
            let cfg = args.resolve()?;
            let url = cfg.database_url();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(async {
                    let store = quaver::store::Store::open(&url)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    tracing::info!(backend = ?store.backend(), "database is up to date");
                    anyhow::Ok(())
                })
        }
        Command::Serve(args) => {
            let cfg = args.resolve()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?
                .block_on(serve(cfg))
        }
    }
}

async fn serve(cfg: quaver::config::Config) -> anyhow::Result<()> {
    let signals = quaver::shutdown::OsSignals::listen();
    let server = quaver::Server::start(cfg).await?;
    let info = server.ctx.certs.info();
    tracing::info!(quic = %server.quic_addr, http = %server.http_addr, api = %server.api_addr, node = %server.ctx.cfg.node_name, loops = server.ctx.cfg.loops, "quaver listening (WebTransport at {} and raw QUIC quaver/1 on one UDP port)", quaver_proto::WEBTRANSPORT_PATH);
    tracing::info!(
        sha256 = %hex::encode(info.sha256),
        dev = info.dev,
        "certificate in service (browsers: serverCertificateHashes, or GET http://{}/cert-hash)",
        server.http_addr
    );
    let names = if server.ctx.verifier.is_generated() {
        "sign in with any name (development tokens)"
    } else {
        "sign in with a token from your issuer"
    };
    tracing::info!("web app: open http://{}/ in a browser — {names}", server.http_addr);
    tracing::info!(
        keys = server.ctx.cfg.api.keys.len(),
        "server API for your backend: {}://{}/api/v1 (documented at /api/v1/docs; `quaver api-key` makes a key)",
        if server.api_https { "https" } else { "http" },
        server.api_addr
    );
    signals.recv().await;
    tracing::info!("shutting down: Goaway sent to every session, draining");
    server.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
