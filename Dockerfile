# One image for the API and the worker.
#   docker build -t alkn .                                   (CPU torch)
#   docker build --build-arg TORCH_SPEC=torch==2.13.0 \
#     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t alkn:gpu .
FROM python:3.11-slim

ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    ALKN_HOME=/data

WORKDIR /app
# torch first, from its own index, so the project's range never pulls another build
RUN pip install --index-url "$TORCH_INDEX" "$TORCH_SPEC"
COPY pyproject.toml README.md alembic.ini ./
COPY alkn_core ./alkn_core
COPY api ./api
COPY clients/python ./clients/python
COPY alkn_cli ./alkn_cli
COPY worker ./worker
COPY registry ./registry
COPY config ./config
COPY observability ./observability
COPY archive_safety ./archive_safety
COPY migrations ./migrations
# /data/artifacts exists in the image, owned by alkn: a named volume mounted there is created
# with the image's owner (an empty, root-owned one left the API unable to start).
RUN pip install ./clients/python . && useradd --create-home --uid 1000 alkn \
    && mkdir -p /data/artifacts && chown -R alkn /data
USER alkn
VOLUME ["/data"]
EXPOSE 8000
# The protocol bounds a request's line and headers (ALKN_MAX_HEADER_BYTES).
CMD ["uvicorn", "api.app:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "4", \
     "--http", "api.http_protocol:BoundedHttpToolsProtocol"]
