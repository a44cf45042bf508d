"""Logs and metrics of the API and the worker: formatters, request/job ids on every record,
the queue numbers and the Prometheus registry /metrics scrapes."""
