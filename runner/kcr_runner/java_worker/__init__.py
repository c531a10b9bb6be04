"""The Java worker: one JVM holding one JShell (``KcrJShell.java``) whose state persists."""
