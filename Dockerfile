# PercepNet service image: the WebRTC service, the RTP sidecar and the offline CLI,
# with the shipped model; no torch (only the [server] extra is installed).
#
#   docker build -t percepnet .                      # public Debian base
#   deploy/build_and_check.sh                        # this machine: buildah + local base
#
# BASE_IMAGE: any Debian bookworm (python3 3.11); deploy/build_and_check.sh passes one
# made with debootstrap where no registry is reachable.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
WORKDIR /app
COPY pyproject.toml README.md ./
COPY percepnet ./percepnet
COPY server ./server
# Editable install: the code stays in /app, so the package finds /app/models.
# /hostca.crt is only there when the build mounts a CA bundle (a TLS-inspecting proxy).
RUN if [ -f /hostca.crt ]; then export PIP_CERT=/hostca.crt; fi \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -e ".[server]" \
 && if /opt/venv/bin/python -c "import torch" 2>/dev/null; then echo "torch leaked in" >&2; exit 1; fi \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
 && rm -rf /opt/venv/lib/python3*/site-packages/numpy/*/tests \
      /opt/venv/lib/python3*/site-packages/scipy/*/tests \
      /opt/venv/lib/python3*/site-packages/scipy/*/*/tests \
 && rm -rf /app/percepnet.egg-info/SOURCES.txt

FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /app percepnet
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY models /app/models
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PERCEPNET_HOST=0.0.0.0 \
    PERCEPNET_PORT=8080 \
    PERCEPNET_RTP_PORTS=40000-40999 \
    PERCEPNET_JIT_CACHE=/var/cache/percepnet
WORKDIR /app
RUN mkdir -p /var/cache/percepnet && chown 10001:10001 /var/cache/percepnet
USER 10001:10001
# Compile the DSP kernels into the image's cache, so a container starts in seconds
# (a host with another CPU model recompiles them once, at startup).
RUN python3 -c "from percepnet.enhancer import warm_up; print(f'kernels compiled in {warm_up():.1f} s')"
# 8080/tcp: HTTP (signalling, controls, metrics, health); 40000-40999/udp: sidecar RTP.
# WebRTC media uses ephemeral UDP ports (aiortc has no port range): host networking or
# a TURN relay (deploy/kubernetes/README.md).
EXPOSE 8080/tcp 40000-40999/udp
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PERCEPNET_PORT', '8080'), timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["percepnet-server"]
