# The R side of the R worker (kcr_runner/r_worker/worker.py): one long-lived R process that
# runs cells in the global environment, so variables, functions and attached packages persist.
#
# Requests arrive on stdin, one line per cell: "CELL_FILE<TAB>PLOT_DIR<TAB>ENV_FILE" (ENV_FILE
# may be empty: an R file of Sys.setenv() calls to run first). For each cell this loop
#   * parses the file (a parse error is the cell's error, nothing runs),
#   * evaluates the expressions one by one, printing visible values as the R console does,
#     reporting warnings on stderr at once and stopping at the first error,
#   * sends every plot as a PNG file in PLOT_DIR (each cell gets a png() device on demand;
#     devices are closed when the cell ends),
#   * writes a sync mark to stdout and stderr (so the worker knows it has all the output), then
#     one JSON line on the status descriptor: {"status": "ok"|"error"|"interrupted", ...}.
# SIGINT becomes R's "interrupt" condition: the cell stops and the session keeps its state.
# The loop's own variables live in a private environment, so rm(list = ls()) cannot break it.

local({
  status_out <- file(sprintf("/dev/fd/%s", Sys.getenv("KCR_R_STATUS_FD")), open = "w", raw = TRUE)
  stdout_raw <- file("/dev/fd/1", open = "wb", raw = TRUE)
  stderr_raw <- file("/dev/fd/2", open = "wb", raw = TRUE)
  Sys.unsetenv("KCR_R_STATUS_FD")
  requests <- file("stdin")
  open(requests)
  mark <- as.raw(c(0, charToRaw("KCR-SYNC"), 0))

  json_string <- function(x) {
    x <- enc2utf8(as.character(x))
    x <- gsub("\\", "\\\\", x, fixed = TRUE)
    x <- gsub("\"", "\\\"", x, fixed = TRUE)
    x <- gsub("\n", "\\n", x, fixed = TRUE)
    x <- gsub("\r", "\\r", x, fixed = TRUE)
    x <- gsub("\t", "\\t", x, fixed = TRUE)
    x <- gsub("[[:cntrl:]]", " ", x)
    paste0("\"", x, "\"")
  }
  json_list <- function(x) paste0("[", paste(vapply(x, json_string, ""), collapse = ", "), "]")

  user_eval <- quote(eval(expr, globalenv()))
  describe_call <- function(call) {
    text <- deparse(call, nlines = 1L, width.cutoff = 80L)
    if (length(text) == 0L) "<call>" else text[[1L]]
  }

  run_cell <- function(cell_file, plot_dir) {
    lines <- readLines(cell_file, encoding = "UTF-8", warn = FALSE)
    exprs <- tryCatch(
      parse(text = lines, keep.source = FALSE, srcfile = srcfilecopy("cell.R", lines)),
      error = function(e) e
    )
    if (inherits(exprs, "error")) {
      message <- sub("^<text>", "cell.R", conditionMessage(exprs))
      return(list(status = "error", ename = "ParseError", evalue = message,
                  traceback = c(paste("Error: parse error:", message))))
    }
    options(device = function(...) {
      grDevices::png(file.path(plot_dir, "plot-%03d.png"), width = 7, height = 5,
                     units = "in", res = 96)
    })
    failure <- NULL
    for (expr in exprs) {
      failure <- tryCatch(
        withCallingHandlers(
          {
            shown <- withVisible(eval(expr, globalenv()))
            if (shown$visible) print(shown$value)
            NULL
          },
          warning = function(w) {
            call <- conditionCall(w)
            top <- is.null(call) || identical(call, user_eval)
            where <- if (top) "" else paste0("In ", describe_call(call), " : ")
            cat("Warning message:\n", where, conditionMessage(w), "\n", sep = "", file = stderr())
            invokeRestart("muffleWarning")
          },
          error = function(e) {
            calls <- sys.calls()
            # the user's frames: after this loop's own eval() and before this handler
            ours <- which(vapply(calls, identical, TRUE, user_eval))
            first <- if (length(ours)) max(ours) + 1L else 1L
            frames <- if (length(calls) > first) calls[first:(length(calls) - 1L)] else list()
            frames <- vapply(frames, describe_call, "")
            frames <- frames[!grepl("^(stop|\\.handleSimpleError|h)\\(", frames)]
            assign("frames", frames, envir = state)
          }
        ),
        error = function(e) {
          call <- conditionCall(e)
          top <- is.null(call) || identical(call, user_eval)
          where <- if (top) "" else paste0(" in ", describe_call(call))
          header <- paste0("Error", where, ": ", conditionMessage(e))
          frames <- get("frames", envir = state)
          assign("frames", character(0), envir = state)
          list(status = "error", ename = class(e)[[1L]], evalue = conditionMessage(e),
               traceback = c(header, if (length(frames)) c("Traceback:", paste0(seq_along(frames), ": ", frames))))
        }
      )
      if (!is.null(failure)) break
    }
    if (is.null(failure)) list(status = "ok") else failure
  }

  finish <- function(result, plot_dir) {
    grDevices::graphics.off()
    plots <- if (nzchar(plot_dir)) sort(list.files(plot_dir, pattern = "\\.png$", full.names = TRUE)) else character(0)
    flush(stdout())
    flush(stderr())
    writeBin(mark, stdout_raw)
    flush(stdout_raw)
    writeBin(mark, stderr_raw)
    flush(stderr_raw)
    fields <- c(sprintf("\"status\": %s", json_string(result$status)),
                sprintf("\"plots\": %s", json_list(plots)))
    if (!is.null(result$ename)) {
      fields <- c(fields, sprintf("\"ename\": %s", json_string(result$ename)),
                  sprintf("\"evalue\": %s", json_string(result$evalue)),
                  sprintf("\"traceback\": %s", json_list(result$traceback)))
    }
    writeLines(paste0("{", paste(fields, collapse = ", "), "}"), status_out)
    flush(status_out)
  }

  state <- environment()
  frames <- character(0)
  repeat {
    # interrupts are held back outside the user's code: an interrupt that comes late is
    # delivered while waiting for the next request, where it is dropped
    request <- tryCatch(readLines(requests, n = 1L), interrupt = function(c) NA_character_)
    if (length(request) == 0L) break
    if (is.na(request)) next
    fields <- strsplit(request, "\t", fixed = TRUE)[[1L]]
    plot_dir <- if (length(fields) >= 2L) fields[[2L]] else ""
    suspendInterrupts({
      if (length(fields) >= 3L && nzchar(fields[[3L]])) {
        try(source(fields[[3L]], local = new.env()), silent = TRUE)
      }
      result <- tryCatch(
        allowInterrupts(run_cell(fields[[1L]], plot_dir)),
        interrupt = function(c) list(status = "interrupted")
      )
      finish(result, plot_dir)
    })
  }
})
