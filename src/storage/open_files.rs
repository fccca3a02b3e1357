//! The segment files a store keeps open for reads: a small LRU, so a log
//! of many segments holds at most [`OPEN_FILES_MAX`] descriptors for reads
//! however many segments were ever read (issue 11: before, one per segment
//! read stayed open for the life of the store).
//!
//! An evicted file closes when its last user drops its `Arc` (a read in
//! flight keeps it open until it ends); the writer keeps its own handle of
//! the segment it appends to, so evicting that one closes nothing.

use std::sync::{Arc, Mutex};

use super::file::SegmentFile;

/// Segment files kept open for reads, at most.
pub const OPEN_FILES_MAX: usize = 16;

/// The open segment files, most recently used last.
#[derive(Debug, Default)]
pub struct OpenFiles {
    files: Mutex<Vec<(u64, Arc<dyn SegmentFile>)>>,
}

impl OpenFiles {
    /// A cache holding `files` (at most [`OPEN_FILES_MAX`] of them are kept:
    /// the highest segments).
    pub fn new(files: impl IntoIterator<Item = (u64, Arc<dyn SegmentFile>)>) -> OpenFiles {
        let cache = OpenFiles::default();
        for (segment, file) in files {
            cache.insert(segment, file);
        }
        cache
    }

    /// The open file of `segment`, marked most recently used.
    pub fn get(&self, segment: u64) -> Option<Arc<dyn SegmentFile>> {
        let mut files = self.lock();
        let at = files.iter().position(|(s, _)| *s == segment)?;
        let entry = files.remove(at);
        let file = Arc::clone(&entry.1);
        files.push(entry);
        Some(file)
    }

    /// Keeps `file` as `segment`'s open file (the one already kept wins, so
    /// two readers that raced to open it share one), evicting the least
    /// recently used beyond [`OPEN_FILES_MAX`]. Returns the file kept.
    pub fn insert(&self, segment: u64, file: Arc<dyn SegmentFile>) -> Arc<dyn SegmentFile> {
        let mut files = self.lock();
        if let Some(at) = files.iter().position(|(s, _)| *s == segment) {
            let entry = files.remove(at);
            let kept = Arc::clone(&entry.1);
            files.push(entry);
            return kept;
        }
        if files.len() == OPEN_FILES_MAX {
            files.remove(0);
        }
        files.push((segment, Arc::clone(&file)));
        file
    }

    /// Replaces `segment`'s open file with `file` (the writer's handle of
    /// a segment it just created).
    pub fn replace(&self, segment: u64, file: Arc<dyn SegmentFile>) {
        let mut files = self.lock();
        files.retain(|(s, _)| *s != segment);
        if files.len() == OPEN_FILES_MAX {
            files.remove(0);
        }
        files.push((segment, file));
    }

    /// The number of files kept open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Arc<dyn SegmentFile>)>> {
        self.files
            .lock()
            .expect("open files lock is never held across a panic")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[derive(Debug)]
    struct Fake;

    impl SegmentFile for Fake {
        fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
            Ok(())
        }
        fn preallocate(&self, _: u64, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn trim(&self, _: u64) -> io::Result<()> {
            Ok(())
        }
        fn file_len(&self) -> io::Result<u64> {
            Ok(0)
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn read_exact_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
            Ok(())
        }
    }

    /// Goal: never more than OPEN_FILES_MAX kept; the least recently used goes first.
    #[test]
    fn keeps_at_most_the_bound_and_evicts_least_recently_used() {
        let cache = OpenFiles::default();
        for segment in 0..100u64 {
            cache.insert(segment, Arc::new(Fake));
            assert!(cache.len() <= OPEN_FILES_MAX);
            // Segment 0 is read after every insert: it stays.
            assert!(cache.get(0).is_some(), "segment 0 after {segment}");
        }
        assert_eq!(cache.len(), OPEN_FILES_MAX);
        assert!(cache.get(1).is_none(), "an old, unused segment was evicted");
        assert!(cache.get(99).is_some());
    }

    /// Goal: a second insert of a kept segment returns the kept file.
    #[test]
    fn racing_opens_share_the_kept_file() {
        let cache = OpenFiles::default();
        let first: Arc<dyn SegmentFile> = Arc::new(Fake);
        let kept = cache.insert(7, Arc::clone(&first));
        let again = cache.insert(7, Arc::new(Fake));
        assert!(Arc::ptr_eq(&kept, &again));
        assert!(Arc::ptr_eq(&first, &again));
    }
}
