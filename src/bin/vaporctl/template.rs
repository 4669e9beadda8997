//! `vaporctl template …`: VM templates.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::bus::Client;
use crate::output::table;
use crate::{read_input, Failure};

#[derive(Subcommand)]
pub enum TemplateCmd {
    /// List templates.
    List,
    /// Show one template as JSON.
    Show { name: String },
    /// Create or replace a template from a JSON spec file (without `name`).
    Save {
        name: String,
        spec: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a template made through the API.
    Delete { name: String },
}

pub async fn run(c: &Client, cmd: &TemplateCmd, json_out: bool) -> Result<(), Failure> {
    let m = c.manager().await?;
    match cmd {
        TemplateCmd::List => {
            let list = m.list_templates().await?;
            if json_out {
                let v: Vec<Value> = list
                    .iter()
                    .map(|(n, s, d)| json!({"name": n, "source": s, "description": d}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                let mut rows = vec![vec!["NAME".into(), "SOURCE".into(), "DESCRIPTION".into()]];
                rows.extend(list.into_iter().map(|(n, s, d)| vec![n, s, d]));
                print!("{}", table(&rows));
            }
        }
        TemplateCmd::Show { name } => {
            let doc = m.get_template(name).await?;
            let v: Value = serde_json::from_str(&doc).unwrap_or(Value::String(doc));
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        TemplateCmd::Save {
            name,
            spec,
            description,
        } => {
            let text = read_input(spec)?;
            m.save_template(name, description, &text).await?;
            println!("template {name} saved");
        }
        TemplateCmd::Delete { name } => {
            m.delete_template(name).await?;
            println!("template {name} deleted");
        }
    }
    Ok(())
}
