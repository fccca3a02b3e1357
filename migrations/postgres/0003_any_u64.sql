-- Format 3: the projection is total. Every u64 is stored bit-cast into
-- BIGINT (the same 64 bits read as two's complement): 0..=i64::MAX keep
-- their value, a u64 above i64::MAX is stored as a negative number and read
-- back exactly (code: `src/index/model.rs`, `sql_int` / `u64_of`). So a
-- column that can carry a value chosen by a client or found in the log
-- (stream ids, access offsets and times, key ids and times, views, commit
-- times) no longer refuses negatives. The dense counters the log assigns and
-- that pages are read by (events.position, events.stream_offset, events.op,
-- events.segment, events.file_offset, commits.op, commits.tree_size,
-- access.position) keep CHECK (x >= 0). Column CHECKs were named
-- <table>_<column>_check by PostgreSQL when 0001 created them.

ALTER TABLE events DROP CONSTRAINT IF EXISTS events_stream_check;
ALTER TABLE commits DROP CONSTRAINT IF EXISTS commits_view_check;
ALTER TABLE commits DROP CONSTRAINT IF EXISTS commits_time_ns_check;
ALTER TABLE keys DROP CONSTRAINT IF EXISTS keys_key_id_check;
ALTER TABLE keys DROP CONSTRAINT IF EXISTS keys_stream_check;
ALTER TABLE keys DROP CONSTRAINT IF EXISTS keys_created_ns_check;
ALTER TABLE keys DROP CONSTRAINT IF EXISTS keys_rotated_ns_check;
ALTER TABLE keys DROP CONSTRAINT IF EXISTS keys_shredded_ns_check;
ALTER TABLE access DROP CONSTRAINT IF EXISTS access_time_ns_check;
ALTER TABLE access DROP CONSTRAINT IF EXISTS access_stream_check;
ALTER TABLE access DROP CONSTRAINT IF EXISTS access_offset_from_check;
ALTER TABLE access DROP CONSTRAINT IF EXISTS access_offset_to_check;
ALTER TABLE verifications DROP CONSTRAINT IF EXISTS verifications_time_ns_check;

UPDATE meta SET value = '3' WHERE key = 'format_version';
