"""The admin console: a server-rendered entry page (the admin JSON API does the work)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

router = APIRouter(include_in_schema=False)

_templates = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)

SECTIONS = [
    ("平台 Platform", [
        ("Scenes and rules 场景与规则", "/public/scenes"),
        ("Conversion rules 积分转化规则", "/public/conversion-rules"),
        ("Points mall merchants 权益提供单位", "/public/merchants"),
    ]),
    ("管理系统 Registry", [
        ("Methodologies 方法学", "/public/registry/methodologies"),
        ("Projects 项目", "/public/registry/projects"),
        ("Notices 公示", "/public/registry/notices"),
    ]),
    ("交易系统 Trading", [
        ("Trades 成交", "/public/trading/trades"),
    ]),
]


@router.get("/console", response_class=HTMLResponse)
async def console(request: Request) -> HTMLResponse:
    runtime = getattr(request.app.state, "runtime", None)
    html = _templates.get_template("console.html").render(
        sections=SECTIONS,
        mode=runtime.describe() if runtime else {},
    )
    return HTMLResponse(html)
