//! Claude Code's command line, as far as the simulator needs it.

/// Options of Claude Code that take a value (skipped with it).
const WITH_VALUE: &[&str] = &[
    "--add-dir",
    "--agent",
    "--agents",
    "--allowedTools",
    "--allowed-tools",
    "--append-system-prompt",
    "--betas",
    "--debug-file",
    "--disallowedTools",
    "--disallowed-tools",
    "--effort",
    "--fallback-model",
    "--input-format",
    "--max-budget-usd",
    "--max-turns",
    "--mcp-config",
    "--output-format",
    "--permission-mode",
    "--permission-prompt-tool",
    "--plugin-dir",
    "--setting-sources",
    "--system-prompt",
    "--system-prompt-file",
    "--tools",
];

#[derive(Debug, Default, PartialEq)]
pub struct Args {
    /// `--settings`: a file, or inline JSON.
    pub settings: Option<String>,
    /// `--session-id`: a new conversation with this id.
    pub session_id: Option<String>,
    /// `--resume` / `-r`: continue this conversation.
    pub resume: Option<String>,
    /// `--continue` / `-c`: continue the latest conversation here.
    pub continue_latest: bool,
    pub model: Option<String>,
    /// `--dangerously-skip-permissions` or `--permission-mode bypassPermissions`.
    pub bypass: bool,
    /// `--permission-mode` (`--dangerously-skip-permissions` is `bypassPermissions`).
    pub permission_mode: Option<String>,
    pub version: bool,
    /// A positional prompt: submitted once the composer is up.
    pub prompt: Option<String>,
}

pub fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = argv.iter().peekable();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = |what: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("error: option '{what}' argument missing")),
            }
        };
        match name {
            "--settings" => a.settings = Some(value(name)?),
            "--session-id" => a.session_id = Some(value(name)?),
            "--resume" | "-r" => a.resume = Some(value(name)?),
            "--continue" | "-c" => a.continue_latest = true,
            "--model" => a.model = Some(value(name)?),
            "--dangerously-skip-permissions" => {
                a.bypass = true;
                a.permission_mode = Some("bypassPermissions".into());
            }
            "--permission-mode" => {
                let mode = value(name)?;
                a.bypass = mode == "bypassPermissions";
                a.permission_mode = Some(match mode.as_str() {
                    "manual" => "default".into(),
                    _ => mode,
                });
            }
            "--version" | "-v" => a.version = true,
            n if WITH_VALUE.contains(&n) => {
                value(n)?;
            }
            n if n.starts_with('-') && n.len() > 1 => {} // other flags: ignored
            _ => a.prompt = Some(arg.clone()),
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_daemons_command_line() {
        let a = parse(&v(&[
            "--settings",
            "/s.json",
            "--session-id",
            "u-1",
            "--model",
            "sonnet",
            "--dangerously-skip-permissions",
            "--add-dir",
            "/x",
            "--verbose",
        ]))
        .unwrap();
        assert_eq!(
            a,
            Args {
                settings: Some("/s.json".into()),
                session_id: Some("u-1".into()),
                model: Some("sonnet".into()),
                bypass: true,
                permission_mode: Some("bypassPermissions".into()),
                ..Args::default()
            }
        );
        let a = parse(&v(&[
            "--resume=u-2",
            "--permission-mode",
            "bypassPermissions",
            "hi",
        ]))
        .unwrap();
        assert_eq!(a.resume.as_deref(), Some("u-2"));
        assert!(a.bypass);
        assert_eq!(a.prompt.as_deref(), Some("hi"));
        assert!(parse(&v(&["--resume"])).is_err());
        let a = parse(&v(&["--permission-mode", "manual"])).unwrap();
        assert_eq!(a.permission_mode.as_deref(), Some("default"));
        assert!(!a.bypass);
    }
}
