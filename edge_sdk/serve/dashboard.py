"""The service's web dashboard: a tenant signs in with one of its API keys and sees its jobs, their events, result
files and loss curve. Server-rendered HTML (Jinja2, autoescaped) with inline CSS and SVG: no JavaScript, nothing
fetched from elsewhere. The service mounts it with ``app.include_router(dashboard_router(sessions))``.

The key a tenant signs in with is kept in an httponly, SameSite=Strict cookie and checked on every page, so a revoked
key signs its browser out."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from edge_sdk.serve.db import ACTIVE_STATUSES, Job, JobEvent, StoredFile, Tenant
from edge_sdk.serve.keys import authenticate

COOKIE = "edge_sdk_key"
MAX_JOBS = 200      # newest jobs on the list
MAX_EVENTS = 200    # newest events on a job's page
_NOT_SCORES = {"epoch", "step", "total_steps", "train_loss"}
_PALETTE = ("#d9480f", "#2b8a3e", "#862e9c", "#1864ab", "#e67700", "#0b7285")


def _utc(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (booleans, strings, NaN and infinities are no numbers to plot)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _tick(value: float) -> str:
    return f"{value:.4g}"


_templates = Environment(loader=PackageLoader("edge_sdk.serve", "templates"), autoescape=True,
                         trim_blocks=True, lstrip_blocks=True)
_templates.filters["utc"] = _utc
_templates.filters["tojson_pretty"] = lambda value: json.dumps(value, indent=1, sort_keys=True)


# --- the loss chart -------------------------------------------------------------------------------------------------

@dataclass
class Epoch:
    epoch: Any
    step: float            # where on the step axis: its own "step", else the last training step before it
    scores: dict[str, float]


def split_metrics(metrics: list[dict[str, Any]]) -> tuple[dict[float, float], list[Epoch]]:
    """Metrics events' data, oldest first, as train loss by step and the epochs' scores. An epoch's event carries
    "epoch" and no "total_steps" (a training step's carries "step" and "total_steps")."""
    losses: dict[float, float] = {}
    epochs: list[Epoch] = []
    last_step = 0.0
    for data in metrics:
        if "epoch" in data and "total_steps" not in data:
            scores = {key: number for key, value in data.items()
                      if key not in {"epoch", "step", "examples"} and (number := _number(value)) is not None}
            if scores:
                step = _number(data.get("step"))
                epochs.append(Epoch(data["epoch"], last_step if step is None else step, scores))
            continue
        step, loss = _number(data.get("step")), _number(data.get("train_loss"))
        if step is not None and loss is not None:
            losses[step] = loss   # a step repeated after a resume: the later one wins
            last_step = max(last_step, step)
    return dict(sorted(losses.items())), epochs


@dataclass
class Marker:
    x: float
    y: float
    color: str
    title: str


@dataclass
class Chart:
    """An SVG line chart's geometry, in the SVG's own coordinates (y grows downwards)."""
    width: int = 720
    height: int = 280
    left: int = 64
    right: int = 656           # plot area: x from left to right, y from top to bottom
    top: int = 16
    bottom: int = 236
    line: str = ""             # the train loss polyline's points, "x,y x,y ..."
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    y2_ticks: list[tuple[float, str]] = field(default_factory=list)   # a right-hand axis for scores not losses
    y2_label: str = ""
    markers: list[Marker] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)       # (name, color)


def _axis(values: list[float], start: float, end: float) -> tuple[Callable[[float], float], list[tuple[float, str]]]:
    """A linear map from the range of ``values`` onto [start, end], and ticks at their min and max."""
    low, high = min(values), max(values)
    pad = 0.0 if high > low else (abs(low) * 0.1 or 1.0)
    span = (high - low) + 2 * pad

    def place(value: float) -> float:
        return round(start + (value - low + pad) / span * (end - start), 1)

    ticks = [(place(low), _tick(low))] + ([(place(high), _tick(high))] if high > low else [])
    return place, ticks


def loss_chart(metrics: list[dict[str, Any]]) -> Chart | None:
    """The chart of a job's metrics events' data (oldest first): train loss by step as a line, the epochs' scores
    as points (losses on the loss axis, other scores such as accuracy on a right-hand axis). None without metrics."""
    losses, epochs = split_metrics(metrics)
    scored = [(epoch, key, value) for epoch in epochs for key, value in epoch.scores.items()
              if not (key == "train_loss" and losses)]   # an epoch's train loss only when there is no curve
    if not losses and not scored:
        return None
    chart = Chart()
    is_loss = [(epoch, key, value) for epoch, key, value in scored if "loss" in key]
    others = [(epoch, key, value) for epoch, key, value in scored if "loss" not in key]
    place_x, chart.x_ticks = _axis([*losses, *(epoch.step for epoch, _, _ in scored)], chart.left, chart.right)
    loss_values = [*losses.values(), *(value for _, _, value in is_loss)]
    score_values = [value for _, _, value in others]
    place_y, y_ticks = _axis(loss_values or [0.0], chart.bottom, chart.top)
    place_y2, y2_ticks = _axis(score_values or [0.0], chart.bottom, chart.top)
    chart.y_ticks, chart.y2_ticks = (y_ticks if loss_values else []), (y2_ticks if score_values else [])
    if score_values:
        names = sorted({key for _, key, _ in others})
        chart.y2_label = names[0] if len(names) == 1 else "score"
    chart.line = " ".join(f"{place_x(step):g},{place_y(loss):g}" for step, loss in losses.items())
    if losses:
        chart.legend.append(("train_loss", "#1c7ed6"))
    colors: dict[str, str] = {}
    for epoch, key, value in scored:
        if key not in colors:
            colors[key] = _PALETTE[len(colors) % len(_PALETTE)]
            chart.legend.append((f"{key} (per epoch)", colors[key]))
        y = place_y(value) if "loss" in key else place_y2(value)
        chart.markers.append(Marker(place_x(epoch.step), y, colors[key], f"epoch {epoch.epoch}: {key} {_tick(value)}"))
    return chart


# --- pages ----------------------------------------------------------------------------------------------------------

def _page(name: str, request: Request, status_code: int = 200, **context: Any) -> HTMLResponse:
    def path(route: str, **params: Any) -> str:
        return request.url_for(route, **params).path
    return HTMLResponse(_templates.get_template(name).render(path=path, **context), status_code=status_code)


def dashboard_router(sessions: sessionmaker) -> APIRouter:
    """The dashboard's pages: ``/`` (the sign-in form or the tenant's jobs), ``/jobs/{id}``, ``/login``, ``/logout``."""
    router = APIRouter(include_in_schema=False)

    def signed_in(request: Request) -> Tenant | None:
        key = request.cookies.get(COOKIE)
        return authenticate(sessions, key) if key else None

    def home(request: Request) -> RedirectResponse:
        return RedirectResponse(request.url_for("dashboard_home").path, status_code=303)

    @router.get("/", response_class=HTMLResponse, name="dashboard_home")
    def jobs_page(request: Request) -> Response:
        tenant = signed_in(request)
        if tenant is None:
            return _page("login.html", request)
        with sessions() as session:
            jobs = list(session.scalars(select(Job).where(Job.tenant_id == tenant.id)
                                        .order_by(Job.seq.desc()).limit(MAX_JOBS)))
            last = (select(func.max(JobEvent.seq)).where(JobEvent.job_id.in_([job.id for job in jobs]),
                                                         JobEvent.type == "metrics").group_by(JobEvent.job_id))
            loss = {event.job_id: _number((event.data or {}).get("train_loss"))
                    for event in session.scalars(select(JobEvent).where(JobEvent.seq.in_(last)))}
        return _page("jobs.html", request, tenant=tenant, jobs=jobs, loss=loss, limit=MAX_JOBS,
                     refresh=any(job.status in ACTIVE_STATUSES for job in jobs))

    @router.post("/login", name="dashboard_login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        if not key or authenticate(sessions, key) is None:
            return _page("login.html", request, status_code=401, error="That API key is not valid (or was revoked).")
        response = home(request)
        response.set_cookie(COOKIE, key, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            path="/")
        return response

    @router.post("/logout", name="dashboard_logout")
    def logout(request: Request) -> Response:
        response = home(request)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @router.get("/jobs/{job_id}", response_class=HTMLResponse, name="dashboard_job")
    def job_page(request: Request, job_id: str) -> Response:
        tenant = signed_in(request)
        if tenant is None:
            return home(request)
        with sessions() as session:
            job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant.id))
            if job is None:
                return _page("not_found.html", request, status_code=404, tenant=tenant, job_id=job_id)
            files = list(session.scalars(select(StoredFile).where(StoredFile.id.in_(job.result_files or []),
                                                                  StoredFile.tenant_id == tenant.id)))
            events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job.id)
                                          .order_by(JobEvent.seq.desc()).limit(MAX_EVENTS)))
            metrics = [data for data in session.scalars(select(JobEvent.data).where(
                JobEvent.job_id == job.id, JobEvent.type == "metrics").order_by(JobEvent.seq)) if data]
        _, epochs = split_metrics(metrics)
        epoch_names = list(dict.fromkeys(key for epoch in epochs for key in epoch.scores))
        return _page("job.html", request, tenant=tenant, job=job, files=files, events=events, limit=MAX_EVENTS,
                     chart=loss_chart(metrics), epochs=epochs, epoch_names=epoch_names,
                     refresh=job.status in ACTIVE_STATUSES)

    return router
