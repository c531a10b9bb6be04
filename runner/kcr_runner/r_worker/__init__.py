"""The R worker: one long-lived R process (``loop.R``) whose global environment persists."""
