-- The access table becomes a projection of the access trail (system stream 1):
-- each row is one trail event at its global position, with the event's exact
-- payload and commitment salt, so `vellum verify` can check the row against the
-- log's leaf without any key. Rows without a position predate the trail.
ALTER TABLE access ADD COLUMN payload TEXT;
ALTER TABLE access ADD COLUMN salt BYTEA CHECK (salt IS NULL OR length(salt) = 32);
CREATE UNIQUE INDEX access_position ON access (position);
UPDATE meta SET value = '2' WHERE key = 'format_version';
