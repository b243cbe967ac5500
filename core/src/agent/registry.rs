//! The agent registry (table `agents`).

use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait, TryInsertResult,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::task::check_name;
use crate::{
    Error,
    entity::agents::{self, Column},
    error::Result,
    time::Timestamp,
};

/// The longest label.
pub const MAX_LABEL_CHARS: usize = 256;

/// An agent as readers see it: the columns of `agents`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Agent {
    pub name: String,
    pub label: Option<String>,
    pub backend: String,
    /// A JSON object, passed to the backend.
    pub config: Value,
    /// A JSON array of model names.
    pub models: Value,
    /// What probing found the CLI reports; `None` until probed.
    pub version: Option<String>,
    /// A JSON object.
    pub capabilities: Value,
    /// A JSON array.
    pub commands: Value,
    pub install_path: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_probed_at: Option<Timestamp>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
}

impl From<agents::Model> for Agent {
    fn from(m: agents::Model) -> Self {
        Agent {
            name: m.name,
            label: m.label,
            backend: m.backend,
            config: m.config,
            models: m.models,
            version: m.version,
            capabilities: m.capabilities,
            commands: m.commands,
            install_path: m.install_path,
            last_probed_at: m.last_probed_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

/// The body of `PUT /v1/agents/{name}`: what an operator declares about an agent.
///
/// The JSON fields are kept as `Value`s so that a wrong type gets a message naming the
/// field (from `AgentSpec::validate`) rather than a deserializer's.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    #[serde(default)]
    pub label: Option<String>,
    /// The backend kind: `script`, `command` or `openai`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_.-]{1,64}$"))]
    pub backend: String,
    /// A JSON object; absent means `{}`.
    #[serde(default)]
    pub config: Option<Value>,
    /// A JSON array of strings; absent keeps what is stored (probing also writes it).
    #[serde(default)]
    pub models: Option<Value>,
    /// A JSON object; absent keeps what is stored (probing also writes it).
    #[serde(default)]
    pub capabilities: Option<Value>,
}

impl AgentSpec {
    /// Checks every rule; the message of the error names the field.
    pub fn validate(&self) -> Result<()> {
        check_name("backend", &self.backend)?;
        if let Some(label) = &self.label {
            if label.trim().is_empty() {
                return Err(Error::Invalid(
                    "label must not be blank; omit it instead".into(),
                ));
            }
            let chars = label.chars().count();
            if chars > MAX_LABEL_CHARS {
                return Err(Error::Invalid(format!(
                    "label is {chars} characters long; the limit is {MAX_LABEL_CHARS}"
                )));
            }
            crate::storable::no_nul("label", label)?;
        }
        for (field, value) in [
            ("config", &self.config),
            ("models", &self.models),
            ("capabilities", &self.capabilities),
        ] {
            if let Some(value) = value {
                crate::storable::json_without_nul(field, value)?;
            }
        }
        if let Some(config) = &self.config
            && !config.is_object()
        {
            return Err(Error::Invalid(format!(
                "config must be a JSON object, not {}",
                crate::error::json_kind(config)
            )));
        }
        if let Some(models) = &self.models {
            let Some(models) = models.as_array() else {
                return Err(Error::Invalid(format!(
                    "models must be an array of strings, not {}",
                    crate::error::json_kind(models)
                )));
            };
            if let Some((i, m)) = models.iter().enumerate().find(|(_, m)| !m.is_string()) {
                return Err(Error::Invalid(format!(
                    "models[{i}] must be a string, not {}",
                    crate::error::json_kind(m)
                )));
            }
        }
        if let Some(capabilities) = &self.capabilities
            && !capabilities.is_object()
        {
            return Err(Error::Invalid(format!(
                "capabilities must be a JSON object, not {}",
                crate::error::json_kind(capabilities)
            )));
        }
        Ok(())
    }
}

/// What [`AgentRegistry::put`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct Put {
    pub agent: Agent,
    /// True when the agent did not exist before.
    pub created: bool,
}

/// The fingerprint of what decides how an agent's backend sessions behave: the SHA-256
/// (lowercase hex) of the canonical JSON of `{"backend": …, "config": …}`, keys sorted
/// at every depth and no whitespace, so equal configs hash equal whatever their key
/// order. Label, models and probe results do not take part.
pub fn config_hash(agent: &Agent) -> String {
    let mut doc = Map::new();
    doc.insert("backend".into(), Value::String(agent.backend.clone()));
    doc.insert("config".into(), agent.config.clone());
    let mut canonical = String::new();
    write_canonical(&Value::Object(doc), &mut canonical);
    hex::encode(Sha256::digest(canonical.as_bytes()))
}

/// Writes `v` as JSON with object keys sorted. Sorted here rather than trusting the map
/// type, because serde_json keeps insertion order when any crate in the build enables
/// its `preserve_order` feature.
fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

pub struct AgentRegistry;

impl AgentRegistry {
    /// Refuses agent names that are neither registered nor built in, naming the agents
    /// there are: a task for an agent nobody can ever run would wait forever.
    pub async fn ensure_known<'a, C: ConnectionTrait>(
        db: &C,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<()> {
        let wanted: std::collections::BTreeSet<&str> =
            names.into_iter().filter(|n| *n != BUILTIN_AGENT).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let found: Vec<String> = agents::Entity::find()
            .select_only()
            .column(Column::Name)
            .filter(Column::Name.is_in(wanted.iter().copied()))
            .into_tuple()
            .all(db)
            .await?;
        let Some(missing) = wanted.iter().find(|n| !found.iter().any(|f| f == *n)) else {
            return Ok(());
        };
        let mut known = vec![BUILTIN_AGENT.to_owned()];
        known.extend(Self::list(db).await?.into_iter().map(|a| a.name));
        Err(Error::Invalid(format!(
            "agent {missing:?} is not registered; the agents are: {} (register it with PUT /v1/agents/{missing})",
            known.join(", ")
        )))
    }
}

/// The agent every worker runs without registering it: the `script` backend's simulated
/// agent. Its name cannot be registered.
pub const BUILTIN_AGENT: &str = "script";

/// The channel a change of the registry (an agent put or deleted) is notified on, in
/// its transaction; the payload is the agent's name.
pub const CHANNEL_AGENTS_CHANGED: &str = "agents_changed";

impl AgentRegistry {
    /// Every agent, by name.
    pub async fn list<C: ConnectionTrait>(db: &C) -> Result<Vec<Agent>> {
        Ok(agents::Entity::find()
            .order_by_asc(Column::Name)
            .all(db)
            .await?
            .into_iter()
            .map(Agent::from)
            .collect())
    }

    pub async fn get<C: ConnectionTrait>(db: &C, name: &str) -> Result<Option<Agent>> {
        // Any other name is looked up (and not found), but Postgres cannot even compare
        // a text holding NUL.
        crate::storable::no_nul("agent name", name)?;
        Ok(agents::Entity::find_by_id(name.to_owned())
            .one(db)
            .await?
            .map(Agent::from))
    }

    /// Removes the agent `name` from the registry and returns it, telling the workers
    /// (`agents_changed`) in the same transaction. Its tasks still waiting stay (they
    /// show as unserved until it is registered again, or are cancelled); new tasks naming
    /// it are refused. The built-in `script` is not registered and cannot be removed.
    pub async fn delete(db: &DatabaseConnection, name: &str) -> Result<Agent> {
        if name == BUILTIN_AGENT {
            return Err(Error::Invalid(format!(
                "`{BUILTIN_AGENT}` is turnq's built-in simulated agent: it is not registered and cannot be removed"
            )));
        }
        crate::storable::no_nul("agent name", name)?;
        let txn = db.begin().await?;
        let row = agents::Entity::find_by_id(name.to_owned())
            .one(&txn)
            .await?
            .ok_or_else(|| Error::NotFound(format!("no agent named {name:?} is registered")))?;
        agents::Entity::delete_by_id(name.to_owned())
            .exec(&txn)
            .await?;
        crate::listen::notify(&txn, CHANNEL_AGENTS_CHANGED, name).await?;
        txn.commit().await?;
        Ok(Agent::from(row))
    }

    /// Creates the agent `name`, or replaces its label, backend and config (and its
    /// models and capabilities, when the spec gives them). Probe results are kept.
    /// Validates `name` and `spec` first; an invalid one writes nothing.
    pub async fn put(
        db: &DatabaseConnection,
        name: &str,
        spec: AgentSpec,
        at: Timestamp,
    ) -> Result<Put> {
        check_name("agent name", name)?;
        if name == BUILTIN_AGENT {
            // Registering it would silently swap the simulated agent every test, demo and
            // bench relies on for whatever the new config runs.
            return Err(Error::Invalid(format!(
                "`{BUILTIN_AGENT}` is turnq's built-in simulated agent and its name is reserved: \
                 register your agent under another name"
            )));
        }
        spec.validate()?;
        let config = spec.config.unwrap_or_else(|| Value::Object(Map::new()));
        // A config the workers could not build a backend from is refused now, saying
        // what is wrong, instead of being found at the next worker start.
        super::backend_config::validate(&spec.backend, &config)
            .map_err(|e| Error::Invalid(format!("agent {name:?}: {e}")))?;
        let txn = db.begin().await?;
        // Insert-or-nothing first, then update: unlike comparing timestamps, this tells
        // "created" from "updated" exactly, also when two PUTs of a new name race (the
        // loser's insert does nothing and it updates the winner's row).
        let inserted = agents::Entity::insert(agents::ActiveModel {
            name: Set(name.to_owned()),
            label: Set(spec.label.clone()),
            backend: Set(spec.backend.clone()),
            config: Set(config.clone()),
            models: Set(spec
                .models
                .clone()
                .unwrap_or_else(|| Value::Array(Vec::new()))),
            capabilities: Set(spec
                .capabilities
                .clone()
                .unwrap_or_else(|| Value::Object(Map::new()))),
            created_at: Set(at),
            updated_at: Set(at),
            ..Default::default()
        })
        .on_conflict_do_nothing_on([Column::Name])
        .exec_without_returning(&txn)
        .await?;
        let created = matches!(inserted, TryInsertResult::Inserted(n) if n > 0);
        let model = if created {
            agents::Entity::find_by_id(name.to_owned())
                .one(&txn)
                .await?
                .ok_or_else(|| Error::Corrupt(format!("agent {name} vanished after insert")))?
        } else {
            let update = agents::ActiveModel {
                name: Set(name.to_owned()),
                label: Set(spec.label),
                backend: Set(spec.backend),
                config: Set(config),
                models: spec.models.map_or(NotSet, Set),
                capabilities: spec.capabilities.map_or(NotSet, Set),
                updated_at: Set(at),
                ..Default::default()
            };
            agents::Entity::update(update).exec(&txn).await?
        };
        crate::listen::notify(&txn, CHANNEL_AGENTS_CHANGED, name).await?;
        txn.commit().await?;
        Ok(Put {
            agent: model.into(),
            created,
        })
    }

    /// Records that `name` was probed at `at` and found at `version` (`None`: the CLI
    /// did not say). Returns the updated agent, or `None` when no such agent exists.
    pub async fn record_probe<C: ConnectionTrait>(
        db: &C,
        name: &str,
        version: Option<String>,
        at: Timestamp,
    ) -> Result<Option<Agent>> {
        let updated = agents::Entity::update_many()
            .col_expr(Column::Version, version.into())
            .col_expr(Column::LastProbedAt, Some(at).into())
            .col_expr(Column::UpdatedAt, at.into())
            .filter(Column::Name.eq(name))
            .exec_with_returning(db)
            .await?;
        Ok(updated.into_iter().next().map(Agent::from))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn agent(backend: &str, config: Value) -> Agent {
        Agent {
            name: "a".into(),
            label: None,
            backend: backend.into(),
            config,
            models: json!([]),
            version: None,
            capabilities: json!({}),
            commands: json!([]),
            install_path: None,
            last_probed_at: None,
            created_at: Timestamp::default(),
            updated_at: Timestamp::default(),
        }
    }

    #[test]
    fn config_hash_ignores_key_order_but_not_values_or_backend() {
        let a = config_hash(&agent(
            "claude",
            json!({"x": 1, "y": {"b": 2, "a": [1, 2]}}),
        ));
        let b = config_hash(&agent(
            "claude",
            json!({"y": {"a": [1, 2], "b": 2}, "x": 1}),
        ));
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(
            a,
            config_hash(&agent(
                "claude",
                json!({"x": 2, "y": {"b": 2, "a": [1, 2]}})
            ))
        );
        assert_ne!(
            a,
            config_hash(&agent("codex", json!({"x": 1, "y": {"b": 2, "a": [1, 2]}})))
        );
    }

    #[test]
    fn config_hash_is_sha256_of_the_canonical_json() {
        let mut canonical = String::new();
        write_canonical(
            &json!({"config": {"b": "\"q\"", "a": null}, "backend": "x"}),
            &mut canonical,
        );
        assert_eq!(
            canonical,
            r#"{"backend":"x","config":{"a":null,"b":"\"q\""}}"#
        );
    }

    #[test]
    fn spec_validation_names_the_field() {
        let ok: AgentSpec = serde_json::from_value(json!({"backend": "claude"})).unwrap();
        assert!(ok.validate().is_ok());
        let cases = [
            (json!({"backend": ""}), "backend must not be empty"),
            (json!({"backend": "a b"}), "backend \"a b\" contains ' '"),
            (
                json!({"backend": "x", "config": []}),
                "config must be a JSON object, not an array",
            ),
            (
                json!({"backend": "x", "models": ["a", 1]}),
                "models[1] must be a string, not a number",
            ),
            (
                json!({"backend": "x", "models": {}}),
                "models must be an array of strings",
            ),
            (
                json!({"backend": "x", "capabilities": "yes"}),
                "capabilities must be a JSON object",
            ),
            (
                json!({"backend": "x", "label": " "}),
                "label must not be blank",
            ),
        ];
        for (body, want) in cases {
            let spec: AgentSpec = serde_json::from_value(body.clone()).unwrap();
            let err = spec.validate().unwrap_err().to_string();
            assert!(err.starts_with(want), "{body}: {err}");
        }
        let unknown = serde_json::from_value::<AgentSpec>(json!({"backend": "x", "extra": 1}));
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("unknown field `extra`")
        );
    }
}
