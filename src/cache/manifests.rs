//! Manifests: fetched once however many ask, verified against the digest
//! asked for or claimed, stored exactly as sent and never replaced; tags
//! re-checked upstream when their policy says they are stale.

use std::sync::Arc;
use std::time::SystemTime;

use tracing::{debug, info, warn};

use super::index::{Manifest, TagEntry};
use super::policy::Revalidate;
use super::store::StoredManifest;
use super::{Cache, CacheOutcome, Error, Inner, Locator, ManifestResult, blocking};
use crate::oci::{Digest, ManifestView, Reference, Tag};

impl Cache {
    /// A stale tag: re-check it upstream (inline or behind the response).
    pub(super) async fn revalidate(&self, loc: &Locator, tag: &Tag, cached: Arc<Manifest>) -> ManifestResult {
        let (this, l, t, c) = (self.inner.clone(), loc.clone(), tag.clone(), cached.clone());
        let key = format!("{loc}@{tag}?recheck");
        let work = async move { this.recheck_tag(&l, &t, c).await };
        match self.inner.revalidate {
            Revalidate::Inline => self.flight(key, work).await,
            Revalidate::Background => {
                let this = self.clone();
                tokio::spawn(async move { this.flight(key, work).await });
                info!(repo = %loc, %tag, "serving manifest from cache; re-checking the tag in the background");
                Ok((cached, CacheOutcome::Hit))
            }
        }
    }

    pub(super) async fn flight(
        &self,
        key: String,
        work: impl Future<Output = ManifestResult> + Send + 'static,
    ) -> ManifestResult {
        match self.inner.flights.run(key.clone(), || work).await {
            (Some(r), true) => r,
            (Some(Ok((m, CacheOutcome::Stale))), false) => Ok((m, CacheOutcome::Stale)),
            (Some(Ok((m, _))), false) => Ok((m, CacheOutcome::Joined)),
            (Some(Err(e)), _) => Err(e),
            (None, _) => {
                warn!(%key, "a manifest fetch panicked");
                Err(Error::Panicked { key })
            }
        }
    }
}

impl Inner {
    pub(super) fn is_stale(&self, loc: &Locator, tag: &Tag, entry: &TagEntry) -> bool {
        if self.upstreams.is_air_gapped() {
            return false;
        }
        let age = entry.checked.elapsed().unwrap_or_default();
        self.tag_policy.is_stale(loc.registry.as_str(), loc.repo.as_str(), tag.as_str(), age)
    }

    /// Asks the upstream (HEAD) where a stale tag points now. Unchanged: the
    /// cached manifest, marked fresh. Moved: the new manifest. Any failure:
    /// the cached manifest (stale-if-error), logged.
    pub(super) async fn recheck_tag(
        self: &Arc<Self>,
        loc: &Locator,
        tag: &Tag,
        cached: Arc<Manifest>,
    ) -> ManifestResult {
        let checked = async {
            let registry = self.upstreams.get(&loc.registry)?;
            registry.manifest_digest(&loc.repo, &Reference::Tag(tag.clone())).await.map_err(Error::from)
        }
        .await;
        let reference = Reference::Tag(tag.clone());
        let result = match checked {
            Ok(Some(d)) if d == cached.digest => {
                self.confirm_tag(loc, tag, &cached.digest);
                info!(repo = %loc, %tag, digest = %d, "tag unchanged upstream; serving manifest from cache");
                return Ok((cached, CacheOutcome::Revalidated));
            }
            Ok(now) => {
                info!(repo = %loc, %tag, was = %cached.digest, now = now.map_or("?".into(), |d| d.to_string()), "tag moved upstream; pulling manifest from upstream");
                self.fetch_manifest(loc, &reference).await
            }
            Err(e) => Err(e),
        };
        result.or_else(|e| {
            self.metrics.stale_serves.inc();
            warn!(repo = %loc, %tag, digest = %cached.digest, error = %e, "tag re-check failed; serving the cached manifest (stale-if-error)");
            Ok((cached, CacheOutcome::Stale))
        })
    }

    fn confirm_tag(self: &Arc<Self>, loc: &Locator, tag: &Tag, digest: &Digest) {
        let now = SystemTime::now();
        self.index.insert_tag(
            &loc.registry,
            &loc.repo,
            tag,
            TagEntry { digest: digest.clone(), checked: now },
        );
        let (this, l, t) = (self.clone(), loc.clone(), tag.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = this.store.touch_tag(&l.registry, &l.repo, &t, now) {
                warn!(repo = %l, tag = %t, error = %e, "could not record the tag's re-check time");
            }
        });
    }

    pub(super) async fn fetch_manifest(
        self: &Arc<Self>,
        loc: &Locator,
        reference: &Reference,
    ) -> ManifestResult {
        let registry = self.upstreams.get(&loc.registry)?;
        info!(repo = %loc, %reference, upstream = %registry.endpoint(), "pulling manifest from upstream");
        let fetched = registry.manifest(&loc.repo, reference).await?;
        let invalid = |source| Error::InvalidManifest { registry: loc.registry.clone(), source };
        let view = ManifestView::parse(&fetched.bytes, fetched.content_type.as_deref()).map_err(invalid)?;

        // Verify against what was asked for (a digest) or what the upstream claimed.
        let claimed = match reference {
            Reference::Digest(d) => Some(d.clone()),
            Reference::Tag(_) => fetched.digest.clone(),
        };
        let algorithm = claimed.as_ref().map_or(crate::oci::Algorithm::Sha256, Digest::algorithm);
        let digest = Digest::of(algorithm, &fetched.bytes);
        if let Some(expected) = claimed.filter(|c| *c != digest) {
            return Err(Error::DigestMismatch { expected, actual: digest });
        }

        if let Some(served) =
            fetched.content_type.as_deref().filter(|t| !t.starts_with(view.media_type.as_str()))
        {
            debug!(repo = %loc, %reference, served, media_type = %view.media_type, "upstream's Content-Type differs from the manifest's own media type; using the manifest's");
        }
        let size = Some(fetched.bytes.len() as u64);
        // A manifest cached by digest is never replaced: the first copy (and
        // the media type it is served with) stays, whoever fetches it again.
        let (manifest, new) = match self.index.manifest(&digest) {
            Some(cached) => {
                if cached.media_type != view.media_type {
                    warn!(repo = %loc, %digest, cached = %cached.media_type, upstream = %view.media_type, "upstream serves a cached manifest with another media type; keeping the cached one");
                }
                (cached, false)
            }
            None => (Arc::new(Manifest::new(digest.clone(), view, fetched.bytes.len() as u64)), true),
        };
        let stored = StoredManifest {
            digest: digest.clone(),
            media_type: manifest.media_type.to_string(),
            bytes: fetched.bytes.clone(),
        };
        let (this, m, l, r) = (self.clone(), manifest.clone(), loc.clone(), reference.clone());
        blocking("storing a manifest", move || {
            if new {
                this.store.put_manifest(&stored)?;
            }
            match &r {
                Reference::Tag(t) => this.store.put_tag(&l.registry, &l.repo, t, &m.digest),
                // A tag's links are derived from the tag; a digest pull needs its own.
                Reference::Digest(d) => this.store.add_links(&l, &[(d.clone(), size)]),
            }
        })
        .await?
        .map_err(|e| Error::io(format!("storing manifest {digest} for {loc}"), e))?;
        let manifest = self.index.insert_manifest(manifest);
        // The client that asked is about to be sent it.
        self.bodies.insert(&digest, fetched.bytes);
        self.links.insert_manifest_tree(&self.index, loc, &digest, size);
        if let Reference::Tag(t) = reference {
            let entry = TagEntry { digest: digest.clone(), checked: SystemTime::now() };
            self.index.insert_tag(&loc.registry, &loc.repo, t, entry);
        }
        info!(repo = %loc, %reference, %digest, media_type = %manifest.media_type, bytes = manifest.len, "cached manifest");
        Ok((manifest, CacheOutcome::Miss))
    }
}
