//! `lanyard entry`: create, list, show, update and delete registration entries over the admin API.

use std::path::PathBuf;

use crate::client;
use crate::proto::admin::{
    CreateEntryRequest, DeleteEntryRequest, Entry, EntrySpec, GetEntryRequest, ListEntriesRequest,
    UpdateEntryRequest,
};

/// Where the admin API is.
#[derive(Debug, clap::Args)]
pub(super) struct AdminSocket {
    /// Admin socket path. Default: /run/lanyard/admin/admin.sock, else (if only that exists) your
    /// `lanyard agent --dev` admin socket.
    #[arg(long = "admin-socket", env = "LANYARD_ADMIN_SOCKET_PATH")]
    path: Option<PathBuf>,
}

impl AdminSocket {
    /// Connects to the admin API.
    pub(super) async fn connect(&self) -> anyhow::Result<client::AdminClient> {
        let path = client::resolve_admin_socket(self.path.as_deref());
        Ok(client::connect_admin(&path).await?)
    }
}

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Create a managed entry.
    Create(CreateArgs),
    /// List entries (declared ones from lanyard.toml first, then managed ones).
    List(ListArgs),
    /// Show one entry.
    Show(IdArgs),
    /// Change a managed entry; fields not given keep their values (a list flag replaces the list).
    Update(UpdateArgs),
    /// Delete a managed entry.
    Delete(IdArgs),
}

/// Entry fields as flags.
#[derive(Debug, Default, clap::Args)]
pub(super) struct SpecArgs {
    /// The SPIFFE ID processes matching this entry get.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// A selector, such as unix:uid:1000 (repeat; all must match).
    #[arg(long = "selector")]
    selectors: Vec<String>,
    /// X.509-SVID lifetime, such as 10m.
    #[arg(long)]
    x509_ttl: Option<String>,
    /// JWT-SVID lifetime, such as 5m.
    #[arg(long)]
    jwt_ttl: Option<String>,
    /// Hint for clients choosing among several SVIDs.
    #[arg(long)]
    hint: Option<String>,
    /// DNS SAN for the X.509-SVID (repeat).
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// Federated trust domain whose bundle holders receive (repeat).
    #[arg(long = "federates-with")]
    federates_with: Vec<String>,
    /// Allowed JWT audience (repeat); none means any.
    #[arg(long = "jwt-audience")]
    jwt_audiences: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub(super) struct CreateArgs {
    #[command(flatten)]
    admin: AdminSocket,
    #[command(flatten)]
    spec: SpecArgs,
    /// Print the entry as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct UpdateArgs {
    #[command(flatten)]
    admin: AdminSocket,
    /// The entry's ID.
    id: String,
    #[command(flatten)]
    spec: SpecArgs,
    /// Print the entry as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct ListArgs {
    #[command(flatten)]
    admin: AdminSocket,
    /// Only entries with this selector.
    #[arg(long)]
    selector: Option<String>,
    /// Only entries with this SPIFFE ID.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(super) struct IdArgs {
    #[command(flatten)]
    admin: AdminSocket,
    /// The entry's ID.
    id: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Create(a) => {
            let mut c = a.admin.connect().await?;
            let spec = a.spec.apply(EntrySpec::default());
            let e = c
                .create_entry(CreateEntryRequest { spec: Some(spec) })
                .await
                .map_err(refused)?
                .into_inner();
            print_one(&e, a.json);
        }
        Command::Update(a) => {
            let mut c = a.admin.connect().await?;
            let current = c
                .get_entry(GetEntryRequest { id: a.id.clone() })
                .await
                .map_err(refused)?
                .into_inner();
            let spec = a.spec.apply(current.spec.unwrap_or_default());
            let e = c
                .update_entry(UpdateEntryRequest {
                    id: a.id,
                    spec: Some(spec),
                })
                .await
                .map_err(refused)?
                .into_inner();
            print_one(&e, a.json);
        }
        Command::Show(a) => {
            let mut c = a.admin.connect().await?;
            let e = c
                .get_entry(GetEntryRequest { id: a.id })
                .await
                .map_err(refused)?
                .into_inner();
            print_one(&e, a.json);
        }
        Command::Delete(a) => {
            let mut c = a.admin.connect().await?;
            c.delete_entry(DeleteEntryRequest { id: a.id.clone() })
                .await
                .map_err(refused)?;
            if a.json {
                println!("{}", serde_json::json!({ "deleted": a.id }));
            } else {
                println!("deleted {}", a.id);
            }
        }
        Command::List(a) => {
            let mut c = a.admin.connect().await?;
            let entries = c
                .list_entries(ListEntriesRequest {
                    selector: a.selector.unwrap_or_default(),
                    spiffe_id: a.spiffe_id.unwrap_or_default(),
                })
                .await
                .map_err(refused)?
                .into_inner()
                .entries;
            if a.json {
                let list: Vec<serde_json::Value> = entries.iter().map(to_json).collect();
                println!("{}", serde_json::json!({ "entries": list }));
            } else {
                println!("{:<28} {:<9} {:<40} SELECTORS", "ID", "ORIGIN", "SPIFFE ID");
                for e in &entries {
                    let spec = e.spec.clone().unwrap_or_default();
                    println!(
                        "{:<28} {:<9} {:<40} {}",
                        e.id,
                        e.origin,
                        spec.spiffe_id,
                        spec.selectors.join(", ")
                    );
                }
            }
        }
    }
    Ok(())
}

impl SpecArgs {
    /// Applies the given flags over `base`.
    fn apply(self, mut base: EntrySpec) -> EntrySpec {
        if let Some(v) = self.spiffe_id {
            base.spiffe_id = v;
        }
        if !self.selectors.is_empty() {
            base.selectors = self.selectors;
        }
        if let Some(v) = self.x509_ttl {
            base.x509_ttl = v;
        }
        if let Some(v) = self.jwt_ttl {
            base.jwt_ttl = v;
        }
        if let Some(v) = self.hint {
            base.hint = v;
        }
        if !self.dns_names.is_empty() {
            base.dns_names = self.dns_names;
        }
        if !self.federates_with.is_empty() {
            base.federates_with = self.federates_with;
        }
        if !self.jwt_audiences.is_empty() {
            base.jwt_audiences = self.jwt_audiences;
        }
        base
    }
}

fn to_json(e: &Entry) -> serde_json::Value {
    let s = e.spec.clone().unwrap_or_default();
    serde_json::json!({
        "id": e.id,
        "origin": e.origin,
        "spiffe_id": s.spiffe_id,
        "selectors": s.selectors,
        "x509_ttl": s.x509_ttl,
        "jwt_ttl": s.jwt_ttl,
        "hint": s.hint,
        "dns_names": s.dns_names,
        "federates_with": s.federates_with,
        "jwt_audiences": s.jwt_audiences,
    })
}

fn print_one(e: &Entry, json: bool) {
    if json {
        println!("{}", to_json(e));
        return;
    }
    let s = e.spec.clone().unwrap_or_default();
    println!("ID:             {}", e.id);
    println!("Origin:         {}", e.origin);
    println!("SPIFFE ID:      {}", s.spiffe_id);
    println!("Selectors:      {}", s.selectors.join(", "));
    let or_default = |v: &str| {
        if v.is_empty() {
            "(default)".to_owned()
        } else {
            v.to_owned()
        }
    };
    println!("X.509 TTL:      {}", or_default(&s.x509_ttl));
    println!("JWT TTL:        {}", or_default(&s.jwt_ttl));
    if !s.hint.is_empty() {
        println!("Hint:           {}", s.hint);
    }
    if !s.dns_names.is_empty() {
        println!("DNS names:      {}", s.dns_names.join(", "));
    }
    if !s.federates_with.is_empty() {
        println!("Federates with: {}", s.federates_with.join(", "));
    }
    if !s.jwt_audiences.is_empty() {
        println!("JWT audiences:  {}", s.jwt_audiences.join(", "));
    }
}

/// An admin API refusal as a user-facing error.
pub(super) fn refused(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", status.message(), status.code())
}
