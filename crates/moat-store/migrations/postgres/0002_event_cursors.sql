-- Where each event sink (NATS JetStream) stands in each audit trail: the last seq it has
-- published and acknowledged, and which replica holds the trail's lease (so one replica
-- forwards a trail at a time). Bookkeeping, not part of the log; scoped by trail like the log.
CREATE TABLE moat.event_cursors (
    sink           text NOT NULL,
    trail          text NOT NULL,
    published_seq  bigint NOT NULL,
    lease_owner    text NOT NULL,
    lease_until_ms bigint NOT NULL,
    PRIMARY KEY (sink, trail)
);
ALTER TABLE moat.event_cursors ENABLE ROW LEVEL SECURITY;
ALTER TABLE moat.event_cursors FORCE ROW LEVEL SECURITY;
CREATE POLICY trail_scope ON moat.event_cursors
    USING (moat.platform_scope() OR trail = moat.current_tenant()::text);
