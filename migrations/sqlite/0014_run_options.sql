-- What an API client asked of one run beyond its agent's definition (the
-- OpenAI-compatible endpoints): tools the client runs itself, extra
-- instructions, sampling settings, and how the run is shown as a response.
ALTER TABLE runs ADD COLUMN options TEXT;
