"""``python -m service --registry DIR --name NAME [--version V] [--data_dir DIR] [--corpus FILE] ...``

``python -m service export-feedback --data_dir DIR --out feedback.jsonl`` writes the collected
feedback as training data instead (no server needed; see :mod:`service.feedback`; with
``QAEMBED_INDEX=milvus`` it reads the feedback collection in Milvus).

``python -m service build-index --registry R --model M --name I --corpus FILE...`` publishes a
read-only index bundle (:mod:`service.index_bundle`).

Runs uvicorn on the app (:func:`service.http.server.server_config`: keep-alive and connection limits).
SIGTERM/SIGINT: stop accepting connections, finish in-flight requests (up to 30 s), then close the
store (every acknowledged write was committed before it was answered) and exit 0. Exit 2 for bad
settings, 1 when the model cannot be loaded.
"""

from __future__ import annotations

import logging
import os
import sys

import uvicorn

from .auth import is_loopback
from .http import create_app
from .http.server import server_config
from .settings import Settings, SettingsError, unknown_variables


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["export-feedback"]:
        from .feedback import main as export_feedback

        return export_feedback(argv[1:])
    if argv[:1] == ["build-index"]:
        from .index_bundle import main as build_index

        return build_index(argv[1:])
    try:
        settings = Settings.from_sources(argv)
        settings.require_model()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("service").info("settings other than the defaults: %s", settings.summary())
    for problem in unknown_variables(os.environ):  # with --strict_env, from_sources refused them already
        logging.getLogger("service").warning("%s; it is ignored (settings: docs/operations.md)", problem)
    if not settings.api_key and not is_loopback(settings.host):
        logging.getLogger("service").warning(
            "listening on %s without QAEMBED_API_KEY: every data route is open to whoever reaches the port",
            settings.host)
    app = create_app(settings)
    server = uvicorn.Server(server_config(app, settings))
    failed = []

    def on_start_failure() -> None:
        failed.append(True)
        server.should_exit = True

    app.state.on_start_failure = on_start_failure
    server.run()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
