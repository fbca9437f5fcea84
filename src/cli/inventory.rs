//! `lanyard inventory`: every credential the agent handed out, who holds it, and when it was withdrawn.

use std::time::{Duration, SystemTime};

use super::entry::{AdminSocket, refused};
use super::output::rfc3339;
use crate::proto::admin::ListCredentialsRequest;

#[derive(Debug, clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    admin: AdminSocket,
    /// Only credentials held right now (not withdrawn, not expired).
    #[arg(long)]
    live: bool,
    /// Only credentials for this SPIFFE ID.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Only credentials delivered within this long, such as 1h or 7d.
    #[arg(long, value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// At most this many rows, newest first.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    let mut c = args.admin.connect().await?;
    let since = args
        .since
        .and_then(|d| SystemTime::now().checked_sub(d))
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let rows = c
        .list_credentials(ListCredentialsRequest {
            live: args.live,
            spiffe_id: args.spiffe_id.unwrap_or_default(),
            since,
            limit: args.limit,
        })
        .await
        .map_err(refused)?
        .into_inner()
        .credentials;
    let time = |s: i64| {
        if s <= 0 {
            "-".to_owned()
        } else {
            rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s as u64))
        }
    };
    if args.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "kind": r.kind, "serial": r.serial, "spiffe_id": r.spiffe_id, "entry_id": r.entry_id,
                    "pid": r.pid, "uid": r.uid, "executable": r.executable,
                    "issued_at": time(r.issued_at), "not_after": time(r.not_after),
                    "delivered_at": time(r.delivered_at),
                    "withdrawn_at": if r.withdrawn_at > 0 { serde_json::Value::from(time(r.withdrawn_at)) } else { serde_json::Value::Null },
                    "withdraw_reason": if r.withdraw_reason.is_empty() { serde_json::Value::Null } else { r.withdraw_reason.clone().into() },
                    "permitted_by": if r.permitted_by.is_empty() { serde_json::Value::Null } else { r.permitted_by.clone().into() },
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "credentials": list }));
        return Ok(());
    }
    // The policies column only when some row was decided by Cedar (`[policy]` in force).
    let with_policies = rows.iter().any(|r| !r.permitted_by.is_empty());
    println!(
        "{:<4} {:<32} {:<36} {:>7} {:>6} {:<20} {:<20} {}WITHDRAWN",
        "KIND",
        "SERIAL/JTI",
        "SPIFFE ID",
        "PID",
        "UID",
        "DELIVERED",
        "NOT AFTER",
        if with_policies {
            format!("{:<24} ", "PERMITTED BY")
        } else {
            String::new()
        }
    );
    for r in &rows {
        let withdrawn = if r.withdrawn_at > 0 {
            format!("{} ({})", time(r.withdrawn_at), r.withdraw_reason)
        } else {
            "-".into()
        };
        let permitted = match (with_policies, r.permitted_by.is_empty()) {
            (false, _) => String::new(),
            (true, true) => format!("{:<24} ", "-"),
            (true, false) => format!("{:<24} ", r.permitted_by),
        };
        println!(
            "{:<4} {:<32} {:<36} {:>7} {:>6} {:<20} {:<20} {}{}",
            r.kind,
            r.serial,
            r.spiffe_id,
            r.pid,
            r.uid,
            time(r.delivered_at),
            time(r.not_after),
            permitted,
            withdrawn
        );
    }
    Ok(())
}
