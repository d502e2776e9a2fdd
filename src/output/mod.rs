//! Output formats that follow kubectl's: `-o jsonpath=TEMPLATE`
//! ([`jsonpath`]), `-o custom-columns=SPEC` and `--sort-by` ([`columns`]),
//! with values printed in Go's forms ([`gofmt`]) so that text a script
//! reads from kubectl reads the same here.

pub mod columns;
pub mod gofmt;
pub mod jsonpath;

pub use columns::{Columns, SortKey};
pub use jsonpath::{Expr, Template};

/// What `-o` asks for.
#[derive(Debug, Clone)]
pub enum Format {
    /// The default table.
    Table,
    /// The table with more columns.
    Wide,
    Yaml,
    Json,
    /// `kind.group/name`
    Name,
    /// `jsonpath=` / `jsonpath-file=` (text) or `jsonpath-as-json=` (a JSON
    /// list of every selected value).
    JsonPath {
        template: Template,
        as_json: bool,
    },
    /// `custom-columns=` / `custom-columns-file=`
    CustomColumns(Columns),
}

/// The formats `-o` takes (for help and completion).
pub const FORMAT_NAMES: &[&str] = &[
    "wide",
    "yaml",
    "json",
    "name",
    "jsonpath=",
    "jsonpath-file=",
    "jsonpath-as-json=",
    "custom-columns=",
    "custom-columns-file=",
];

impl Format {
    /// Parses `-o`'s value (reading the file of the `-file` forms).
    pub fn parse(s: &str) -> Result<Format, String> {
        let read =
            |f: &str| std::fs::read_to_string(f).map_err(|e| format!("cannot read {f}: {e}"));
        let (name, arg) = match s.split_once('=') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let need = |what: &str| {
            arg.filter(|a| !a.is_empty())
                .ok_or_else(|| format!("-o {name} needs {what}: -o {name}=..."))
        };
        Ok(match name {
            "wide" => Format::Wide,
            "yaml" => Format::Yaml,
            "json" => Format::Json,
            "name" => Format::Name,
            "jsonpath" | "jsonpath-as-json" => Format::JsonPath {
                template: Template::parse(need("a template")?).map_err(|e| e.to_string())?,
                as_json: name == "jsonpath-as-json",
            },
            "jsonpath-file" => Format::JsonPath {
                template: Template::parse(read(need("a file")?)?.trim_end_matches('\n'))
                    .map_err(|e| e.to_string())?,
                as_json: false,
            },
            "custom-columns" => {
                Format::CustomColumns(Columns::parse(need("a spec")?).map_err(|e| e.to_string())?)
            }
            "custom-columns-file" => {
                let f = need("a file")?;
                Format::CustomColumns(Columns::parse_file(f, &read(f)?).map_err(|e| e.to_string())?)
            }
            other => {
                return Err(format!(
                    "unable to match a printer suitable for the output format \"{other}\", allowed formats are: {}",
                    FORMAT_NAMES
                        .iter()
                        .map(|f| f.trim_end_matches('='))
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
        })
    }

    /// Renders a document with a `jsonpath` format.
    pub fn jsonpath(template: &Template, as_json: bool, doc: &serde_json::Value) -> String {
        if as_json {
            let vals: Vec<serde_json::Value> = template.values(doc).into_iter().cloned().collect();
            format!(
                "{}\n",
                gofmt::json_indented(&serde_json::Value::Array(vals))
            )
        } else {
            template.render(doc)
        }
    }
}
