"""gunicorn settings for `oauth-sidecar serve`, read from the sidecar's own environment."""

from prometheus_client import multiprocess

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


def child_exit(server, worker):
    """A dead worker's live gauges must not linger in the shared metrics directory."""
    multiprocess.mark_process_dead(worker.pid)
