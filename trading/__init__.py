"""trading: see ../shared/ARCHITECTURE.md."""
