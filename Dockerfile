# schoolgate: one image for every role (radius, portal, monitor, coa); the command picks it.
# Build: docker build -t schoolgate .
# Run:   docker run -e SCHOOLGATE_DATABASE_URL=postgresql+psycopg://... schoolgate radius serve
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY radius ./radius
COPY portal ./portal
COPY migrations ./migrations
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim-bookworm
# libpcap for the monitor's live capture; tini reaps the worker processes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libpcap0.8 tini \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/schoolgate --create-home schoolgate
COPY --from=build /install /usr/local
COPY deploy /opt/schoolgate/deploy
WORKDIR /var/lib/schoolgate
# The state directory holds what must not live in the database: secret.key, audit.key and the
# audit chain's anchor log (`schoolgate db upgrade` writes them, mode 600). Every container of a
# deployment mounts the same volume here (SECURITY.md).
ENV SCHOOLGATE_ENVIRONMENT=production \
    SCHOOLGATE_STATE_DIR=/var/lib/schoolgate \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/schoolgate"]
USER 10001
EXPOSE 1812/udp 1813/udp 8080/tcp
ENTRYPOINT ["/usr/bin/tini", "--", "schoolgate"]
CMD ["radius", "serve"]
