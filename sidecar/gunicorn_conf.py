"""gunicorn settings for `oauth-sidecar serve`, read from the sidecar's own environment."""

from gunicorn.glogging import Logger
from prometheus_client import multiprocess

from sidecar.accesslog import loggable_path
from sidecar.config import Settings

_settings = Settings.from_env()

bind = [_settings.bind]
workers = _settings.workers
worker_class = "gthread"
threads = 4
timeout = 60
graceful_timeout = 30
accesslog = "-"
# %(U)s is the path without the query string: /callback carries authorization codes.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'


class AccessLogger(Logger):
    """gunicorn's logger, but every atom that shows the request path shows it as `loggable_path` does:
    a login link's id as a short hash, and no query string (also in %(r)s, the request line)."""

    PATHS = ("{path_info}e", "{raw_uri}e", "{request_uri}e", "f", "{referer}i")

    def atoms(self, resp, req, environ, request_time):
        atoms = super().atoms(resp, req, environ, request_time)
        target = environ.get("RAW_URI") or environ.get("PATH_INFO") or ""
        atoms["r"] = f"{environ.get('REQUEST_METHOD')} {loggable_path(target)} {environ.get('SERVER_PROTOCOL')}"
        atoms["U"] = loggable_path(environ.get("PATH_INFO") or "")
        for key in self.PATHS:
            if isinstance(atoms.get(key), str):
                atoms[key] = loggable_path(atoms[key])
        return atoms


logger_class = AccessLogger


def child_exit(server, worker):
    """A dead worker's live gauges must not linger in the shared metrics directory."""
    multiprocess.mark_process_dead(worker.pid)
