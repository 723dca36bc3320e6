"""registry: see ../shared/ARCHITECTURE.md."""
