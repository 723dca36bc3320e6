"""offsets: see ../shared/ARCHITECTURE.md."""
