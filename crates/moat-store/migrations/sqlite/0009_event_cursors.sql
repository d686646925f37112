-- Where each event sink (NATS JetStream) stands in each audit trail: the last seq it has
-- published and acknowledged, and which replica holds the trail's lease (so one replica
-- forwards a trail at a time). Bookkeeping, not part of the log: nothing verifies it.
CREATE TABLE event_cursors (
    sink           TEXT NOT NULL,
    trail          TEXT NOT NULL,
    published_seq  INTEGER NOT NULL,
    lease_owner    TEXT NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    PRIMARY KEY (sink, trail)
);
