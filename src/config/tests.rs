//! `--config` files against a CLI of the same shape as `main.rs`'s (the binary's own is exercised
//! by tests/it/deploy.rs): insertion, precedence, exclusions, and the one-line errors.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, CommandFactory, Parser, Subcommand};

use super::*;

#[derive(Debug, Parser)]
struct TestCli {
    #[arg(long, global = true, env = "SHOAL_HOST", value_delimiter = ',')]
    host: Vec<String>,
    #[arg(long = "config", env = "SHOAL_CONFIG", value_name = "FILE")]
    config_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    Manager(Manager),
    Agent(Agent),
    Proxy(Proxy),
    Kv { key: String },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(group(ArgGroup::new("token_source").args(["token", "token_file"])))]
struct Manager {
    #[command(subcommand)]
    action: Option<ManagerAction>,
    #[arg(long, required = true, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:7946", env = "SHOAL_LISTEN")]
    listen: String,
    #[arg(
        long,
        value_delimiter = ',',
        requires = "token_source",
        env = "SHOAL_JOIN"
    )]
    join: Vec<String>,
    #[arg(long, requires = "join", env = "SHOAL_TOKEN")]
    token: Option<String>,
    #[arg(long, requires = "join", env = "SHOAL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[arg(long, conflicts_with_all = ["join", "token", "token_file"])]
    force_new_cluster: bool,
}

#[derive(Debug, Subcommand)]
enum ManagerAction {
    Remove { id: u64 },
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("token_source").required(true).args(["token", "token_file"])))]
struct Agent {
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: PathBuf,
    #[arg(long, value_delimiter = ',', required = true, env = "SHOAL_JOIN")]
    join: Vec<String>,
    #[arg(long, env = "SHOAL_TOKEN")]
    token: Option<String>,
    #[arg(long, env = "SHOAL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[arg(long, env = "SHOAL_NAME")]
    name: Option<String>,
    #[arg(long = "label", env = "SHOAL_LABEL")]
    labels: Vec<String>,
    #[arg(long, default_value = "500ms", env = "SHOAL_HEARTBEAT")]
    heartbeat: String,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("reload").required(true).args(["pid_file", "container"])))]
struct Proxy {
    #[arg(long, value_delimiter = ',', required = true, env = "SHOAL_JOIN")]
    join: Vec<String>,
    #[arg(long, env = "SHOAL_PROXY_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "SHOAL_PID_FILE")]
    pid_file: Option<PathBuf>,
    #[arg(long, env = "SHOAL_CONTAINER")]
    container: Option<String>,
    #[arg(long, default_value_t = 80, env = "SHOAL_LISTEN_PORT")]
    listen_port: u16,
}

/// A config file in a temp dir (kept alive by the returned guard).
fn file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shoal.toml");
    std::fs::write(&path, text).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

fn argv(args: &[&str]) -> Vec<OsString> {
    std::iter::once("shoal")
        .chain(args.iter().copied())
        .map(OsString::from)
        .collect()
}

fn no_env(_: &str) -> Option<OsString> {
    None
}

fn expand(args: &[&str]) -> Result<Vec<String>, ConfigError> {
    expand_with(args, &no_env)
}

fn expand_with(
    args: &[&str],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Vec<String>, ConfigError> {
    let out = apply_file(&TestCli::command(), argv(args), env)?;
    Ok(out
        .into_iter()
        .skip(1)
        .map(|a| a.into_string().unwrap())
        .collect())
}

fn parse(args: &[String]) -> TestCli {
    TestCli::try_parse_from(std::iter::once("shoal".to_string()).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

const AGENT: &str = r#"
[agent]
data-dir = "/var/lib/shoal/agent"
join = ["10.0.0.1:7946", "10.0.0.2:7946"]
token = "file-token"
name = "node-1"
label = ["storage=ssd", "zone=a"]
heartbeat = "1s"
"#;

#[test]
fn the_sections_flags_are_inserted_after_the_subcommand() {
    let (_dir, path) = file(AGENT);
    let args = expand(&["--config", &path, "agent"]).unwrap();
    assert_eq!(args[..3], ["--config", path.as_str(), "agent"]);
    let Cmd::Agent(agent) = parse(&args).command else {
        panic!("not an agent")
    };
    assert_eq!(agent.data_dir, PathBuf::from("/var/lib/shoal/agent"));
    assert_eq!(agent.join, ["10.0.0.1:7946", "10.0.0.2:7946"]);
    assert_eq!(agent.token.as_deref(), Some("file-token"));
    assert_eq!(agent.name.as_deref(), Some("node-1"));
    assert_eq!(agent.labels, ["storage=ssd", "zone=a"]);
    assert_eq!(agent.heartbeat, "1s");
}

#[test]
fn the_command_line_wins_over_the_file_and_the_file_over_defaults() {
    let (_dir, path) = file(AGENT);
    let args = expand(&[
        "--config",
        &path,
        "agent",
        "--name",
        "node-9",
        "--label=disk=hdd",
        "--join",
        "127.0.0.1:1",
    ])
    .unwrap();
    let Cmd::Agent(agent) = parse(&args).command else {
        panic!("not an agent")
    };
    assert_eq!(agent.name.as_deref(), Some("node-9"));
    // A repeatable flag on the command line replaces the file's list: no merge.
    assert_eq!(agent.labels, ["disk=hdd"]);
    assert_eq!(agent.join, ["127.0.0.1:1"]);
    assert_eq!(agent.heartbeat, "1s", "the file beats the built-in 500ms");
}

#[test]
fn a_shoal_variable_keeps_the_files_value_out() {
    let (_dir, path) = file(AGENT);
    let env = |name: &str| (name == "SHOAL_NAME").then(|| OsString::from("from-env"));
    let args = expand_with(&["--config", &path, "agent"], &env).unwrap();
    assert!(!args.iter().any(|a| a.starts_with("--name")), "{args:?}");
    assert!(args.contains(&"--heartbeat=1s".to_string()), "{args:?}");
    // An empty variable counts as unset.
    let empty = |name: &str| (name == "SHOAL_NAME").then(OsString::new);
    let args = expand_with(&["--config", &path, "agent"], &empty).unwrap();
    assert!(args.contains(&"--name=node-1".to_string()), "{args:?}");
}

#[test]
fn shoal_config_names_the_file_when_there_is_no_flag() {
    let (_dir, path) = file(AGENT);
    let env = |name: &str| (name == CONFIG_ENV).then(|| OsString::from(&path));
    let args = expand_with(&["agent"], &env).unwrap();
    assert!(args.contains(&"--name=node-1".to_string()), "{args:?}");
    // --config=FILE and global flags before the subcommand are skipped over.
    let args = expand(&["--host", "h:1", &format!("--config={path}"), "agent"]).unwrap();
    assert_eq!(
        args[..4],
        ["--host", "h:1", &format!("--config={path}"), "agent"]
    );
    assert!(args.contains(&"--name=node-1".to_string()), "{args:?}");
    assert_eq!(
        expand(&["agent", "--name", "x"]).unwrap(),
        ["agent", "--name", "x"]
    );
}

#[test]
fn a_flag_given_excludes_the_files_alternatives() {
    let (_dir, path) = file(
        r#"
[manager]
data-dir = "/var/lib/shoal/m2"
listen = "10.0.0.2:7946"
join = "10.0.0.1:7946,10.0.0.3:7946"
token = "file-token"
"#,
    );
    // --token-file on the command line: the file's token would make two.
    let args = expand(&["--config", &path, "manager", "--token-file", "/t"]).unwrap();
    let Cmd::Manager(m) = parse(&args).command else {
        panic!("not a manager")
    };
    assert_eq!(m.token, None);
    assert_eq!(m.join, ["10.0.0.1:7946", "10.0.0.3:7946"]);
    assert_eq!(m.listen, "10.0.0.2:7946");
    // --force-new-cluster: no join, no token from the file.
    let args = expand(&["--config", &path, "manager", "--force-new-cluster"]).unwrap();
    let Cmd::Manager(m) = parse(&args).command else {
        panic!("not a manager")
    };
    assert!(m.force_new_cluster && m.join.is_empty() && m.token.is_none());
    assert_eq!(m.data_dir, Some(PathBuf::from("/var/lib/shoal/m2")));
}

#[test]
fn a_reload_method_on_the_command_line_replaces_the_files() {
    let (_dir, path) = file(
        r#"
[proxy]
join = ["127.0.0.1:7946"]
config = "/etc/nginx/nginx.conf"
pid-file = "/run/nginx.pid"
listen-port = 8080
"#,
    );
    let args = expand(&["--config", &path, "proxy", "--container", "nginx"]).unwrap();
    let Cmd::Proxy(p) = parse(&args).command else {
        panic!("not a proxy")
    };
    assert_eq!((p.pid_file, p.container.as_deref()), (None, Some("nginx")));
    assert_eq!(p.config, Some(PathBuf::from("/etc/nginx/nginx.conf")));
    assert_eq!(p.listen_port, 8080);
}

#[test]
fn actions_and_commands_without_a_section_are_left_alone() {
    let (_dir, path) = file("[manager]\ndata-dir = \"/d\"\n");
    let remove = ["--config", path.as_str(), "manager", "remove", "3"];
    assert_eq!(expand(&remove).unwrap(), remove);
    let kv = ["--config", path.as_str(), "kv", "k"];
    assert_eq!(expand(&kv).unwrap(), kv);
    let Cmd::Manager(m) = parse(&expand(&remove).unwrap()).command else {
        panic!("not a manager")
    };
    assert!(matches!(m.action, Some(ManagerAction::Remove { id: 3 })));
}

#[test]
fn a_value_starting_with_a_dash_stays_a_value() {
    let (_dir, path) = file("[agent]\ndata-dir = \"/d\"\njoin = \"h:1\"\ntoken = \"-x\"\n");
    let Cmd::Agent(agent) = parse(&expand(&["--config", &path, "agent"]).unwrap()).command else {
        panic!("not an agent")
    };
    assert_eq!(agent.token.as_deref(), Some("-x"));
}

/// The error of `apply_file` on a file with `text`, as the user sees it.
fn error_of(text: &str) -> String {
    let (_dir, path) = file(text);
    let e = expand(&["--config", &path, "agent"])
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    assert!(e.contains(&path), "names the file: {e}");
    e
}

#[test]
fn mistakes_in_any_section_are_one_line_errors() {
    let e = error_of("[manager]\ndata-dir = \"/d\"\ndata_dir = \"/e\"\n");
    assert!(e.contains("unknown key `data_dir` in [manager]"), "{e}");
    assert!(e.contains("data-dir"), "lists the known keys: {e}");
    let e = error_of("[mangaer]\ndata-dir = \"/d\"\n");
    assert!(e.contains("unknown section [mangaer]"), "{e}");
    let e = error_of("data-dir = \"/d\"\n");
    assert!(e.contains("`data-dir` is outside any section"), "{e}");
    let e = error_of("[manager]\nforce-new-cluster = true\n");
    assert!(e.contains("only be given on the command line"), "{e}");
    let e = error_of("[agent]\nname = [\"a\", \"b\"]\n");
    assert!(e.contains("`name` in [agent] takes one value"), "{e}");
    let e = error_of("[agent]\nlabel = [{ a = 1 }]\n");
    assert!(e.contains("array of strings"), "{e}");
    let e = error_of("[proxy]\njoin = \"a\"\nkind = nginx\n");
    assert!(e.contains("line 3"), "{e}");
    let e = error_of("[agent]\nhelp = true\n");
    assert!(e.contains("unknown key `help`"), "{e}");
}

#[test]
fn a_missing_file_is_an_error() {
    let e = expand(&["--config", "/nonexistent/shoal.toml", "agent"]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("reading config file /nonexistent/shoal.toml:"),
        "{e}"
    );
}

#[tokio::test]
async fn a_token_file_is_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    let writer = {
        let path = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::fs::write(&path, "the-token\n").unwrap();
        })
    };
    let token = read_token_file(&path, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(token, "the-token");
    writer.await.unwrap();
    let gone = dir.path().join("never");
    let e = read_token_file(&gone, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("did not appear within"), "{e}");
}

#[tokio::test]
async fn exactly_one_token_source() {
    assert_eq!(join_token(None, None).await.unwrap(), None);
    assert_eq!(
        join_token(Some("t".into()), None).await.unwrap().as_deref(),
        Some("t")
    );
    let e = join_token(Some("t".into()), Some(std::path::Path::new("/t")))
        .await
        .unwrap_err();
    assert!(matches!(e, ConfigError::TwoTokens));
}
