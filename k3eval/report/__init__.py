"""Reports: tables, figures and HTML/Markdown built from stored runs, scores and votes (never recomputed)."""
