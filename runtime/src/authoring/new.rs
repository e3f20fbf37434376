//! `sluice new`: a handler project from the templates in `runtime/templates/`
//! (embedded in the binary): the handler, its build script, a fixtures file
//! for `sluice test` and a pipeline that runs it on the `file` source.
//!
//! The project refers to the guest SDK by an absolute path (a Cargo path
//! dependency, a Go `replace`, the C headers, the WIT folder): by default the
//! `guest-sdk/` of the Sluice source tree the binary was built from, or the
//! one `--sdk` names.

use std::path::{Path, PathBuf};

/// A handler language `sluice new` has a template for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    C,
    Python,
    Js,
    Go,
}

impl Lang {
    /// Every language, in the order the documentation lists them.
    pub const ALL: [Lang; 5] = [Lang::Rust, Lang::C, Lang::Python, Lang::Js, Lang::Go];

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::C => "c",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::Go => "go",
        }
    }

    /// What the project's `build.sh` runs.
    pub fn build_command(self) -> &'static str {
        match self {
            Lang::Rust => "cargo build --release --target wasm32-wasip2",
            Lang::C => "clang --target=wasm32-wasi ... (a core module)",
            Lang::Python => "componentize-py ... componentize app",
            Lang::Js => "componentize-js ... handler.js",
            Lang::Go => "GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared",
        }
    }

    /// The language's own files: (path in the project, template text).
    fn files(self) -> &'static [(&'static str, &'static str)] {
        macro_rules! t {
            ($p:literal) => {
                include_str!(concat!("../../templates/", $p))
            };
        }
        match self {
            Lang::Rust => &[
                ("Cargo.toml", t!("rust/Cargo.toml")),
                ("rust-toolchain.toml", t!("rust/rust-toolchain.toml")),
                ("src/lib.rs", t!("rust/src/lib.rs")),
                ("build.sh", t!("rust/build.sh")),
            ],
            Lang::C => &[
                ("handler.c", t!("c/handler.c")),
                ("build.sh", t!("c/build.sh")),
            ],
            Lang::Python => &[
                ("app.py", t!("python/app.py")),
                ("build.sh", t!("python/build.sh")),
            ],
            Lang::Js => &[
                ("handler.js", t!("js/handler.js")),
                ("build.sh", t!("js/build.sh")),
            ],
            Lang::Go => &[
                ("main.go", t!("go/main.go")),
                ("go.mod", t!("go/go.mod")),
                ("build.sh", t!("go/build.sh")),
            ],
        }
    }
}

/// Files every project gets.
const COMMON: &[(&str, &str)] = &[
    (
        "pipeline.toml",
        include_str!("../../templates/common/pipeline.toml"),
    ),
    (
        "fixtures.toml",
        include_str!("../../templates/common/fixtures.toml"),
    ),
    (
        "input.txt",
        include_str!("../../templates/common/input.txt"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/common/gitignore"),
    ),
];

/// Why a project was not written.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error(
        "project name {0:?}: use lower-case ASCII letters, digits and `-`, starting with a letter (at most 64)"
    )]
    Name(String),
    #[error("{0}: already exists; choose a new folder")]
    Exists(PathBuf),
    #[error(
        "--sdk {0}: not a Sluice guest SDK (no wit/handler.wit there); pass the `guest-sdk` folder of a Sluice source tree"
    )]
    Sdk(PathBuf),
    #[error(
        "--sdk {0}: the path has a character the build files cannot quote (one of \" \\ $ ` or a control character)"
    )]
    SdkPath(PathBuf),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The `guest-sdk/` of the source tree this binary was built from.
pub fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("guest-sdk")
}

/// What was written.
#[derive(Debug)]
pub struct Created {
    pub dir: PathBuf,
    pub name: String,
    pub files: Vec<PathBuf>,
}

/// Checks a project name: it becomes a Cargo package, a Go module path
/// element, a file name and a pipeline name.
fn check_name(name: &str) -> Result<(), NewError> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NewError::Name(name.to_string()))
    }
}

/// Writes the project for `lang` into the new folder `dir` (its last
/// component is the project's name), referring to the SDK at `sdk`.
pub fn create(dir: &Path, lang: Lang, sdk: &Path) -> Result<Created, NewError> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    check_name(&name)?;
    if dir.exists() {
        return Err(NewError::Exists(dir.to_path_buf()));
    }
    if !sdk.join("wit/handler.wit").is_file() {
        return Err(NewError::Sdk(sdk.to_path_buf()));
    }
    let sdk = std::fs::canonicalize(sdk).map_err(|_| NewError::Sdk(sdk.to_path_buf()))?;
    let sdk_text = sdk.to_str().unwrap_or("\"");
    if sdk_text
        .chars()
        .any(|c| matches!(c, '"' | '\\' | '$' | '`') || c.is_control())
    {
        return Err(NewError::SdkPath(sdk.clone()));
    }
    let fill = |text: &str| {
        text.replace("{{name_len}}", &name.len().to_string())
            .replace("{{name}}", &name)
            .replace("{{crate}}", &name.replace('-', "_"))
            .replace("{{sdk}}", sdk_text)
            .replace("{{wasm}}", &format!("{name}.wasm"))
    };
    let mut files = Vec::new();
    for (rel, text) in COMMON.iter().chain(lang.files()) {
        let path = dir.join(rel);
        let write = |p: &Path| -> std::io::Result<()> {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(p, fill(text))?;
            if rel.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        };
        write(&path).map_err(|source| NewError::Write {
            path: path.clone(),
            source,
        })?;
        files.push(path);
    }
    Ok(Created {
        dir: dir.to_path_buf(),
        name,
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "my-handler", "h2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "A", "1a", "a_b", "a-", "a b", "../x", "a\"b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_language_fills_every_placeholder() {
        let sdk = default_sdk();
        for lang in Lang::ALL {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("my-handler");
            let made = create(&dir, lang, &sdk).expect("create");
            for f in &made.files {
                let text = std::fs::read_to_string(f).expect("read");
                for p in [
                    "{{name}}",
                    "{{name_len}}",
                    "{{crate}}",
                    "{{sdk}}",
                    "{{wasm}}",
                ] {
                    assert!(!text.contains(p), "{}: {text}", f.display());
                }
            }
            assert!(dir.join("build.sh").is_file() && dir.join("fixtures.toml").is_file());
            assert!(matches!(create(&dir, lang, &sdk), Err(NewError::Exists(_))));
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            create(&tmp.path().join("x"), Lang::C, tmp.path()),
            Err(NewError::Sdk(_))
        ));
    }
}
