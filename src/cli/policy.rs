//! `lanyard policy check`: evaluate a request against the Cedar policies of a config file without
//! issuing anything.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};

use crate::policy::{Action, Ask, Engine, Resource};
use crate::selector::{Selector, SelectorSet};
use crate::spiffe_id::SpiffeId;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Decide one request: prints the decision, the policies that determined it and any errors.
    /// Exit code 0 when allowed, 3 when denied.
    Check(CheckArgs),
    /// The policies in force in the running agent (admin socket, root).
    List(AdminArgs),
    /// Make the running agent re-read its policy files (admin socket, root); an invalid set is
    /// refused with Cedar's messages and the running set stays.
    Reload(AdminArgs),
}

#[derive(Debug, clap::Args)]
pub(super) struct AdminArgs {
    #[command(flatten)]
    admin: super::entry::AdminSocket,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct CheckArgs {
    /// The agent's config file (its [policy] section is used).
    #[arg(
        long,
        env = "LANYARD_CONFIG",
        default_value = "/etc/lanyard/lanyard.toml"
    )]
    config: PathBuf,
    /// The principal as JSON: {"spiffe_id": "...", "selectors": ["unix:uid:1000", "k8s:ns:shop"]}.
    #[arg(long, conflicts_with = "pid")]
    principal_json: Option<PathBuf>,
    /// Attest this running process for its unix selectors (uid, gid, user, group, path, sha256;
    /// Kubernetes selectors need --principal-json) and ask for --spiffe-id.
    #[arg(long, requires = "spiffe_id")]
    pid: Option<u32>,
    /// The identity (principal) asked for with --pid.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// FetchX509SVID, FetchJWTSVID, ValidateJWTSVID or SDS.
    #[arg(long, default_value = "FetchX509SVID")]
    action: String,
    /// The audience (JWT actions); X.509 and SDS use the identity itself.
    #[arg(long)]
    audience: Option<String>,
    /// The lifetime asked for (context.ttl), e.g. 1h.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Evaluate at this time (RFC 3339) instead of now (context.now, hour, weekday).
    #[arg(long)]
    at: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(cmd: Command) -> anyhow::Result<std::process::ExitCode> {
    let args = match cmd {
        Command::Check(args) => args,
        Command::List(a) => return admin(a, false).await,
        Command::Reload(a) => return admin(a, true).await,
    };
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let config = crate::config::Config::from_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.config.display()))?;
    let Some(policy) = &config.policy else {
        bail!(
            "{} has no [policy]: without policies the entries alone decide",
            args.config.display()
        );
    };
    let engine = Engine::load(policy, &crate::policy::node_name()).map_err(|errors| {
        anyhow::anyhow!("the policies do not load:\n  {}", errors.join("\n  "))
    })?;
    let (principal, selectors) = match (&args.principal_json, args.pid) {
        (Some(path), _) => crate::policy::principal_from_json(path).map_err(anyhow::Error::msg)?,
        (None, Some(pid)) => {
            let id = args.spiffe_id.as_deref().unwrap_or_default();
            let id = SpiffeId::parse(id).map_err(|e| anyhow::anyhow!("--spiffe-id {id:?}: {e}"))?;
            (id, unix_selectors(pid)?)
        }
        (None, None) => bail!("give --principal-json FILE or --pid PID --spiffe-id ID"),
    };
    let action = Action::parse(&args.action).ok_or_else(|| {
        anyhow::anyhow!(
            "--action {:?}: use FetchX509SVID, FetchJWTSVID, ValidateJWTSVID or SDS",
            args.action
        )
    })?;
    let resource = match (action, &args.audience) {
        (Action::FetchJwtSvid | Action::ValidateJwtSvid, Some(aud)) => Resource::Audience(aud),
        (Action::FetchJwtSvid | Action::ValidateJwtSvid, None) => {
            bail!("--audience is needed for {}", action.as_str())
        }
        (_, _) => Resource::Identity(&principal),
    };
    let ttl: Duration = humantime::parse_duration(&args.ttl)
        .map_err(|e| anyhow::anyhow!("--ttl {:?}: {e}", args.ttl))?;
    let now = match &args.at {
        Some(t) => humantime::parse_rfc3339(t).map_err(|e| anyhow::anyhow!("--at {t:?}: {e}"))?,
        None => SystemTime::now(),
    };
    let verdict = engine.decide(&Ask {
        principal: &principal,
        selectors: &selectors,
        action,
        resource,
        ttl,
        now,
    });
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "decision": if verdict.allowed { "allow" } else { "deny" },
                "policies": verdict.policies,
                "errors": verdict.errors,
                "principal": principal.as_str(),
                "selectors": selectors.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "action": action.as_str(),
            })
        );
    } else {
        println!(
            "{}: {} {} for {}",
            if verdict.allowed { "ALLOW" } else { "DENY" },
            action.as_str(),
            match resource {
                Resource::Identity(id) => id.to_string(),
                Resource::Audience(a) => format!("audience {a:?}"),
            },
            principal
        );
        println!("  {}", verdict.reason());
        for e in &verdict.errors {
            println!("  error: {e}");
        }
    }
    Ok(if verdict.allowed {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(3)
    })
}

async fn admin(args: AdminArgs, reload: bool) -> anyhow::Result<std::process::ExitCode> {
    let mut client = args.admin.connect().await?;
    let resp = if reload {
        client
            .reload_policies(crate::proto::admin::ReloadPoliciesRequest {})
            .await
    } else {
        client
            .list_policies(crate::proto::admin::ListPoliciesRequest {})
            .await
    }
    .map_err(|s| anyhow::anyhow!("{} ({:?})", s.message(), s.code()))?
    .into_inner();
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "enabled": resp.enabled, "policies": resp.ids })
        );
    } else if !resp.enabled {
        println!("no [policy]: the registration entries alone decide");
    } else {
        for id in &resp.ids {
            println!("{id}");
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// The unix selectors of a running process, read from `/proc` (a diagnostic: nothing is issued).
fn unix_selectors(pid: u32) -> anyhow::Result<SelectorSet> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("no process {pid}"))?;
    let field = |name: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    let mut set = SelectorSet::new();
    if let Some(uid) = field("Uid:") {
        set.insert(Selector::UnixUid(uid));
        if let Some(name) = crate::sys::users::user_name(uid) {
            set.insert(Selector::UnixUser(name));
        }
    }
    if let Some(gid) = field("Gid:") {
        set.insert(Selector::UnixGid(gid));
        if let Some(name) = crate::sys::users::group_name(gid) {
            set.insert(Selector::UnixGroup(name));
        }
    }
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .with_context(|| format!("cannot read the executable of {pid} (run as root)"))?;
    set.insert(Selector::UnixPath(exe.display().to_string()));
    let bytes = std::fs::read(format!("/proc/{pid}/exe"))?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
    set.insert(Selector::UnixSha256(crate::encoding::hex(digest.as_ref())));
    Ok(set)
}
