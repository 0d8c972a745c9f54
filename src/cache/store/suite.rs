//! The test suite every storage backend runs (distribution's storage-driver
//! suite is the model): what the cache relies on, said once, checked for all.

use std::os::unix::fs::FileExt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::{Committed, Store, StoredManifest};
use crate::cache::Locator;
use crate::oci::{Algorithm, Digest, RegistryHost, RepoName, Tag};

/// What a reader that opened a blob sees once it is removed.
pub enum Removal {
    /// Reads on (an unlinked file).
    StaysReadable,
    /// Fails (a deleted object): prune's grace period spares recent pulls there.
    GoneAtOnce,
}

pub fn run_all(store: &dyn Store, removal: Removal) {
    store.prepare().expect("prepare");
    a_blob_is_visible_only_once_committed_whole(store);
    a_partial_left_by_a_crash_is_invisible_and_resumable(store);
    concurrent_writers_of_one_digest_keep_the_first_commit(store);
    readers_see_a_growing_partial(store);
    match removal {
        Removal::StaysReadable => a_removed_blob_stays_readable_by_whoever_holds_it(store),
        Removal::GoneAtOnce => a_removed_blob_is_gone(store),
    }
    corrupt_blobs_are_quarantined_out_of_sight(store);
    manifests_are_written_once_and_verified_when_listed(store);
    tags_and_links_are_listed_back(store);
    what_is_pruned_is_gone_and_pull_times_keep_the_latest(store);
    the_generation_changes_on_every_bump(store);
}

fn blob(seed: u8, len: usize) -> (Digest, Vec<u8>) {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    (Digest::of(Algorithm::Sha256, &bytes), bytes)
}

fn read_all(store: &dyn Store, d: &Digest) -> Option<Vec<u8>> {
    let (r, len) = store.open_blob(d).expect("open")?;
    let mut buf = vec![0; len as usize];
    let mut at = 0;
    while at < buf.len() {
        let n = r.read_at(&mut buf[at..], at as u64).expect("read");
        assert!(n > 0, "the blob ended at {at} of {len}");
        at += n;
    }
    Some(buf)
}

fn a_blob_is_visible_only_once_committed_whole(store: &dyn Store) {
    let (d, bytes) = blob(1, 100_000);
    let p = store.begin_blob(&d).unwrap().expect("not committed yet");
    p.file.write_all_at(&bytes[..50_000], 0).unwrap();
    assert!(store.open_blob(&d).unwrap().is_none(), "a partial is visible");
    assert_eq!(store.blob_len(&d).unwrap(), None);
    p.file.write_all_at(&bytes[50_000..], 50_000).unwrap();
    assert_eq!(store.commit_blob(&p, &d, bytes.len() as u64).unwrap(), Committed::Created);
    assert_eq!(read_all(store, &d).as_deref(), Some(&bytes[..]));
    assert_eq!(store.blob_len(&d).unwrap(), Some(bytes.len() as u64));
    assert!(store.begin_blob(&d).unwrap().is_none(), "a committed blob is not written again");
    assert!(store.blobs().contains(&(d, bytes.len() as u64)));
}

fn a_partial_left_by_a_crash_is_invisible_and_resumable(store: &dyn Store) {
    let (d, bytes) = blob(2, 30_000);
    assert!(!store.downloading_elsewhere(&d));
    let p = store.begin_blob(&d).unwrap().unwrap();
    assert!(store.downloading_elsewhere(&d), "a held partial is another writer's download");
    p.file.write_all_at(&bytes[..12_000], 0).unwrap();
    store.abandon_blob(&p, true);
    drop(p);
    assert!(store.open_blob(&d).unwrap().is_none(), "an abandoned partial is visible");
    let p = store.begin_blob(&d).unwrap().unwrap();
    assert_eq!(p.adopted, 12_000, "the next writer resumes from what was left");
    p.file.write_all_at(&bytes[12_000..], 12_000).unwrap();
    store.commit_blob(&p, &d, bytes.len() as u64).unwrap();
    assert_eq!(read_all(store, &d).as_deref(), Some(&bytes[..]));

    let (d, bytes) = blob(3, 1000);
    let p = store.begin_blob(&d).unwrap().unwrap();
    p.file.write_all_at(&bytes, 0).unwrap();
    store.abandon_blob(&p, false);
    drop(p);
    assert_eq!(store.begin_blob(&d).unwrap().unwrap().adopted, 0, "a partial given up for good is gone");
}

fn concurrent_writers_of_one_digest_keep_the_first_commit(store: &dyn Store) {
    let (d, bytes) = blob(4, 20_000);
    let first = store.begin_blob(&d).unwrap().unwrap();
    let second = store.begin_blob(&d).unwrap().expect("a second writer gets a partial of its own");
    assert_ne!(first.path, second.path, "two writers share one partial");
    first.file.write_all_at(&bytes, 0).unwrap();
    second.file.write_all_at(&bytes, 0).unwrap();
    let reader = store.open_blob(&d).unwrap();
    assert!(reader.is_none());
    assert_eq!(store.commit_blob(&second, &d, bytes.len() as u64).unwrap(), Committed::Created);
    let (held, _) = store.open_blob(&d).unwrap().unwrap();
    assert_eq!(store.commit_blob(&first, &d, bytes.len() as u64).unwrap(), Committed::AlreadyThere);
    let mut buf = vec![0; bytes.len()];
    held.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, bytes);
    assert_eq!(read_all(store, &d).as_deref(), Some(&bytes[..]));
}

fn readers_see_a_growing_partial(store: &dyn Store) {
    let (d, bytes) = blob(5, 64_000);
    let p = store.begin_blob(&d).unwrap().unwrap();
    let reader = p.file.clone();
    let mut buf = vec![0; 16_000];
    for (i, chunk) in bytes.chunks(16_000).enumerate() {
        let at = (i * 16_000) as u64;
        p.file.write_all_at(chunk, at).unwrap();
        reader.read_exact_at(&mut buf[..chunk.len()], at).unwrap();
        assert_eq!(&buf[..chunk.len()], chunk, "a reader of the partial sees what was written");
    }
    store.abandon_blob(&p, false);
}

fn a_removed_blob_stays_readable_by_whoever_holds_it(store: &dyn Store) {
    let (d, bytes) = blob(6, 10_000);
    store.put_blob(&d, &bytes).unwrap();
    let (held, len) = store.open_blob(&d).unwrap().unwrap();
    store.remove_blob(&d).unwrap();
    assert!(store.open_blob(&d).unwrap().is_none());
    let mut buf = vec![0; len as usize];
    held.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, bytes, "a reader that held the blob reads it whole");
}

fn a_removed_blob_is_gone(store: &dyn Store) {
    let (d, bytes) = blob(6, 10_000);
    store.put_blob(&d, &bytes).unwrap();
    store.remove_blob(&d).unwrap();
    assert!(store.open_blob(&d).unwrap().is_none());
    assert!(!store.blobs().iter().any(|(b, _)| *b == d));
    store.remove_blob(&d).expect("removing what is gone is not an error");
}

fn corrupt_blobs_are_quarantined_out_of_sight(store: &dyn Store) {
    let (d, bytes) = blob(7, 500);
    store.put_blob(&d, &bytes).unwrap();
    store.quarantine_blob(&d).unwrap();
    assert!(store.open_blob(&d).unwrap().is_none());
    assert!(!store.blobs().iter().any(|(b, _)| *b == d));
    assert!(store.begin_blob(&d).unwrap().is_some(), "a quarantined blob can be fetched again");
}

fn manifests_are_written_once_and_verified_when_listed(store: &dyn Store) {
    let bytes = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
    );
    let digest = Digest::of(Algorithm::Sha256, &bytes);
    let m = |media_type: &str| StoredManifest {
        digest: digest.clone(),
        media_type: media_type.into(),
        bytes: bytes.clone(),
    };
    store.put_manifest(&m("application/vnd.oci.image.manifest.v1+json")).unwrap();
    store.put_manifest(&m("text/evil")).unwrap();
    let listed: Vec<_> = store.manifests().into_iter().filter_map(Result::ok).collect();
    let found = listed.iter().find(|l| l.digest == digest).expect("the manifest is listed");
    assert_eq!(
        found.media_type, "application/vnd.oci.image.manifest.v1+json",
        "a stored manifest was replaced"
    );
    assert_eq!(found.bytes, bytes);

    let lie = StoredManifest {
        digest: Digest::of(Algorithm::Sha256, b"other"),
        media_type: "x/y".into(),
        bytes: bytes.clone(),
    };
    store.put_manifest(&lie).unwrap();
    let skipped = store
        .manifests()
        .into_iter()
        .filter_map(Result::err)
        .find(|s| s.digest.as_ref() == Some(&lie.digest));
    assert!(skipped.is_some(), "a manifest whose bytes do not match its digest is listed as skipped");
    // Read alone (a body not held in memory), the same checks hold.
    let one = store.manifest(&digest).expect("readable").expect("present");
    assert_eq!((one.media_type.as_str(), &one.bytes), ("application/vnd.oci.image.manifest.v1+json", &bytes));
    assert!(
        store.manifest(&lie.digest).is_err(),
        "a manifest that does not match its digest is never read back"
    );
    store.quarantine_manifest(&lie.digest).unwrap();
    assert!(store.manifests().into_iter().all(|r| r.is_ok()));
    assert!(matches!(store.manifest(&lie.digest), Ok(None)), "a quarantined manifest is absent");
}

fn tags_and_links_are_listed_back(store: &dyn Store) {
    let registry = RegistryHost::parse("r.test:5000").unwrap();
    let repo = RepoName::parse("team/app").unwrap();
    let tag = Tag::parse("V1").unwrap();
    let (d, _) = blob(8, 10);
    store.put_tag(&registry, &repo, &tag, &d).unwrap();
    let then = SystemTime::now() - Duration::from_secs(3600);
    store.touch_tag(&registry, &repo, &tag, then).unwrap();
    let tags: Vec<_> = store.tags().into_iter().filter_map(Result::ok).collect();
    let t = tags.iter().find(|t| t.tag == tag).expect("the tag is listed");
    assert_eq!((&t.registry, &t.repo, &t.digest), (&registry, &repo, &d));
    assert!(t.checked.duration_since(then).unwrap_or_default() < Duration::from_secs(2));

    let loc = Locator { registry, repo };
    store.add_links(&loc, &[(d.clone(), Some(10)), (blob(9, 1).0, None)]).unwrap();
    let links: Vec<_> = store.links().into_iter().filter_map(Result::ok).collect();
    assert!(links.contains(&(loc.clone(), d.clone(), Some(10))));
    assert_eq!(links.iter().filter(|(l, ..)| *l == loc).count(), 2);

    // One repository alone: its tags and root links, and nothing of a nested one.
    let nested = Locator { registry: loc.registry.clone(), repo: RepoName::parse("team/app/sub").unwrap() };
    store.put_tag(&nested.registry, &nested.repo, &Tag::parse("other").unwrap(), &d).unwrap();
    let tags: Vec<_> = store.repo_tags(&loc).into_iter().map(Result::unwrap).collect();
    assert_eq!(tags.iter().map(|t| (&t.tag, &t.digest)).collect::<Vec<_>>(), [(&tag, &d)]);
    let links: Vec<_> = store.repo_links(&loc).into_iter().map(Result::unwrap).collect();
    assert_eq!(links.len(), 2);
    assert!(links.contains(&(d, Some(10))));
    let nowhere = Locator { registry: loc.registry.clone(), repo: RepoName::parse("never/cached").unwrap() };
    assert!(store.repo_tags(&nowhere).is_empty() && store.repo_links(&nowhere).is_empty());
}

fn what_is_pruned_is_gone_and_pull_times_keep_the_latest(store: &dyn Store) {
    let loc =
        Locator { registry: RegistryHost::parse("p.test").unwrap(), repo: RepoName::parse("x/y").unwrap() };
    let tag = Tag::parse("gone").unwrap();
    let (d, _) = blob(10, 10);
    store.put_tag(&loc.registry, &loc.repo, &tag, &d).unwrap();
    store.remove_tag(&loc.registry, &loc.repo, &tag).unwrap();
    store.remove_tag(&loc.registry, &loc.repo, &tag).expect("removing what is gone is not an error");
    assert!(store.tags().into_iter().filter_map(Result::ok).all(|t| t.tag != tag));

    let bytes = Bytes::from_static(br#"{"schemaVersion":2,"manifests":[]}"#);
    let md = Digest::of(Algorithm::Sha256, &bytes);
    store.put_manifest(&StoredManifest { digest: md.clone(), media_type: "x/y".into(), bytes }).unwrap();
    assert!(store.manifest_stored_at(&md).is_some());
    store.remove_manifest(&md).unwrap();
    assert!(store.manifest_stored_at(&md).is_none());
    assert!(store.manifests().into_iter().filter_map(Result::ok).all(|m| m.digest != md));

    let other = blob(11, 10).0;
    store.add_links(&loc, &[(d.clone(), Some(10)), (other.clone(), None)]).unwrap();
    let linked = || store.links().into_iter().filter_map(Result::ok).filter(|(l, ..)| *l == loc).count();
    assert_eq!(linked(), 2);
    store.unlink(&loc, std::slice::from_ref(&d)).unwrap();
    assert_eq!(linked(), 1, "only the named link goes");
    store.unlink(&loc, &[other]).unwrap();
    assert_eq!(linked(), 0);

    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let later = t0 + Duration::from_secs(60);
    store.record_pulls(&loc, &[("v1".into(), later), (d.to_string(), t0)]).unwrap();
    store.record_pulls(&loc, &[("v1".into(), t0)]).unwrap();
    let pulls: Vec<_> =
        store.pulls().into_iter().filter_map(Result::ok).filter(|(l, ..)| *l == loc).collect();
    assert!(pulls.contains(&(loc.clone(), "v1".into(), later)), "an earlier time never wins: {pulls:?}");
    assert_eq!(pulls.len(), 2);
    store.forget_pulls(&loc, &["v1".into()]).unwrap();
    let pulls: Vec<_> =
        store.pulls().into_iter().filter_map(Result::ok).filter(|(l, ..)| *l == loc).collect();
    assert_eq!(pulls, vec![(loc, d.to_string(), t0)]);
}

fn the_generation_changes_on_every_bump(store: &dyn Store) {
    assert!(!store.blobs_held());
    let hold = store.hold_blobs().unwrap();
    assert!(store.blobs_held(), "an import's hold is seen");
    drop(hold);
    assert!(!store.blobs_held(), "and gone with it");

    store.set_pins(&["docker.io/library/*:*".into(), "quay.io/x:1".into()]).unwrap();
    assert_eq!(store.pins(), vec!["docker.io/library/*:*".to_owned(), "quay.io/x:1".to_owned()]);
    store.set_pins(&[]).unwrap();
    assert!(store.pins().is_empty());

    let before = store.generation();
    store.bump_generation().unwrap();
    let after = store.generation();
    assert_ne!(before, after);
    store.bump_generation().unwrap();
    assert_ne!(store.generation(), after);
}
