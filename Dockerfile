# The registry's one image: `registry serve`, `registry worker`, `registry consume`,
# `registry migrate` are all this image with a different command (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY events ./events
COPY projections ./projections
COPY registry ./registry
RUN pip install . \
    && useradd --create-home --uid 10001 registry \
    && mkdir -p /data /keys \
    && chown registry /data /keys \
    && chmod 700 /keys

USER registry
WORKDIR /data
# listen on every interface inside the container; the token file lives on the data volume
ENV REGISTRY_HOST=0.0.0.0 \
    REGISTRY_PORT=8000 \
    REGISTRY_TOKEN_FILE=/data/registry-token
EXPOSE 8000

ENTRYPOINT ["registry"]
CMD ["serve"]
