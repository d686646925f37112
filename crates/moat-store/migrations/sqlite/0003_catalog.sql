-- The catalog: each tenant's tables, the current version's location, and per-column labels.
CREATE TABLE catalog_tables (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    domain      TEXT NOT NULL,
    product     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    location    TEXT NOT NULL,           -- directory of the current version's Parquet files
    row_count   INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
) STRICT;

CREATE TABLE catalog_columns (
    table_id        TEXT NOT NULL REFERENCES catalog_tables(id) ON DELETE CASCADE,
    ordinal         INTEGER NOT NULL,
    name            TEXT NOT NULL,
    data_type       TEXT NOT NULL,
    classification  TEXT,                -- NULL = unclassified = RESTRICTED
    pii             TEXT NOT NULL,       -- direct | quasi | derived | none
    entity          TEXT,
    confidence      REAL,
    source          TEXT NOT NULL,       -- scanner | manual | default
    mask            TEXT,                -- mask override
    PRIMARY KEY (table_id, name)
) STRICT;
