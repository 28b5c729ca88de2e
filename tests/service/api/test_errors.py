"""service/api/errors.py: the route that failed picks the error body, whatever its path."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request

from service.api.errors import ProtocolRoute, install_error_handlers, speaks_protocol


def _endpoint() -> None:
    return None


def _request(app: FastAPI, path: str, route=None) -> Request:
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "query_string": b"", "headers": [],
             "app": app}
    if route is not None:
        scope["route"] = route  # as the router sets it for the route it matched
    return Request(scope)


def test_the_route_that_failed_picks_the_error_body_not_its_path():
    app = FastAPI()
    install_error_handlers(app, unmatched_routes=[ProtocolRoute("/p/{rest:path}", _endpoint)])
    assert speaks_protocol(_request(app, "/v1/x", ProtocolRoute("/v1/x", _endpoint)))
    assert not speaks_protocol(_request(app, "/v2/x", APIRoute("/v2/x", _endpoint)))
    # No route matched: the first unmatched route that claims the path picks the body.
    assert speaks_protocol(_request(app, "/p/anything"))
    assert not speaks_protocol(_request(app, "/v2/anything"))
