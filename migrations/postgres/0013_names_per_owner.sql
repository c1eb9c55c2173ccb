-- MCP server and provider names are unique per owner (server-wide ones
-- among themselves), not across users: a user's name says nothing of another
-- user's, and a name a user took for their own stays free for a
-- server-wide one.
ALTER TABLE mcp_servers DROP CONSTRAINT mcp_servers_name_key;
CREATE UNIQUE INDEX idx_mcp_servers_shared_name ON mcp_servers (name) WHERE owner_id IS NULL;
CREATE UNIQUE INDEX idx_mcp_servers_owner_name ON mcp_servers (owner_id, name) WHERE owner_id IS NOT NULL;
ALTER TABLE providers DROP CONSTRAINT providers_name_key;
CREATE UNIQUE INDEX idx_providers_shared_name ON providers (name) WHERE owner_id IS NULL;
CREATE UNIQUE INDEX idx_providers_owner_name ON providers (owner_id, name) WHERE owner_id IS NOT NULL;
