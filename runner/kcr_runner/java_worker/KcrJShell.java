// The Java side of the Java worker (kcr_runner/java_worker/worker.py): one JVM holding one
// JShell (jdk.jshell API, local execution engine), so variables, methods, classes and imports
// persist between cells.
//
// Requests arrive on stdin, one line per cell: the path of a file holding the cell. The cell is
// split into snippets (JShell's own SourceCodeAnalysis) and evaluated one by one; the first
// rejected snippet (a compile error) or exception stops the cell. Then a sync mark goes to
// stdout and stderr and one JSON line to the status descriptor ($KCR_JAVA_STATUS_FD):
// {"status": "ok"|"error"|"interrupted", "result": TEXT?, "ename"?, "evalue"?, "traceback"?}.
// "result" is the value of the cell's last snippet when that is an expression.
// SIGINT (the worker's interrupt) stops the running snippet (JShell.stop()); the JShell stays.

import java.io.BufferedReader;
import java.io.ByteArrayInputStream;
import java.io.InputStream;
import java.io.FileOutputStream;
import java.io.InputStreamReader;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import jdk.jshell.Diag;
import jdk.jshell.EvalException;
import jdk.jshell.JShell;
import jdk.jshell.Snippet;
import jdk.jshell.SnippetEvent;
import jdk.jshell.SourceCodeAnalysis;
import jdk.jshell.UnresolvedReferenceException;

public class KcrJShell {
    static volatile boolean interrupted = false;
    static volatile boolean running = false;

    public static void main(String[] args) throws Exception {
        PrintStream status = new PrintStream(
                new FileOutputStream("/dev/fd/" + System.getenv("KCR_JAVA_STATUS_FD")), true, "UTF-8");
        // the requests come on stdin: the user's code reads an empty System.in instead
        BufferedReader requests = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        InputStream empty = new ByteArrayInputStream(new byte[0]);
        System.setIn(empty);
        JShell shell = JShell.builder().executionEngine("local").in(empty).out(System.out).err(System.err).build();
        sun.misc.Signal.handle(new sun.misc.Signal("INT"), signal -> {
            if (!running || interrupted) return;
            interrupted = true;
            // stop() only stops a snippet that is executing: keep asking until the cell is over,
            // so a signal that comes while the next snippet compiles is not lost
            Thread stopper = new Thread(() -> {
                while (running) {
                    shell.stop();
                    try {
                        Thread.sleep(50);
                    } catch (InterruptedException e) {
                        return;
                    }
                }
            }, "kcr-stop");
            stopper.setDaemon(true);
            stopper.start();
        });
        // warm-up: the first evaluation loads the compiler (about half a second)
        shell.eval("int $kcrWarmUp = 0;");
        byte[] mark = "\0KCR-SYNC\0".getBytes(StandardCharsets.UTF_8);
        String line;
        while ((line = requests.readLine()) != null) {
            String code = Files.readString(Path.of(line));
            interrupted = false;
            String result;
            try {
                running = true;
                result = runCell(shell, code);
            } catch (Throwable t) {
                result = error("InternalError", String.valueOf(t), List.of(String.valueOf(t)));
            } finally {
                running = false;
            }
            if (interrupted) result = "{\"status\": \"interrupted\"}";
            System.out.flush();
            System.err.flush();
            System.out.write(mark, 0, mark.length);
            System.out.flush();
            System.err.write(mark, 0, mark.length);
            System.err.flush();
            status.println(result);
        }
        shell.close();
        System.exit(0);
    }

    static String runCell(JShell shell, String code) {
        SourceCodeAnalysis analysis = shell.sourceCodeAnalysis();
        String rest = code;
        int offset = 0;
        String value = null;
        while (!rest.isBlank()) {
            if (interrupted) return "{\"status\": \"interrupted\"}";
            SourceCodeAnalysis.CompletionInfo info = analysis.analyzeCompletion(rest);
            if (info.completeness() == SourceCodeAnalysis.Completeness.DEFINITELY_INCOMPLETE
                    || info.completeness() == SourceCodeAnalysis.Completeness.CONSIDERED_INCOMPLETE) {
                int line = lineOf(code, offset + leadingSpace(rest));
                String message = "cell.java:" + line + ": the cell ends inside an unfinished statement";
                return error("CompileError", message, List.of(message));
            }
            String source = info.source();
            int consumed = rest.length() - info.remaining().length();
            int start = offset + leadingSpace(rest);
            value = null;
            for (SnippetEvent event : shell.eval(source)) {
                if (event.causeSnippet() != null) continue;
                Snippet snippet = event.snippet();
                if (event.status() == Snippet.Status.REJECTED) {
                    List<String> lines = new ArrayList<>();
                    shell.diagnostics(snippet).filter(Diag::isError).forEach(d -> {
                        int at = start + (int) Math.max(d.getStartPosition(), 0);
                        lines.add("cell.java:" + lineOf(code, at) + ": error: " + d.getMessage(Locale.ROOT));
                    });
                    if (lines.isEmpty()) lines.add("cell.java:" + lineOf(code, start) + ": error: the snippet was rejected");
                    return error("CompileError", lines.get(0), lines);
                }
                if (event.exception() != null) return exception(event.exception());
                if (snippet.kind() == Snippet.Kind.EXPRESSION
                        || (snippet.kind() == Snippet.Kind.VAR && snippet.subKind() == Snippet.SubKind.TEMP_VAR_EXPRESSION_SUBKIND)) {
                    value = event.value();
                }
            }
            rest = info.remaining();
            offset += consumed;
        }
        if (value == null) return "{\"status\": \"ok\"}";
        return "{\"status\": \"ok\", \"result\": " + json(value) + "}";
    }

    static String exception(Exception e) {
        String name = e.getClass().getName();
        if (e instanceof EvalException) name = ((EvalException) e).getExceptionClassName();
        String message = e.getMessage() == null ? "" : e.getMessage();
        if (e instanceof UnresolvedReferenceException) {
            name = "UnresolvedReference";
            message = ((UnresolvedReferenceException) e).getSnippet().toString();
        }
        List<String> lines = new ArrayList<>();
        lines.add(name + (message.isEmpty() ? "" : ": " + message));
        for (StackTraceElement frame : e.getStackTrace()) {
            if (frame.getClassName().startsWith("jdk.") || frame.getClassName().startsWith("java.lang.reflect")
                    || frame.getClassName().startsWith("jdk.internal")) break;
            lines.add("\tat " + frame);
        }
        return error(name, message, lines);
    }

    static int leadingSpace(String s) {
        int i = 0;
        while (i < s.length() && Character.isWhitespace(s.charAt(i))) i++;
        return i;
    }

    static int lineOf(String code, int at) {
        int line = 1;
        for (int i = 0; i < Math.min(at, code.length()); i++) if (code.charAt(i) == '\n') line++;
        return line;
    }

    static String error(String ename, String evalue, List<String> traceback) {
        StringBuilder out = new StringBuilder("{\"status\": \"error\", \"ename\": ").append(json(ename));
        out.append(", \"evalue\": ").append(json(evalue)).append(", \"traceback\": [");
        for (int i = 0; i < traceback.size(); i++) out.append(i > 0 ? ", " : "").append(json(traceback.get(i)));
        return out.append("]}").toString();
    }

    static String json(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') out.append('\\').append(c);
            else if (c < 0x20) out.append(String.format("\\u%04x", (int) c));
            else out.append(c);
        }
        return out.append('"').toString();
    }
}
