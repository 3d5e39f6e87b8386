//! Prompt sets and placeholders: `{}` / `{0}` is the identity being evaluated, `{1}` the second identity of
//! *double* prompts. The Celeb Basis sets are compiled in, so `--prompts single` needs no data folder.

use std::path::Path;

use persona_diffusion::{Error, Result};

/// The bundled sets (a copy of the project's shared prompt files, see `data/README.md`).
const BUNDLED: &[(&str, &str)] = &[
    ("style", include_str!("../../../data/prompts/style.txt")),
    ("single", include_str!("../../../data/prompts/single.txt")),
    (
        "with_celeb",
        include_str!("../../../data/prompts/with_celeb.txt"),
    ),
    ("double", include_str!("../../../data/prompts/double.txt")),
    (
        "expression",
        include_str!("../../../data/prompts/expression.txt"),
    ),
    (
        "idea_examples",
        include_str!("../../../data/prompts/idea_examples.txt"),
    ),
    // The world's sets (tools/world, docs/world.md): only words its captions use.
    (
        "world_single",
        include_str!("../../../data/prompts/world_single.txt"),
    ),
    (
        "world_expression",
        include_str!("../../../data/prompts/world_expression.txt"),
    ),
    (
        "world_with_celeb",
        include_str!("../../../data/prompts/world_with_celeb.txt"),
    ),
    (
        "world_double",
        include_str!("../../../data/prompts/world_double.txt"),
    ),
];

/// A named list of prompt templates; the name is the prompt class of the report's scatter plot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptSet {
    pub name: String,
    pub prompts: Vec<String>,
}

impl PromptSet {
    /// A file (one prompt a line, blank lines and `#` comments skipped; the class is its stem) or a bundled
    /// set name.
    pub fn resolve(arg: &str) -> Result<Self> {
        let path = Path::new(arg);
        if path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| arg.to_string());
            return Self::parse(name, &text).map_err(|e| Error::file(path, e));
        }
        match BUNDLED.iter().find(|(n, _)| *n == arg) {
            Some((name, text)) => Self::parse(name.to_string(), text),
            None => {
                let names: Vec<&str> = BUNDLED.iter().map(|(n, _)| *n).collect();
                Err(Error::Msg(format!(
                    "--prompts {arg}: not a file nor a prompt set ({})",
                    names.join(", ")
                )))
            }
        }
    }

    fn parse(name: String, text: &str) -> Result<Self> {
        let prompts: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect();
        if prompts.is_empty() {
            return Err(Error::Msg(format!("prompt set {name} has no prompts")));
        }
        Ok(Self { name, prompts })
    }
}

/// Whether a template names a second identity (`{1}`): its images are scored against both identities.
pub fn uses_second(template: &str) -> bool {
    template.contains("{1}")
}

/// The text CLIP scores an image against: placeholders, identity names and pseudo-tokens removed (the
/// protocol's "prompt with the placeholder words removed"), spaces collapsed.
pub fn clip_text(template: &str, identity_words: &[String]) -> String {
    template
        .split_whitespace()
        .map(|w| strip_placeholders(w, identity_words))
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn strip_placeholders(word: &str, identity_words: &[String]) -> String {
    let mut w = word.to_string();
    for p in ["{}", "{0}", "{1}"] {
        w = w.replace(p, "");
    }
    for name in identity_words {
        // `<alice>_v0` before `<alice>`, so no `_v0` is left behind.
        for v in (0..16)
            .rev()
            .map(|i| format!("{name}_v{i}"))
            .chain(std::iter::once(name.clone()))
        {
            w = w.replace(&v, "");
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_sets_have_the_protocol_sizes() {
        let sizes: Vec<usize> = ["style", "single", "with_celeb", "double"]
            .iter()
            .map(|s| PromptSet::resolve(s).unwrap().prompts.len())
            .collect();
        assert_eq!(sizes, [28, 10, 8, 8]);
        assert!(PromptSet::resolve("nope")
            .unwrap_err()
            .to_string()
            .contains("single"));
    }

    #[test]
    fn placeholders_are_removed_for_clip() {
        let names = vec!["<alice>".to_string()];
        assert_eq!(
            clip_text("a {} person and a {1} person sit on a sofa", &names),
            "a person and a person sit on a sofa"
        );
        assert_eq!(clip_text("{} latte art", &names), "latte art");
        assert_eq!(
            clip_text("<alice>_v0 <alice>_v1 on the beach, <alice>.", &names),
            "on the beach, ."
        );
        assert!(uses_second("a {} person and a {1} person") && !uses_second("a {} person"));
    }
}
