"""scenes: see ../shared/ARCHITECTURE.md."""
