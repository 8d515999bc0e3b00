#!/bin/bash
# Run once by the postgres image's entrypoint, on an empty data directory: two roles, neither a superuser, each
# owning its database: `myopia` the control plane's store, `mlflow` MLflow's tracking store. The superuser
# (POSTGRES_USER, default postgres) is for the operator alone. psql reads the passwords from the environment
# (STORE_ROLE_PASSWORD, MLFLOW_ROLE_PASSWORD) with \getenv (psql >= 15): never in the SQL text or on a command line.
set -euo pipefail
: "${STORE_ROLE_PASSWORD:?}" "${MLFLOW_ROLE_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres <<'SQL'
\getenv myopia_pw STORE_ROLE_PASSWORD
\getenv mlflow_pw MLFLOW_ROLE_PASSWORD
CREATE ROLE myopia LOGIN PASSWORD :'myopia_pw';
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE myopia OWNER myopia;
CREATE DATABASE mlflow OWNER mlflow;
SQL
