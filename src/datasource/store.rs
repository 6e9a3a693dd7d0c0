//! Object-store roots: a URL (`file://`, a plain path, `s3://`, `az://`,
//! `abfs://`, `gs://`, `memory:///`, or an `https://` URL of one of those
//! clouds) turned into a store, a prefix inside it and the URL DataFusion
//! registers the store under; or a store the caller built
//! ([`StoreRoot::with_store`]: a test's fault-injecting wrapper, a program
//! embedding tailor).
//!
//! The URL is classified by object_store's own parser
//! ([`ObjectStoreScheme::parse`]); the store is built with the scheme's
//! builder rather than `parse_url_opts`, because only the builders take a
//! [`RetryConfig`] (and a local store that removes the directories its
//! deletes leave empty). Each run registers its stores in its own
//! DataFusion session (`SessionContext::register_object_store`, the
//! session's `ObjectStoreRegistry`); nothing is registered process-wide.

use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreScheme, RetryConfig};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{url:?} is not a URL or a path: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("unsupported URL {0:?} (file, s3, az/abfs, gs, memory and their https forms are)")]
    Scheme(String),
    #[error("configuring the object store for {url:?}: {source}")]
    Build {
        url: String,
        #[source]
        source: object_store::Error,
    },
}

/// How stores opened from URLs behave.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Retries of failed requests to remote stores (object_store's
    /// defaults when `None`).
    pub retry: Option<RetryConfig>,
}

/// A root inside an object store.
#[derive(Clone)]
pub struct StoreRoot {
    pub store: Arc<dyn ObjectStore>,
    /// What DataFusion registers the store under (`scheme://host`).
    pub store_url: ObjectStoreUrl,
    /// The root prefix inside the store.
    pub prefix: Path,
    /// The local filesystem, reached directly: objects can be
    /// memory-mapped and staged files renamed into place.
    pub local: bool,
    /// A `file://` root: object `p` is the local file `/p`, whatever store
    /// reaches it (commits lock the window's directory, as the local
    /// filesystem has no conditional update).
    pub filesystem: bool,
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

/// A URL, or a plain path made absolute (with `..` resolved lexically:
/// object-store paths have none) as a `file://` URL.
fn parse(url: &str) -> Result<Url, StoreError> {
    let bad = |reason: String| StoreError::BadUrl {
        url: url.to_string(),
        reason,
    };
    match Url::parse(url) {
        // A one-letter scheme is a Windows drive, i.e. a path.
        Ok(u) if u.scheme().len() > 1 => Ok(u),
        _ => {
            let abs = std::path::absolute(url).map_err(|e| bad(e.to_string()))?;
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
            Url::from_directory_path(&normal).map_err(|_| bad("not an absolute path".into()))
        }
    }
}

/// The local file of object `location` in a root that reaches the local
/// filesystem (`local`, `filesystem`): `/<location>`.
pub fn local_file(location: &Path) -> std::path::PathBuf {
    std::path::Path::new("/").join(location.as_ref())
}

impl StoreRoot {
    /// Opens a root from a URL or a local path. Cloud stores take their
    /// credentials and endpoints from the environment, as their SDKs do
    /// (`AWS_*`, `AZURE_*`, `GOOGLE_*`).
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, &StoreOptions::default())
    }

    /// [`Self::open`] with options.
    pub fn open_with(url: &str, opts: &StoreOptions) -> Result<Self, StoreError> {
        let parsed = parse(url)?;
        let (scheme, path) =
            ObjectStoreScheme::parse(&parsed).map_err(|_| StoreError::Scheme(url.to_string()))?;
        let build = |r: object_store::Result<Arc<dyn ObjectStore>>| {
            r.map_err(|source| StoreError::Build {
                url: url.to_string(),
                source,
            })
        };
        let retry = opts.retry.clone().unwrap_or_default();
        let store: Arc<dyn ObjectStore> = match scheme {
            // Deleting a run's files (a commit's cleanup) also removes the
            // directories they leave empty, as on an object store.
            ObjectStoreScheme::Local => {
                let p = parsed.to_file_path().map_err(|_| StoreError::BadUrl {
                    url: url.to_string(),
                    reason: "not a local path".into(),
                })?;
                let prefix = Path::from_absolute_path(&p).map_err(|e| StoreError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?;
                return Ok(Self {
                    store: Arc::new(LocalFileSystem::new().with_automatic_cleanup(true)),
                    store_url: ObjectStoreUrl::local_filesystem(),
                    prefix,
                    local: true,
                    filesystem: true,
                    display: url.to_string(),
                });
            }
            ObjectStoreScheme::Memory => Arc::new(InMemory::new()),
            ObjectStoreScheme::AmazonS3 => build(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(parsed.as_str())
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as _),
            )?,
            ObjectStoreScheme::MicrosoftAzure => build(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(parsed.as_str())
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as _),
            )?,
            ObjectStoreScheme::GoogleCloudStorage => build(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(parsed.as_str())
                    .with_retry(retry)
                    .build()
                    .map(|s| Arc::new(s) as _),
            )?,
            _ => return Err(StoreError::Scheme(url.to_string())),
        };
        Self::remote(store, url, &parsed, path)
    }

    /// A root at `url` in a store the caller built. Every read and write
    /// goes through `store`: nothing is memory-mapped or renamed behind it,
    /// even for a `file://` URL.
    pub fn with_store(store: Arc<dyn ObjectStore>, url: &str) -> Result<Self, StoreError> {
        let parsed = parse(url)?;
        let scheme = ObjectStoreScheme::parse(&parsed).map(|(s, _)| s);
        let path = match ObjectStoreScheme::parse(&parsed) {
            Ok((ObjectStoreScheme::Local, _)) => {
                let p = parsed.to_file_path().map_err(|_| StoreError::BadUrl {
                    url: url.to_string(),
                    reason: "not a local path".into(),
                })?;
                Path::from_absolute_path(&p).map_err(|e| StoreError::BadUrl {
                    url: url.to_string(),
                    reason: e.to_string(),
                })?
            }
            Ok((_, path)) => path,
            Err(_) => Path::from_url_path(parsed.path()).map_err(|e| StoreError::BadUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?,
        };
        let mut root = Self::remote(store, url, &parsed, path)?;
        root.filesystem = matches!(scheme, Ok(ObjectStoreScheme::Local));
        Ok(root)
    }

    fn remote(
        store: Arc<dyn ObjectStore>,
        url: &str,
        parsed: &Url,
        prefix: Path,
    ) -> Result<Self, StoreError> {
        let store_url = ObjectStoreUrl::parse(format!(
            "{}://{}",
            parsed.scheme(),
            parsed.host_str().unwrap_or("")
        ))
        .map_err(|e| StoreError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            store,
            store_url,
            prefix,
            local: false,
            filesystem: false,
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

    /// `location` as a URL a person can find it by, for errors: the root's
    /// URL and the path below it.
    pub fn display_of(&self, location: &Path) -> String {
        match self.relative(location) {
            Some(rel) if !rel.is_empty() => {
                format!("{}/{rel}", self.display.trim_end_matches('/'))
            }
            Some(_) => self.display.clone(),
            None => location.to_string(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_become_roots() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/../b");
        let r = StoreRoot::open(p.to_str().unwrap()).unwrap();
        assert!(r.local);
        assert_eq!(
            r.prefix.as_ref(),
            dir.path()
                .join("b")
                .to_str()
                .unwrap()
                .trim_start_matches('/')
        );
        let m = StoreRoot::open("memory:///x/y").unwrap();
        assert!(!m.local);
        assert_eq!(m.prefix.as_ref(), "x/y");
        assert_eq!(m.store_url.as_str(), "memory:///");
        for bad in ["ftp://host/x", "memory://named/x"] {
            let e = StoreRoot::open(bad).unwrap_err();
            assert!(matches!(e, StoreError::Scheme(ref u) if u == bad), "{e}");
        }
        // A store of the caller's: never mapped or renamed behind.
        let w = StoreRoot::with_store(Arc::new(InMemory::new()), "file:///tmp/t/in").unwrap();
        assert!(!w.local);
        assert_eq!(w.prefix.as_ref(), "tmp/t/in");
        assert_eq!(w.child("a/b.tsp").as_ref(), "tmp/t/in/a/b.tsp");
    }
}
