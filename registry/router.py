"""HTTP routes of the registry: account holders, administration, public disclosure."""

from fastapi import APIRouter

from registry import routes_admin, routes_org, routes_public

router = APIRouter()
router.include_router(routes_org.router)
router.include_router(routes_admin.router)
router.include_router(routes_public.router)
