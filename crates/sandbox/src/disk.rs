//! The disk cap on the writable host directories (working copy and `writable_extra`).
//! There are no quotas to lean on (a plain directory on whatever filesystem the host has),
//! so growth is measured: a baseline before the run, periodic walks during it (the command
//! is killed once over the cap) and a final walk after it. The overshoot is bounded by
//! what the command can write between two walks; the private /tmp is a size-limited tmpfs
//! and needs no walking.

use std::path::PathBuf;
use std::time::Duration;

/// Allocated bytes (blocks, so sparse files count for what they use) under `roots`,
/// without following symlinks. Unreadable entries count as zero: the command cannot write
/// into what builder cannot read either.
pub(crate) fn usage(roots: &[PathBuf]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total = total.saturating_add(m.blocks().saturating_mul(512));
        if m.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

#[derive(Debug, Clone)]
pub(crate) struct DiskWatch {
    pub roots: Vec<PathBuf>,
    pub baseline: u64,
    pub limit_bytes: u64,
}

impl DiskWatch {
    pub async fn start(roots: Vec<PathBuf>, limit_mb: u64) -> Self {
        let r = roots.clone();
        let baseline = tokio::task::spawn_blocking(move || usage(&r))
            .await
            .unwrap_or(0);
        Self {
            roots,
            baseline,
            limit_bytes: limit_mb.saturating_mul(1024 * 1024),
        }
    }

    /// Bytes added since the baseline, and how long measuring took (the polling interval
    /// adapts to it so that a huge working copy is not walked back to back).
    pub async fn grown(&self) -> (u64, Duration) {
        let roots = self.roots.clone();
        let t = std::time::Instant::now();
        let now = tokio::task::spawn_blocking(move || usage(&roots))
            .await
            .unwrap_or(0);
        (now.saturating_sub(self.baseline), t.elapsed())
    }

    pub fn over(&self, grown: u64) -> bool {
        grown > self.limit_bytes
    }
}

pub(crate) fn poll_interval(last_walk: Duration) -> Duration {
    (last_walk * 10).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_allocated_blocks_not_apparent_size_and_skips_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), vec![1u8; 1024 * 1024]).unwrap();
        let sparse = std::fs::File::create(d.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        std::os::unix::fs::symlink("/usr", d.path().join("link")).unwrap();
        let u = usage(&[d.path().to_path_buf()]);
        assert!(u >= 1024 * 1024, "{u}");
        assert!(
            u < 4 * 1024 * 1024,
            "sparse file or symlink target counted: {u}"
        );
    }
}
