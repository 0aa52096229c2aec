# One image for every Vividly process (stage services, projector, monitoring API,
# emulators); docker-compose.yml picks the command. Python 3.11 as in pyproject.toml.
FROM python:3.11-slim-bookworm

# ffmpeg renders and thumbnails videos (video service, video emulator); fonts for titles.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ffmpeg fonts-dejavu-core \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY vividly ./vividly
COPY services ./services
COPY emulators ./emulators
COPY migrations ./migrations
RUN pip install --no-cache-dir ".[all]" \
 && useradd --create-home --uid 10001 vividly
USER vividly

ENV PYTHONUNBUFFERED=1 \
    VIVIDLY_HOME=/home/vividly/.vividly \
    VIVIDLY_METRICS_PORT=9100
EXPOSE 9100
CMD ["vividly", "--help"]
