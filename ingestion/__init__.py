"""ingestion: see ../shared/ARCHITECTURE.md."""
