"""Reports: the read-side tables the pages show, and the generated reproduction report."""
