// How JDBC tools reach moat: DBeaver, Metabase and most BI servers read a database's shape
// through PgJDBC's DatabaseMetaData (the same pg_catalog queries) and run their SQL through
// prepared statements (extended protocol, bound parameters, cursors with a fetch size).
//
// Usage: java -cp postgresql.jar JdbcClient.java HOST PORT DBNAME USER PASSWORD
// Prints one JSON object with what the driver saw; the Rust test asserts on it. A step that
// fails is reported as {"error": SQLSTATE, "message": ...} instead of its value, so the test
// names the step.

import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;

public class JdbcClient {
    interface Step {
        Object run() throws SQLException;
    }

    static final Map<String, Object> out = new LinkedHashMap<>();

    static void step(String name, Step s) {
        try {
            out.put(name, s.run());
        } catch (SQLException e) {
            Map<String, Object> err = new LinkedHashMap<>();
            err.put("error", e.getSQLState());
            err.put("message", e.getMessage());
            out.put(name, err);
        }
    }

    /** Every row of a result, each cell as text (null stays null). */
    static List<List<String>> rows(ResultSet rs) throws SQLException {
        List<List<String>> all = new ArrayList<>();
        int n = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            List<String> row = new ArrayList<>();
            for (int i = 1; i <= n; i++) {
                row.add(rs.getString(i));
            }
            all.add(row);
        }
        rs.close();
        return all;
    }

    /** One column of a metadata result, by its JDBC name. */
    static List<String> column(ResultSet rs, String name) throws SQLException {
        List<String> all = new ArrayList<>();
        while (rs.next()) {
            all.add(rs.getString(name));
        }
        rs.close();
        return all;
    }

    public static void main(String[] a) throws Exception {
        String url = "jdbc:postgresql://" + a[0] + ":" + a[1] + "/" + a[2] + "?ApplicationName=jdbc-interop&sslmode=disable&connectTimeout=10";
        Properties p = new Properties();
        p.setProperty("user", a[3]);
        p.setProperty("password", a[4]);
        try (Connection c = DriverManager.getConnection(url, p)) {
            DatabaseMetaData md = c.getMetaData();
            step("product", () -> md.getDatabaseProductName() + " " + md.getDatabaseMajorVersion());
            step("catalogs", () -> column(md.getCatalogs(), "TABLE_CAT"));
            step("schemas", () -> column(md.getSchemas(), "TABLE_SCHEM"));
            step("tables", () -> column(md.getTables(null, null, "%", new String[] {"TABLE", "VIEW"}), "TABLE_NAME"));
            step("columns", () -> {
                List<String> cols = new ArrayList<>();
                try (ResultSet rs = md.getColumns(null, null, "customers", "%")) {
                    while (rs.next()) {
                        cols.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
                    }
                }
                return cols;
            });
            step("primary_keys", () -> column(md.getPrimaryKeys(null, null, "customers"), "COLUMN_NAME"));
            step("imported_keys", () -> column(md.getImportedKeys(null, null, "customers"), "FKCOLUMN_NAME"));
            step("index_info", () -> column(md.getIndexInfo(null, null, "customers", false, true), "COLUMN_NAME"));

            step("select", () -> {
                try (Statement s = c.createStatement()) {
                    return rows(s.executeQuery("SELECT id, email, ssn, plan FROM customers ORDER BY id"));
                }
            });
            step("result_types", () -> {
                try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT * FROM customers LIMIT 1")) {
                    ResultSetMetaData m = rs.getMetaData();
                    List<String> types = new ArrayList<>();
                    for (int i = 1; i <= m.getColumnCount(); i++) {
                        types.add(m.getColumnName(i) + ":" + m.getColumnTypeName(i));
                    }
                    return types;
                }
            });
            // Bound parameters, typed by the driver (int8 and varchar), run past the driver's
            // prepare threshold so that it switches to a named server-side statement.
            step("bound", () -> {
                List<List<String>> last = null;
                try (PreparedStatement ps = c.prepareStatement("SELECT id, plan FROM customers WHERE id = ? AND plan = ?")) {
                    for (int i = 0; i < 7; i++) {
                        ps.setLong(1, 1);
                        ps.setString(2, "pro");
                        last = rows(ps.executeQuery());
                    }
                }
                return last;
            });
            step("probe", () -> {
                try (PreparedStatement ps = c.prepareStatement("SELECT id FROM customers WHERE ssn = ?")) {
                    ps.setString(1, "123-45-6789");
                    return rows(ps.executeQuery());
                }
            });
            // A cursor: inside a transaction with a fetch size, the driver reads through a
            // portal one batch at a time.
            step("cursor", () -> {
                c.setAutoCommit(false);
                try (Statement s = c.createStatement()) {
                    s.setFetchSize(1);
                    return rows(s.executeQuery("SELECT id FROM customers ORDER BY id"));
                } finally {
                    c.commit();
                    c.setAutoCommit(true);
                }
            });
            step("delete", () -> {
                try (Statement s = c.createStatement()) {
                    s.executeUpdate("DELETE FROM customers");
                    return "accepted";
                } catch (SQLException e) {
                    return e.getSQLState();
                }
            });
            // After an error inside a transaction, PostgreSQL ignores everything until ROLLBACK.
            step("failed_transaction", () -> {
                c.setAutoCommit(false);
                List<String> states = new ArrayList<>();
                try (Statement s = c.createStatement()) {
                    try {
                        s.executeQuery("SELECT nothing_here FROM customers");
                    } catch (SQLException e) {
                        states.add(e.getSQLState());
                    }
                    try {
                        s.executeQuery("SELECT 1");
                        states.add("accepted");
                    } catch (SQLException e) {
                        states.add(e.getSQLState());
                    }
                    c.rollback();
                    rows(s.executeQuery("SELECT 1"));
                    states.add("recovered");
                } finally {
                    c.setAutoCommit(true);
                }
                return states;
            });
        }
        System.out.println(json(out));
    }

    static String json(Object v) {
        if (v == null) {
            return "null";
        }
        if (v instanceof Map<?, ?> m) {
            List<String> parts = new ArrayList<>();
            for (Map.Entry<?, ?> e : m.entrySet()) {
                parts.add(json(e.getKey().toString()) + ":" + json(e.getValue()));
            }
            return "{" + String.join(",", parts) + "}";
        }
        if (v instanceof List<?> l) {
            List<String> parts = new ArrayList<>();
            for (Object o : l) {
                parts.add(json(o));
            }
            return "[" + String.join(",", parts) + "]";
        }
        StringBuilder b = new StringBuilder("\"");
        for (char ch : v.toString().toCharArray()) {
            switch (ch) {
                case '"' -> b.append("\\\"");
                case '\\' -> b.append("\\\\");
                case '\n' -> b.append("\\n");
                default -> {
                    if (ch < 0x20) {
                        b.append(String.format("\\u%04x", (int) ch));
                    } else {
                        b.append(ch);
                    }
                }
            }
        }
        return b.append('"').toString();
    }
}
