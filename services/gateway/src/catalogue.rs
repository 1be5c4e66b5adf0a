//! The shipped workflow catalogue (`workflows/`), registered at start. A
//! file whose version is already registered with the same content is a
//! no-op; with different content it is skipped with a warning (registered
//! versions never change; bump `version`). A file that does not parse, or
//! that names an agent nobody registered, stops the start, naming the file
//! and every problem in it. Entity types (`*.entity.yaml`) are registered
//! once the workflows are, shared by every tenant, replacing the type as
//! registered when the file says otherwise.

use std::path::Path;

use legato_contracts::WorkflowName;
use legato_store::{DefinitionRecord, EntityTypeRecord, Expected, Store};
use legato_workflow::EntityTypeDef;
use time::OffsetDateTime;

/// Registers every definition file in `dir` (and its directories);
/// returns how many were new.
pub async fn register_catalogue(store: &dyn Store, dir: &Path) -> anyhow::Result<usize> {
    if !dir.is_dir() {
        tracing::info!(dir = %dir.display(), "no workflow catalogue directory; none registered");
        return Ok(0);
    }
    let mut registered = 0;
    let mut read = Vec::new();
    let (types, workflows): (Vec<_>, Vec<_>) =
        files(dir)?.into_iter().partition(|p| is_entity_type(p));
    for path in workflows {
        let text = std::fs::read_to_string(&path)?;
        let workflow = legato_workflow::parse(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        read.push((path.clone(), workflow.clone()));
        let missing = crate::registry::unregistered_agents(store, &workflow, None).await?;
        if !missing.is_empty() {
            let detail = crate::registry::describe(&missing);
            anyhow::bail!("{}: {detail}", path.display());
        }
        let hash = workflow.content_hash();
        match store
            .get_definition(&workflow.name, Some(workflow.version))
            .await?
        {
            Some(existing) if existing.hash == hash => {}
            Some(_) => tracing::warn!(
                file = %path.display(),
                "{} version {} is registered with different content; bump its version to register the change",
                workflow.name,
                workflow.version
            ),
            None => {
                store
                    .put_definition(&DefinitionRecord {
                        name: workflow.name.clone(),
                        version: workflow.version,
                        hash,
                        body: serde_json::to_value(&workflow)?,
                        registered_at: OffsetDateTime::now_utc(),
                    })
                    .await?;
                registered += 1;
                tracing::info!(workflow = %workflow.name, version = workflow.version, "registered");
            }
        }
    }
    // Children are checked once every file is in: a catalogue's parents
    // may come before their children.
    for (path, workflow) in read {
        for (field, child) in workflow.named_workflows() {
            if store
                .get_definition(&child.name, child.version)
                .await?
                .is_none()
            {
                anyhow::bail!(
                    "{}: {field}: no workflow {} is registered{}",
                    path.display(),
                    child.name,
                    child
                        .version
                        .map(|v| format!(" at version {v}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    for path in types {
        registered += usize::from(register_entity_type(store, &path).await?);
    }
    Ok(registered)
}

/// Whether the catalogue file at `path` is an entity type's.
fn is_entity_type(path: &Path) -> bool {
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .is_some_and(|stem| stem.ends_with(".entity"))
}

/// Registers the entity type of the file at `path` (its `name` says which)
/// unless it is registered as the file says; `true` when it was not.
async fn register_entity_type(store: &dyn Store, path: &Path) -> anyhow::Result<bool> {
    let fail = |why: String| anyhow::anyhow!("{}: {why}", path.display());
    let text = std::fs::read_to_string(path)?;
    let def = EntityTypeDef::from_file_text(&text).map_err(|e| fail(e.to_string()))?;
    let name = def.name.clone();
    for (field, workflow) in def.workflows() {
        let known = WorkflowName::parse(workflow).map_err(|e| fail(format!("{field}: {e}")))?;
        if store.get_definition(&known, None).await?.is_none() {
            return Err(fail(format!(
                "{field}: no workflow {workflow} is registered"
            )));
        }
    }
    let body = def.to_document();
    let existing = store.get_entity_type(None, &name).await?;
    let expected = match existing {
        Some(existing) if existing.record.body == body => return Ok(false),
        Some(existing) => Expected::Version(existing.version),
        None => Expected::New,
    };
    let record = EntityTypeRecord {
        name,
        tenant: None,
        body,
        updated_at: OffsetDateTime::now_utc(),
    };
    store.put_entity_type(&record, &expected).await?;
    tracing::info!(entity_type = %record.name, "registered");
    Ok(true)
}

/// The catalogue files of `dir` and the directories in it (`*.yaml`,
/// `*.yml`, `*.json`, such as `workflows/patterns/`), by path.
pub(crate) fn files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut paths = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    // Bounded: a link cycle must not walk forever.
    const MAX_DIRS: usize = 1_000;
    let mut walked = 0;
    while let Some(dir) = dirs.pop() {
        walked += 1;
        if walked > MAX_DIRS {
            break;
        }
        for path in std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())) {
            if path.is_dir() {
                dirs.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                paths.push(path);
            }
        }
    }
    paths.sort();
    Ok(paths)
}
