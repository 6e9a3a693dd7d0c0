//! A store that wraps a real store and fails, delays, shortens or
//! lengthens calls by rule (object_store's `ThrottledStore` is the shape):
//! the n-th GET of a key, every PUT of a manifest, a multipart part, a LIST,
//! a DELETE. Every call is logged, so a test can also check what the job
//! did (an aborted upload, no DELETE after a failed commit).

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

/// A kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    List,
    Get,
    Head,
    Put,
    /// Starting a multipart upload.
    PutMultipart,
    /// One part of a multipart upload (the n-th part of one upload is the
    /// n-th call that matches the rule).
    PutPart,
    Complete,
    Abort,
    Delete,
    Copy,
    Rename,
}

/// What a rule does to a call.
#[derive(Debug, Clone)]
pub enum Act {
    /// Fails with a store error carrying this text (a 503 after object_store
    /// gave up, a reset connection).
    Fail(&'static str),
    /// Waits, then does the call.
    Delay(Duration),
    /// A GET whose body is this many bytes shorter than it says.
    Short(usize),
    /// A GET whose body has this many bytes more than asked for.
    Long(usize),
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub op: Op,
    /// The call's path contains this.
    pub key: String,
    /// Only the n-th matching call (from 1); every one when `None`.
    pub nth: Option<usize>,
    pub act: Act,
}

impl Rule {
    pub fn new(op: Op, key: &str, nth: Option<usize>, act: Act) -> Self {
        Self {
            op,
            key: key.to_string(),
            nth,
            act,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    rules: Vec<(Rule, usize)>,
    calls: Vec<(Op, String)>,
    injected: usize,
}

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    state: Arc<Mutex<State>>,
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.inner)
    }
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            state: Arc::default(),
        })
    }

    pub fn add(&self, rule: Rule) {
        self.state.lock().unwrap().rules.push((rule, 0));
    }

    pub fn clear(&self) {
        let mut s = self.state.lock().unwrap();
        s.rules.clear();
        s.calls.clear();
    }

    /// The paths of the calls of kind `op`, in order.
    pub fn calls(&self, op: Op) -> Vec<String> {
        let s = self.state.lock().unwrap();
        s.calls
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// How many faults were injected.
    pub fn injected(&self) -> usize {
        self.state.lock().unwrap().injected
    }

    fn check(&self, op: Op, path: &str) -> Option<Act> {
        check(&self.state, op, path)
    }
}

fn check(state: &Mutex<State>, op: Op, path: &str) -> Option<Act> {
    let mut s = state.lock().unwrap();
    s.calls.push((op, path.to_string()));
    let mut hit = None;
    for (rule, seen) in s.rules.iter_mut() {
        if rule.op != op || !path.contains(&rule.key) {
            continue;
        }
        *seen += 1;
        if rule.nth.is_none_or(|n| n == *seen) && hit.is_none() {
            hit = Some(rule.act.clone());
        }
    }
    if hit.is_some() {
        s.injected += 1;
    }
    hit
}

fn injected(what: &'static str, path: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("{what} (injected, {path})").into(),
    }
}

/// Applies a rule that fails or delays; hands back body changes.
async fn apply(act: Option<Act>, path: &str) -> object_store::Result<Option<Act>> {
    match act {
        Some(Act::Fail(what)) => Err(injected(what, path)),
        Some(Act::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok(None)
        }
        other => Ok(other),
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        apply(self.check(Op::Put, location.as_ref()), location.as_ref()).await?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        apply(
            self.check(Op::PutMultipart, location.as_ref()),
            location.as_ref(),
        )
        .await?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            state: Arc::clone(&self.state),
            path: location.to_string(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { Op::Head } else { Op::Get };
        let change = apply(self.check(op, location.as_ref()), location.as_ref()).await?;
        let got = self.inner.get_opts(location, options).await?;
        let Some(change) = change else {
            return Ok(got);
        };
        let (meta, range, attributes) =
            (got.meta.clone(), got.range.clone(), got.attributes.clone());
        let mut body = got.bytes().await?.to_vec();
        match change {
            Act::Short(n) => body.truncate(body.len().saturating_sub(n)),
            Act::Long(n) => body.extend(std::iter::repeat_n(0x28, n)),
            Act::Fail(_) | Act::Delay(_) => {}
        }
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::once(async move { Ok(Bytes::from(body)) }).boxed(),
            ),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let opts = GetOptions {
                range: Some(r.clone().into()),
                ..Default::default()
            };
            out.push(self.get_opts(location, opts).await?.bytes().await?);
        }
        Ok(out)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let state = Arc::clone(&self.state);
        let inner = Arc::clone(&self.inner);
        locations
            .and_then(move |p| {
                let state = Arc::clone(&state);
                let inner = Arc::clone(&inner);
                async move {
                    apply(check(&state, Op::Delete, p.as_ref()), p.as_ref()).await?;
                    let mut done =
                        inner.delete_stream(futures::stream::once(async move { Ok(p) }).boxed());
                    done.next().await.expect("one result")
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        match self.check(Op::List, &key) {
            Some(Act::Fail(what)) => {
                futures::stream::once(async move { Err(injected(what, &key)) }).boxed()
            }
            _ => self.inner.list(prefix),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let key = prefix.map(|p| p.to_string()).unwrap_or_default();
        apply(self.check(Op::List, &key), &key).await?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        apply(self.check(Op::Copy, to.as_ref()), to.as_ref()).await?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        apply(self.check(Op::Rename, to.as_ref()), to.as_ref()).await?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    state: Arc<Mutex<State>>,
    path: String,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let act = check(&self.state, Op::PutPart, &self.path);
        let path = self.path.clone();
        let part = self.inner.put_part(data);
        Box::pin(async move {
            apply(act, &path).await?;
            part.await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        apply(check(&self.state, Op::Complete, &self.path), &self.path).await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        apply(check(&self.state, Op::Abort, &self.path), &self.path).await?;
        self.inner.abort().await
    }
}
