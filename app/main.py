"""create_app(): middleware, error handlers, routers. Nothing else."""

from __future__ import annotations

from fastapi import FastAPI

from app import health
from app.artifacts.routes import router as artifacts_router
from app.bodylimit import BodyLimit
from app.datasets.routes import router as datasets_router
from app.error_handlers import install_error_handlers
from app.jobs.routes import router as jobs_router
from app.keycheck import KeyFirst
from app.teachers.routes import router as models_router
from app.uploads import body_limits, json_body_limit


def create_app() -> FastAPI:
    app = FastAPI(
        title="Distillery",
        version="1.0.0",
        description="TinyBERT-style knowledge distillation as a service.",
    )
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limits=body_limits, default=json_body_limit)
    app.add_middleware(KeyFirst)  # added last, runs first: the key before the body's size
    for router in (health.router, datasets_router, models_router, jobs_router, artifacts_router):
        app.include_router(router)
    return app
