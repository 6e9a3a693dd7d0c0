//! Object-store roots: a URL (`file://`, a plain path, `s3://`, `az://`,
//! `abfs://`, `gs://`, `memory://`) turned into a store, a prefix inside it
//! and the URL DataFusion registers the store under.

use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{url:?} is not a URL or a path: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("unsupported URL scheme {0:?} (file, s3, az/abfs, gs and memory are)")]
    Scheme(String),
    #[error("configuring the object store for {url:?}: {source}")]
    Build {
        url: String,
        #[source]
        source: object_store::Error,
    },
}

/// A root inside an object store.
#[derive(Clone)]
pub struct StoreRoot {
    pub store: Arc<dyn ObjectStore>,
    /// What DataFusion registers the store under (`scheme://host`).
    pub store_url: ObjectStoreUrl,
    /// The root prefix inside the store.
    pub prefix: Path,
    /// The local filesystem (objects can be memory-mapped).
    pub local: bool,
    /// The URL as given, for reports.
    pub display: String,
}

impl std::fmt::Debug for StoreRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreRoot")
            .field("url", &self.display)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl StoreRoot {
    /// Opens a root from a URL or a local path. Cloud stores take their
    /// credentials and endpoints from the environment, as their SDKs do
    /// (`AWS_*`, `AZURE_*`, `GOOGLE_*`).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let parsed = match Url::parse(url) {
            Ok(u) if u.scheme().len() > 1 => u,
            _ => {
                // A plain path (relative or absolute).
                let abs = std::path::absolute(url).map_err(|e| StoreError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
                // Object-store paths have no `..`: resolve it lexically
                // (`../in` from a job file's directory).
                let mut normal = std::path::PathBuf::new();
                for c in abs.components() {
                    match c {
                        std::path::Component::ParentDir => {
                            normal.pop();
                        }
                        std::path::Component::CurDir => {}
                        c => normal.push(c),
                    }
                }
                let abs = normal;
                Url::from_directory_path(&abs).map_err(|_| StoreError::BadUrl {
                    url: url.to_string(),
                    reason: "not an absolute path".into(),
                })?
            }
        };
        let build = |r: object_store::Result<Arc<dyn ObjectStore>>| {
            r.map_err(|source| StoreError::Build {
                url: url.to_string(),
                source,
            })
        };
        let scheme = parsed.scheme().to_string();
        let (store, local): (Arc<dyn ObjectStore>, bool) = match scheme.as_str() {
            // Deleting a run's files (a commit's cleanup) also removes the
            // directories they leave empty, as on an object store.
            "file" => (
                Arc::new(LocalFileSystem::new().with_automatic_cleanup(true)),
                true,
            ),
            "memory" => (memory_store(parsed.host_str().unwrap_or("")), false),
            "s3" | "s3a" => (
                build(
                    object_store::aws::AmazonS3Builder::from_env()
                        .with_url(parsed.as_str())
                        .build()
                        .map(|s| Arc::new(s) as _),
                )?,
                false,
            ),
            "az" | "abfs" | "abfss" | "adl" | "azure" => (
                build(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(parsed.as_str())
                        .build()
                        .map(|s| Arc::new(s) as _),
                )?,
                false,
            ),
            "gs" => (
                build(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(parsed.as_str())
                        .build()
                        .map(|s| Arc::new(s) as _),
                )?,
                false,
            ),
            other => return Err(StoreError::Scheme(other.to_string())),
        };
        let store_url = if local {
            ObjectStoreUrl::local_filesystem()
        } else {
            ObjectStoreUrl::parse(format!("{}://{}", scheme, parsed.host_str().unwrap_or("")))
                .map_err(|e| StoreError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?
        };
        let prefix = if local {
            let p = parsed.to_file_path().map_err(|_| StoreError::BadUrl {
                url: url.to_string(),
                reason: "not a local path".into(),
            })?;
            Path::from_absolute_path(&p).map_err(|e| StoreError::BadUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?
        } else {
            Path::from_url_path(parsed.path()).map_err(|e| StoreError::BadUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?
        };
        Ok(Self {
            store,
            store_url,
            prefix,
            local,
            display: url.to_string(),
        })
    }

    /// A path below the root.
    pub fn child(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// The path of `location` relative to the root, if it lies below it.
    pub fn relative<'a>(&self, location: &'a Path) -> Option<&'a str> {
        let full = location.as_ref();
        let prefix = self.prefix.as_ref();
        if prefix.is_empty() {
            return Some(full);
        }
        full.strip_prefix(prefix)?.strip_prefix('/')
    }
}

/// In-memory stores by name, so that `memory://name/...` URLs given twice in
/// one process (tests) see the same objects.
fn memory_stores()
-> std::sync::MutexGuard<'static, std::collections::HashMap<String, Arc<dyn ObjectStore>>> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    static STORES: LazyLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    STORES.lock().unwrap_or_else(|e| e.into_inner())
}

fn memory_store(name: &str) -> Arc<dyn ObjectStore> {
    Arc::clone(
        memory_stores()
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(InMemory::new())),
    )
}

/// Serves `memory://<name>/...` URLs from `store` instead of a fresh
/// in-memory store: how a test (or a program embedding tailor) hands the
/// job a store of its own, such as one whose deletes fail.
pub fn install_memory_store(name: &str, store: Arc<dyn ObjectStore>) {
    memory_stores().insert(name.to_string(), store);
}
