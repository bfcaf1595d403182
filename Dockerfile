# rvdeploy with its system packages, installed by the same script CI runs (scripts/setup.sh).
FROM python:3.11-slim-bookworm
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends git ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/rvdeploy
COPY . .
RUN bash scripts/setup.sh && rm -rf /var/lib/apt/lists/*
ENTRYPOINT ["rvdeploy"]
CMD ["--help"]
