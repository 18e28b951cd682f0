//! `shoal acl token create|ls|rm`: the ACL tokens of the Consul-compatible HTTP API. A token is
//! made here: its secret is drawn on this machine, printed once, and only its SHA-256 goes to
//! the cluster (`keys::acl_token`), through the typed commit managers check. Every manager
//! honours a token as soon as it has applied the write.

use clap::Subcommand;
use rand::Rng;

use super::objects::{self, Versioned};
use super::{out, table, CliError, GlobalArgs};
use crate::host::now_ms;
use crate::model::{keys, secret_sha256, Access, AclToken, KeyRule};

/// `shoal acl ...`
#[derive(Debug, Subcommand)]
pub enum AclCommand {
    /// ACL tokens of the HTTP API (Consul's X-Consul-Token).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `shoal acl token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its SecretID (shown only this once) and AccessorID. A key is
    /// governed by the rule with the longest prefix of it; a key no rule covers is denied.
    Create {
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// It may read keys under PREFIX ("" for every key). Repeatable.
        #[arg(long, value_name = "PREFIX")]
        read: Vec<String>,
        /// It may read and write keys under PREFIX. Repeatable.
        #[arg(long, value_name = "PREFIX")]
        write: Vec<String>,
        /// It may do nothing with keys under PREFIX (carves out of a shorter prefix). Repeatable.
        #[arg(long, value_name = "PREFIX")]
        deny: Vec<String>,
        /// What it may do with sessions: deny, read (list, info) or write (create, renew,
        /// destroy).
        #[arg(long, default_value = "deny", value_parser = ["deny", "read", "write"])]
        session: String,
        /// Print {"AccessorID", "SecretID", ...} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List tokens: ACCESSOR DESCRIPTION SESSION KEYS (never their secrets).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Delete tokens: requests carrying them are refused ("ACL not found") from then on.
    Rm {
        /// Accessor ids or unique prefixes of them.
        #[arg(required = true)]
        accessors: Vec<String>,
    },
}

/// A random id in a UUID's shape (version 4), as Consul's AccessorID and SecretID.
fn uuid() -> String {
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The token a `create` makes for `secret`, its rules in the order given; an error when a
/// prefix has two rules.
fn token(
    secret: &str,
    description: String,
    rules: [(&[String], Access); 3],
    session: &str,
) -> Result<AclToken, CliError> {
    let keys = rules
        .iter()
        .flat_map(|(prefixes, access)| {
            prefixes.iter().map(|p| KeyRule {
                prefix: p.clone(),
                access: *access,
            })
        })
        .collect();
    let session = match session {
        "write" => Access::Write,
        "read" => Access::Read,
        _ => Access::Deny,
    };
    let t = AclToken {
        accessor_id: uuid(),
        secret_sha256: secret_sha256(secret),
        description,
        keys,
        session,
        created_ms: now_ms(),
    };
    t.validate().map_err(|reason| CliError::Invalid {
        what: "rules",
        value: "--read/--write/--deny".into(),
        reason,
    })?;
    Ok(t)
}

fn rules_text(t: &AclToken) -> String {
    t.keys
        .iter()
        .map(|r| format!("{}:{:?}", r.access, r.prefix))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) async fn run(global: &GlobalArgs, command: AclCommand) -> Result<(), CliError> {
    let AclCommand::Token(command) = command;
    match command {
        TokenCommand::Create {
            description,
            read,
            write,
            deny,
            session,
            json,
        } => {
            let secret = uuid();
            let rules = [
                (read.as_slice(), Access::Read),
                (write.as_slice(), Access::Write),
                (deny.as_slice(), Access::Deny),
            ];
            let t = token(&secret, description, rules, &session)?;
            let client = &mut global.connect().await?;
            let key = keys::acl_token(&t.secret_sha256);
            let put = objects::put_json(&key, &t);
            if !objects::commit(client, vec![objects::absent(&key)], vec![put]).await? {
                return Err(CliError::Usage(
                    "a token with this secret exists already: run the command again",
                ));
            }
            if json {
                return out(serde_json::json!({
                    "AccessorID": t.accessor_id,
                    "SecretID": secret,
                    "Description": t.description,
                    "Keys": t.keys,
                    "Session": t.session,
                }));
            }
            out(format!(
                "AccessorID:  {}\nSecretID:    {secret}\nDescription: {}\nSession:     {}\nKeys:        {}",
                t.accessor_id,
                t.description,
                t.session,
                rules_text(&t)
            ))
        }
        TokenCommand::Ls { json } => {
            let client = &mut global.connect().await?;
            let mut tokens: Vec<Versioned<AclToken>> =
                objects::list(client, keys::ACL_TOKENS).await?;
            tokens.sort_by_key(|t| t.value.created_ms);
            if json {
                let all: Vec<&AclToken> = tokens.iter().map(|t| &t.value).collect();
                return out(serde_json::to_string_pretty(&all).expect("plain data"));
            }
            let rows: Vec<Vec<String>> = tokens
                .iter()
                .map(|t| {
                    let t = &t.value;
                    vec![
                        t.accessor_id.clone(),
                        t.description.clone(),
                        t.session.to_string(),
                        rules_text(t),
                    ]
                })
                .collect();
            out(table::render(
                &["ACCESSOR", "DESCRIPTION", "SESSION", "KEYS"],
                &rows,
            ))
        }
        TokenCommand::Rm { accessors } => {
            let client = &mut global.connect().await?;
            let tokens: Vec<Versioned<AclToken>> = objects::list(client, keys::ACL_TOKENS).await?;
            let found = accessors
                .iter()
                .map(|a| objects::resolve(&tokens, a))
                .collect::<Result<Vec<_>, _>>()?;
            for t in found {
                let key = keys::acl_token(&t.value.secret_sha256);
                let unchanged = objects::unchanged(&key, t.mod_revision);
                // Gone already (another operator's rm) is what was asked for.
                objects::commit(client, vec![unchanged], vec![objects::delete(&key)]).await?;
                out(&t.value.accessor_id)?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_look_like_uuids_and_rules_keep_their_kinds() {
        let id = uuid();
        assert_eq!(id.len(), 36);
        assert_eq!(
            id.split('-').map(str::len).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert_ne!(uuid(), id);
        let (r, w, d) = (
            vec!["".to_string()],
            vec!["app/".to_string()],
            vec!["app/x/".to_string()],
        );
        let t = token(
            "s",
            "d".into(),
            [(&r, Access::Read), (&w, Access::Write), (&d, Access::Deny)],
            "read",
        )
        .unwrap();
        assert_eq!(t.secret_sha256, secret_sha256("s"));
        assert_eq!(t.session, Access::Read);
        assert_eq!(t.key_access("app/y"), Access::Write);
        assert_eq!(t.key_access("app/x/1"), Access::Deny);
        assert_eq!(rules_text(&t), r#"read:"" write:"app/" deny:"app/x/""#);
        let twice = token(
            "s",
            String::new(),
            [(&w, Access::Read), (&w, Access::Write), (&[], Access::Deny)],
            "deny",
        );
        assert!(twice
            .unwrap_err()
            .to_string()
            .contains("two rules for the key prefix"));
    }
}
