"""mall: see ../shared/ARCHITECTURE.md."""
