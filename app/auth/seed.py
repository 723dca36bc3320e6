"""Demo accounts for ``make run`` (labelled demo): a citizen and an operator admin."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import admins, citizens

DEMO_PHONE = "13800000000"
DEMO_ADMIN = "demo-admin"
DEMO_PASSWORD = "demo-password-2024"


async def seed_demo(session: AsyncSession) -> dict[str, Any]:
    """Create the demo citizen and the demo admin unless they exist; safe to run twice."""
    citizen_id = await citizens.get_or_create_citizen(session, DEMO_PHONE, demo=True)
    if await admins.find_admin_user(session, DEMO_ADMIN) is None:
        await admins.create_admin_user(
            session, username=DEMO_ADMIN, password=DEMO_PASSWORD, roles=["operator_admin"],
            actor="seed", enrol_totp=True,
        )
    enrolment = await admins.totp_enrolment_of(session, DEMO_ADMIN)
    return {
        "demo_citizen_phone": DEMO_PHONE,
        "demo_citizen_id": str(citizen_id),
        "admin_username": DEMO_ADMIN,
        "admin_password": DEMO_PASSWORD,
        "admin_otpauth_uri": enrolment.otpauth_uri if enrolment else None,
        "admin_totp_secret": enrolment.secret if enrolment else None,
    }
