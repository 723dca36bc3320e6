"""Admin roles and what each may do. Every admin route names one permission."""

from __future__ import annotations

ROLES = (
    "operator_admin",
    "operator_staff",
    "bureau",
    "district_bureau",
    "registry_agency",
    "exchange",
    "vvb",
    "expert",
    "auditor",
)

# permission -> roles that hold it
PERMISSIONS: dict[str, frozenset[str]] = {
    # kernel
    "admin.users.manage": frozenset({"operator_admin"}),
    "audit.read": frozenset({"operator_admin", "auditor", "bureau"}),
    "calendar.manage": frozenset({"operator_admin"}),
    "calendar.read": frozenset(ROLES),
    # platform (scenes, rules, mall) — Art. 31–33
    "scenes.manage": frozenset({"operator_admin", "operator_staff"}),
    "scenes.read": frozenset({"operator_admin", "operator_staff", "bureau", "district_bureau",
                              "auditor"}),
    "rules.publish": frozenset({"operator_admin"}),
    "mall.manage": frozenset({"operator_admin", "operator_staff"}),
    "mall.read": frozenset({"operator_admin", "operator_staff", "bureau", "auditor"}),
    "points.read": frozenset({"operator_admin", "operator_staff", "auditor", "bureau"}),
    "dlq.manage": frozenset({"operator_admin"}),
    # registry — Art. 10–22, 26–30, 38–39
    "methodology.manage": frozenset({"bureau"}),
    "vvb.manage": frozenset({"bureau"}),
    "registry.review": frozenset({"registry_agency"}),
    "registry.assess": frozenset({"expert"}),
    "registry.decide": frozenset({"bureau"}),
    "registry.verify": frozenset({"vvb"}),
    "registry.sanction": frozenset({"registry_agency", "bureau"}),
    "registry.accounts": frozenset({"registry_agency"}),
    "registry.read": frozenset({"registry_agency", "bureau", "district_bureau", "auditor",
                                "exchange"}),
    # trading and offsets — Art. 23–30
    "trading.operate": frozenset({"exchange"}),
    "offsets.confirm": frozenset({"bureau"}),
}


def allowed(roles: frozenset[str], permission: str) -> bool:
    holders = PERMISSIONS.get(permission)
    if holders is None:
        raise KeyError(f"unknown permission {permission!r}")
    return bool(roles & holders)
