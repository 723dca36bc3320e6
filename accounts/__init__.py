"""The citizen's account across domains (PIPL rights): export of everything held about the
citizen, and deletion. It composes the kernel's identity, scenes' consents and the points
ledger, so it sits above them: accounts → app, scenes, points; nothing imports accounts."""
