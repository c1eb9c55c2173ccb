-- Providers a user configures for themselves (NULL owner: server-wide).
ALTER TABLE providers ADD COLUMN owner_id UUID REFERENCES users (id) ON DELETE CASCADE;
