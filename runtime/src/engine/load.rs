//! Loading a plugin version: the file read (or the only `.wasm` of a
//! folder), compiled or taken from the disk cache, its exports checked, its
//! imports linked against what the host grants, and one instance made to
//! run `init`, so that a plugin that loads is known to work.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use wasmtime::component::{Component, Linker, types::ComponentItem};

use super::bindings::{BatchHandlerPre, Handler, HandlerPre};
use super::cache;
use super::host::{HostState, KvStore, columns};
use super::instance::{NativeFn, Plugin, PluginInner};
use super::setup::Engine;
use super::spec::{PluginError, PluginSpec};

impl Plugin {
    /// Reads, compiles (or loads from the cache), links, and starts one
    /// instance to run `init`: a plugin that loads is known to work.
    pub async fn load(engine: &Engine, spec: PluginSpec) -> Result<Plugin, PluginError> {
        let file = resolve_file(&spec.path)?;
        let bytes =
            crate::files::read_regular(&file, crate::files::MAX_PLUGIN_BYTES).map_err(|e| {
                PluginError::Read {
                    path: file.clone(),
                    message: e.to_string(),
                }
            })?;
        let digest = cache::digest(&bytes);
        // A core module implementing the world's canonical ABI is wrapped
        // into a component before compiling (in the compiler child when
        // there is one); the cache still keys on the file's digest.
        let (component, origin) =
            super::compile::load(engine, &spec, &file, bytes, &digest).await?;

        let world_err = |message: String| PluginError::World {
            path: file.clone(),
            message,
        };
        check_exports(engine, &component).map_err(world_err)?;
        let mut linker = Linker::<HostState>::new(engine.wasmtime());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| world_err(e.to_string()))?;
        // Our `exit` over wasmtime-wasi's (host/mod.rs says why).
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::cli::exit::add_to_linker::<_, wasmtime::component::HasSelf<_>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| world_err(e.to_string()))?;
        linker.allow_shadowing(false);
        Handler::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| world_err(e.to_string()))?;
        columns::add_to_linker(&mut linker).map_err(|e| world_err(e.to_string()))?;
        let instance_pre = linker.instantiate_pre(&component).map_err(|e| {
            world_err(format!(
                "it imports something the host does not provide: {e:#}"
            ))
        })?;
        let batch_pre = if exports_batch(engine, &component) {
            let pre = BatchHandlerPre::new(instance_pre.clone())
                .map_err(|e| world_err(format!("`handle-batch`: {e:#}")))?;
            Some(pre)
        } else {
            None
        };
        let pre = HandlerPre::new(instance_pre).map_err(|e| world_err(format!("{e:#}")))?;

        let plugin = Plugin {
            inner: Arc::new(PluginInner {
                engine: engine.clone(),
                file: file.clone(),
                digest,
                loaded_at: SystemTime::now(),
                origin,
                pre,
                batch_pre,
                kv: Arc::new(Mutex::new(KvStore::new(
                    spec.kv_max_entries,
                    spec.kv_max_bytes,
                ))),
                pipeline: spec.pipeline.as_str().into(),
                config: spec.config.clone(),
                native: None,
                spec,
            }),
        };
        // Run `init` once now, so a plugin that cannot start is refused here
        // rather than on its first message.
        plugin.instantiate().await.map_err(|f| PluginError::Init {
            path: file,
            message: f.message,
        })?;
        Ok(plugin)
    }

    /// The same as `template` but calling `f` natively instead of the
    /// component: no sandbox, no budgets. For benchmarks only.
    pub fn native(template: &Plugin, f: NativeFn) -> Plugin {
        let t = &template.inner;
        Plugin {
            inner: Arc::new(PluginInner {
                engine: t.engine.clone(),
                spec: t.spec.clone(),
                file: t.file.clone(),
                digest: format!("native:{}", t.digest),
                loaded_at: SystemTime::now(),
                origin: t.origin,
                pre: t.pre.clone(),
                batch_pre: t.batch_pre.clone(),
                kv: t.kv.clone(),
                pipeline: t.pipeline.clone(),
                config: t.config.clone(),
                native: Some(f),
            }),
        }
    }
}

/// The `.wasm` file named by `path`: the path itself, or the only `.wasm` in a folder.
pub fn resolve_file(path: &Path) -> Result<PathBuf, PluginError> {
    let read_err = |message: String| PluginError::Read {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_dir() {
        return Ok(path.to_path_buf());
    }
    let mut wasm: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| read_err(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    match wasm.len() {
        1 => Ok(wasm.remove(0)),
        0 => Err(read_err("the folder holds no .wasm file".into())),
        n => Err(read_err(format!(
            "the folder holds {n} .wasm files; name one"
        ))),
    }
}

/// Whether the component exports `handle-batch` (the `batch-handler` world).
fn exports_batch(engine: &Engine, component: &Component) -> bool {
    component
        .component_type()
        .get_export(engine.wasmtime(), "handle-batch")
        .is_some()
}

/// Says which of the world's exports a component lacks.
fn check_exports(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let mut missing = Vec::new();
    for name in ["init", "handle"] {
        match ty.get_export(engine.wasmtime(), name) {
            Some(e) if matches!(e.ty, ComponentItem::ComponentFunc(_)) => {}
            Some(_) => missing.push(format!("`{name}` is exported but is not a function")),
            None => missing.push(format!("missing export `{name}`")),
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        let found: Vec<String> = ty
            .exports(engine.wasmtime())
            .map(|(n, _)| format!("`{n}`"))
            .collect();
        Err(format!(
            "{} (it exports: {})",
            missing.join(", "),
            if found.is_empty() {
                "nothing".to_string()
            } else {
                found.join(", ")
            }
        ))
    }
}
