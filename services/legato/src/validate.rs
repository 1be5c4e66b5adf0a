//! `legato validate FILE...`: a definition checked offline, with the
//! messages registration gives. Whether the agents it names are registered
//! is known only to a running legato, so they are listed instead.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

/// Checks each file; prints what each holds, or every problem in it.
pub fn run(files: &[impl AsRef<Path>]) -> ExitCode {
    let mut refused = false;
    for file in files {
        match check(file.as_ref()) {
            Ok(summary) => println!("{summary}"),
            Err(problems) => {
                refused = true;
                eprint!("{problems}");
            }
        }
    }
    if refused {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One line about a valid file, or one line per problem.
pub fn check(file: &Path) -> Result<String, String> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).map_err(|e| format!("{shown}: {e}\n"))?;
    let is_type = file
        .file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(|s| s.ends_with(".entity"));
    if is_type {
        return check_entity_type(file, &text);
    }
    let workflow = legato_workflow::parse(&text).map_err(|errors| listed(file, &errors))?;
    let steps = workflow.all_steps();
    let count = |kind: fn(&legato_workflow::Action) -> bool| {
        steps.iter().filter(|s| kind(&s.action)).count()
    };
    let blocks: Vec<String> = [
        (
            "loop",
            count(|a| matches!(a, legato_workflow::Action::Loop { .. })),
        ),
        (
            "race",
            count(|a| matches!(a, legato_workflow::Action::Race { .. })),
        ),
        (
            "lock",
            count(|a| matches!(a, legato_workflow::Action::Lock { .. })),
        ),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .map(|(kind, n)| format!("{n} {kind}{}", if n == 1 { "" } else { "s" }))
    .collect();
    let agents: BTreeSet<String> = workflow
        .named_agents()
        .into_iter()
        .map(|(_, agent)| agent.to_string())
        .collect();
    let mut summary = format!(
        "{shown}: {} v{}: valid, {} steps",
        workflow.name,
        workflow.version,
        steps.len()
    );
    if !blocks.is_empty() {
        let _ = write!(summary, " ({})", blocks.join(", "));
    }
    if !agents.is_empty() {
        let names: Vec<String> = agents.into_iter().collect();
        let _ = write!(
            summary,
            "; names agents {} (registration checks they are registered)",
            names.join(", ")
        );
    }
    let children: BTreeSet<String> = workflow
        .named_workflows()
        .into_iter()
        .map(|(_, child)| child.name.to_string())
        .collect();
    if !children.is_empty() {
        let names: Vec<String> = children.into_iter().collect();
        let _ = write!(
            summary,
            "; starts child runs of {} (registration checks they are registered)",
            names.join(", ")
        );
    }
    Ok(summary)
}

/// Every problem, one line each, with the file and the path.
fn listed(file: &Path, errors: &legato_workflow::ValidationErrors) -> String {
    errors.0.iter().fold(String::new(), |mut out, e| {
        let at = if e.path.is_empty() {
            String::new()
        } else {
            format!("{}: ", e.path)
        };
        let _ = writeln!(out, "{}: {at}{}", file.display(), e.message);
        out
    })
}

/// An entity type's file (`*.entity.yaml`): its `name` names the type.
fn check_entity_type(file: &Path, text: &str) -> Result<String, String> {
    let def = legato_workflow::EntityTypeDef::from_file_text(text)
        .map_err(|errors| listed(file, &errors))?;
    let mut summary = format!(
        "{}: entity type {}: valid, {}",
        file.display(),
        def.name,
        if def.state_schema.is_some() {
            "a state schema"
        } else {
            "no state schema"
        }
    );
    if !def.operations.is_empty() {
        let ops: Vec<String> = def
            .operations
            .iter()
            .map(|(op, d)| format!("{op} (workflow {})", d.workflow))
            .collect();
        let _ = write!(
            summary,
            ", custom operations {} (registration checks the workflows are registered)",
            ops.join(", ")
        );
    }
    Ok(summary)
}
