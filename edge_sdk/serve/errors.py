"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status, and the
``x-should-retry`` header that tells OpenAI's clients whether retrying can help."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """An error answer: ``status``, OpenAI's ``type`` and ``code``, the request ``param`` it is about."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, should_retry: bool | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.should_retry, self.retry_after = should_retry, retry_after

    def response(self) -> JSONResponse:
        headers: dict[str, str] = {}
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        if self.retry_after is not None:
            headers["retry-after"] = str(self.retry_after)
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status, headers=headers)


def not_found(kind: str, object_id: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No such {kind}: '{object_id}'", param=param, code=f"{kind.replace(' ', '_')}_not_found")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        # FastAPI's own checks of the body and query: the first problem, named by its field.
        problem = error.errors()[0]
        where = [str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path", "form")]
        param = ".".join(where) or None
        message = f"{param}: {problem.get('msg')}" if param else str(problem.get("msg"))
        return ApiError(400, message, param=param, code="invalid_value" if param else "invalid_request",
                        should_retry=False).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        status = error.status_code
        message = "Not found: no such endpoint" if status == 404 else str(error.detail)
        return ApiError(status, message, code="not_found" if status == 404 else None,
                        should_retry=False if status < 500 else None).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        return ApiError(500, f"The server had an error while processing the request ({type(error).__name__}); "
                             "it was logged. Retry, and report it if it persists.", type="server_error").response()
