"""Refusals of the scenes domain, each with a stable problem ``code``."""

from __future__ import annotations

from app.errors import Conflict, Forbidden, Invalid, NotFound


class SceneUnknown(NotFound):
    def __init__(self, detail: str = "No such scene.") -> None:
        super().__init__("scene.unknown", detail)


class BehaviourUnknown(NotFound):
    def __init__(self, detail: str = "No such behaviour in this scene.") -> None:
        super().__init__("scene.behaviour_unknown", detail)


class CategoryUnknown(Invalid):
    def __init__(self, code: str) -> None:
        super().__init__("scene.category_unknown", f"No scene category {code!r}.")


class SceneNotActive(Conflict):
    """Art. 32: a suspended or ended scene takes no new links and no events."""

    def __init__(self, status: str) -> None:
        super().__init__("scene.not_active", f"The scene is {status}.", scene_status=status)


class RuleUnknown(NotFound):
    def __init__(self) -> None:
        super().__init__("rules.unknown", "No such rule version.")


class PublishedImmutable(Conflict):
    def __init__(self) -> None:
        super().__init__(
            "rules.published_immutable",
            "A published rule version never changes; draft a new version instead.",
        )


class FactorInvalid(Invalid):
    def __init__(self, detail: str) -> None:
        super().__init__("rules.factor_invalid", detail)


class ConsentUnknown(NotFound):
    def __init__(self) -> None:
        super().__init__("consent.unknown", "No such consent.")


class LinkCodeUnknown(NotFound):
    def __init__(self) -> None:
        super().__init__("consent.link_code_unknown", "No such link code.")


class LinkCodeExpired(Invalid):
    def __init__(self) -> None:
        super().__init__(
            "consent.link_code_expired",
            "The link code has expired; the citizen can ask the app for a new one.",
        )


class LinkCodeUsed(Conflict):
    def __init__(self) -> None:
        super().__init__("consent.link_code_used", "The link code has been used already.")


class LinkCodeWrongScene(Forbidden):
    def __init__(self) -> None:
        super().__init__(
            "consent.link_code_wrong_scene", "The link code was issued for another scene."
        )


__all__ = [
    "BehaviourUnknown",
    "CategoryUnknown",
    "Conflict",
    "ConsentUnknown",
    "FactorInvalid",
    "Invalid",
    "LinkCodeExpired",
    "LinkCodeUnknown",
    "LinkCodeUsed",
    "LinkCodeWrongScene",
    "NotFound",
    "PublishedImmutable",
    "RuleUnknown",
    "SceneNotActive",
    "SceneUnknown",
]
