-- One writer per branch, enforced where every process meets: at most one active (not
-- terminal) feature of a repository may own a feature branch at a time.
ALTER TABLE features ADD COLUMN feature_branch TEXT;
CREATE UNIQUE INDEX features_active_feature_branch ON features (repository_id, feature_branch)
    WHERE feature_branch IS NOT NULL AND state NOT IN ('COMPLETED', 'FAILED', 'CANCELLED');
