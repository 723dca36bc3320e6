"""The kernel of the 碳惠通 backend: settings, database, bus, auth, errors, audit, calendar."""
