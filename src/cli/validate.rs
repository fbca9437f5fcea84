//! `lanyard validate jwt`: ask the agent whether a JWT-SVID is valid for an audience.

use super::fetch::{Endpoint, describe};
use crate::client;
use crate::proto::ValidateJwtsvidRequest;

#[derive(Debug, clap::Subcommand)]
pub(super) enum Command {
    /// Validate a JWT-SVID for an audience; exits non-zero with the reason when it is not valid.
    Jwt(JwtArgs),
}

#[derive(Debug, clap::Args)]
pub(super) struct JwtArgs {
    #[command(flatten)]
    endpoint: Endpoint,
    /// The audience this service expects in the token.
    #[arg(long, short = 'a')]
    audience: String,
    /// The token (JWS compact form); `-` reads it from standard input.
    token: String,
    /// Print the claims as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) async fn run(cmd: Command) -> anyhow::Result<()> {
    let Command::Jwt(args) = cmd;
    let token = if args.token == "-" {
        let mut t = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)?;
        t.trim().to_owned()
    } else {
        args.token.clone()
    };
    let endpoint = client::resolve_endpoint(args.endpoint.socket());
    let mut client = client::connect(&endpoint).await?;
    let resp = client
        .validate_jwtsvid(ValidateJwtsvidRequest {
            audience: args.audience.clone(),
            svid: token,
        })
        .await
        .map_err(describe)?
        .into_inner();
    let claims = resp.claims.map(struct_to_json).unwrap_or_default();
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "spiffe_id": resp.spiffe_id, "claims": claims })
        );
    } else {
        println!("valid: {} (audience {})", resp.spiffe_id, args.audience);
        println!("claims: {}", serde_json::Value::Object(claims));
    }
    Ok(())
}

fn struct_to_json(s: prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields
        .into_iter()
        .map(|(k, v)| (k, value_to_json(v)))
        .collect()
}

fn value_to_json(v: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => b.into(),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                (n as i64).into()
            } else {
                n.into()
            }
        }
        Some(Kind::StringValue(s)) => s.into(),
        Some(Kind::ListValue(l)) => l.values.into_iter().map(value_to_json).collect(),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(s)),
    }
}
