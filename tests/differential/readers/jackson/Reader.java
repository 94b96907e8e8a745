// Differential reader: Jackson data binding (Debian's jackson-databind 2.14) behind the JDK's
// com.sun.net.httpserver.HttpServer. The binding mapper has ACCEPT_CASE_INSENSITIVE_PROPERTIES on and
// FAIL_ON_UNKNOWN_PROPERTIES off, as many Spring and JAX-RS services configure it; the bound POJO goes back out
// through a plain mapper, so the names are exactly the model's. The query and an urlencoded body are read as a
// servlet container reads parameters (first value for getParameter, every value for getParameterValues).
// Java has no method override.
//
//   javac -cp JACKSON_JARS -d build Reader.java && java -cp build:JACKSON_JARS Reader PORT

import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.MapperFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.json.JsonMapper;
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;

import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.Charset;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.Executors;

public final class Reader {

    // The model the typed binders share.
    public static final class Platform {
        public String applicationId;
        public String entityId;
    }

    public static final class Options {
        public Platform platform;
    }

    public static final class Message {
        public String applicationId;
        public String entityId;
        public Options options;
    }

    public static final class Event {
        public Options options;
    }

    public static final class FilterBy {
        public String applicationId;
        public String entityId;
        public List<Platform> platforms;
    }

    public static final class Req {
        public FilterBy filterBy;
    }

    public static final class Doc {
        public String applicationId;
        public String entityId;
        public Platform platform;
        public Options options;
        public List<Message> messages;
        public List<Event> events;
        public Req request;
    }

    private static final ObjectMapper BINDER = JsonMapper.builder()
            .enable(MapperFeature.ACCEPT_CASE_INSENSITIVE_PROPERTIES)
            .disable(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES)
            .build();

    private static final ObjectMapper PLAIN = new ObjectMapper();

    private Reader() {
    }

    /** Servlet-style parameter parsing: '&'-separated, split at the first '=', URLDecoder-decoded; a pair that
     *  fails to decode is dropped, as Tomcat drops it. */
    static Map<String, List<String>> parameters(String raw, Charset charset) {
        Map<String, List<String>> out = new LinkedHashMap<>();
        if (raw == null || raw.isEmpty()) {
            return out;
        }
        for (String pair : raw.split("&")) {
            if (pair.isEmpty()) {
                continue;
            }
            int eq = pair.indexOf('=');
            String name = eq < 0 ? pair : pair.substring(0, eq);
            String value = eq < 0 ? "" : pair.substring(eq + 1);
            try {
                name = URLDecoder.decode(name, charset);
                value = URLDecoder.decode(value, charset);
            } catch (IllegalArgumentException bad) {
                continue;
            }
            out.computeIfAbsent(name, k -> new ArrayList<>()).add(value);
        }
        return out;
    }

    static Map<String, String> first(Map<String, List<String>> all) {
        Map<String, String> out = new LinkedHashMap<>();
        all.forEach((name, values) -> out.put(name, values.get(0)));
        return out;
    }

    static String mediaType(String contentType) {
        if (contentType == null) {
            return "";
        }
        int semi = contentType.indexOf(';');
        return (semi < 0 ? contentType : contentType.substring(0, semi)).trim().toLowerCase(Locale.ROOT);
    }

    static Charset charset(String contentType) {
        if (contentType != null) {
            for (String part : contentType.split(";")) {
                String p = part.trim();
                if (p.toLowerCase(Locale.ROOT).startsWith("charset=")) {
                    try {
                        return Charset.forName(p.substring(8).trim().replace("\"", ""));
                    } catch (RuntimeException unknown) {
                        break;
                    }
                }
            }
        }
        return StandardCharsets.UTF_8;
    }

    static void handle(HttpExchange exchange) throws IOException {
        try (exchange) {
            URI uri = exchange.getRequestURI();
            String contentType = exchange.getRequestHeaders().getFirst("Content-Type");
            String media = mediaType(contentType);
            byte[] body = exchange.getRequestBody().readAllBytes();
            Map<String, List<String>> query = parameters(uri.getRawQuery(), StandardCharsets.UTF_8);

            Map<String, Object> out = new LinkedHashMap<>();
            out.put("reader", "jackson");
            out.put("method", exchange.getRequestMethod());
            out.put("path", uri.getPath() == null ? "" : uri.getPath());
            out.put("query", first(query));
            out.put("query_all", query);
            out.put("form", null);
            out.put("files", List.of());
            out.put("json", null);
            int status = 200;

            if ("POST".equals(exchange.getRequestMethod()) && media.equals("application/x-www-form-urlencoded")) {
                Charset cs = charset(contentType);
                out.put("form", first(parameters(new String(body, cs), cs)));
            } else if (media.equals("application/json")
                    || (media.startsWith("application/") && media.endsWith("+json"))) {
                if (body.length > 0) {
                    try {
                        out.put("json", BINDER.readValue(body, Doc.class));
                    } catch (JsonProcessingException bad) {
                        out.put("error", "json: " + bad.getClass().getSimpleName() + ": "
                                + bad.getOriginalMessage());
                        status = 400;
                    }
                }
            }

            byte[] reply = PLAIN.writeValueAsBytes(out);
            exchange.getResponseHeaders().set("Content-Type", "application/json");
            exchange.sendResponseHeaders(status, reply.length);
            try (OutputStream os = exchange.getResponseBody()) {
                os.write(reply);
            }
        }
    }

    public static void main(String[] args) throws IOException {
        int port = Integer.parseInt(args[0]);
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 64);
        server.createContext("/", exchange -> {
            try {
                handle(exchange);
            } catch (RuntimeException | IOException e) {
                e.printStackTrace();
                throw e;
            }
        });
        server.setExecutor(Executors.newFixedThreadPool(4));
        server.start();
    }
}
