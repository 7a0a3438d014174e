//! What a `gem push` through the proxy changes: the pushed bytes are copied to a temporary
//! file on their way to GitLab; once GitLab accepted them, the gem's name and version are read
//! from that copy, its project's RubyGems answers await the version, and the copy becomes the
//! stored `.gem`, so the first download after a push costs GitLab no transfer. The gem is read
//! with [`crate::gems::gem_file`], which stops at `metadata.gz`.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::header::HeaderValue;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::body::{self, Body, BoxError};
use crate::cache::fill::{Joined, NotStarted};
use crate::gems::gem_file;
use crate::protocol::rubygems::GemName;
use crate::route::PackageRoute;
use crate::state::AppState;

/// Read size when the copy is stored.
const READ_SIZE: usize = 64 * 1024;

/// The copy of an upload being written, and where it will be once complete.
pub(super) struct Copy {
    done: oneshot::Receiver<PathBuf>,
}

/// Streams `upload` on unchanged while writing each piece to a new file under the data
/// directory. Without a file (the directory is not writable) the upload is not copied.
pub(super) async fn tee<B>(state: &AppState, upload: B) -> (Body, Option<Copy>)
where
    B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError> + Send,
{
    let dir = state.config.data_dir.join("uploads");
    let mut name = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut name);
    let path = dir.join(format!("{}.gem", hex::encode(name)));
    let file = match tokio::fs::create_dir_all(&dir).await {
        Ok(()) => tokio::fs::File::create(&path).await,
        Err(e) => Err(e),
    };
    let file = match file {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(error = %e, "cannot copy the upload; the push is relayed only");
            return (body::boxed(upload), None);
        }
    };
    let (done_tx, done) = oneshot::channel();
    struct Teeing<B> {
        upload: B,
        file: Option<tokio::fs::File>,
        path: PathBuf,
        done: Option<oneshot::Sender<PathBuf>>,
    }
    impl<B> Drop for Teeing<B> {
        fn drop(&mut self) {
            // Dropped mid-upload (the client or GitLab went away): nothing will read the copy.
            if self.file.take().is_some() {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
    let start = Teeing {
        upload,
        file: Some(file),
        path,
        done: Some(done_tx),
    };
    let frames = futures_util::stream::unfold(Some(start), |teeing| async move {
        let mut teeing = teeing?;
        match teeing.upload.frame().await {
            Some(Ok(frame)) => {
                if let (Some(data), Some(file)) = (frame.data_ref(), teeing.file.as_mut()) {
                    if let Err(e) = file.write_all(data).await {
                        tracing::warn!(error = %e, "copying the upload failed; relaying only");
                        teeing.file = None;
                        remove(&teeing.path).await;
                    }
                }
                // hyper stops polling a body once its declared length is sent, so the end
                // is noticed here rather than by a last poll.
                if teeing.upload.is_end_stream() {
                    finish(&mut teeing.file, &teeing.path, &mut teeing.done).await;
                }
                Some((Ok(frame), Some(teeing)))
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                teeing.file = None;
                remove(&teeing.path).await;
                Some((Err(e), None))
            }
            None => {
                finish(&mut teeing.file, &teeing.path, &mut teeing.done).await;
                None
            }
        }
    });
    let frames: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, BoxError>> + Send>,
    > = Box::pin(frames);
    (body::boxed(StreamBody::new(frames)), Some(Copy { done }))
}

/// The copy is complete: hands its path to whoever waits for it (or removes it).
async fn finish(
    file: &mut Option<tokio::fs::File>,
    path: &Path,
    done: &mut Option<oneshot::Sender<PathBuf>>,
) {
    let Some(mut file) = file.take() else {
        return;
    };
    let flushed = file.flush().await;
    drop(file);
    match (flushed, done.take()) {
        (Ok(()), Some(done)) => {
            if let Err(path) = done.send(path.to_owned()) {
                remove(&path).await;
            }
        }
        _ => remove(path).await,
    }
}

/// GitLab did not accept the upload: the copy is of no use.
pub(super) async fn discard(copy: Copy) {
    let mut done = copy.done;
    done.close();
    if let Ok(path) = done.try_recv() {
        remove(&path).await;
    }
}

/// After GitLab's `201`: reads the copy, makes the project's answers await the version, and
/// stores the copy as the project's `<name>-<version>.gem`.
pub(super) async fn accepted(state: &AppState, route: &PackageRoute, copy: Option<Copy>) {
    let project = route.project.as_raw();
    // Whatever the gem turns out to be, the project changed.
    state.freshness.bump(project);
    let Some(copy) = copy else {
        return;
    };
    // GitLab answered after reading the whole body, so the copy is complete or never will be.
    let Ok(path) = copy.done.await else {
        return;
    };
    let read = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path).map_err(gem_file::GemFileError::from)?;
            gem_file::read_spec(std::io::BufReader::new(file))
        })
        .await
    };
    let gem = match read {
        Ok(Ok(spec)) => PushedGem::from_spec(&spec),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("reading the copy stopped: {e}")),
    };
    let gem = match gem {
        Ok(gem) => gem,
        Err(e) => {
            tracing::info!(error = %e, "GitLab accepted an upload the proxy cannot read as a gem");
            remove(&path).await;
            return;
        }
    };
    state.freshness.await_push(
        project,
        gem.name.as_str(),
        &gem.version,
        state.config.cache.push_window,
    );
    keep(state, route, &gem, path).await;
    // The compact index and the indexes written from it are rebuilt with the pushed version.
    state.catalogs.invalidate(project).await;
}

/// Who a pushed gem says it is, checked for use in storage keys and version matching.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PushedGem {
    name: GemName,
    /// As written in the gem (`Gem::Version#to_s`).
    version: String,
}

impl PushedGem {
    /// The name and version of a specification read from the gem's `metadata.gz`; an error
    /// (said for the log) when either could not name a stored file.
    fn from_spec(spec: &gem_file::GemSpec) -> Result<PushedGem, String> {
        let name = GemName::parse(&spec.name).map_err(|e| e.to_string())?;
        let version = spec.version.trim();
        let plausible = !version.is_empty()
            && version.len() <= 128
            && version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plausible {
            return Err("the gem's version is not valid".to_owned());
        }
        Ok(PushedGem {
            name,
            version: version.to_owned(),
        })
    }

    /// The file name GitLab stores it under: `<name>-<version>.gem`, never with a platform
    /// (reference §3.2).
    fn file_name(&self) -> String {
        format!("{}-{}.gem", self.name.as_str(), self.version)
    }
}

/// Stores the copy as the `.gem` GitLab will serve for this name and version.
async fn keep(state: &AppState, route: &PackageRoute, gem: &PushedGem, path: PathBuf) {
    let file_name = gem.file_name();
    let Some(key) = route.gem_file_key(&file_name) else {
        remove(&path).await;
        return;
    };
    let len = match tokio::fs::metadata(&path).await {
        Ok(meta) => meta.len(),
        Err(_) => {
            remove(&path).await;
            return;
        }
    };
    let Joined::Leader(leader) = state.fills.join(&key) else {
        // Someone is fetching it from GitLab right now: that fill stores it.
        remove(&path).await;
        return;
    };
    let disposition = format!("attachment; filename=\"{file_name}\"; filename*=UTF-8''{file_name}");
    let headers = vec![
        (
            "content-type".to_owned(),
            "application/octet-stream".to_owned(),
        ),
        ("content-disposition".to_owned(), disposition),
        ("content-transfer-encoding".to_owned(), "binary".to_owned()),
    ];
    if HeaderValue::from_str(&headers[1].1).is_err() {
        remove(&path).await;
        return;
    }
    let file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(_) => {
            remove(&path).await;
            return;
        }
    };
    match leader
        .start(headers, Some(len), read_and_remove(file, path.clone()))
        .await
    {
        // Nobody reads the leader's copy: the fill stores the file on its own.
        Ok(_unread) => {}
        Err(NotStarted { error, .. }) => {
            tracing::warn!(error = %error, "storing the pushed gem failed");
            remove(&path).await;
        }
    }
}

type FileFrames = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>,
>;

/// The file as a body; the file is removed once read to the end or on error.
fn read_and_remove(file: tokio::fs::File, path: PathBuf) -> StreamBody<FileFrames> {
    let frames = futures_util::stream::unfold(Some((file, path)), |state| async move {
        let (mut file, path) = state?;
        let mut buf = vec![0u8; READ_SIZE];
        match file.read(&mut buf).await {
            Ok(0) => {
                remove(&path).await;
                None
            }
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Frame::data(Bytes::from(buf))), Some((file, path))))
            }
            Err(e) => {
                remove(&path).await;
                Some((Err(e), None))
            }
        }
    });
    let frames: FileFrames = Box::pin(frames);
    StreamBody::new(frames)
}

async fn remove(path: &Path) {
    if let Err(e) = tokio::fs::remove_file(path).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, path = %path.display(), "removing an upload copy failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, version: &str, platform: &str) -> gem_file::GemSpec {
        gem_file::GemSpec {
            name: name.to_owned(),
            version: version.to_owned(),
            platform: platform.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn a_pushed_gem_is_stored_under_name_and_version_only() {
        let gem = PushedGem::from_spec(&spec("acme-util", "1.2.0", "ruby")).unwrap();
        assert_eq!(gem.file_name(), "acme-util-1.2.0.gem");
        let native = PushedGem::from_spec(&spec("acme-util", "1.2.0", "x86_64-linux")).unwrap();
        assert_eq!(native.file_name(), "acme-util-1.2.0.gem");
    }

    #[test]
    fn names_and_versions_that_cannot_name_a_file_are_refused() {
        for (name, version) in [
            ("acme", "../../x"),
            ("acme", ""),
            ("acme", "1.0 beta"),
            ("../acme", "1.0.0"),
            ("", "1.0.0"),
        ] {
            assert!(
                PushedGem::from_spec(&spec(name, version, "ruby")).is_err(),
                "{name:?} {version:?}"
            );
        }
    }
}
