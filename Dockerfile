# holdgate's container image: `docker build -t holdgate .`
# The build stage makes wheels of holdgate and every dependency; the runtime stage installs them
# offline as a non-root user. The root filesystem can be read-only: state, certificates and the
# archive's spool live under HOLDGATE_HOME (a volume), configuration under /etc/holdgate.

FROM python:3.13-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY addons addons
COPY rules rules
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.13-slim-bookworm
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/holdgate --create-home holdgate
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/holdgate-*.whl \
    && rm -rf /wheels
ENV HOLDGATE_HOME=/var/lib/holdgate \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /var/lib/holdgate
VOLUME ["/var/lib/holdgate"]
# 8080: the proxy agents use; 9090: /healthz, /readyz, /metrics (operations.listen_port).
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9090/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["holdgate", "run"]
CMD ["--config", "/etc/holdgate/holdgate.yaml", "--log-format", "json"]
