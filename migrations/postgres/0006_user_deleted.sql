-- A user deleted through the server API: their profile is gone (GET answers 404), their
-- messages stay under the name "Deleted user". Cleared when the user is created again.
ALTER TABLE users ADD COLUMN deleted_at BIGINT;
