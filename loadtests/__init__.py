"""loadtests: see ../shared/ARCHITECTURE.md."""
