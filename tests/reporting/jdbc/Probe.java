import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

/**
 * What a JDBC reporting client does, through the PostgreSQL JDBC driver: connect with a user
 * and password (from AEGIS_PROBE_USER and AEGIS_PROBE_PASSWORD, never on the command line), then
 * run each statement read from stdin and print one JSON object per line on stdout.
 *
 * <p>Input lines: label TAB sql [TAB string parameter]... Output: the rows and column types of
 * a query (and the milliseconds it took to execute and fetch), or the SQLSTATE of a refusal.
 *
 * <p>Run with: java -cp /usr/share/java/postgresql.jar Probe.java jdbc:postgresql://host:port/db
 */
public class Probe {
    public static void main(String[] args) throws Exception {
        // The class name BI tools ask for; loading it also proves the jar is the real driver.
        Class.forName("org.postgresql.Driver");
        Properties login = new Properties();
        login.setProperty("user", System.getenv("AEGIS_PROBE_USER"));
        login.setProperty("password", System.getenv("AEGIS_PROBE_PASSWORD"));
        Connection connection;
        try {
            connection = DriverManager.getConnection(args[0], login);
        } catch (SQLException error) {
            System.out.println(refusal("connect", error));
            return;
        }
        DatabaseMetaData about = connection.getMetaData();
        System.out.println(
                "{\"label\":\"connect\",\"ok\":true,\"driver\":"
                        + quote(about.getDriverName() + " " + about.getDriverVersion())
                        + ",\"views\":"
                        + views(about)
                        + "}");
        BufferedReader input =
                new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = input.readLine()) != null) {
            if (line.isBlank()) {
                continue;
            }
            String[] parts = line.split("\t");
            System.out.println(run(connection, parts));
        }
        connection.close();
    }

    /** The views a BI tool's navigator lists in schema reporting. */
    private static String views(DatabaseMetaData about) throws SQLException {
        List<String> names = new ArrayList<>();
        try (ResultSet tables = about.getTables(null, "reporting", "%", new String[] {"VIEW"})) {
            while (tables.next()) {
                names.add(quote(tables.getString("TABLE_NAME")));
            }
        }
        return "[" + String.join(",", names) + "]";
    }

    private static String run(Connection connection, String[] parts) {
        String label = parts[0];
        long started = System.nanoTime();
        try (PreparedStatement statement = connection.prepareStatement(parts[1])) {
            for (int index = 2; index < parts.length; index++) {
                statement.setString(index - 1, parts[index]);
            }
            String result = "\"rows\":[],\"columns\":[]";
            if (statement.execute()) {
                try (ResultSet rows = statement.getResultSet()) {
                    result = table(rows);
                }
            }
            // Execute and fetch every row, as a report does (for docs/reporting.md's timings).
            double millis = (System.nanoTime() - started) / 1e6;
            return "{\"label\":" + quote(label) + ",\"ok\":true,\"millis\":" + millis + ","
                    + result + "}";
        } catch (SQLException error) {
            return refusal(label, error);
        }
    }

    private static String table(ResultSet rows) throws SQLException {
        ResultSetMetaData shape = rows.getMetaData();
        List<String> columns = new ArrayList<>();
        for (int index = 1; index <= shape.getColumnCount(); index++) {
            columns.add(
                    "{\"name\":"
                            + quote(shape.getColumnLabel(index))
                            + ",\"type\":"
                            + quote(shape.getColumnTypeName(index))
                            + ",\"precision\":"
                            + shape.getPrecision(index)
                            + "}");
        }
        List<String> values = new ArrayList<>();
        while (rows.next()) {
            List<String> row = new ArrayList<>();
            for (int index = 1; index <= shape.getColumnCount(); index++) {
                row.add(quote(rows.getString(index)));
            }
            values.add("[" + String.join(",", row) + "]");
        }
        return "\"columns\":["
                + String.join(",", columns)
                + "],\"rows\":["
                + String.join(",", values)
                + "]";
    }

    private static String refusal(String label, SQLException error) {
        return "{\"label\":"
                + quote(label)
                + ",\"ok\":false,\"sqlstate\":"
                + quote(error.getSQLState())
                + ",\"message\":"
                + quote(error.getMessage())
                + "}";
    }

    private static String quote(String text) {
        if (text == null) {
            return "null";
        }
        StringBuilder json = new StringBuilder("\"");
        for (char character : text.toCharArray()) {
            switch (character) {
                case '"' -> json.append("\\\"");
                case '\\' -> json.append("\\\\");
                case '\n' -> json.append("\\n");
                case '\r' -> json.append("\\r");
                case '\t' -> json.append("\\t");
                default -> {
                    if (character < 0x20) {
                        json.append(String.format("\\u%04x", (int) character));
                    } else {
                        json.append(character);
                    }
                }
            }
        }
        return json.append('"').toString();
    }
}
