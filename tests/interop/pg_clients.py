"""How analysts and BI tools reach moat over the PostgreSQL wire protocol, with their own
drivers: psycopg 3 (plain and with bound parameters), SQLAlchemy 2 reflection, pandas.read_sql.

Usage: pg_clients.py HOST PORT DBNAME USER PASSWORD
Prints one JSON object with what each client saw; the Rust test asserts on it.
"""

import json
import sys

import pandas
import psycopg
import sqlalchemy


def main() -> None:
    host, port, dbname, user, password = sys.argv[1:6]
    out = {}

    with psycopg.connect(host=host, port=int(port), dbname=dbname, user=user, password=password,
                         application_name="psycopg-interop", connect_timeout=10) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT id, email, ssn, plan FROM customers ORDER BY id")
            out["psycopg_rows"] = [list(r) for r in cur.fetchall()]
            out["psycopg_columns"] = [d.name for d in cur.description]
            # Parameters travel bound (extended protocol), never spliced into the text.
            cur.execute("SELECT id FROM customers WHERE ssn = %s", ("123-45-6789",))
            out["psycopg_probe"] = cur.fetchall()
            cur.execute("SELECT id, plan FROM customers WHERE id = %s AND plan = %s", (1, "pro"))
            out["psycopg_bound"] = [list(r) for r in cur.fetchall()]
            # Server-side prepared statement (psycopg prepares after repeated use; force it).
            cur.execute("SELECT count(*) FROM customers WHERE plan = %s", ("free",), prepare=True)
            out["psycopg_prepared"] = cur.fetchone()[0]
            try:
                cur.execute("DELETE FROM customers")
                out["psycopg_delete"] = "accepted"
            except psycopg.Error as e:
                out["psycopg_delete"] = e.sqlstate
        conn.rollback()

    url = sqlalchemy.engine.URL.create("postgresql+psycopg", username=user, password=password,
                                       host=host, port=int(port), database=dbname)
    engine = sqlalchemy.create_engine(url)
    inspector = sqlalchemy.inspect(engine)
    out["sqlalchemy_tables"] = inspector.get_table_names()
    out["sqlalchemy_columns"] = [
        {"name": c["name"], "type": str(c["type"]), "nullable": c["nullable"]}
        for c in inspector.get_columns("customers")
    ]
    frame = pandas.read_sql("SELECT * FROM customers ORDER BY id", engine)
    out["pandas_columns"] = list(frame.columns)
    out["pandas_rows"] = json.loads(frame.to_json(orient="values"))
    engine.dispose()
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
