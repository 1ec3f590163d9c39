#!/bin/sh
# Runs once, when the PostgreSQL volume is first created (docker-entrypoint-initdb.d). The image creates
# POSTGRES_DB (Prefect's database); MLflow gets its own database so the two never share tables or migrations, and the endpoint's request log
# (read by the monitor) a third.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<SQL
CREATE DATABASE "${MLFLOW_DB:-mlflow}";
CREATE DATABASE "${REQUESTS_DB:-requests}";
SQL
