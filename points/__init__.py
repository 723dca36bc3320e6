"""points: see ../shared/ARCHITECTURE.md."""
