"""Real processes and real files for the integration tests (DESIGN.md section 7)."""
