-- Access tokens carry their user's token generation; a password change or
-- reset bumps it, so tokens issued before it stop working at once.
ALTER TABLE users ADD COLUMN token_generation INTEGER NOT NULL DEFAULT 0;
