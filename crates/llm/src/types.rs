//! Rust mirrors of the classes and enums in `baml_src/types.baml`. Field names are exactly
//! the BAML ones, because these values travel as the JSON that `baml-cli serve` reads and
//! returns.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub path: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FeatureRequest {
    pub title: String,
    pub description: String,
    #[serde(default)]
    pub acceptance_criteria: Vec<String>,
    #[serde(default)]
    pub path_hints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RepoContext {
    #[serde(default)]
    pub languages: Vec<String>,
    #[serde(default)]
    pub build_command: Option<String>,
    #[serde(default)]
    pub test_command: Option<String>,
    #[serde(default)]
    pub file_tree: Vec<String>,
    #[serde(default)]
    pub files: Vec<SourceFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analysis {
    pub summary: String,
    pub affected_files: Vec<String>,
    pub risks: Vec<String>,
    pub acceptance_interpretation: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StepType {
    CreateFile,
    ModifyFile,
    DeleteFile,
    RenameFile,
    AddDependency,
    Refactor,
    Test,
    Documentation,
}

impl StepType {
    const ALL: [(StepType, &'static str); 8] = [
        (StepType::CreateFile, "CREATE_FILE"),
        (StepType::ModifyFile, "MODIFY_FILE"),
        (StepType::DeleteFile, "DELETE_FILE"),
        (StepType::RenameFile, "RENAME_FILE"),
        (StepType::AddDependency, "ADD_DEPENDENCY"),
        (StepType::Refactor, "REFACTOR"),
        (StepType::Test, "TEST"),
        (StepType::Documentation, "DOCUMENTATION"),
    ];

    /// The contract's name (as in the proto enum and the events).
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map(|(_, n)| *n)
            .unwrap_or("MODIFY_FILE")
    }

    pub fn parse(name: &str) -> Option<StepType> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(t, _)| *t)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStep {
    /// BAML's `int`; a negative value from the model fails deserialisation and so counts
    /// as output that did not parse.
    pub index: u32,
    pub description: String,
    pub step_type: StepType,
    pub target_files: Vec<String>,
    pub dependencies: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub summary: String,
    pub steps: Vec<PlanStep>,
    pub affected_files: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EditAction {
    /// New file, full `content`; the file must not exist.
    Create,
    /// Existing file, full new `content`.
    ReplaceFile,
    /// Existing file: `search` (occurring once) becomes `replace`.
    SearchReplace,
    /// Existing file is removed.
    Delete,
}

impl EditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            EditAction::Create => "CREATE",
            EditAction::ReplaceFile => "REPLACE_FILE",
            EditAction::SearchReplace => "SEARCH_REPLACE",
            EditAction::Delete => "DELETE",
        }
    }
}

impl std::fmt::Display for EditAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edit {
    pub path: String,
    pub action: EditAction,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub search: Option<String>,
    #[serde(default)]
    pub replace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditSet {
    pub summary: String,
    pub edits: Vec<Edit>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub approved: bool,
    pub reasons: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn enums_use_the_baml_spelling() {
        assert_eq!(
            serde_json::to_value(StepType::AddDependency).unwrap(),
            json!("ADD_DEPENDENCY")
        );
        assert_eq!(
            serde_json::to_value(EditAction::SearchReplace).unwrap(),
            json!("SEARCH_REPLACE")
        );
        for a in [
            EditAction::Create,
            EditAction::ReplaceFile,
            EditAction::SearchReplace,
            EditAction::Delete,
        ] {
            assert_eq!(serde_json::to_value(a).unwrap(), json!(a.as_str()));
        }
    }

    #[test]
    fn edit_reads_what_baml_returns_for_absent_optionals() {
        let e: Edit = serde_json::from_value(json!({
            "path": "a.txt", "action": "DELETE", "content": null, "search": null, "replace": null
        }))
        .unwrap();
        assert_eq!(e.action, EditAction::Delete);
        assert_eq!(e.content, None);
    }
}
