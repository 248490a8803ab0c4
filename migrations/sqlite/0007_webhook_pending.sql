-- The due list walks an endpoint's pending deliveries in event order and stops at the first
-- heads it needs; without this index SQLite walked the primary key (every delivery of the
-- endpoint, delivered ones included, kept for the retention period) or sorted every pending
-- one. (0005's index on next_at is replaced by it.)
DROP INDEX IF EXISTS hook_deliveries_due;
CREATE INDEX hook_deliveries_pending ON hook_deliveries (endpoint_id, state, event_id);
