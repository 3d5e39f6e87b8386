//! Training captions: a random textual-inversion template formatted with "face of {tokens} person".

use crate::{Error, Result};

/// The 81 templates of textual inversion (duplicates intentional), bundled.
const BUNDLED: &str = include_str!("../../../data/textual_inversion.txt");

#[derive(Clone, Debug)]
pub struct Captions {
    templates: Vec<String>,
    subject: String,
}

impl Captions {
    /// `subject` is formatted into each template; `{tokens}` in it becomes the pseudo-tokens
    /// (default subject: `face of {tokens} person`).
    pub fn new(templates: Option<&std::path::Path>, subject: &str) -> Result<Self> {
        let text = match templates {
            Some(p) => std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?,
            None => BUNDLED.to_string(),
        };
        let templates: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if templates.is_empty() || templates.iter().any(|t| !t.contains("{}")) {
            return Err(Error::Msg(
                "caption templates must be non-empty lines each containing {}".into(),
            ));
        }
        Ok(Self {
            templates,
            subject: subject.to_string(),
        })
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Template `index` with the subject and the token phrase filled in.
    pub fn caption(&self, index: usize, tokens: &str) -> String {
        let subject = self.subject.replace("{tokens}", tokens);
        self.templates[index % self.templates.len()].replace("{}", &subject)
    }
}
