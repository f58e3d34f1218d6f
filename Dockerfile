# The gateway image: docs/operations.md, "Container".
#
#   docker build -t gateway .
#   docker run -p 1883:1883 -p 61613:61613 -p 8080:8080 -v gateway-data:/data gateway
#
# The install step is scripts/install.sh, which tests/test_container.py runs too.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/gateway/bin:$PATH

# The non-root user "gateway", with fixed ids (10001) so that volumes and Kubernetes'
# runAsNonRoot can rely on them.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin gateway \
    && mkdir -p /data /etc/gateway \
    && chown gateway:gateway /data

WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY scripts/install.sh ./scripts/install.sh
RUN sh scripts/install.sh /opt/gateway /src && rm -rf /src/*

COPY conf/gateway-container.toml /etc/gateway/gateway.toml

# The store: messages, sessions and queues outlive the container.
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001

# MQTT, STOMP, HTTP (API, WebSocket, /healthz, /readyz, /metrics).
EXPOSE 1883 61613 8080

# python:3.11-slim has no curl: the standard library asks /healthz.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status != 200)"]

# SIGTERM (docker stop) drains: give it drain_timeout plus a margin (docker stop -t 15).
STOPSIGNAL SIGTERM
CMD ["gateway", "run", "-c", "/etc/gateway/gateway.toml"]
