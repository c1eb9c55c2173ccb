-- A conversation's message count is its last message's number (messages
-- are never removed one by one): read from the messages' index instead of
-- kept in the conversation's row, which every step of a run rewrote.

ALTER TABLE conversations DROP COLUMN message_count;
